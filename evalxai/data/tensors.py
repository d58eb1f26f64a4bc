"""``tensors``: test (and optionally train) images stored as arrays in one ``.npz`` or ``.pt`` file.

The file holds ``x_test``, ``y_test`` and optionally ``x_train``, ``y_train`` and ``classes`` (class names).
Images are shaped (N, C, H, W), or (N, H, W, C) (channels-last, detected when the last dimension is 1 or 3 and the
second is not), or (N, H, W) for one channel. Values are pixels: uint8 0..255 (scaled to [0, 1]) or floats in
[0, 1]; normalisation is ``dataset.mean`` / ``dataset.std``, never baked into the stored values. A ``.pt`` file is
read with ``torch.load(weights_only=True)`` (tensors, numpy arrays, lists of names). ``x_train`` is read only by
``train_pixels``.

Also the helpers the local loaders share: ``parse_mean_std``, ``uint8_pixels``, ``file_signature``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from evalxai.data.base import Dataset, file_signature, parse_mean_std, uint8_pixels
from evalxai.data.registry import register

KEYS = ("x_test", "y_test", "x_train", "y_train", "classes")
_NUMPY_GLOBALS = [np.ndarray((0,)).__reduce__()[0], np.float64(1).__reduce__()[0], np.ndarray, np.dtype] + [
    type(np.dtype(t)) for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
                                np.float16, np.float32, np.float64, np.bool_, np.str_)
]


def _nchw(a: np.ndarray, key: str, path) -> tuple[np.ndarray, str]:
    """(N, C, H, W) view of an image array and the layout it was stored in."""
    if a.ndim == 3:
        return a[:, None], "NHW"
    if a.ndim != 4:
        raise ValueError(f"{path}: '{key}' has shape {tuple(a.shape)}; expected (N, C, H, W), (N, H, W, C) or "
                         "(N, H, W)")
    if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        return a.transpose(0, 3, 1, 2), "NHWC"
    return a, "NCHW"


def _check_values(a: np.ndarray, key: str, path) -> None:
    if a.dtype == np.uint8:
        return
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{path}: '{key}' has dtype {a.dtype}; store pixels as uint8 (0..255) or floats in [0, 1]")
    if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
        raise ValueError(
            f"{path}: '{key}' holds float values in [{a.min():.4g}, {a.max():.4g}], outside [0, 1]: store pixel "
            "values (floats in [0, 1] or uint8 0..255) and give the normalisation as dataset.mean / dataset.std"
        )


def _pixels(a: np.ndarray) -> torch.Tensor:
    if a.dtype == np.uint8:
        return uint8_pixels(a)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _labels(a, key: str, n: int | None, path) -> np.ndarray:
    a = np.asarray(a)
    n = (len(a) if a.ndim == 1 else -1) if n is None else n
    if a.ndim != 1 or len(a) != n or not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"{path}: '{key}' must be {n} integer class indices (shape ({n},)), got {a.dtype} "
                         f"{tuple(a.shape)}")
    if n and a.min() < 0:
        raise ValueError(f"{path}: '{key}' holds negative class indices")
    return a.astype(np.int64)


class TensorFileDataset(Dataset):
    """Images and labels from one ``.npz`` / ``.pt`` file (see the module docstring for the layout)."""

    name = "tensors"

    def __init__(self, path, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        if not path:
            raise ValueError("dataset=tensors needs dataset.path=FILE (a .npz or .pt holding x_test and y_test)")
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"dataset.path={path} is not a file: give a .npz or .pt holding x_test and y_test")
        if self.path.suffix.lower() not in (".npz", ".pt", ".pth"):
            raise ValueError(f"dataset.path={path}: expected a .npz or .pt file")
        data = self._read(("x_test", "y_test", "y_train", "classes"))
        unknown = sorted(set(data["_keys"]) - set(KEYS))
        if unknown:
            raise ValueError(f"{self.path} holds unknown key(s) {unknown}: accepted are {list(KEYS)}")
        for key in ("x_test", "y_test"):
            if key not in data:
                raise ValueError(f"{self.path} has no '{key}': it must hold x_test and y_test (and optionally "
                                 "x_train, y_train, classes)")
        if ("x_train" in data["_keys"]) != ("y_train" in data["_keys"]):
            raise ValueError(f"{self.path}: give both x_train and y_train, or neither")
        self.has_train = "x_train" in data["_keys"]
        x, self.layout = _nchw(np.asarray(data["x_test"]), "x_test", self.path)
        _check_values(x, "x_test", self.path)
        self.x_test = x
        self.y_test = _labels(data["y_test"], "y_test", len(x), self.path)
        y_train = None if data.get("y_train") is None else _labels(data["y_train"], "y_train", None, self.path)
        labels = [self.y_test] + ([y_train] if y_train is not None else [])
        top = max(int(a.max()) for a in labels if a.size) if any(a.size for a in labels) else 0
        if "classes" in data:
            self.classes = [str(c) for c in np.asarray(data["classes"]).reshape(-1).tolist()]
            if top >= len(self.classes):
                raise ValueError(f"{self.path}: labels go up to {top} but 'classes' names only {len(self.classes)}")
        else:
            self.classes = [str(c) for c in range(top + 1)]
        if len(x) == 0:
            raise ValueError(f"{self.path}: x_test is empty")
        self.input_shape = tuple(int(s) for s in x.shape[1:])
        self.mean, self.std = parse_mean_std(mean, std, self.input_shape[0])
        self.meta = {
            "source": f"tensors:{self.path.resolve()}", "file": file_signature([self.path]), "layout": self.layout,
            "n_test": len(x), "n_train": None if y_train is None else len(y_train),
            "mean": None if self.mean is None else list(self.mean), "std": None if self.std is None else list(self.std),
        }

    def _read(self, keys) -> dict:
        """The given keys of the file (those present), plus ``_keys``: every key it holds."""
        if self.path.suffix.lower() == ".npz":
            try:
                with np.load(self.path, allow_pickle=False) as f:
                    out = {k: f[k] for k in keys if k in f.files}
                    out["_keys"] = list(f.files)
                    return out
            except ValueError as err:
                raise ValueError(f"cannot read {self.path} without pickle ({err}): store plain numeric arrays "
                                 "(class names as a string array)") from None
        try:
            with torch.serialization.safe_globals(_NUMPY_GLOBALS):
                try:
                    obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as err:
                    if "mmap" not in str(err):
                        raise
                    obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure to unpickle means the same to the user
            raise ValueError(f"cannot load {self.path} with torch.load(weights_only=True) ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}): save a dict of tensors") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{self.path} holds a {type(obj).__name__}; expected a dict with x_test and y_test")
        out = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in obj.items() if k in keys}
        out["_keys"] = list(obj)
        return out

    def __len__(self) -> int:
        return len(self.x_test)

    def test_pixels(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return _pixels(self.x_test[idx]), torch.from_numpy(self.y_test[idx])

    def train_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.has_train:
            raise ValueError(
                f"{self.path} holds no train split (x_train, y_train), which training a model (and the dataset-mean "
                "baseline) needs: give a trained model with model.checkpoint=PATH, or add x_train and y_train"
            )
        data = self._read(("x_train", "y_train"))
        x, _ = _nchw(np.asarray(data["x_train"]), "x_train", self.path)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.path}: x_train images are {tuple(x.shape[1:])}, x_test ones {self.input_shape}")
        _check_values(x, "x_train", self.path)
        y = _labels(data["y_train"], "y_train", len(x), self.path)
        return _pixels(x), torch.from_numpy(y)


@register("tensors")
def load_tensors(path: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 cache_dir: str | Path | None = None) -> Dataset:
    """Arrays from a ``.npz`` / ``.pt`` file: x_test, y_test [, x_train, y_train, classes]."""
    del cache_dir  # the file is read directly
    return TensorFileDataset(path, mean=mean, std=std)
