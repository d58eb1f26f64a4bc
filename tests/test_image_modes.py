"""image_folder reads every Pillow mode: one drawing saved as mask in each mode gives one mask, and a 16-bit, 32-bit
or float image reads as the same [0, 1] pixels as its 8-bit equivalent (issue 26, items 5 and 6)."""
import numpy as np
import pytest
import torch
from PIL import Image

import evalxai
from evalxai.data import load_dataset

H = W = 32


def _drawing() -> np.ndarray:
    """A disc and a rectangle on a 32 x 32 canvas, bool (H, W)."""
    yy, xx = np.mgrid[:H, :W]
    d = (yy - 18) ** 2 + (xx - 12) ** 2 <= 7 ** 2
    d[3:8, 20:30] = True
    return d


def _rgba(colour, alpha) -> Image.Image:
    return Image.fromarray(np.dstack([*np.broadcast_arrays(*colour), alpha]).astype(np.uint8), "RGBA")


def _i16b(a: np.ndarray) -> Image.Image:
    return Image.frombytes("I;16B", (a.shape[1], a.shape[0]), a.astype(">u2").tobytes())


def _mask_files(d: np.ndarray) -> dict[str, Image.Image | tuple[str, np.ndarray]]:
    """The drawing ``d`` saved as a mask in every mode, by file name."""
    u8, z = d.astype(np.uint8), np.zeros((H, W), np.uint8)
    opaque = np.full((H, W), 255, np.uint8)
    pal = Image.fromarray(np.where(d, 0, 1).astype(np.uint8), "P")  # index 0 = drawn = white, index 1 = black
    pal.putpalette([255, 255, 255, 0, 0, 0])
    trns = Image.fromarray(u8, "P")  # a black drawing on a transparent black canvas: only the alpha marks it
    trns.putpalette([0, 0, 0, 0, 0, 0])
    trns.info["transparency"] = 0
    frame = np.zeros((H, W), bool)
    frame[2:-2, 2:-2] = True  # a transparent border around an opaque black canvas with the white drawing
    return {
        "L.png": Image.fromarray(u8 * 255, "L"),
        "L7.png": Image.fromarray(u8 * 7, "L"),
        "RGB.png": Image.fromarray(np.dstack([u8 * 255, z, z]), "RGB"),
        "1.png": Image.fromarray(u8 * 255, "L").convert("1"),
        "RGBA.png": _rgba((u8 * 255, u8 * 128, z), opaque),
        "LA.png": Image.fromarray(np.dstack([u8 * 255, opaque]), "LA"),
        "P.png": pal,
        "P_adaptive.png": Image.fromarray(np.dstack([u8 * 200, u8 * 30, u8 * 9]), "RGB").convert("P"),
        "RGBA_alpha.png": _rgba((z, z, z), u8 * 255),  # one colour, the alpha is the mask
        "LA_alpha.png": Image.fromarray(np.dstack([z + 90, u8 * 200]), "LA"),
        "RGBA_white_under.png": _rgba((~d * 255,) * 3, u8 * 255),  # black strokes over transparent white
        "RGBA_frame.png": _rgba((u8 * 255,) * 3, frame * 255),
        "P_trns.png": trns,
        "I16.png": Image.fromarray(d.astype(np.uint16) * 65535),
        "I16B.tif": _i16b(d.astype(np.uint16) * 300),
        "I.pgm": Image.fromarray(d.astype(np.uint16) * 65535),  # Pillow reads a 16-bit PGM as mode I
        "I32.tif": Image.fromarray(d.astype(np.int32) * 100000),
        "F.tif": Image.fromarray(d.astype(np.float32)),
    }


@pytest.fixture
def mask_folder(tmp_path):
    """root/{train,test}/x/<name> (random grey images) and masks/test/x/<name>: the drawing in every mode."""
    d, g = _drawing(), np.random.default_rng(0)
    root, mroot = tmp_path / "imgs", tmp_path / "masks"
    for sub in ("train/x", "test/x"):
        (root / sub).mkdir(parents=True)
    (mroot / "test/x").mkdir(parents=True)
    Image.fromarray(g.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "train/x/a.png")
    files = _mask_files(d)
    for name, img in files.items():
        Image.fromarray(g.integers(0, 256, (H, W), dtype=np.uint8)).save(root / "test/x" / name)
        img.save(mroot / "test/x" / name)
    return root, mroot, files


def test_one_drawing_in_every_mode_is_one_mask(mask_folder):
    root, mroot, files = mask_folder
    d = load_dataset("image_folder", root=str(root), masks=str(mroot))
    modes = {f.name: Image.open(mroot / "test/x" / f.name).mode for f in d.test_files}
    assert set(modes.values()) >= {"L", "RGB", "1", "RGBA", "LA", "P", "I;16", "I;16B", "I", "F"}, modes
    want = torch.from_numpy(_drawing())
    share = {f.name: float(m.float().mean()) for f, m in zip(d.test_files, d.masks_test)}
    assert share == {name: pytest.approx(float(want.float().mean())) for name in files}, share
    for f, m in zip(d.test_files, d.masks_test):
        assert torch.equal(m, want), f"{f.name} ({modes[f.name]})"
    # resized: every mode still gives one mask (nearest-neighbour on the decoded mask)
    small = load_dataset("image_folder", root=str(root), masks=str(mroot), image_size=16).masks_test
    assert all(torch.equal(m, small[0]) for m in small) and 0.1 < float(small[0].float().mean()) < 0.3


def test_relevance_mass_accuracy_of_an_opaque_rgba_mask_is_that_of_its_l_mask(mask_folder):
    root, mroot, _ = mask_folder
    d = load_dataset("image_folder", root=str(root), masks=str(mroot))
    names = [f.name for f in d.test_files]
    idx = [names.index("L.png"), names.index("RGBA.png"), names.index("P.png")]
    x, y = d.test_pixels(idx)
    r = torch.ones_like(x) + 3 * torch.from_numpy(_drawing()).float()  # 4x the relevance on the drawing
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * H * W, 2)).eval()
    rma = evalxai.score(model, x, y, r, metric="relevance_mass_accuracy", masks=d.test_masks(idx))["value"]
    n = _drawing().sum()
    assert rma.tolist() == pytest.approx([4 * n / (H * W + 3 * n)] * 3)


# ---------------------------------------------------------------- pixels


def _gradient16() -> np.ndarray:
    return np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)


@pytest.fixture
def pixel_folder(tmp_path):
    """The 16-bit gradient saved as 8-bit L, I;16 PNG, I;16B TIFF, I (16-bit PGM), I (32-bit TIFF), F TIFF."""
    a = _gradient16()
    root = tmp_path / "imgs"
    for sub in ("train/x", "test/x"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "train/x/a.png")
    t = root / "test/x"
    Image.fromarray((a / 257).round().astype(np.uint8)).save(t / "0_L8.png")
    Image.fromarray(a).save(t / "1_I16.png")
    _i16b(a).save(t / "2_I16B.tif")
    Image.fromarray(a).save(t / "3_I.pgm")
    Image.fromarray((a / 65535 * (2 ** 31 - 1)).round().astype(np.int32)).save(t / "4_I32.tif")  # declares 32 bits
    Image.fromarray((a / 65535).astype(np.float32)).save(t / "5_F.tif")
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_high_bit_depth_images_read_as_their_8_bit_equivalent(pixel_folder, channels):
    d = load_dataset("image_folder", root=str(pixel_folder), channels=channels)
    assert [Image.open(f).mode for f in d.test_files] == ["L", "I;16", "I;16B", "I", "I", "F"]
    x, _ = d.test_pixels(range(6))
    want = torch.from_numpy(_gradient16() / 65535).float().expand(channels, H, W)
    assert x.shape == (6, channels, H, W)
    assert (x[0] - want).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit
    for k in range(1, 6):
        assert (x[k] - want).abs().max() <= 1 / 65535, d.test_files[k].name
    # resized (bilinear): the high-depth reads stay within rounding of the 8-bit read
    x, _ = load_dataset("image_folder", root=str(pixel_folder), channels=channels, image_size=20).test_pixels(range(6))
    assert 0.4 < float(x[0].mean()) < 0.6
    for k in range(1, 6):
        assert (x[k] - x[0]).abs().max() <= 1 / 255 + 1e-6


def test_8_bit_modes_read_as_torchvision_does(tmp_path):
    """L, RGB, RGBA (alpha dropped), LA, P (palette resolved), 1 and CMYK: Pillow's convert('RGB' / 'L') / 255."""
    g = np.random.default_rng(0)
    rgb = Image.fromarray(g.integers(0, 256, (H, W, 3), dtype=np.uint8))
    root = tmp_path / "imgs"
    for sub in ("train/x", "test/x"):
        (root / sub).mkdir(parents=True)
    rgb.save(root / "train/x/a.png")
    imgs = {"L.png": rgb.convert("L"), "RGB.png": rgb, "RGBA.png": rgb.convert("RGBA"), "LA.png": rgb.convert("LA"),
            "P.png": rgb.convert("P"), "1.png": rgb.convert("1"), "CMYK.tif": rgb.convert("CMYK")}
    imgs["RGBA.png"].putalpha(Image.fromarray(g.integers(0, 256, (H, W), dtype=np.uint8)))
    for name, img in imgs.items():
        img.save(root / "test/x" / name)
    for channels, mode in ((3, "RGB"), (1, "L")):
        d = load_dataset("image_folder", root=str(root), channels=channels)
        x, _ = d.test_pixels(range(len(d)))
        for f, xi in zip(d.test_files, x):
            a = np.asarray(Image.open(f).convert(mode), dtype=np.float32) / 255
            assert torch.equal(xi, torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))), f.name


def test_unreadable_values_are_refused_naming_file_mode_and_fix(tmp_path):
    root = tmp_path / "imgs"
    for sub in ("train/x", "test/x"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "train/x/a.png")
    Image.fromarray(np.full((H, W), 3.5, np.float32)).save(root / "test/x/f.tif")
    Image.fromarray(np.full((H, W), -5, np.int32)).save(root / "test/x/i.tif")
    d = load_dataset("image_folder", root=str(root))
    with pytest.raises(ValueError, match=r"f\.tif.*mode F.*3\.5.*\[0, 1\]") as err:
        d.test_pixels([0])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"i\.tif.*mode I.*-5") as err:
        d.test_pixels([1])
    assert "\n" not in str(err.value)
