"""Model zoo, seeded training and the content-addressed checkpoint cache."""
from evalxai.models.cache import get_model, model_key
from evalxai.models.train import evaluate, train_model
from evalxai.models.zoo import MODELS, build_model

__all__ = ["MODELS", "build_model", "evaluate", "get_model", "model_key", "train_model"]
