"""``xai_tris``: tetromino images with known class-relevant pixels (XAI-TRIS; Clark, Wilming & Haufe 2024).

Two classes, generated offline and deterministically from ``seed``. The signal ``s`` of an image is a "T"
(class 0) or an "L" (class 1) tetromino, ``[[1,0],[1,1],[1,0]]`` / ``[[1,0],[1,0],[1,1]]`` scaled by a Kronecker
product to ``pattern_scale`` pixels per cell:

- ``linear``: T at position p0 or L at position p1, added to the background;
- ``multiplicative``: the same placements, but the background is multiplied by ``1 - alpha * s``;
- ``translations_rotations``: T or L, rotated by a random multiple of 90 degrees, at a random position;
- ``xor``: T at p0 and L at p1 in every image with signs (+,+) or (-,-) for class 0, (+,-) or (-,+) for class 1.

Sizes 8 (cells of 1 px, p0 = (1, 1), p1 = (4, 5)) and 64 (cells of 8 px, 4 px for translations_rotations,
p0 = (8, 8), p1 = (32, 40), the pattern smoothed by a Gaussian of sigma 1.5). The background ``b`` is white noise
N(0, 0.5^2) or ``correlated``: that noise smoothed by a Gaussian of sigma 3 (8 px) or 10 (64 px). As in XAI-TRIS,
signal and background are each scaled to unit Frobenius norm over the whole generated set, then combined as
``x = alpha * s + (1 - alpha) * b`` (additive scenarios) or ``x = (1 - alpha * s) * b`` (multiplicative, each
factor normalised), and the set is scaled so that ``max |x| = 1``. ``snr`` is ``alpha``; left null it takes the
value XAI-TRIS tuned for each scenario, background and size (their ``data/data_config.json``).

Pixel range: model space is XAI-TRIS's ``x`` in [-1, 1]. Pixel space stores ``(x + 1) / 2`` in [0, 1] with the
normalisation mean 0.5, std 0.5, so ``low`` = -1 and ``high`` = +1 (a "black" pixel, the zero baseline, is -1;
the noise-free value 0 is the pixel 0.5).

Masks (``masks_test``, True = relevant): ``mask=relevant`` (default) is XAI-TRIS's ground truth: the pixels whose
distribution depends on the class. For ``linear``, ``multiplicative`` and ``xor`` these are both pattern locations
(T at p0 and L at p1, 8 pixels at 8x8) in every image: the absence of the T is evidence for class 1. For
``translations_rotations`` they are the pixels of the pattern placed in this image. ``mask=placed``: the pixels of
the pattern(s) drawn into this image. At 64x64 a smoothed pattern's mask is ``|s| >= 0.05``, XAI-TRIS's threshold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evalxai.data.base import ArrayDataset, Dataset, cached_arrays, stratified_split
from evalxai.data.registry import register

SCENARIOS = ("linear", "multiplicative", "translations_rotations", "xor")
BACKGROUNDS = ("white", "correlated")
MASKS = ("relevant", "placed")
TETROMINOES = {"T": np.array([[1, 0], [1, 1], [1, 0]], dtype=np.float64),
               "L": np.array([[1, 0], [1, 0], [1, 1]], dtype=np.float64)}
# alpha per size, scenario and background: the values of XAI-TRIS's data_config.json (additive / multiplicative)
DEFAULT_SNR = {
    8: {"linear": {"white": 0.18, "correlated": 0.0125}, "multiplicative": {"white": 0.7, "correlated": 0.1},
        "translations_rotations": {"white": 0.65, "correlated": 0.2}, "xor": {"white": 0.35, "correlated": 0.15}},
    64: {"linear": {"white": 0.03, "correlated": 0.02}, "multiplicative": {"white": 0.2, "correlated": 0.65},
         "translations_rotations": {"white": 0.575, "correlated": 0.375}, "xor": {"white": 0.35, "correlated": 0.15}},
}
GEOMETRY = {  # size -> (cell size of the fixed patterns, of translations_rotations, p0, p1, background sigma)
    8: (1, 1, (1, 1), (4, 5), 3.0),
    64: (8, 4, (8, 8), (32, 40), 10.0),
}
NOISE_STD = 0.5
PATTERN_SIGMA = 1.5  # smoothing of patterns with cells larger than 3 px (XAI-TRIS)
MASK_THRESHOLD = 0.05
CLASSES = {False: ["T", "L"], True: ["same signs", "opposite signs"]}  # xor's classes are sign combinations


def _check(scenario, background, size, mask, snr, n, n_test) -> None:
    for value, allowed, what in ((scenario, SCENARIOS, "scenario"), (background, BACKGROUNDS, "background"),
                                 (size, tuple(GEOMETRY), "size"), (mask, MASKS, "mask")):
        if value not in allowed:
            raise ValueError(f"dataset.{what}={value!r} is not one of {list(allowed)} (dataset=xai_tris)")
    if snr is not None and not (isinstance(snr, (int, float)) and 0 < snr < 1):
        raise ValueError(f"dataset.snr={snr!r} must be a number in (0, 1) (the signal weight alpha), or null for "
                         "XAI-TRIS's value")
    if not isinstance(n, int) or n < 8 or n % 4:
        raise ValueError(f"dataset.n={n!r} must be an integer >= 8 divisible by 4 (balanced classes; xor has four "
                         "sign combinations)")
    if not isinstance(n_test, int) or not 2 <= n_test <= n - 2:
        raise ValueError(f"dataset.n_test={n_test!r} must be an integer between 2 and n - 2 = {n - 2}")


def _cells(name: str, scale: int) -> np.ndarray:
    return np.kron(TETROMINOES[name], np.ones((scale, scale)))


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of every (H, W) image of a (N, H, W) stack (scipy's default 'reflect' border)."""
    from scipy.ndimage import gaussian_filter  # lazy: scipy.ndimage costs ~0.3 s to import, used only here

    return gaussian_filter(a, sigma=(0, sigma, sigma))


def patterns(scenario: str, size: int, y: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signal (N, H, W) float64, placed masks (N, H, W) bool, relevant masks (N, H, W) bool) for labels ``y``."""
    fixed_scale, moving_scale, p0, p1, _ = GEOMETRY[size]
    n = len(y)
    s = np.zeros((n, size, size))

    def put(i, pat, pos, sign=1.0):
        s[i, pos[0]:pos[0] + pat.shape[0], pos[1]:pos[1] + pat.shape[1]] = sign * pat

    t, ell = _cells("T", fixed_scale), _cells("L", fixed_scale)
    if scenario in ("linear", "multiplicative"):
        for i in range(n):
            put(i, t, p0) if y[i] == 0 else put(i, ell, p1)
    elif scenario == "xor":
        # class 0: (+,+) or (-,-); class 1: (+,-) or (-,+); which of the two is drawn per image
        first = rng.integers(0, 2, n) * 2 - 1
        second = np.where(y == 0, first, -first)
        for i in range(n):
            put(i, t, p0, first[i])
            put(i, ell, p1, second[i])
    else:  # translations_rotations
        rot = rng.integers(0, 4, n)
        for i in range(n):
            pat = np.rot90(_cells("T" if y[i] == 0 else "L", moving_scale), k=int(rot[i]))
            r = rng.integers(0, size - pat.shape[0] + 1)
            c = rng.integers(0, size - pat.shape[1] + 1)
            put(i, pat, (r, c))
    scale = moving_scale if scenario == "translations_rotations" else fixed_scale
    if scale > 3:
        s = _smooth(s, PATTERN_SIGMA)
        placed = np.abs(s) >= MASK_THRESHOLD
    else:
        placed = s != 0
    if scenario in ("linear", "multiplicative"):
        both = np.zeros((1, size, size))
        both[0, p0[0]:p0[0] + t.shape[0], p0[1]:p0[1] + t.shape[1]] = t
        both[0, p1[0]:p1[0] + ell.shape[0], p1[1]:p1[1] + ell.shape[1]] = ell
        both = (np.abs(_smooth(both, PATTERN_SIGMA)) >= MASK_THRESHOLD) if fixed_scale > 3 else both != 0
        relevant = np.broadcast_to(both, placed.shape).copy()
    else:
        relevant = placed.copy()
    return s, placed, relevant


def generate(scenario: str = "linear", background: str = "white", size: int = 8, snr: float | None = None,
             n: int = 10000, seed: int = 0) -> dict[str, np.ndarray]:
    """The whole XAI-TRIS set: ``x`` (N, H, W) float32 in [-1, 1], ``y`` (N,) int64 (half 0, half 1, in random
    order), ``placed`` and ``relevant`` masks (N, H, W) bool, ``alpha`` (the signal weight used)."""
    alpha = DEFAULT_SNR[size][scenario][background] if snr is None else float(snr)
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(2), n // 2))
    s, placed, relevant = patterns(scenario, size, y, rng)
    b = rng.normal(0.0, NOISE_STD, size=(n, size, size))
    if background == "correlated":
        b = _smooth(b, GEOMETRY[size][4])
    b = b / np.linalg.norm(b)
    if scenario == "multiplicative":
        f = 1.0 - alpha * s
        x = f / np.linalg.norm(f) * b
    else:
        x = alpha * s / np.linalg.norm(s) + (1.0 - alpha) * b
    x = x / np.abs(x).max()
    return {"x": x.astype(np.float32), "y": y.astype(np.int64), "placed": placed, "relevant": relevant,
            "alpha": np.float64(alpha)}


@register("xai_tris", masks=True)
def load_xai_tris(scenario: str = "linear", background: str = "white", size: int = 8, snr: float | None = None,
                  n: int = 10000, n_test: int = 1000, mask: str = "relevant", seed: int = 0,
                  cache_dir: str | Path | None = None) -> Dataset:
    """XAI-TRIS images (see the module docstring): ``n`` images, ``n_test`` of them (stratified) the test split."""
    _check(scenario, background, size, mask, snr, n, n_test)
    key = f"xai-tris-v1-{scenario}-{background}-{size}-{snr}-{n}-{seed}"
    if size * size * n > 2_000_000:  # large sets (64 x 64) are kept: correlated smoothing takes seconds there
        a = cached_arrays(key, lambda: generate(scenario, background, size, snr, n, seed), cache_dir)
    else:
        a = generate(scenario, background, size, snr, n, seed)
    train, test = stratified_split(a["y"], n_test, seed)
    pixels = torch.from_numpy((a["x"][:, None] + 1.0) / 2.0)  # [-1, 1] -> pixel space [0, 1]
    labels = torch.from_numpy(a["y"])
    masks = torch.from_numpy(np.ascontiguousarray(a[mask][test]))
    meta = {"source": "generated (XAI-TRIS, Clark et al. 2024)", "scenario": scenario, "background": background,
            "size": size, "snr": float(a["alpha"]), "n_train": len(train), "n_test": len(test), "seed": seed,
            "pixel_range": "model space [-1, 1] = (pixel - 0.5) / 0.5"}
    ds = ArrayDataset("xai_tris", pixels[train], labels[train], pixels[test], labels[test],
                      classes=CLASSES[scenario == "xor"], meta=meta, mean=(0.5,), std=(0.5,), masks_test=masks)
    ds.mask_meta = {"mask": mask, "marks": "pixels whose distribution depends on the class (XAI-TRIS)"
                    if mask == "relevant" else "pixels of the pattern(s) drawn into the image"}
    return ds
