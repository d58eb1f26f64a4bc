"""Checkpoint cache keyed by a hash of everything that determines the weights.

The key covers the dataset (name, source, split), the architecture and its parameters, the training
config, the seed, and a fingerprint of the data and model code (``MODEL_CODE``) and the torch version.
Checkpoints are written atomically and read with ``torch.load(weights_only=True)``, so a pickle that would
run code is refused.
"""
from __future__ import annotations

import json
import logging
import time

import torch

from evalxai import __version__
from evalxai._io import atomic_path, cache_root, code_fingerprint, content_key, write_json
from evalxai.models.train import evaluate, evaluate_batches, train_model
from evalxai.models.zoo import build_model

log = logging.getLogger(__name__)
STATS = {"hits": 0, "misses": 0}
# The parts of the package that determine trained weights (see ``evalxai._io.code_fingerprint``).
MODEL_CODE = ("data", "models")


def model_key(dataset, model_cfg: dict, train_cfg: dict, seed: int) -> str:
    """Content key of a trained model."""
    return content_key({
        "dataset": dataset.name, "data": dataset.meta, "shape": list(dataset.input_shape),
        "classes": list(dataset.classes), "normalization": [dataset.mean, dataset.std],
        "model": model_cfg, "train": train_cfg, "seed": seed, "code": code_fingerprint(*MODEL_CODE), "format": 2,
    })


def load_checkpoint(path, model: torch.nn.Module) -> None:
    """Load a state dict into ``model`` with weights-only unpickling; refuse anything else clearly."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise RuntimeError(
            f"checkpoint {path} cannot be loaded with weights_only=True ({type(err).__name__}): it is corrupt or "
            "holds more than tensors; delete it and the model will be retrained"
        ) from None
    model.load_state_dict(state)


def get_model(dataset, model_cfg: dict, train_cfg: dict, seed: int = 0, cache_dir=None,
              progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """Return (model in eval mode, info) — loaded from the cache, or trained and stored.

    ``info`` holds the cache key, whether it was a hit, the test accuracy and the training time.
    """
    model_cfg = dict(model_cfg)
    name = model_cfg.pop("name")
    arch = model_cfg.get("arch", {}) or {}
    key = model_key(dataset, {"name": name, **model_cfg}, dict(train_cfg), seed)
    folder = cache_root(cache_dir) / "models"
    ckpt, meta_path = folder / f"{name}-{key}.pt", folder / f"{name}-{key}.json"
    torch.manual_seed(seed)
    model = build_model(name, dataset.input_shape, dataset.num_classes, **arch)
    if ckpt.exists() and meta_path.exists():
        load_checkpoint(ckpt, model)
        model.eval()
        info = json.loads(meta_path.read_text())
        STATS["hits"] += 1
        log.info("model cache hit %s", ckpt.name)
        return model, {**info, "cache_hit": True, "key": key, "path": str(ckpt)}
    STATS["misses"] += 1
    log.info("model cache miss %s: training", ckpt.name)
    t0 = time.perf_counter()
    x_train, y_train = dataset.train_tensors()
    train_model(model, x_train, y_train, seed=seed, progress=progress, **train_cfg)
    seconds = time.perf_counter() - t0
    info = {"test_accuracy": evaluate_batches(model, dataset.test_batches()),
            "train_accuracy": evaluate(model, x_train, y_train),
            "train_seconds": round(seconds, 2), "evalxai_version": __version__,
            "code": code_fingerprint(*MODEL_CODE)}
    with atomic_path(ckpt) as tmp:
        torch.save(model.state_dict(), tmp)
    write_json(meta_path, info)
    return model, {**info, "cache_hit": False, "key": key, "path": str(ckpt)}
