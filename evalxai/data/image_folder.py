"""``image_folder``: local images laid out ``root/<class>/*.png`` as torchvision's ImageFolder, read lazily.

Classes are the sorted class-folder names (hidden folders skipped); files are found recursively with the
extensions ``EXTENSIONS`` (any case), in ImageFolder's order: by class, then sorted ``os.walk`` folders, then sorted
names. If ``root/train`` and ``root/test`` (or ``root/val``) exist they are the splits (classes: the sorted union);
otherwise all files are split stratified by ``split_seed`` with ``n_test`` (count or fraction, default 0.2).

Transform (Pillow): convert to ``L`` (channels=1) or ``RGB`` (channels=3), then ``resize`` (shorter side, bilinear)
and centre ``crop`` as torchvision's Resize(resize) + CenterCrop(crop), or ``image_size`` (bilinear square
resize), or nothing when every image has one size; then x / 255. Building the dataset only lists files (with
stat); an image is decoded when its index is asked for, the train split only by ``train_pixels``.

Ground-truth masks (``masks=DIR``): a folder parallel to ``root`` holding one mask per test image at the same
relative path (``DIR/<class>/<name>.png``, or the image's own file name), any mode; nonzero = relevant. A mask goes
through the image's geometry (same resize / crop / square resize, nearest-neighbour so that it stays binary) and
must end up the image's size. Only the masks of the explained images are decoded.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evalxai.data.base import Dataset, file_signature, parse_mean_std, stratified_split, uint8_pixels

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
_THREADS = min(8, os.cpu_count() or 1)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    """Image files below ``folder`` in ImageFolder's order."""
    out = []
    for dirpath, _, names in sorted(os.walk(folder, followlinks=True)):
        out += [Path(dirpath) / n for n in sorted(names) if n.lower().endswith(EXTENSIONS)]
    return out


def _listing(folder: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for i, c in enumerate(classes):
        found = _images(folder / c) if (folder / c).is_dir() else []
        files += found
        labels += [i] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _positive_int(value, what: str):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"dataset.{what}={value!r} must be a positive integer (pixels) or null")
    return value


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision's CenterCrop offsets: round((W - size) / 2), round((H - size) / 2)."""
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int): the shorter side becomes ``size``, the longer int(size * long / short)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


class ImageFolderDataset(Dataset):
    """A folder of class subfolders of images (see the module docstring)."""

    name = "image_folder"

    def __init__(self, root, n_test=None, split_seed: int = 0, resize=None, crop=None, image_size=None,
                 channels: int = 3, mean=None, std=None, masks=None):
        if not root:
            raise ValueError("dataset=image_folder needs dataset.root=DIR, laid out DIR/<class>/*.png "
                             "(or DIR/train/<class>/..., DIR/test/<class>/...)")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset.root={root} is not a folder")
        self.resize, self.crop = _positive_int(resize, "resize"), _positive_int(crop, "crop")
        self.image_size = _positive_int(image_size, "image_size")
        if (self.resize is None) != (self.crop is None) or (self.resize and self.image_size):
            raise ValueError("set dataset.resize and dataset.crop together (shorter side, then centre crop), or "
                             "dataset.image_size alone (square resize), or none of them when all images share a size")
        if self.crop and self.crop > self.resize:
            raise ValueError(f"dataset.crop={crop} is larger than dataset.resize={resize}")
        if channels not in (1, 3):
            raise ValueError(f"dataset.channels={channels!r} must be 1 (grayscale) or 3 (RGB)")
        self.channels = channels
        self._list(n_test, split_seed)
        if self.image_size:
            h = w = self.image_size
        elif self.crop:
            h = w = self.crop
        else:  # no transform: the first test image's header gives the size every image must have
            path = self.test_files[0]
            try:
                with Image.open(path) as img:
                    w, h = img.size
            except Exception as err:  # noqa: BLE001 - any failure to read the header names the file
                raise ValueError(f"cannot decode image '{path}': {err}") from err
        self.input_shape = (channels, h, w)
        self.mean, self.std = parse_mean_std(mean, std, channels)
        self.mask_files = self._mask_files(masks) if masks else None
        if self.mask_files is not None:
            self.mask_meta = {"root": str(Path(masks).expanduser().resolve()),
                              "files": file_signature(self.mask_files, Path(masks).expanduser()),
                              "marks": "nonzero pixels of the mask files"}
        self.meta.update({
            "transform": {"channels": channels, "resize": self.resize, "crop": self.crop,
                          "image_size": self.image_size, "interpolation": "bilinear"},
            "mean": None if self.mean is None else list(self.mean), "std": None if self.std is None else list(self.std),
        })

    def _list(self, n_test, split_seed) -> None:
        """Find the files and the split; nothing is decoded."""
        test_dir = next((self.root / s for s in ("test", "val") if (self.root / s).is_dir()), None)
        split_folders = (self.root / "train").is_dir() and test_dir is not None
        if split_folders:
            if n_test is not None:
                raise ValueError(f"dataset.root={self.root} has train/ and {test_dir.name}/ folders, which are the "
                                 "split: drop dataset.n_test")
            self.classes = sorted(set(_class_dirs(self.root / "train")) | set(_class_dirs(test_dir)))
            self.train_files, self.y_train = _listing(self.root / "train", self.classes)
            self.test_files, self.y_test = _listing(test_dir, self.classes)
            split = {"split": f"folders:train/{test_dir.name}"}
        else:
            lone = [s for s in ("train", "test", "val") if (self.root / s).is_dir() and _class_dirs(self.root / s)]
            if lone:
                raise ValueError(f"dataset.root={self.root} has a {lone[0]}/ folder of class folders but not both "
                                 "train/ and test/ (or val/): add the other split, or point dataset.root at one "
                                 "folder of class folders to split it by dataset.split_seed")
            self.classes = _class_dirs(self.root)
            files, labels = _listing(self.root, self.classes)
            if len(files) < 2:
                raise ValueError(f"dataset.root={self.root} holds {len(files)} image(s) in class folders; expected "
                                 f"DIR/<class>/*.{{png,jpg,jpeg,bmp,webp}}")
            train, test = stratified_split(labels, 0.2 if n_test is None else n_test, split_seed)
            self.train_files, self.y_train = [files[i] for i in train], labels[train]
            self.test_files, self.y_test = [files[i] for i in test], labels[test]
            split = {"split": "stratified-v1", "split_seed": split_seed}
        if not self.classes:
            raise ValueError(f"dataset.root={self.root} has no class folders: expected DIR/<class>/*.png")
        counts = np.bincount(np.concatenate([self.y_train, self.y_test]), minlength=len(self.classes))
        if (counts == 0).any():
            empty = [c for c, n in zip(self.classes, counts) if n == 0]
            raise ValueError(f"dataset.root={self.root}: class folder(s) {empty} hold no image files "
                             f"(extensions {', '.join(EXTENSIONS)})")
        if not self.test_files:
            raise ValueError(f"dataset.root={self.root}: the test split holds no images")
        self.meta = {"source": f"image_folder:{self.root.resolve()}", **split, "n_train": len(self.train_files),
                     "n_test": len(self.test_files),
                     "files": file_signature(sorted(self.train_files + self.test_files), self.root)}

    def _mask_files(self, masks) -> list[Path]:
        """The mask file of every test image: DIR/<relative path with .png>, else DIR/<relative path>."""
        folder = Path(masks).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset.masks={masks} is not a folder: give the folder of PNG masks laid out "
                                    "like dataset.root (same relative paths)")
        out, missing = [], []
        for f in self.test_files:
            rel = f.relative_to(self.root)
            found = next((c for c in (folder / rel.with_suffix(".png"), folder / rel) if c.is_file()), None)
            out.append(found)
            if found is None:
                missing.append(str(folder / rel.with_suffix(".png")))
        if missing:
            raise FileNotFoundError(f"dataset.masks={masks}: no mask for {len(missing)} test image(s), e.g. "
                                    f"{missing[:3]}: put one PNG per test image at the image's relative path")
        return out

    def _geometry(self, img: Image.Image, path: Path, resample) -> Image.Image:
        """The configured resize / crop (or the size check) applied to one decoded image or mask."""
        if self.image_size:
            img = img.resize((self.image_size, self.image_size), resample)
        elif self.resize:
            img = img.resize(shorter_side_size(*img.size, self.resize), resample)
            img = img.crop(center_crop_box(*img.size, self.crop))
        elif img.size != (self.input_shape[2], self.input_shape[1]):
            raise ValueError(f"image '{path}' is {img.size[0]}x{img.size[1]} but '{self.test_files[0]}' is "
                             f"{self.input_shape[2]}x{self.input_shape[1]}: set dataset.image_size=N, or "
                             "dataset.resize and dataset.crop")
        return img

    def _decode(self, path: Path) -> np.ndarray:
        """One image, transformed, as uint8 (C, H, W)."""
        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if self.channels == 3 else "L")
        except Exception as err:  # noqa: BLE001 - any decoding failure names the file
            raise ValueError(f"cannot decode image '{path}': {err}") from err
        a = np.asarray(self._geometry(img, path, Image.Resampling.BILINEAR), dtype=np.uint8)
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    def _decode_mask(self, path: Path) -> np.ndarray:
        """One mask as bool (H, W): nonzero in any band is relevant; geometry as the images, nearest-neighbour."""
        try:
            with Image.open(path) as img:
                a = np.asarray(img)
                img = Image.fromarray((a.reshape(a.shape[0], a.shape[1], -1) != 0).any(-1).astype(np.uint8) * 255)
        except Exception as err:  # noqa: BLE001 - any decoding failure names the file
            raise ValueError(f"cannot decode mask '{path}': {err}") from err
        return np.asarray(self._geometry(img, path, Image.Resampling.NEAREST)) != 0

    @property
    def has_masks(self) -> bool:
        return self.mask_files is not None

    @property
    def masks_test(self):
        """Every test mask (N, H, W) bool (decoded on first use), or None without ``masks=DIR``."""
        if self.mask_files is None:
            return None
        if "_masks_test" not in self.__dict__:
            self._masks_test = self.test_masks(np.arange(len(self)))
        return self._masks_test

    def test_masks(self, indices):
        if self.mask_files is None:
            return None
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"test index out of range for {len(self)} images")
        if not idx.size:
            return torch.zeros((0, *self.input_shape[1:]), dtype=torch.bool)
        return torch.from_numpy(np.stack([self._decode_mask(self.mask_files[i]) for i in idx]))

    def _read(self, files: list[Path]) -> torch.Tensor:
        if not files:
            return torch.zeros((0, *self.input_shape))
        if len(files) >= 16 and _THREADS > 1:
            with ThreadPoolExecutor(_THREADS) as pool:
                arrays = list(pool.map(self._decode, files))
        else:
            arrays = [self._decode(f) for f in files]
        return uint8_pixels(np.stack(arrays))

    def __len__(self) -> int:
        return len(self.test_files)

    def test_pixels(self, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"test index out of range for {len(self)} images")
        return self._read([self.test_files[i] for i in idx]), torch.from_numpy(self.y_test[idx])

    def train_pixels(self):
        if not self.train_files:
            raise ValueError(f"dataset.root={self.root} has no train images: training a model needs them; give a "
                             "trained model with model.checkpoint=PATH")
        return self._read(self.train_files), torch.from_numpy(self.y_train)

    def train_labels(self):
        return self.y_train

    def train_items(self, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        x = self._read([self.train_files[i] for i in idx])
        return self.normalize(x), torch.from_numpy(self.y_train[idx])


def load_image_folder(root: str | None = None, n_test=None, split_seed: int = 0, resize=None, crop=None,
                      image_size=None, channels: int = 3, mean=None, std=None, masks=None,
                      cache_dir=None) -> Dataset:
    """Images from ``root/<class>/...`` (see ``ImageFolderDataset``), decoded only when read."""
    del cache_dir  # decoded images are not cached
    return ImageFolderDataset(root, n_test=n_test, split_seed=split_seed, resize=resize, crop=crop,
                              image_size=image_size, channels=channels, mean=mean, std=std, masks=masks)
