"""``image_folder``: local images laid out ``root/<class>/*.png`` as torchvision's ImageFolder, read lazily.

Classes are the sorted class-folder names (hidden folders skipped); files are found recursively with the
extensions ``EXTENSIONS`` (any case), in ImageFolder's order: by class, then sorted ``os.walk`` folders, then sorted
names. If ``root/train`` and ``root/test`` (or ``root/val``) exist they are the splits (classes: the sorted union);
otherwise all files are split stratified by ``split_seed`` with ``n_test`` (count or fraction, default 0.2).

Pixels: every mode Pillow opens is read to [0, 1]. 8-bit modes as torchvision's ImageFolder does: Pillow's
``convert("RGB")`` (channels=3) or ``convert("L")`` (channels=1, ITU-R 601-2 luma), so a palette is resolved, ``1``
is 0 / 1, CMYK / YCbCr / LAB / HSV become RGB and alpha is dropped (not composited), then x / 255. High-depth
modes: ``I;16`` / ``I;16B`` / ... x / 65535; ``I`` x / (2^bits - 1) with the bits a TIFF declares (signed:
2^(bits-1) - 1), else x / 65535 (Pillow opens 16-bit PGMs, scaled to 65535, and in older versions 16-bit PNGs as
``I``); ``F`` as it is. Values outside [0, 1] after that are refused, naming the file; grey high-depth images are
repeated over 3 channels. (Pillow itself reads 16-bit RGB PNGs as 8-bit RGB.)

Transform (Pillow): ``resize`` (shorter side, bilinear) and centre ``crop`` as torchvision's Resize(resize) +
CenterCrop(crop), or ``image_size`` (bilinear square resize), or nothing when every image has one size; 8-bit
images are resized as uint8 before x / 255 (as torchvision), high-depth ones in float. Building the dataset only
lists files (with stat); an image is decoded when its index is asked for, the train split only by ``train_pixels``.

Ground-truth masks (``masks=DIR``): a folder parallel to ``root`` holding one mask per test image at the same
relative path (``DIR/<class>/<name>.png``, or the image's own file name), in any mode above. A mask pixel is
relevant when its colour is nonzero: the palette resolved (with its transparency), any of R, G, B (i.e. luminance)
for colour, the value for grey, ``1``, 16-bit, ``I`` and ``F`` masks. Alpha counts only where it varies: with a
constant alpha (an opaque RGBA / LA / PA mask) the colour alone decides; with a varying alpha the transparent
(alpha 0) pixels are not relevant and the visible ones are relevant when their colour is nonzero, or all of them
when the visible pixels share one colour (an alpha-coded mask, e.g. black strokes on a transparent canvas). So the
same drawing saved as L, RGB, 1, RGBA, LA, P, I;16, I or F gives the same mask. A mask goes through the image's
geometry (same resize / crop / square resize, nearest-neighbour so that it stays binary) and must end up the
image's size. Only the masks of the explained images are decoded.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evalxai.data.base import Dataset, file_signature, parse_mean_std, stratified_split
from evalxai.data.registry import register

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
_THREADS = min(8, os.cpu_count() or 1)


def _full_scale(img: Image.Image) -> int:
    """The value that reads as 1.0 in an ``I`` / ``I;16*`` image (see the module docstring)."""
    if img.mode == "I" and img.format == "TIFF":
        bits, fmt = (img.tag_v2.get(258) or (32,))[0], (img.tag_v2.get(339) or (1,))[0]
        return 2 ** (bits - 1) - 1 if fmt == 2 else 2 ** bits - 1
    return 65535


def _unit_image(path: Path, mode: str, what: str) -> Image.Image:
    """The file as a Pillow image scaled to [0, 1]: 8-bit modes converted to ``mode`` ('L', 'RGB' or 'RGBA';
    values / 255), high-depth ones (``I;16*``, ``I``, ``F``) as mode F in [0, 1] (see the module docstring)."""
    try:
        with Image.open(path) as img:
            img.load()
    except Exception as err:  # noqa: BLE001 - any decoding failure names the file
        raise ValueError(f"cannot decode {what} '{path}': {err}") from err
    src = img.mode
    if src.startswith("I") or src == "F":
        a, top = np.asarray(img, dtype=np.float64), 1 if src == "F" else _full_scale(img)
        if not (0 <= a.min() and a.max() <= top):  # NaN fails too
            fix = "rescale it to [0, 1]" if src == "F" else f"keep its values in [0, {top}]"
            raise ValueError(f"{what} '{path}' is mode {src} with values in [{a.min():g}, {a.max():g}], not "
                             f"[0, {top}]: {fix}, or save it as an 8- or 16-bit PNG")
        return Image.fromarray((a / top).astype(np.float32), "F")
    try:
        if src not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, HSV, RGBX, RGBa, La
            img = img.convert("RGBA" if src.endswith(("A", "a")) else "RGB")
        return img.convert(mode)
    except Exception as err:  # noqa: BLE001 - a mode Pillow cannot convert names the file
        raise ValueError(f"cannot convert {what} '{path}' of mode {src} to {mode} ({err}): save it as an RGB or "
                         "grey PNG") from err


def _marked(a: np.ndarray) -> np.ndarray:
    """Relevant pixels (H, W) bool of a mask's RGBA values (H, W, 4) or value (H, W) (module docstring's rule)."""
    if a.ndim == 2:
        return a != 0
    colour, alpha = a[..., :3], a[..., 3]
    if alpha.min() == alpha.max():
        return colour.any(-1)
    seen = alpha > 0
    visible = colour[seen]
    return seen & (colour.any(-1) | (visible == visible[0]).all())


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
                 channels: int = 3, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 masks=None):
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
                              "marks": "nonzero colour of the mask files (palette resolved; alpha where it "
                                       "varies, see evalxai.data.image_folder)"}
        self.meta.update({
            "transform": {"channels": channels, "resize": self.resize, "crop": self.crop,
                          "image_size": self.image_size, "interpolation": "bilinear",
                          "scale": "8-bit / 255, 16-bit / 65535, I by its declared depth, F as is"},
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
        """One image, transformed, as float32 (C, H, W) in [0, 1]."""
        img = self._geometry(_unit_image(path, "RGB" if self.channels == 3 else "L", "image"), path,
                             Image.Resampling.BILINEAR)
        a = np.asarray(img, dtype=np.float32)
        if img.mode == "F":
            return np.repeat(a[None], self.channels, 0)
        a /= np.float32(255)  # as torchvision's ToTensor
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    def _decode_mask(self, path: Path) -> np.ndarray:
        """One mask as bool (H, W) by the module docstring's rule; geometry as the images, nearest-neighbour."""
        img = _unit_image(path, "RGBA", "mask")
        marked = _marked(np.asarray(img))
        return np.asarray(self._geometry(Image.fromarray(marked.astype(np.uint8) * 255), path,
                                         Image.Resampling.NEAREST)) != 0

    @property
    def has_masks(self) -> bool:
        return self.mask_files is not None

    @property
    def masks_test(self) -> torch.Tensor | None:
        """Every test mask (N, H, W) bool (decoded on first use), or None without ``masks=DIR``."""
        if self.mask_files is None:
            return None
        if "_masks_test" not in self.__dict__:
            self._masks_test = self.test_masks(np.arange(len(self)))
        return self._masks_test

    def test_masks(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor | None:
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
        return torch.from_numpy(np.stack(arrays))

    def __len__(self) -> int:
        return len(self.test_files)

    def test_pixels(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"test index out of range for {len(self)} images")
        return self._read([self.test_files[i] for i in idx]), torch.from_numpy(self.y_test[idx])

    def train_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.train_files:
            raise ValueError(f"dataset.root={self.root} has no train images: training a model needs them; give a "
                             "trained model with model.checkpoint=PATH")
        return self._read(self.train_files), torch.from_numpy(self.y_train)

    def train_labels(self) -> np.ndarray:
        return self.y_train

    def train_items(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        x = self._read([self.train_files[i] for i in idx])
        return self.normalize(x), torch.from_numpy(self.y_train[idx])


@register("image_folder", masks=lambda params: bool(params.get("masks")))
def load_image_folder(root: str | None = None, n_test: int | float | None = None, split_seed: int = 0,
                      resize: int | None = None, crop: int | None = None, image_size: int | None = None,
                      channels: int = 3, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      masks: str | None = None, cache_dir: str | Path | None = None) -> Dataset:
    """Images from ``root/<class>/...`` (see ``ImageFolderDataset``), decoded only when read."""
    del cache_dir  # decoded images are not cached
    return ImageFolderDataset(root, n_test=n_test, split_seed=split_seed, resize=resize, crop=crop,
                              image_size=image_size, channels=channels, mean=mean, std=std, masks=masks)
