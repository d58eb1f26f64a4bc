"""The dataset registry: config name (``conf/dataset/<name>.yaml``) -> loader, and the one way to load by name.

A loader module registers its loader with ``@register(name, masks=...)``; this module imports no loader, and the
package ``evalxai.data`` imports every loader module, so the registry is full whenever ``evalxai.data`` (or any of
its modules) has been imported. A loader takes its config fields as keyword arguments and ``cache_dir``.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evalxai.data.base import Dataset

DATASETS: dict[str, Callable[..., Dataset]] = {}
# Datasets whose test split carries ground-truth masks, given their config fields (known before any data is read).
WITH_MASKS: dict[str, Callable[[dict], bool]] = {}


def register(name: str, masks: bool | Callable[[dict], bool] = False
             ) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator: ``DATASETS[name] = loader``. ``masks``: whether the test split carries ground-truth masks
    (``True``), or a function of the config fields that says so (``image_folder``: when ``masks=DIR`` is given)."""
    def add(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in DATASETS and DATASETS[name] is not loader:
            raise ValueError(f"dataset '{name}' is registered twice ({DATASETS[name].__module__} and "
                             f"{loader.__module__})")
        DATASETS[name] = loader
        if masks:
            WITH_MASKS[name] = masks if callable(masks) else (lambda params: True)
        return loader

    return add


def provides_masks(name: str, params: dict | None = None) -> bool:
    """Whether ``dataset=name`` with these fields carries masks (xai_tris, decoy_mnist, image_folder with masks=DIR)."""
    return name in WITH_MASKS and WITH_MASKS[name](dict(params or {}))


def load_dataset(name: str, cache_dir: str | Path | None = None, **params: Any) -> Dataset:
    """Load a dataset by its config name (``conf/dataset/<name>.yaml``); every field is used or refused.

    name: a ``DATASETS`` key (``mnist``, ``cifar10``, ``image_folder``, ``tensors``, ...).
    cache_dir: where downloads and prepared arrays are kept; None: the loader's default.
    params: the config fields of the loader (``root``, ``path``, ``mean``, ``std``, ...).

    Example:
        >>> x, y = load_dataset("digits").test_items([0, 1])  # doctest: +SKIP
        >>> x.shape, y.tolist()  # doctest: +SKIP
        (torch.Size([2, 1, 8, 8]), [3, 8])
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset '{name}': choose one of {sorted(DATASETS)}")
    params = {k: v for k, v in params.items() if k != "name"}
    if params.get("_target_") is not None:
        raise ValueError(f"dataset '{name}' is built in and takes no _target_ ({params['_target_']}): for your own "
                         "images use dataset=image_folder (or cifar10, cifar100, tensors) with dataset.root / "
                         "dataset.path")
    params.pop("_target_", None)
    accepted = [p for p in inspect.signature(DATASETS[name]).parameters if p != "cache_dir"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(f"dataset '{name}' has no field {unknown}: it takes {accepted}")
    return DATASETS[name](cache_dir=cache_dir, **params)
