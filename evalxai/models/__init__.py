"""Model zoo, a user's model by ``_target_`` (``model=custom``), seeded training and the checkpoint cache."""
from evalxai.models.cache import get_model, load_checkpoint, model_key
from evalxai.models.custom import CUSTOM_FIELDS, ZOO_FIELDS, build_custom, model_kind, read_state_dict
from evalxai.models.train import evaluate, train_model
from evalxai.models.zoo import MODELS, build_model

__all__ = ["CUSTOM_FIELDS", "MODELS", "ZOO_FIELDS", "build_custom", "build_model", "evaluate", "get_model",
           "load_checkpoint", "model_key", "model_kind", "read_state_dict", "train_model"]
