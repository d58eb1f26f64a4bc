"""Datasets: shapes, ranges, split determinism and stratification, IDX reading, the array cache, errors."""
import time

import numpy as np
import pytest
import torch

from evalxai.data import load_dataset
from evalxai.data.mnist import read_idx


@pytest.mark.slow
def test_bundled_mnist_shapes_ranges_and_split(cache_dir):
    d = load_dataset("mnist", cache_dir=cache_dir)
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    assert np.bincount(d.y_test.numpy()).tolist() == [100] * 10  # stratified
    assert np.bincount(d.y_train.numpy()).tolist() == [400] * 10
    train = {t.numpy().tobytes() for t in d.x_train[:200]}
    assert not any(t.numpy().tobytes() in train for t in d.x_test)  # disjoint


def test_split_is_deterministic_and_seeded(cache_dir):
    a = load_dataset("mnist", cache_dir=cache_dir)
    b = load_dataset("mnist", cache_dir=cache_dir)
    c = load_dataset("mnist", cache_dir=cache_dir, split_seed=1)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)


def test_second_load_is_fast(cache_dir):
    load_dataset("mnist", cache_dir=cache_dir)
    t0 = time.perf_counter()
    load_dataset("mnist", cache_dir=cache_dir)
    assert time.perf_counter() - t0 < 1.0


def test_digits(cache_dir):
    d = load_dataset("digits", cache_dir=cache_dir)
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.x_test) == 360
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) == 1.0


def write_idx(path, arr: np.ndarray):
    header = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_idx_loading_from_local_folder(tmp_path, cache_dir):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (30, 28, 28)), "t10k": rng.integers(0, 256, (10, 28, 28))}
    labels = {"train": rng.integers(0, 10, 30), "t10k": rng.integers(0, 10, 10)}
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", images[split])
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels[split])
    d = load_dataset("mnist", cache_dir=cache_dir, root=str(tmp_path))
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_test.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(d.x_test[:, 0].numpy() * 255, images["t10k"], atol=1e-3)
    assert d.y_train.tolist() == labels["train"].tolist()
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte").shape == (10,)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", 255 - images["t10k"])  # other pixels, same size: a new identity
    assert load_dataset("mnist", cache_dir=cache_dir, root=str(tmp_path)).fingerprint() != d.fingerprint()


def test_idx_errors(tmp_path, cache_dir):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", cache_dir=cache_dir, root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_dataset("mnist", cache_dir=cache_dir, root=str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)


def test_unknown_dataset_lists_names():
    with pytest.raises(KeyError, match="digits"):
        load_dataset("cifar")
