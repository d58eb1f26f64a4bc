"""The dataset protocol every loader implements, and the helpers loaders share (split, pixels, normalisation
parameters, file signatures, the cache of parsed arrays)."""
from __future__ import annotations

import math
import numbers
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from evalxai.core.files import atomic_path, cache_root, content_key


class Dataset:
    """What a run reads from a dataset: test images by index, the train split only to train, class names.

    Pixels are float32 in [0, 1] (pixel space); the model sees (x - mean) / std per channel (model space), with
    ``mean`` / ``std`` None for no normalisation. Subclasses implement ``__len__`` (test images),
    ``test_pixels(indices)`` and ``train_pixels()``; they set ``name``, ``classes``, ``input_shape``, ``meta``,
    ``mean``, ``std``. Everything with a meaning in pixel space is mapped into model space here, in one place:
    ``normalize`` / ``denormalize``, the input bounds ``low`` / ``high`` (pixel 0 and 1: the box rule's bounds,
    a black pixel), ``mean_image``.

    Ground truth: a dataset with masks sets ``masks_test`` ((N, H, W) bool, True = class-relevant pixel) or
    overrides ``has_masks`` / ``test_masks(indices)`` to read masks lazily; ``pool(n, seed)`` is a fixed stratified
    sample of the train split in model space (what the ``focus`` metric builds its mosaics from). ``mask_meta``
    says what the masks mark; it is kept out of ``meta`` because the masks do not change the images.

    Identity: ``meta`` holds what determines the images (for bundled or generated data the loader's config: source,
    split, seed; for user files their ``file_signature``), ``mask_meta`` the masks'; ``fingerprint()`` keys both.
    """

    name: str = "dataset"
    modality: str = "image"  # "image" (pixels (C, H, W)) or "text" (token ids (T,): evalxai.data.text.TextDataset)
    classes: list = []
    input_shape: tuple = ()
    meta: dict = {}
    mean: tuple | None = None
    std: tuple | None = None
    masks_test: torch.Tensor | None = None
    mask_meta: dict = {}  # what the masks mean (run.json records it; not part of a trained model's identity)

    def __len__(self) -> int:
        raise NotImplementedError

    def test_pixels(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(images in pixel space (n, C, H, W) float32, labels (n,) int64) of the given test indices."""
        raise NotImplementedError

    def train_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole train split in pixel space (read only when a model is trained)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Content key of the data a run reads: name, ``meta``, ``mask_meta``, shape, classes and normalisation."""
        return content_key({"name": self.name, "meta": self.meta, "masks": self.mask_meta,
                            "shape": list(self.input_shape), "classes": list(self.classes),
                            "normalization": [self.mean, self.std]})

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _channel(self, values) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float32).view(-1, 1, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel space -> model space."""
        if self.mean is None:
            return x
        return (x - self._channel(self.mean).to(x)) / self._channel(self.std).to(x)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> pixel space (for heatmap backgrounds)."""
        if self.mean is None:
            return x
        return x * self._channel(self.std).to(x) + self._channel(self.mean).to(x)

    @property
    def low(self) -> float | torch.Tensor:
        """Model-space value of a black pixel (pixel 0): a float, or per-channel (C, 1, 1) when normalised."""
        return 0.0 if self.mean is None else self.normalize(torch.zeros(len(self.mean), 1, 1))

    @property
    def high(self) -> float | torch.Tensor:
        """Model-space value of a white pixel (pixel 1)."""
        return 1.0 if self.mean is None else self.normalize(torch.ones(len(self.mean), 1, 1))

    def test_items(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(model-space images, labels) of the given test indices: only these images are read."""
        x, y = self.test_pixels(np.asarray(indices, dtype=np.int64))
        return self.normalize(x), y

    def test_batches(self, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test split in model space, ``batch_size`` images at a time (for streamed accuracy)."""
        for i in range(0, len(self), batch_size):
            yield self.test_items(np.arange(i, min(i + batch_size, len(self))))

    @property
    def has_masks(self) -> bool:
        """Whether the test split carries ground-truth masks."""
        return self.masks_test is not None

    def test_masks(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor | None:
        """Ground-truth masks (n, H, W) bool of the given test indices (True = relevant pixel), None without masks.
        Only these masks are read."""
        if not self.has_masks:
            return None
        return self.masks_test[torch.as_tensor(np.asarray(indices, dtype=np.int64))]

    def train_labels(self) -> np.ndarray:
        """Labels of the train split (int64); loaders that can read labels without images override this."""
        return self.train_pixels()[1].numpy()

    def train_items(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(model-space images, labels) of the given train indices; loaders that read lazily override this."""
        x, y = self.train_pixels()
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.normalize(x[idx]), y[idx]

    def pool(self, n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed sample of the train split in model space, ``n`` images stratified by class (all of them when the
        split is smaller), chosen by ``seed``: the images the ``focus`` metric builds its mosaics from."""
        key = (int(n), int(seed))
        cache = self.__dict__.setdefault("_pools", {})
        if key not in cache:
            y = np.asarray(self.train_labels(), dtype=np.int64)
            if len(y) == 0:
                raise ValueError(f"dataset '{self.name}' has no train split to draw a pool of images from: pass "
                                 "pool=(images, labels) to evalxai.score")
            idx = np.sort(stratified_split(y, int(n), seed)[1]) if 0 < n < len(y) else np.arange(len(y))
            cache[key] = self.train_items(idx)
        return cache[key]

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.train_pixels()
        return self.normalize(x), y

    def mean_image(self) -> torch.Tensor:
        """The training-set mean image in model space, shape (1, *input_shape)."""
        if "_mean_image" not in self.__dict__:
            x, _ = self.train_pixels()
            self._mean_image = self.normalize(x.mean(0, keepdim=True))
        return self._mean_image


class ArrayDataset(Dataset):
    """A dataset held in memory: train/test tensors in pixel space ([0, 1])."""

    def __init__(self, name: str, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, classes=None, meta: dict | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, masks_test=None):
        self.name, self.x_train, self.y_train, self.x_test, self.y_test = name, x_train, y_train, x_test, y_test
        if masks_test is not None:
            masks_test = torch.as_tensor(masks_test)
            want = (len(x_test), *x_test.shape[2:])
            if masks_test.dtype != torch.bool or tuple(masks_test.shape) != want:
                raise ValueError(f"dataset '{name}': masks_test is {masks_test.dtype} {tuple(masks_test.shape)}; "
                                 f"expected bool {want} (one (H, W) mask per test image)")
        self.masks_test = masks_test
        n = int(max(y_train.max(), y_test.max())) + 1 if len(y_train) else int(y_test.max()) + 1
        self.classes = [str(c) for c in range(n)] if classes is None else list(classes)
        self.input_shape = tuple(x_test.shape[1:])
        self.meta = dict(meta or {})
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)

    def __len__(self) -> int:
        return len(self.x_test)

    def test_pixels(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.x_test[idx], self.y_test[idx]

    def train_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train, self.y_train

    def train_labels(self) -> np.ndarray:
        return self.y_train.numpy()

    def train_items(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.normalize(self.x_train[idx]), self.y_train[idx]


def stratified_split(y: np.ndarray, n_test: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: (train indices, test indices), each class in proportion."""
    n_test = int(round(n_test * len(y))) if isinstance(n_test, float) and n_test < 1 else int(n_test)
    if not 0 < n_test < len(y):
        raise ValueError(f"n_test={n_test} must lie between 1 and {len(y) - 1} for {len(y)} images")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    share = counts * n_test / len(y)
    take = np.floor(share).astype(int)
    take[np.argsort(-(share - take), kind="stable")[: n_test - take.sum()]] += 1  # largest remainders
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)])
    test = np.sort(test)
    train = np.setdiff1d(np.arange(len(y)), test)
    return rng.permutation(train), rng.permutation(test)


def parse_mean_std(mean: Sequence[float] | None, std: Sequence[float] | None,
                   channels: int) -> tuple[tuple | None, tuple | None]:
    """Validate ``dataset.mean`` / ``dataset.std``: both null, or both one positive-std value per channel."""
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ValueError("give both dataset.mean and dataset.std (one value per channel), or neither")

    def values(v, what):
        v = [v] if isinstance(v, numbers.Number) else list(v)
        if len(v) != channels or not all(isinstance(a, numbers.Number) and math.isfinite(a) for a in v):
            raise ValueError(f"dataset.{what}={v} must be {channels} finite number(s), one per channel")
        return tuple(float(a) for a in v)

    m, s = values(mean, "mean"), values(std, "std")
    if min(s) <= 0:
        raise ValueError(f"dataset.std={list(s)} must be positive")
    return m, s


def uint8_pixels(a: np.ndarray) -> torch.Tensor:
    """uint8 0..255 -> float32 pixels in [0, 1] (x / 255, as torchvision's ToTensor)."""
    return torch.from_numpy(np.ascontiguousarray(a).astype(np.float32) / np.float32(255))


def file_signature(paths: Iterable[Path], root: Path | None = None) -> str:
    """A content key of files by (relative) name, size and modification time: the data part of a cache key."""
    rows = []
    for p in paths:
        st = Path(p).stat()
        rows.append([str(Path(p).relative_to(root)) if root else str(p), st.st_size, st.st_mtime_ns])
    return content_key(rows)


def cached_arrays(key: str, build: Callable[[], dict[str, np.ndarray]],
                  cache_dir: str | Path | None) -> dict[str, np.ndarray]:
    """Load arrays from ``<cache>/data/<key>.npz`` or build and store them atomically."""
    path = cache_root(cache_dir) / "data" / f"{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = build()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return arrays


def clear_cache(cache_dir: str | Path | None = None) -> None:
    """Remove cached parsed arrays."""
    shutil.rmtree(cache_root(cache_dir) / "data", ignore_errors=True)
