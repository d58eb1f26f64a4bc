"""Content-addressed attribution cache: a map is stored once per (model, method, parameters, inputs, targets).

The key hashes the trained model's cache key (which covers the data and model code), the method (name or
``_target_`` config) with every parameter, the dataset indices explained and their targets, the dtype, and a
fingerprint of the explaining code (``EXPLAIN_CODE``) and the torch version; the file is written atomically
(temporary file + rename), so parallel jobs sharing the cache never see a partial map, and read with
``weights_only=True``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from evalxai.core.files import atomic_path, cache_root, code_fingerprint, content_key

log = logging.getLogger(__name__)
STATS = {"hits": 0, "misses": 0}
# The parts of the package that compute a map from a trained model (see ``evalxai.core.files.code_fingerprint``).
EXPLAIN_CODE = ("methods", "api.py", "core/scoring.py", "core/baselines.py", "core/seeding.py")


def attribution_key(model_key: str, method: str | Mapping, params: dict, indices: Iterable[int], target: torch.Tensor,
                    dtype: torch.dtype | str) -> str:
    """Key of one attribution tensor (everything that determines it)."""
    return content_key({"model": model_key, "method": method, "params": params, "indices": [int(i) for i in indices],
                        "target": target.tolist(), "dtype": str(dtype), "code": code_fingerprint(*EXPLAIN_CODE),
                        "format": 2})


def cached(key: str, compute: Callable[[], torch.Tensor], cache_dir: str | Path | None = None,
           enabled: bool = True) -> tuple[torch.Tensor, bool]:
    """(tensor, hit): load ``attributions/<key>.pt`` if present, else ``compute()`` and store it."""
    path = cache_root(cache_dir) / "attributions" / f"{key}.pt"
    if enabled and path.exists():
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
            STATS["hits"] += 1
            return value, True
        except Exception as err:  # noqa: BLE001 - a corrupt entry is recomputed, never trusted
            log.warning("attribution cache entry %s unreadable (%s): recomputing", path.name, type(err).__name__)
    value = compute()
    STATS["misses"] += 1
    if enabled:
        with atomic_path(path) as tmp:
            torch.save(value.detach().cpu(), tmp)
    return value, False
