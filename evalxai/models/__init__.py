"""Model zoo, a user's model by ``_target_`` (``model=custom``), the libraries' models (``model=torchvision``,
``timm``, ``huggingface``), seeded training and the checkpoint cache."""
from evalxai.models.cache import get_model, load_checkpoint, model_key
from evalxai.models.custom import CUSTOM_FIELDS, ZOO_FIELDS, build_custom, model_kind, read_state_dict
from evalxai.models.libraries import LIBRARY_FIELDS, LogitsOnly, build_library_model
from evalxai.models.text import EmbeddingsInput
from evalxai.models.train import evaluate, train_model
from evalxai.models.zoo import MODELS, build_model

__all__ = ["CUSTOM_FIELDS", "LIBRARY_FIELDS", "MODELS", "ZOO_FIELDS", "EmbeddingsInput", "LogitsOnly", "build_custom",
           "build_library_model", "build_model", "evaluate", "get_model", "load_checkpoint", "model_key", "model_kind",
           "read_state_dict", "train_model"]
