"""Local datasets written at test time: image folders (lazy, transforms, errors), CIFAR pickles, tensor files."""
import pickle
import pickletools

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image

from evalxai.data import load_dataset

CLASSES = ["cat", "dog", "emu"]


def _image(path, rng, size):
    w, h = size
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, "RGB").save(path)


def _folder(root, rng, per_class=8, classes=CLASSES, start=0):
    """``root/<class>/`` with PNG and JPEG files (mixed case extensions) of mixed sizes."""
    for c in classes:
        for i in range(start, start + per_class):
            ext = (".png", ".jpg", ".JPEG", ".PNG")[i % 4]
            _image(root / c / f"img{i:02d}{ext}", rng, (int(rng.integers(18, 40)), int(rng.integers(18, 40))))
    return root


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("flat"), np.random.default_rng(0))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("split"), np.random.default_rng(1)
    _folder(root / "train", rng, per_class=6)
    _folder(root / "test", rng, per_class=2, classes=CLASSES[:2], start=6)  # no emu in test: classes are the union
    return root


def _resize_crop(path, resize, crop, mode="RGB"):
    """torchvision's Resize(resize) + CenterCrop(crop) + ToTensor, written out with PIL."""
    img = Image.open(path).convert(mode)
    w, h = img.size
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    img = img.resize(size, Image.Resampling.BILINEAR)
    left, top = int(round((size[0] - crop) / 2)), int(round((size[1] - crop) / 2))
    a = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))


def test_image_folder_stratified_resize_crop(flat):
    d = load_dataset("image_folder", root=str(flat), resize=20, crop=16)
    assert d.classes == CLASSES and d.num_classes == 3 and d.input_shape == (3, 16, 16)
    assert len(d) == 5 and len(d.train_files) == 19  # n_test 0.2 of 24, stratified
    assert sorted(set(d.test_files) | set(d.train_files)) == sorted(flat.rglob("img*"))
    x, y = d.test_pixels(np.arange(len(d)))
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert [d.classes[i] for i in y] == [p.parent.name for p in d.test_files]
    assert torch.equal(x[2], _resize_crop(d.test_files[2], 20, 16))
    xt, yt = d.train_pixels()
    assert xt.shape == (19, 3, 16, 16) and np.bincount(np.concatenate([yt.numpy(), y.numpy()])).tolist() == [8, 8, 8]
    again, other = load_dataset("image_folder", root=str(flat), resize=20, crop=16), load_dataset(
        "image_folder", root=str(flat), resize=20, crop=16, split_seed=1)
    assert again.test_files == d.test_files and again.meta == d.meta and other.test_files != d.test_files
    assert load_dataset("image_folder", root=str(flat), image_size=16, n_test=6).meta["n_test"] == 6


def test_image_folder_train_test_folders_and_grayscale(split):
    d = load_dataset("image_folder", root=str(split), image_size=12, channels=1)
    assert d.classes == CLASSES and len(d) == 4 and len(d.train_files) == 18 and d.meta["split"] == "folders:train/test"
    x, y = d.test_items([0, 3])
    assert x.shape == (2, 1, 12, 12) and y.tolist() == [0, 1]
    img = Image.open(d.test_files[3]).convert("L").resize((12, 12), Image.Resampling.BILINEAR)
    assert torch.equal(x[1, 0], torch.from_numpy(np.asarray(img, dtype=np.float32) / 255))
    assert d.train_pixels()[1].tolist() == [0] * 6 + [1] * 6 + [2] * 6
    with pytest.raises(ValueError, match="drop dataset.n_test"):
        load_dataset("image_folder", root=str(split), image_size=12, n_test=2)


def test_image_folder_is_lazy(flat, monkeypatch):
    opened = []
    real_open = PIL.Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(fp)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    d = load_dataset("image_folder", root=str(flat), resize=20, crop=16)
    assert opened == []  # listing only
    d.test_items([0, 1, 2, 3])
    assert len(opened) == 4 and set(opened) == set(d.test_files[:4])
    opened.clear()
    list(d.test_batches(batch_size=2))  # streamed: every test image once
    assert len(opened) == len(d)


def test_undecodable_file_is_named_when_read(split, tmp_path):
    root = tmp_path / "data"
    for p in split.rglob("img*"):
        (root / p.relative_to(split)).parent.mkdir(parents=True, exist_ok=True)
        (root / p.relative_to(split)).write_bytes(p.read_bytes())
    (root / "test" / "dog" / "zz_broken.png").write_bytes(b"not a png at all")
    d = load_dataset("image_folder", root=str(root), image_size=16)  # listing does not read it
    assert d.test_files[-1].name == "zz_broken.png"
    assert d.test_items([0, 1, 2])[0].shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match=r"cannot decode image '.*zz_broken\.png'"):
        d.test_items([1, len(d) - 1])


def test_image_folder_sizes_and_config_errors(flat, tmp_path):
    d = load_dataset("image_folder", root=str(flat))  # no transform: mixed sizes fail when read, naming the file
    with pytest.raises(ValueError, match="set dataset.image_size"):
        d.test_items(np.arange(len(d)))
    same = tmp_path / "same"
    for i in range(4):
        _image(same / CLASSES[i % 2] / f"{i}.bmp", np.random.default_rng(i), (10, 7))
    s = load_dataset("image_folder", root=str(same), n_test=2)
    assert s.input_shape == (3, 7, 10) and s.test_items([0, 1])[0].shape == (2, 3, 7, 10)
    for bad, match in [({"resize": 20}, "together"), ({"resize": 20, "crop": 16, "image_size": 8}, "together"),
                       ({"resize": 16, "crop": 20}, "larger"), ({"channels": 2}, "channels"),
                       ({"image_size": 8, "mean": [0.5] * 3}, "both"), ({"image_size": 8, "mean": [0.5], "std": [1]},
                                                                        "3 finite"),
                       ({"image_size": 0}, "positive"), ({"root": None}, "needs dataset.root")]:
        with pytest.raises(ValueError, match=match):
            load_dataset("image_folder", **{"root": str(flat), **bad})
    lone = tmp_path / "lone"
    _folder(lone / "train", np.random.default_rng(2), per_class=2)
    with pytest.raises(ValueError, match="not both"):
        load_dataset("image_folder", root=str(lone))


def test_image_folder_normalisation_in_model_space(flat):
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.1]
    d = load_dataset("image_folder", root=str(flat), image_size=16, mean=mean, std=std)
    x, _ = d.test_items([0, 1])
    pixels, _ = d.test_pixels([0, 1])
    expected = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(x, expected) and not torch.allclose(x, pixels)
    assert d.meta["mean"] == mean and d.meta["std"] == std
    assert torch.allclose(d.low.flatten(), -torch.tensor(mean) / torch.tensor(std))


# ---- CIFAR ----

def _py2_pickle(obj) -> bytes:
    """Bytes as Python 2's cPickle wrote the CIFAR files: protocol 2, str as BINSTRING, numpy.core paths."""
    data = bytearray(pickle.dumps(obj, protocol=3))
    for op, _, pos in pickletools.genops(bytes(data)):
        if op.name == "PROTO":
            data[pos + 1] = 2
        elif op.name == "SHORT_BINBYTES":
            data[pos] = ord("U")
        elif op.name in ("BINBYTES", "BINUNICODE"):
            data[pos] = ord("T")
    return bytes(data).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _cifar(folder, files, n_classes, labels_key, rng, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for f in files:
        x, y = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, n_classes, n).tolist()
        batches[f] = (x, y)
        (folder / f).write_bytes(_py2_pickle({"batch_label": f, labels_key: y, "data": x,
                                              "filenames": [f"{f}_{i}.png" for i in range(n)]}))
    return batches


def test_cifar10(tmp_path):
    names = [f"data_batch_{i}" for i in range(1, 6)]
    folder = tmp_path / "cifar-10-batches-py"
    b = _cifar(folder, names + ["test_batch"], 10, "labels", np.random.default_rng(0))
    label_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(_py2_pickle({"label_names": label_names, "num_vis": 3072}))
    for root in (tmp_path, folder):  # the parent folder or the batch folder itself
        d = load_dataset("cifar10", root=str(root))
        assert d.classes == label_names and d.input_shape == (3, 32, 32) and len(d) == 4
        x, y = d.test_pixels([1, 3])
        assert y.tolist() == [b["test_batch"][1][1], b["test_batch"][1][3]]
        assert torch.equal(x, torch.from_numpy(b["test_batch"][0][[1, 3]].reshape(2, 3, 32, 32) / np.float32(255)))
    xt, yt = d.train_pixels()
    assert xt.shape == (20, 3, 32, 32) and yt.tolist() == sum((b[n][1] for n in names), [])
    assert torch.equal(xt[4], torch.from_numpy(b["data_batch_2"][0][0].reshape(3, 32, 32) / np.float32(255)))
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3.*cifar-10-batches-py"):
        load_dataset("cifar10", root=str(tmp_path))


def test_cifar100_and_unsafe_pickle(tmp_path):
    b = _cifar(tmp_path, ["train", "test"], 100, "fine_labels", np.random.default_rng(1), n=5)
    fine = [f"class{i:03d}" for i in range(100)]
    (tmp_path / "meta").write_bytes(_py2_pickle({"fine_label_names": fine, "coarse_label_names": ["c"] * 20}))
    d = load_dataset("cifar100", root=str(tmp_path), mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert d.classes == fine and d.num_classes == 100 and len(d) == 5 and d.meta["labels"] == "fine_labels"
    assert d.test_items([0])[1].tolist() == b["test"][1][:1] and d.train_pixels()[0].shape == (5, 3, 32, 32)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "test").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="not allowed"):
        load_dataset("cifar100", root=str(tmp_path))
    with pytest.raises(ValueError, match="needs dataset.root"):
        load_dataset("cifar100")


# ---- tensors ----

def test_tensors_npz_channels_last_uint8(tmp_path):
    rng = np.random.default_rng(0)
    x_test, x_train = rng.integers(0, 256, (6, 8, 9, 3), dtype=np.uint8), rng.integers(0, 256, (10, 8, 9, 3),
                                                                                        dtype=np.uint8)
    path = tmp_path / "data.npz"
    np.savez(path, x_test=x_test, y_test=np.arange(6) % 4, x_train=x_train, y_train=np.arange(10) % 4,
             classes=np.array(["a", "b", "c", "d", "e"]))
    d = load_dataset("tensors", path=str(path), mean=[0.5] * 3, std=[0.5] * 3)
    assert d.input_shape == (3, 8, 9) and d.classes == list("abcde") and d.meta["layout"] == "NHWC" and len(d) == 6
    x, y = d.test_pixels([2, 5])
    assert torch.equal(x, torch.from_numpy(x_test[[2, 5]].transpose(0, 3, 1, 2) / np.float32(255)))
    assert y.tolist() == [2, 1] and torch.allclose(d.test_items([2])[0], x[:1] * 2 - 1)
    xt, yt = d.train_pixels()
    assert xt.shape == (10, 3, 8, 9) and yt.tolist() == (np.arange(10) % 4).tolist()


def test_tensors_pt_channels_first_float(tmp_path):
    x = torch.rand(5, 1, 6, 6)
    path = tmp_path / "data.pt"
    torch.save({"x_test": x, "y_test": torch.tensor([0, 2, 1, 2, 0])}, path)
    d = load_dataset("tensors", path=str(path))
    assert d.input_shape == (1, 6, 6) and d.classes == ["0", "1", "2"] and d.meta["n_train"] is None
    assert torch.equal(d.test_pixels([0, 4])[0], x[[0, 4]])
    with pytest.raises(ValueError, match="model.checkpoint"):
        d.train_pixels()
    np_path = tmp_path / "numpy.pt"  # numpy arrays inside a .pt, (N, H, W) as one channel
    torch.save({"x_test": np.zeros((3, 4, 4), np.uint8), "y_test": np.array([0, 1, 1]),
                "x_train": np.ones((2, 4, 4), np.uint8), "y_train": np.array([1, 0])}, np_path)
    e = load_dataset("tensors", path=str(np_path))
    assert e.input_shape == (1, 4, 4) and float(e.train_pixels()[0].mean()) == pytest.approx(1 / 255)


def test_tensors_errors(tmp_path):
    def save(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return str(tmp_path / name)

    y = np.zeros(2, dtype=np.int64)
    cases = [(save("range.npz", x_test=np.full((2, 1, 4, 4), 2.0), y_test=y), "outside \\[0, 1\\].*dataset.mean"),
             (save("dtype.npz", x_test=np.zeros((2, 1, 4, 4), np.int32), y_test=y), "uint8"),
             (save("nolabels.npz", x_test=np.zeros((2, 1, 4, 4))), "no 'y_test'"),
             (save("extra.npz", x_test=np.zeros((2, 1, 4, 4)), y_test=y, masks=y), "unknown key"),
             (save("half.npz", x_test=np.zeros((2, 1, 4, 4)), y_test=y, x_train=np.zeros((2, 1, 4, 4))), "both"),
             (save("shape.npz", x_test=np.zeros((2, 4)), y_test=y), "expected \\(N, C, H, W\\)"),
             (save("labels.npz", x_test=np.zeros((2, 1, 4, 4)), y_test=np.zeros(3, dtype=np.int64)), "integer class")]
    for path, match in cases:
        with pytest.raises(ValueError, match=match):
            load_dataset("tensors", path=path)
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_dataset("tensors", path=str(tmp_path / "missing.npz"))
    (tmp_path / "corrupt.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="weights_only"):
        load_dataset("tensors", path=str(tmp_path / "corrupt.pt"))
