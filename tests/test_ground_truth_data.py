"""Ground truth travels with the data: XAI-TRIS and decoy MNIST masks, image-folder masks, the pool of train images,
and their wiring into evalxai.score and the pipeline (masks chunked with the samples, errors naming the fix)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import evalxai
from evalxai.core import memory
from evalxai.data import load_dataset, provides_masks
from evalxai.data.xai_tris import SCENARIOS, generate
from evalxai.metrics import METRICS
from evalxai.metrics.common import scalar_rows
from evalxai.metrics.registry import register_metric
from evalxai.runs.pipeline import run_experiment

T = np.array([[1, 0], [1, 1], [1, 0]], dtype=bool)
L = np.array([[1, 0], [1, 0], [1, 1]], dtype=bool)


def placed(shape, pos, size=8):
    m = np.zeros((size, size), dtype=bool)
    m[pos[0]:pos[0] + shape.shape[0], pos[1]:pos[1] + shape.shape[1]] = shape
    return m


# ---------------------------------------------------------------- XAI-TRIS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_xai_tris_is_deterministic_by_seed(scenario):
    a, b, c = generate(scenario, "correlated", n=64, seed=3), generate(scenario, "correlated", n=64, seed=3), \
        generate(scenario, "correlated", n=64, seed=4)
    for k in ("x", "y", "placed", "relevant"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["x"], c["x"])
    assert np.abs(a["x"]).max() == pytest.approx(1.0) and a["y"].sum() == 32  # [-1, 1], balanced classes


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("background", ["white", "correlated"])
def test_xai_tris_masks_are_where_the_signal_is(scenario, background):
    """Two signal weights on the same draws: outside the placed pattern the images differ by one factor (only the
    background is there), on it they do not (the signal is there)."""
    a, b = generate(scenario, background, n=32, snr=0.3, seed=1), generate(scenario, background, n=32, snr=0.6, seed=1)
    xa, xb = a["x"].astype(np.float64), b["x"].astype(np.float64)
    for i in range(len(xa)):
        m = a["placed"][i]
        ratio = xa[i][~m] / xb[i][~m]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
        assert not np.allclose(xa[i][m] / xb[i][m], ratio[0], rtol=1e-2)
        assert m.sum() == (8 if scenario == "xor" else 4)


def test_xai_tris_placed_and_relevant_masks_follow_xai_tris():
    d = generate("linear", "white", n=16, seed=0)
    both = placed(T, (1, 1)) | placed(L, (4, 5))
    for y, p, r in zip(d["y"], d["placed"], d["relevant"]):
        np.testing.assert_array_equal(p, placed(T, (1, 1)) if y == 0 else placed(L, (4, 5)))
        np.testing.assert_array_equal(r, both)  # both locations tell the class apart (XAI-TRIS's ground truth)
    x = generate("xor", "white", n=16, seed=0)
    assert (x["placed"] == both).all() and (x["relevant"] == both).all()
    tr = generate("translations_rotations", "white", n=64, seed=0)
    shapes = {0: {np.rot90(T, k).tobytes() for k in range(4)}, 1: {np.rot90(L, k).tobytes() for k in range(4)}}
    for y, p in zip(tr["y"], tr["placed"]):
        rows, cols = np.flatnonzero(p.any(1)), np.flatnonzero(p.any(0))
        crop = p[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert crop.tobytes() in shapes[int(y)]
    assert (tr["relevant"] == tr["placed"]).all()
    assert len({p.tobytes() for p in tr["placed"]}) > 10  # patterns move


def test_linear_scenario_is_separated_by_the_pattern_filter():
    """XAI-TRIS's linear scenario: the known linear model w = T-template - L-template separates the classes."""
    w = torch.from_numpy((placed(T, (1, 1)).astype(np.float32) - placed(L, (4, 5))))

    def accuracy(d, w):
        x, y = d.test_items(np.arange(len(d)))
        s = (x[:, 0] * w).sum((1, 2))
        return float(((s < s.median()).long() == y).double().mean())

    d = load_dataset("xai_tris", scenario="linear", background="white", n=2000, n_test=400)
    assert accuracy(d, w) > 0.85  # XAI-TRIS's signal weight (0.18) leaves the task hard but learnable
    assert accuracy(load_dataset("xai_tris", scenario="linear", snr=0.5, n=2000, n_test=400), w) > 0.99
    off = torch.from_numpy(np.roll(w.numpy(), 1, axis=1))  # the same filter off the mask: chance
    assert abs(accuracy(d, off) - 0.5) < 0.1
    x, _ = d.test_items(np.arange(len(d)))
    assert d.masks_test.dtype == torch.bool and d.masks_test.shape == (400, 8, 8)
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and d.low == pytest.approx(-1) and d.high == pytest.approx(1)


def test_xai_tris_64_masks_are_the_smoothed_patterns():
    d = generate("linear", "white", size=64, n=8, seed=0)
    assert d["x"].shape == (8, 64, 64)
    for y, p in zip(d["y"], d["placed"]):  # a 24 x 16 T (or L) of 8-px cells, grown by the smoothing's 0.05 edge
        block = np.kron(T if y == 0 else L, np.ones((8, 8), dtype=bool))
        pos = (8, 8) if y == 0 else (32, 40)
        core = np.zeros((64, 64), dtype=bool)
        core[pos[0]:pos[0] + 24, pos[1]:pos[1] + 16] = block
        assert p[core].all() and p.sum() > core.sum() and not p[:4].any()


def test_xai_tris_config_errors():
    with pytest.raises(ValueError, match="scenario='spiral'"):
        load_dataset("xai_tris", scenario="spiral")
    with pytest.raises(ValueError, match="snr"):
        load_dataset("xai_tris", snr=1.5)
    with pytest.raises(ValueError, match="divisible by 4"):
        load_dataset("xai_tris", n=10)


# ---------------------------------------------------------------- decoy MNIST


def test_decoy_mnist_patch_in_train_coded_by_class_and_random_in_test(cache_dir):
    clean = load_dataset("mnist", cache_dir=cache_dir)
    d = load_dataset("decoy_mnist", cache_dir=cache_dir)
    xc, yc = clean.train_pixels()
    xd, yd = d.train_pixels()
    assert torch.equal(yc, yd)
    where = d.patch_train
    assert (where.sum((1, 2)) == 16).all()
    grey = (255 - 25 * yd.double()) / 255
    values = xd[:, 0].double()
    for i in range(0, len(yd), 97):
        assert torch.allclose(values[i][where[i]], grey[i].expand(16).double(), atol=1e-6)  # class-coded patch
        assert torch.equal(xd[i, 0][~where[i]], xc[i, 0][~where[i]])  # the rest is the digit
    corners = {(int(r), int(c)) for w in where[:200] for r, c in [torch.nonzero(w)[0].tolist()]}
    assert corners == {(0, 0), (0, 24), (24, 0), (24, 24)}
    # test split: the mask marks the patch; its grey value is one class's level but not the label's (random)
    xt, yt = d.test_pixels(np.arange(len(d)))
    xct, _ = clean.test_pixels(np.arange(len(clean)))
    m = d.masks_test
    assert m.dtype == torch.bool and m.shape == (len(d), 28, 28) and (m.sum((1, 2)) == 16).all()
    assert torch.equal(xt[:, 0][~m], xct[:, 0][~m])
    levels = torch.stack([xt[i, 0][m[i]].unique() for i in range(len(d))]).squeeze(1)  # one value per patch
    code = torch.round((255 - 255 * levels.double()) / 25).long()
    assert ((code >= 0) & (code <= 9)).all()
    assert (code == yt).double().mean() < 0.2  # no shortcut in the test split
    digit = load_dataset("decoy_mnist", mask="digit", cache_dir=cache_dir).masks_test
    assert torch.equal(digit, (xct[:, 0] > 0.5) & ~m)


def test_decoy_mnist_config_errors(cache_dir):
    with pytest.raises(ValueError, match="mask='corner'"):
        load_dataset("decoy_mnist", mask="corner", cache_dir=cache_dir)


# ---------------------------------------------------------------- image folder masks


def _folder(tmp_path, with_masks=True):
    root, mroot = tmp_path / "imgs", tmp_path / "masks"
    g = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(5):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.jpg")
            if with_masks:
                (mroot / cls).mkdir(parents=True, exist_ok=True)
                m = np.zeros((16, 16), dtype=np.uint8)
                m[: 2 * (i + 1), :8] = 7  # nonzero = relevant, top rows of the left half
                Image.fromarray(m).save(mroot / cls / f"{i}.png")
    return root, mroot


def test_image_folder_masks_read_back_resized_like_the_images(tmp_path):
    root, mroot = _folder(tmp_path)
    d = load_dataset("image_folder", root=str(root), masks=str(mroot), n_test=4, image_size=8)
    assert d.has_masks and provides_masks("image_folder", {"masks": str(mroot)})
    m = d.test_masks([0, 2])
    assert m.dtype == torch.bool and m.shape == (2, 8, 8)
    for k, i in enumerate([0, 2]):
        n = int(d.test_files[i].stem) + 1  # 2n rows of 16 -> n rows of 8, left half
        want = torch.zeros(8, 8, dtype=torch.bool)
        want[:n, :4] = True
        assert torch.equal(m[k], want)
    assert torch.equal(d.masks_test[[0, 2]], m)
    assert not load_dataset("image_folder", root=str(root), n_test=4).has_masks
    (mroot / "a" / "0.png").unlink()
    if any(f.relative_to(root).as_posix() == "a/0.jpg" for f in d.test_files):
        with pytest.raises(FileNotFoundError, match="no mask for 1 test image"):
            load_dataset("image_folder", root=str(root), masks=str(mroot), n_test=4, image_size=8)


def test_pool_is_a_fixed_stratified_train_sample_in_model_space():
    d = load_dataset("xai_tris", n=400, n_test=40)
    x, y = d.pool(64, seed=0)
    x2, y2 = d.pool(64, seed=0)
    assert x is x2 and x.shape == (64, 1, 8, 8) and torch.bincount(y).tolist() == [32, 32]
    assert float(x.min()) < -0.2  # model space ([-1, 1]), not pixels
    assert not torch.equal(d.pool(64, seed=1)[0], x)


# ---------------------------------------------------------------- score(..., masks=, pool=)


@pytest.fixture
def fake_metrics():
    """A mask metric (share of |R| on the mask) and a pool metric (pool size), removed again afterwards."""
    @register_metric("_test_mask_share", family="localisation", directions={"mask_share": "higher"}, needs=("masks",))
    def mask_share(model, x, target, attributions, masks):
        r = attributions.abs().sum(1)
        return scalar_rows((r * masks).sum((1, 2)) / r.sum((1, 2)), "mask_share")

    @register_metric("_test_pool", family="localisation", directions={"pool": "none"}, needs=("pool",))
    def pool_size(model, x, target, attributions, pool):
        return scalar_rows(torch.full((len(x),), float(len(pool[0]) + pool[1].sum())), "pool")

    yield
    METRICS.pop("_test_mask_share")
    METRICS.pop("_test_pool")


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 2)).double().eval()


def test_score_passes_masks_chunked_with_the_samples(fake_metrics):
    model = _cnn()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.arange(7) % 2
    r = torch.randn(7, 1, 8, 8, generator=g, dtype=torch.float64)
    masks = torch.rand(7, 8, 8, generator=g) > 0.6
    want = [(r[i, 0].abs() * masks[i]).sum() / r[i, 0].abs().sum() for i in range(7)]
    big = evalxai.score(model, x, t, r, metric="_test_mask_share", masks=masks)
    np.testing.assert_allclose(big["value"], torch.stack(want).numpy(), rtol=1e-12)
    with evalxai.memory_budget(int(3.5 * memory.image_cost(model, x))):  # one or two images per chunk
        small = evalxai.score(model, x, t, r, metric="_test_mask_share", masks=masks)
    pd.testing.assert_frame_equal(small, big)
    # numpy masks and (N, 1, H, W) masks are accepted as they are
    pd.testing.assert_frame_equal(evalxai.score(model, x, t, r, metric="_test_mask_share",
                                                masks=masks[:, None].numpy()), big)


def test_score_mask_errors_name_the_fix(fake_metrics):
    model = _cnn()
    x, t = torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.zeros(3, dtype=torch.long)
    r = torch.rand_like(x)
    with pytest.raises(ValueError, match="metric '_test_mask_share' needs ground-truth masks: pass masks=.*or run on "
                                         "a dataset with masks"):
        evalxai.score(model, x, t, r, metric="_test_mask_share")
    with pytest.raises(ValueError, match="must be bool.*masks != 0"):
        evalxai.score(model, x, t, r, metric="_test_mask_share", masks=torch.ones(3, 8, 8))
    with pytest.raises(ValueError, match=r"expected \(N, H, W\) = \(3, 8, 8\)"):
        evalxai.score(model, x, t, r, metric="_test_mask_share", masks=torch.ones(3, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="metric 'sparseness' takes no masks"):
        evalxai.score(model, x, t, r, metric="sparseness", masks=torch.ones(3, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="metric 'sparseness' takes no pool"):
        evalxai.score(model, x, t, r, metric="sparseness", pool=(x, t))


def test_score_passes_the_pool_whole_to_every_chunk(fake_metrics):
    model = _cnn()
    x, t = torch.rand(5, 1, 8, 8, dtype=torch.float64), torch.zeros(5, dtype=torch.long)
    pool = (torch.rand(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0]))
    with evalxai.memory_budget(int(3.5 * memory.image_cost(model, x))):
        df = evalxai.score(model, x, t, torch.rand_like(x), metric="_test_pool", pool=pool)
    assert (df["value"] == 9.0).all()
    with pytest.raises(ValueError, match="needs a pool of images: pass pool="):
        evalxai.score(model, x, t, torch.rand_like(x), metric="_test_pool")
    with pytest.raises(ValueError, match="pool must be a pair"):
        evalxai.score(model, x, t, torch.rand_like(x), metric="_test_pool", pool=pool[0])


# ---------------------------------------------------------------- pipeline


def _cfg(dataset, metrics):
    return {"name": "gt_wiring", "seed": 0, "n_samples": 6, "dataset": dataset,
            "model": {"name": "mlp", "arch": {"hidden": [16]},
                      "train": {"epochs": 1, "batch_size": 64, "lr": 0.01, "weight_decay": 0.0, "augment_shift": 0}},
            "methods": ["gradient", "random"], "metrics": metrics, "progress": False}


def test_pipeline_gives_mask_metrics_the_explained_images_masks(fake_metrics, tmp_path, cache_dir):
    ds = {"name": "xai_tris", "n": 400, "n_test": 40, "seed": 0}
    cfg = {**_cfg(ds, {"_test_mask_share": {}, "_test_pool": {}, "sparseness": {}}), "cache_dir": str(cache_dir),
           "save_attributions": True}
    out = run_experiment(cfg, tmp_path / "run", progress=False)
    scores = pd.read_parquet(out / "scores.parquet")
    run = json.loads((out / "run.json").read_text())
    assert run["ground_truth"]["masks"] and run["ground_truth"]["pool"] == 256
    assert run["ground_truth"]["metrics"] == ["_test_mask_share", "_test_pool"]
    assert run["ground_truth"]["relevant_pixels_mean"] == 8.0 and run["ground_truth"]["mask_meta"]["mask"] == "relevant"
    # the values are those of the saved maps on the masks of the explained images (by dataset index)
    d = load_dataset("xai_tris", n=400, n_test=40, seed=0)
    saved = np.load(out / "attributions.npz")
    masks = d.test_masks(saved["dataset_index"]).numpy()
    for method in ("gradient", "random"):
        r = np.abs(saved[method][:, 0].astype(np.float64))
        want = (r * masks).sum((1, 2)) / r.sum((1, 2))
        got = scores[(scores.metric == "_test_mask_share") & (scores.method == method)].sort_values("sample")
        np.testing.assert_allclose(got.value, want, rtol=1e-5)
    # a mask metric on a dataset without masks fails at the start
    with pytest.raises(ValueError, match="metric '_test_mask_share' needs masks, and dataset=mnist has none"):
        run_experiment(_cfg({"name": "mnist"}, {"_test_mask_share": {}}), tmp_path / "bad")
    assert not (tmp_path / "bad" / "run.json").exists()
