"""``decoy_mnist``: MNIST with a class-correlated corner patch in the train split, a known shortcut (the decoy
MNIST of Ross et al. 2017, as used by Rieger et al. 2020, CDEP).

Every image gets a ``patch_size`` x ``patch_size`` square in one of its four corners (drawn per image from
``seed``). In the train split the square's grey value is ``(255 - 25 * y) / 255`` for label ``y`` (white for 0,
darker for higher digits), so a model can read the class from the corner. In the test split the corner is drawn the
same way but the grey value belongs to a random class (``255 - 25 * r``, ``r`` uniform over the 10 classes), as in
the papers: the patch carries no information, and a model that learnt the shortcut loses accuracy there.

Masks of the test images (``masks_test``): ``mask=patch`` marks the patch (where a model that looks at the
shortcut puts its relevance), ``mask=digit`` the digit: pixels of the clean image above ``threshold`` (outside the
patch). The images are the evalxai ``mnist`` dataset (bundled 5 000 images, or the IDX files under ``root``), with
the same split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evalxai.data.base import ArrayDataset, Dataset
from evalxai.data.mnist import load_mnist
from evalxai.data.registry import register

MASKS = ("patch", "digit")
STEP = 25  # grey levels between classes: value = 255 - 25 * class


def corner_masks(n: int, size: int, patch: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size, size) bool: a ``patch`` x ``patch`` square in a random corner of each image."""
    corner = rng.integers(0, 4, n)
    out = np.zeros((n, size, size), dtype=bool)
    for i, c in enumerate(corner):
        r, k = (0 if c < 2 else size - patch), (0 if c % 2 == 0 else size - patch)
        out[i, r:r + patch, k:k + patch] = True
    return out


def add_decoy(x: torch.Tensor, grey: np.ndarray, where: np.ndarray) -> torch.Tensor:
    """Images (n, 1, H, W) in [0, 1] with the pixels ``where`` (n, H, W) set to ``(255 - 25 * grey) / 255``."""
    value = torch.from_numpy(((255 - STEP * grey) / 255.0).astype(np.float32)).view(-1, 1, 1, 1)
    m = torch.from_numpy(where)[:, None]
    return torch.where(m, value.expand_as(x), x)


@register("decoy_mnist", masks=True)
def load_decoy_mnist(root: str | None = None, n_test: int = 1000, split_seed: int = 0, mask: str = "patch",
                     patch_size: int = 4, threshold: float = 0.5, seed: int = 0,
                     cache_dir: str | Path | None = None) -> Dataset:
    """Decoy MNIST (see the module docstring)."""
    if mask not in MASKS:
        raise ValueError(f"dataset.mask={mask!r} is not one of {list(MASKS)} (dataset=decoy_mnist): 'patch' marks the "
                         "decoy, 'digit' the digit's pixels")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or not 1 <= patch_size <= 14:
        raise ValueError(f"dataset.patch_size={patch_size!r} must be an integer from 1 to 14 (pixels)")
    if not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"dataset.threshold={threshold!r} must be a number in [0, 1) (digit pixels lie above it)")
    base = load_mnist(root=root, n_test=n_test, split_seed=split_seed, cache_dir=cache_dir)
    x_tr, y_tr = base.train_pixels()
    x_te, y_te = base.test_pixels(np.arange(len(base)))
    size = x_te.shape[-1]
    rng = np.random.default_rng(seed)
    where_tr = corner_masks(len(y_tr), size, patch_size, rng)
    where_te = corner_masks(len(y_te), size, patch_size, rng)
    random_grey = rng.integers(0, 10, len(y_te))  # the test patch belongs to a random class: no shortcut
    decoy_tr = add_decoy(x_tr, y_tr.numpy(), where_tr)
    decoy_te = add_decoy(x_te, random_grey, where_te)
    masks = where_te if mask == "patch" else (x_te[:, 0].numpy() > threshold) & ~where_te
    meta = {**base.meta, "source": f"decoy MNIST (Ross 2017 / Rieger 2020) on {base.meta.get('source')}",
            "patch_size": patch_size, "seed": seed,
            "decoy": "train: grey (255 - 25 y) / 255 in a random corner; test: grey of a random class"}
    ds = ArrayDataset("decoy_mnist", decoy_tr, y_tr, decoy_te, y_te, classes=base.classes, meta=meta,
                      masks_test=torch.from_numpy(np.ascontiguousarray(masks)))
    ds.mask_meta = {"mask": mask, "marks": "the decoy patch" if mask == "patch" else
                    f"digit pixels above {threshold} outside the patch", "threshold": threshold}
    ds.patch_train = torch.from_numpy(where_tr)  # where the train decoys are (for inspection and tests)
    return ds
