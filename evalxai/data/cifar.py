"""``cifar10`` / ``cifar100``: the python-version batch files as the CIFAR authors distribute them, read locally.

CIFAR-10: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta`` (``label_names``); CIFAR-100:
``train``, ``test``, ``meta`` (``fine_label_names``; labels ``fine_labels``). ``root`` is the folder holding them
or the folder above it (holding ``cifar-10-batches-py`` / ``cifar-100-python``). The pickles are read with an
unpickler that admits only numpy arrays besides plain containers; the train files are read only by
``train_pixels``.
"""
from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from evalxai.data.base import Dataset, file_signature, parse_mean_std, uint8_pixels
from evalxai.data.registry import register

SPECS = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "names": b"label_names", "labels": b"labels"},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "names": b"fine_label_names", "labels": b"fine_labels"},
}
_NUMPY = {"_reconstruct": np.ndarray((0,)).__reduce__()[0], "scalar": np.float64(1).__reduce__()[0],
          "ndarray": np.ndarray, "dtype": np.dtype}
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _Unpickler(pickle.Unpickler):
    """Admits numpy arrays and nothing else that needs a global (no code runs from the file)."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _NUMPY[name]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch file")


def read_batch(path: Path) -> dict:
    """One CIFAR pickle as a dict with bytes keys."""
    try:
        with open(path, "rb") as fh:
            out = _Unpickler(fh, encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a CIFAR batch
        raise ValueError(f"cannot read CIFAR file '{path}' ({type(err).__name__}: {err}): re-download the "
                         "python version") from None
    if not isinstance(out, dict):
        raise ValueError(f"CIFAR file '{path}' holds a {type(out).__name__}, not a dict")
    return out


def _layout(name: str) -> str:
    s = SPECS[name]
    return f"{s['folder']}/{{{', '.join(s['train'] + s['test'] + [s['meta']])}}}"


def _find_folder(name: str, root) -> Path:
    spec = SPECS[name]
    if not root:
        raise ValueError(f"dataset={name} needs dataset.root=DIR, the folder holding {_layout(name)}")
    root = Path(root).expanduser()
    folder = root / spec["folder"] if (root / spec["folder"]).is_dir() else root
    for f in spec["train"] + spec["test"] + [spec["meta"]]:
        if not (folder / f).is_file():
            raise FileNotFoundError(f"dataset.root={root}: missing CIFAR file '{folder / f}'; expected the python "
                                    f"version as distributed: {_layout(name)} (root may be either folder)")
    return folder


class CifarDataset(Dataset):
    """CIFAR-10 or CIFAR-100 from local batch files; 3 x 32 x 32 images."""

    def __init__(self, name: str, root, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.name, self.spec = name, SPECS[name]
        self.folder = _find_folder(name, root)
        names = read_batch(self.folder / self.spec["meta"]).get(self.spec["names"])
        if names is None:
            raise ValueError(f"'{self.folder / self.spec['meta']}' has no {self.spec['names'].decode()!r}")
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.x_test, self.y_test = self._read(self.spec["test"])
        self.input_shape = (3, 32, 32)
        self.mean, self.std = parse_mean_std(mean, std, 3)
        files = [self.folder / f for f in self.spec["train"] + self.spec["test"] + [self.spec["meta"]]]
        self.meta = {"source": f"{name}:{self.folder.resolve()}", "files": file_signature(files, self.folder),
                     "n_test": len(self.y_test), "labels": self.spec["labels"].decode(),
                     "mean": None if self.mean is None else list(self.mean),
                     "std": None if self.std is None else list(self.std)}

    def _read(self, files) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            path = self.folder / f
            d = read_batch(path)
            if b"data" not in d or self.spec["labels"] not in d:
                raise ValueError(f"CIFAR file '{path}' lacks b'data' or {self.spec['labels']!r}")
            x, y = np.asarray(d[b"data"]), np.asarray(d[self.spec["labels"]], dtype=np.int64)
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
                raise ValueError(f"CIFAR file '{path}': data is {x.dtype} {x.shape} for {len(y)} labels; expected "
                                 "uint8 (N, 3072)")
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"CIFAR file '{path}': labels outside 0..{len(self.classes) - 1}")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    def __len__(self) -> int:
        return len(self.y_test)

    def test_pixels(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return uint8_pixels(self.x_test[idx]), torch.from_numpy(self.y_test[idx])

    def train_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._read(self.spec["train"])
        return uint8_pixels(x), torch.from_numpy(y)


@register("cifar10")
def load_cifar10(root: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 cache_dir: str | Path | None = None) -> Dataset:
    """CIFAR-10 (python version) from ``root``."""
    del cache_dir  # small files, read directly
    return CifarDataset("cifar10", root, mean=mean, std=std)


@register("cifar100")
def load_cifar100(root: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  cache_dir: str | Path | None = None) -> Dataset:
    """CIFAR-100 (python version, fine labels) from ``root``."""
    del cache_dir
    return CifarDataset("cifar100", root, mean=mean, std=std)
