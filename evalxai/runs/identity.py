"""A run's identity and what its completion record says it read: ``config_key`` (the config less the fields that
change no result, the data's fingerprint, the checkpoint's SHA-256 and the package's code), ``is_complete`` (the
folder holds a finished run of that key), ``code_record`` and ``dataset_record`` (run.json's and meta.json's
account of the code and the data)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from evalxai.core.files import code_fingerprint, content_key
from evalxai.methods.cache import EXPLAIN_CODE
from evalxai.models.cache import MODEL_CODE

# Config fields that do not change any result (excluded from the run's identity).
_NOT_RESULT_KEYS = ("progress", "verbose", "cache_dir", "force", "device", "attribution_cache", "memory_budget")


def config_key(cfg: dict, data_fingerprint: str, checkpoint_sha256: str | None) -> str:
    """Identity of a run: the config (less the fields that change no result), what it reads (the dataset's
    ``fingerprint()``, the SHA-256 of ``model.checkpoint``) and the code of the whole package."""
    return content_key({"config": {k: v for k, v in cfg.items() if k not in _NOT_RESULT_KEYS},
                        "data": data_fingerprint, "checkpoint_sha256": checkpoint_sha256,
                        "code": code_fingerprint(), "format": 2})


def code_record() -> dict:
    """The code fingerprints behind a run's numbers, as recorded in run.json."""
    return {"package": code_fingerprint(), "model": code_fingerprint(*MODEL_CODE),
            "explain": code_fingerprint(*EXPLAIN_CODE), "torch": torch.__version__}


def dataset_record(dataset, fingerprint: str | None = None) -> dict:
    """run.json's (and meta.json's) account of the data a run read: name, ``meta``, ``fingerprint()`` (the
    leaderboard tells datasets of one name apart by it), classes, normalisation and the black pixel."""
    return {"name": dataset.name, **dataset.meta, "fingerprint": fingerprint or dataset.fingerprint(),
            "classes": list(dataset.classes), "normalization": {"mean": dataset.mean, "std": dataset.std},
            "black_pixel": np.asarray(dataset.low).reshape(-1).tolist()}


def is_complete(out: Path, key: str) -> bool:
    """Whether ``out`` holds a finished run of this config, data, checkpoint and code (run.json is written last)."""
    meta = out / "run.json"
    if not (meta.exists() and (out / "scores.parquet").exists() and (out / "summary.csv").exists()):
        return False
    try:
        return json.loads(meta.read_text()).get("config_key") == key
    except ValueError:
        return False
