"""The faithfulness catalogue (faithfulness_correlation, faithfulness_estimate, monotonicity,
monotonicity_correlation, sensitivity_n, irof, infidelity, sufficiency, region_perturbation): each against an
explicit float64 loop written from its formula with the same seeded draws, known answers, NaN policies,
invariance to positive rescaling of the map (batch-size and memory-budget independence: tests/test_contracts.py)."""
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import evalxai
from evalxai.metrics import perturbation_correlation as pc


def small_cnn(channels=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 4, 5)).double().eval()


def linear(channels=1, positive=False):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * 64, 5)).double().eval()
    if positive:
        with torch.no_grad():
            model[1].weight.abs_()
    return model


def data(n, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 8, 8, generator=g, dtype=torch.float64), torch.arange(n) % 5


def scalar(df, measure):
    return df[df["measure"] == measure].sort_values("sample")["value"].to_numpy()


def score_of(model, x, t, space="logit"):
    with torch.no_grad():
        out = model(x[None])[0]
    out = {"logit": out, "softmax": out.softmax(0), "log_softmax": out.log_softmax(0)}[space]
    return float(out[t])


def patch_sum(rel, a, b, p):
    return float(rel[a * p:(a + 1) * p, b * p:(b + 1) * p].sum())


# -- explicit loops ----------------------------------------------------------------------------------------------


def test_faithfulness_correlation_equals_loop():
    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="faithfulness_correlation", runs=12, subset_size=10, seed=3)
    sel = pc.random_subsets(x, 3, 12, 64, 10)
    want = []
    for i in range(3):
        rel = r[i].sum(0).flatten()
        sums, drops = [], []
        for s in range(12):
            idx = torch.nonzero(sel[s, i]).flatten()
            xi = x[i].clone().reshape(1, -1)
            xi[:, idx] = 0.0
            drops.append(score_of(model, x[i], t[i]) - score_of(model, xi.view_as(x[i]), t[i]))
            sums.append(float(rel[idx].sum()))
        want.append(np.corrcoef(sums, drops)[0, 1])
    np.testing.assert_allclose(scalar(df, "faithfulness_correlation"), want, rtol=1e-10)


def test_random_subsets_have_the_size_and_belong_to_the_sample():
    x, _ = data(5)
    sel = pc.random_subsets(x, 0, 7, 64, 9)
    assert sel.shape == (7, 5, 64) and (sel.sum(-1) == 9).all()
    alone = pc.random_subsets(x[2:3], 0, 7, 64, 9)
    assert torch.equal(alone[:, 0], sel[:, 2])
    assert not torch.equal(sel[:, 0], sel[:, 1])
    ranks = pc.random_orders(x, 0, 7, 64)
    assert (ranks.sort(-1).values == torch.arange(64)).all()  # each run is a permutation
    for size in (1, 9, 63, 64):  # the subsets are the first features of the orders (found by selection, not sort)
        assert torch.equal(pc.random_subsets(x, 0, 7, 64, size), ranks < size)


def test_faithfulness_estimate_equals_loop():
    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="faithfulness_estimate", patch_size=2)
    want = []
    for i in range(3):
        rel = r[i].sum(0)
        rels, drops = [], []
        for a in range(4):
            for b in range(4):
                xi = x[i].clone()
                xi[:, 2 * a:2 * a + 2, 2 * b:2 * b + 2] = 0.0
                drops.append(score_of(model, x[i], t[i], "softmax") - score_of(model, xi, t[i], "softmax"))
                rels.append(patch_sum(rel, a, b, 2))
        want.append(np.corrcoef(rels, drops)[0, 1])
    np.testing.assert_allclose(scalar(df, "faithfulness_estimate"), want, rtol=1e-10)


def test_monotonicity_equals_loop():
    model, (x, t) = small_cnn(), data(4)
    r = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)  # no ties
    df = evalxai.score(model, x, t, r, metric="monotonicity", patch_size=2, per_step=3)
    curve = df[df["measure"] == "curve_insertion"].pivot(index="sample", columns="step", values="value").to_numpy()
    mono, share = [], []
    for i in range(4):
        rel = r[i].sum(0)
        pr = np.array([patch_sum(rel, a, b, 2) for a in range(4) for b in range(4)])
        order = np.argsort(pr)  # least relevant first
        xi = torch.zeros_like(x[i])
        ys = []
        for k in range(1, 7):  # ceil(16 / 3) steps
            for f in order[(k - 1) * 3:k * 3]:
                a, b = divmod(int(f), 4)
                xi[:, 2 * a:2 * a + 2, 2 * b:2 * b + 2] = x[i][:, 2 * a:2 * a + 2, 2 * b:2 * b + 2]
            ys.append(score_of(model, xi, t[i], "softmax"))
        np.testing.assert_allclose(curve[i], ys, rtol=1e-10)
        d = np.diff(ys) >= -1e-6
        mono.append(float(d.all()))
        share.append(d.mean())
    np.testing.assert_array_equal(scalar(df, "monotonicity"), mono)
    np.testing.assert_allclose(scalar(df, "monotonicity_share"), share)


def test_monotonicity_of_a_monotone_model_is_one():
    model, (x, t) = linear(positive=True), data(4)  # non-negative weights and inputs: adding any feature helps
    for r in (torch.randn_like(x), -evalxai.explain(model, x, t, method="gradient_x_input")):
        df = evalxai.score(model, x, t, r, metric="monotonicity", score_space="logit")
        np.testing.assert_array_equal(scalar(df, "monotonicity"), 1.0)
    # a negative weight on the second least relevant pixel: putting it back lowers the score
    with torch.no_grad():
        model[1].weight[:, 0] = -5.0
    r = torch.ones_like(x)
    r[:, :, 0, 1] = -2.0
    r[:, :, 0, 0] = -1.0
    df = evalxai.score(model, x, t, r, metric="monotonicity", score_space="logit", patch_size=1, per_step=1)
    np.testing.assert_array_equal(scalar(df, "monotonicity"), 0.0)


def test_monotonicity_correlation_equals_loop():
    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    noise = pc.uniform_draws(x, 2, 4)
    want = {"mse": [], "variance": [], "mean": []}
    for i in range(3):
        rel = r[i].abs().sum(0)
        y0 = score_of(model, x[i], t[i], "softmax")
        mags, effects = [], {k: [] for k in want}
        for a in range(2):
            for b in range(2):
                ys = []
                for s in range(4):
                    xi = x[i].clone()
                    xi[:, 4 * a:4 * a + 4, 4 * b:4 * b + 4] = noise[s, i][:, 4 * a:4 * a + 4, 4 * b:4 * b + 4]
                    ys.append(score_of(model, xi, t[i], "softmax"))
                ys = np.array(ys)
                effects["mse"].append(((y0 - ys) ** 2).mean())
                effects["variance"].append(ys.var())
                effects["mean"].append((y0 - ys).mean())
                mags.append(patch_sum(rel, a, b, 4))
        for k in want:
            want[k].append(spearmanr(mags, effects[k]).statistic)
    for statistic, w in want.items():
        df = evalxai.score(model, x, t, r, metric="monotonicity_correlation", patch_size=4, samples=4,
                           statistic=statistic, seed=2)
        np.testing.assert_allclose(scalar(df, "monotonicity_correlation"), w, rtol=1e-10)


def test_sensitivity_n_equals_loop():
    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    sizes = [2, 0.25, 40]
    df = evalxai.score(model, x, t, r, metric="sensitivity_n", sizes=sizes, runs=9, seed=1)
    curve = df[df["measure"] == "curve"].pivot(index="sample", columns="step", values="value").to_numpy()
    assert df[df["measure"] == "curve"]["n"].unique().tolist() == [2, 16, 40]
    for j, n in enumerate([2, 16, 40]):
        sel = pc.random_orders(x, 1, 9, 64) < n
        for i in range(3):
            rel = r[i].sum(0).flatten()
            sums, drops = [], []
            for s in range(9):
                idx = torch.nonzero(sel[s, i]).flatten()
                xi = x[i].clone().reshape(1, -1)
                xi[:, idx] = 0.0
                drops.append(score_of(model, x[i], t[i]) - score_of(model, xi.view_as(x[i]), t[i]))
                sums.append(float(rel[idx].sum()))
            np.testing.assert_allclose(curve[i, j], np.corrcoef(sums, drops)[0, 1], rtol=1e-10)
    np.testing.assert_allclose(scalar(df, "sensitivity_n"), curve.mean(1), rtol=1e-12)


def test_correlations_of_exact_linear_attributions_are_one():
    """f(x) - f(x with S at 0) = sum_S w x exactly for a linear model (bias cancels): correlation 1; -R gives -1."""
    model, (x, t) = linear(channels=3), data(4, channels=3)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    for sign in (1, -1):
        fc = evalxai.score(model, x, t, sign * r, metric="faithfulness_correlation", runs=20)
        np.testing.assert_allclose(scalar(fc, "faithfulness_correlation"), sign, atol=1e-10)
        sn = evalxai.score(model, x, t, sign * r, metric="sensitivity_n", runs=20)
        np.testing.assert_allclose(sn[sn["measure"] == "curve"]["value"], sign, atol=1e-10)
        fe = evalxai.score(model, x, t, sign * r, metric="faithfulness_estimate", score_space="logit")
        np.testing.assert_allclose(scalar(fe, "faithfulness_estimate"), sign, atol=1e-10)


def test_constant_maps_give_nan():
    model, (x, t) = small_cnn(), data(3)
    c = torch.full_like(x, 0.3)
    for metric, params in [("faithfulness_correlation", {"runs": 10}), ("faithfulness_estimate", {}),
                           ("monotonicity_correlation", {"samples": 2, "patch_size": 4}),
                           ("sensitivity_n", {"runs": 10, "sizes": [3, 10]})]:
        df = evalxai.score(model, x, t, c, metric=metric, **params)
        assert np.isnan(scalar(df, metric)).all(), metric
    # a map of zeros except inside one subset-free region: all subset sums 0 -> NaN, not 0
    assert np.isnan(pc.pearson(np.zeros((1, 5)), np.arange(5.0)[None]))[0]
    assert np.isnan(pc.spearman(np.arange(5.0)[None], np.ones((1, 5))))[0]


# -- IROF --------------------------------------------------------------------------------------------------------


def loop_irof(model, x, t, r, labels):
    out = []
    for i in range(len(x)):
        seg = labels[i].numpy()
        k = seg.max() + 1
        means = np.array([r[i].numpy()[:, seg == s].mean() for s in range(k)])
        order = np.argsort(-means)
        base = x[i].mean((1, 2), keepdim=True).expand_as(x[i])
        xi = x[i].clone()
        ys = [score_of(model, xi, t[i], "softmax")]
        for s in order:
            m = torch.as_tensor(seg == s)
            xi[:, m] = base[:, m]
            ys.append(score_of(model, xi, t[i], "softmax"))
        ys = np.array(ys) / ys[0]
        out.append(1 - np.trapezoid(ys, np.arange(k + 1) / k))
    return np.array(out)


@pytest.mark.parametrize("segmentation", ["grid", "slic"])
def test_irof_equals_loop(segmentation):
    if segmentation == "slic":
        pytest.importorskip("skimage")
    model, (x, t) = small_cnn(3), data(3, channels=3)
    r = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # no ties
    df = evalxai.score(model, x, t, r, metric="irof", segmentation=segmentation, n_segments=10)
    from evalxai.metrics.irof import superpixels

    labels, used = superpixels(x, segmentation, 10)
    assert used == segmentation and (df["segmentation"] == segmentation).all()
    np.testing.assert_allclose(scalar(df, "irof"), loop_irof(model, x, t, r, labels), rtol=1e-10)
    curve = df[df["measure"] == "curve"]
    assert (curve[curve["step"] == 0]["value"] == 1.0).all()
    if segmentation == "slic":
        from skimage.segmentation import slic

        seg = slic(x[0].permute(1, 2, 0).numpy(), n_segments=10, compactness=10.0, start_label=0)
        assert len(np.unique(seg)) == labels[0].max() + 1  # SLIC's own segments, numbered 0..K-1


def test_irof_segments_the_image_in_pixel_space():
    """SLIC runs on the image as pixels, (x - low) / (high - low): normalised inputs with their per-channel bounds give
    the superpixels (and scores) of the same images in [0, 1] with the normalisation inside the model."""
    pytest.importorskip("skimage")
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor([0.229, 0.124, 0.325], dtype=torch.float64).view(3, 1, 1)
    cnn, (pixels, t) = small_cnn(3), data(3, channels=3)

    class Normalised(nn.Module):
        def forward(self, p):
            return cnn((p - mean) / std)

    x = (pixels - mean) / std
    r = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = evalxai.score(cnn, x, t, r, metric="irof", n_segments=10, low=(0 - mean) / std, high=(1 - mean) / std)
    want = evalxai.score(Normalised().eval(), pixels, t, r, metric="irof", n_segments=10)
    np.testing.assert_array_equal(got["segments"], want["segments"])
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-10)


def test_irof_falls_back_to_a_grid_without_scikit_image(monkeypatch):
    from evalxai.metrics import irof

    monkeypatch.setattr(irof, "slic_available", lambda: False)
    model, (x, t) = small_cnn(), data(2)
    r = torch.randn_like(x)
    with pytest.warns(UserWarning, match="scikit-image"):
        df = evalxai.score(model, x, t, r, metric="irof", n_segments=16)
    assert (df["segmentation"] == "grid").all() and (df["segments"] == 16).all()
    grid = evalxai.score(model, x, t, r, metric="irof", segmentation="grid", n_segments=16)
    np.testing.assert_array_equal(scalar(df, "irof"), scalar(grid, "irof"))


def test_irof_nan_for_non_positive_unperturbed_logit():
    model, (x, t) = small_cnn(), data(6)
    with torch.no_grad():
        y0 = model(x).gather(1, t[:, None])[:, 0].numpy()
    df = evalxai.score(model, x, t, torch.randn_like(x), metric="irof", segmentation="grid", score_space="logit")
    np.testing.assert_array_equal(np.isnan(scalar(df, "irof")), y0 <= 0)


# -- infidelity --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("perturbation,normalize,by_inputs", [("square", True, True), ("square", False, False),
                                                               ("gaussian", True, False)])
def test_infidelity_equals_loop(perturbation, normalize, by_inputs):
    from evalxai.metrics.infidelity import gaussian_perturbation, square_masks

    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="infidelity", perturbation=perturbation, samples=6, square_size=3,
                       noise=0.2, normalize=normalize, multiply_by_inputs=by_inputs, seed=4)
    if perturbation == "square":
        pert = torch.where(square_masks(x, 4, 6, 3), x.unsqueeze(0), 0.0)  # zero baseline: I = x on the square
        assert (square_masks(x, 4, 6, 3).sum((-1, -2)) == 9).all()
    else:
        pert = gaussian_perturbation(x, 4, range(6), 0.2)
    want, betas = [], []
    for i in range(3):
        ri = torch.where(x[i] != 0, r[i] / x[i], r[i]) if by_inputs else r[i]  # global map: I / (x - 0) . R
        dots = np.array([float((pert[s, i] * ri).sum()) for s in range(6)])
        drops = np.array([score_of(model, x[i], t[i]) - score_of(model, x[i] - pert[s, i], t[i]) for s in range(6)])
        beta = (dots * drops).mean() / (dots ** 2).mean() if normalize else 1.0
        want.append(((beta * dots - drops) ** 2).mean())
        betas.append(beta)
    np.testing.assert_allclose(scalar(df, "infidelity"), want, rtol=1e-10)
    np.testing.assert_allclose(scalar(df, "beta"), betas, rtol=1e-10)


def test_infidelity_known_answers_and_scale():
    model, (x, t) = linear(), data(4)
    gxi = evalxai.explain(model, x, t, method="gradient_x_input")
    grad = evalxai.explain(model, x, t, method="gradient")
    # removing a square changes f by sum_square w x: the relevance of gradient x input summed over the square
    sq = evalxai.score(model, x, t, gxi, metric="infidelity", normalize=False, samples=10)
    np.testing.assert_allclose(scalar(sq, "infidelity"), 0.0, atol=1e-24)
    sq = evalxai.score(model, x, t, grad, metric="infidelity", normalize=False, samples=10, multiply_by_inputs=False)
    np.testing.assert_allclose(scalar(sq, "infidelity"), 0.0, atol=1e-24)  # ... and w.I for the gradient
    ga = evalxai.score(model, x, t, grad, metric="infidelity", perturbation="gaussian", normalize=False, samples=10,
                       multiply_by_inputs=False)
    np.testing.assert_allclose(scalar(ga, "infidelity"), 0.0, atol=1e-24)  # f(x) - f(x - I) = w.I
    wrong = evalxai.score(model, x, t, gxi, metric="infidelity", normalize=False, samples=10, multiply_by_inputs=False)
    assert (scalar(wrong, "infidelity") > 1e-6).all()  # a global map read as a local one
    # normalize: the optimal scale undoes any rescaling; without it the scale matters
    model, (x, t) = small_cnn(), data(4)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    a, b = (evalxai.score(model, x, t, s * r, metric="infidelity", samples=8) for s in (1.0, 37.0))
    np.testing.assert_allclose(scalar(a, "infidelity"), scalar(b, "infidelity"), rtol=1e-9)
    np.testing.assert_allclose(scalar(b, "beta") * 37.0, scalar(a, "beta"), rtol=1e-9)
    a, b = (evalxai.score(model, x, t, s * r, metric="infidelity", samples=8, normalize=False) for s in (1.0, 37.0))
    assert (np.abs(scalar(a, "infidelity") - scalar(b, "infidelity")) > 1e-6).all()
    zero = evalxai.score(model, x, t, torch.zeros_like(x), metric="infidelity", samples=8)
    assert np.isfinite(scalar(zero, "infidelity")).all() and (scalar(zero, "beta") == 0).all()


# -- sufficiency -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("applies", ["threshold", "nearest"])
def test_sufficiency_equals_loop(applies):
    from evalxai.metrics.sufficiency import neighbours

    model, (x, t) = small_cnn(), data(4)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="sufficiency", method="gradient_x_input", samples=8, noise=0.3,
                       applies=applies, threshold=0.3, nearest=0.25, seed=1, low=0.0, high=1.0)
    xs = neighbours(x, 1, 8, 0.3, 0.0, 1.0)
    assert xs.min() >= 0 and xs.max() <= 1
    want, count, agree = [], [], []
    for i in range(4):
        label = int(model(x[i:i + 1]).argmax())
        kept = np.array([int(model(xs[s, i:i + 1]).argmax()) == label for s in range(8)])
        dist = []
        for s in range(8):
            rs = evalxai.explain(model, xs[s, i:i + 1], t[i:i + 1], method="gradient_x_input")[0]
            dist.append(1 - float((rs * r[i]).sum() / (rs.norm() * r[i].norm())))
        dist = np.array(dist)
        close = dist <= 0.3 if applies == "threshold" else np.isin(np.arange(8), np.argsort(dist, kind="stable")[:2])
        count.append(close.sum())
        agree.append(kept.mean())
        want.append(kept[close].mean() if close.any() else np.nan)
    np.testing.assert_allclose(scalar(df, "neighbours"), count)
    np.testing.assert_allclose(scalar(df, "agreement"), agree)
    np.testing.assert_allclose(scalar(df, "sufficiency"), want, rtol=1e-12)
    np.testing.assert_allclose(scalar(df, "sufficiency_gain"), np.array(want) - agree, rtol=1e-12)
    if applies == "threshold":
        assert 0 < sum(count) < 32  # the threshold separates neighbours in this setting


def test_sufficiency_known_answers():
    model, (x, t) = linear(), data(5)
    grad = evalxai.explain(model, x, t, method="gradient")  # the same map for every input
    df = evalxai.score(model, x, t, grad, metric="sufficiency", method="gradient", samples=10, applies="threshold",
                       threshold=1e-9, noise=1e-6)
    np.testing.assert_array_equal(scalar(df, "neighbours"), 10)
    np.testing.assert_array_equal(scalar(df, "sufficiency"), 1.0)  # tiny noise keeps every label
    far = evalxai.score(model, x, t, -grad, metric="sufficiency", method="gradient", samples=4, applies="threshold",
                        threshold=0.5)
    assert np.isnan(scalar(far, "sufficiency")).all() and (scalar(far, "neighbours") == 0).all()  # no neighbour
    near = evalxai.score(model, x, t, -grad, metric="sufficiency", method="gradient", samples=4)
    assert (scalar(near, "neighbours") == 1).all() and np.isfinite(scalar(near, "sufficiency")).all()


# -- region perturbation -----------------------------------------------------------------------------------------


def test_region_perturbation_is_pixel_flipping_with_samek_defaults():
    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    rp = evalxai.score(model, x, t, r, metric="region_perturbation")
    pf = evalxai.score(model, x, t, r, metric="pixel_flipping", order="morf", patch_size=1, per_step=1, steps=64,
                       baseline="uniform")
    assert rp["step"].max() == 64  # 100 steps, fewer on an image of 64 regions
    np.testing.assert_array_equal(rp["value"].to_numpy(), pf["value"].to_numpy())
    assert (rp["metric"] == "region_perturbation").all() and (rp["baseline"] == "uniform").all()
    big = torch.rand(1, 1, 224, 224, dtype=torch.float64)
    m = nn.Sequential(nn.AvgPool2d(32), nn.Flatten(), nn.Linear(49, 2)).double().eval()
    tiny = evalxai.score(m, big, torch.tensor([0]), torch.rand_like(big), metric="region_perturbation", steps=2)
    want = evalxai.score(m, big, torch.tensor([0]), torch.rand_like(big), metric="pixel_flipping", patch_size=9,
                         per_step=1, steps=2, order="morf", baseline="uniform")
    assert tiny["step"].max() == 2 and len(tiny) == len(want)


# -- properties shared by the catalogue --------------------------------------------------------------------------

CATALOGUE = [
    ("faithfulness_correlation", {"runs": 8, "subset_size": 12}),
    ("faithfulness_estimate", {"patch_size": 2}),
    ("monotonicity", {"patch_size": 2}),
    ("monotonicity_correlation", {"patch_size": 4, "samples": 3}),
    ("sensitivity_n", {"runs": 6, "sizes": [2, 20]}),
    ("irof", {"segmentation": "grid", "n_segments": 16}),
    ("infidelity", {"samples": 5}),
    ("infidelity", {"samples": 5, "perturbation": "gaussian", "multiply_by_inputs": False}),
    ("sufficiency", {"samples": 4, "method": "gradient_x_input"}),
    ("region_perturbation", {"steps": 10}),
]


@pytest.mark.parametrize("metric,params", [c for c in CATALOGUE if c[0] != "region_perturbation"])
def test_invariant_to_positive_rescaling(metric, params):
    model, (x, t) = small_cnn(), data(4)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    a = evalxai.score(model, x, t, r, metric=metric, **params)
    b = evalxai.score(model, x, t, 13.0 * r, metric=metric, **params)
    keep = a["measure"] != "beta"  # infidelity's scale factor is the one value that moves (by 1 / 13)
    np.testing.assert_allclose(b["value"][keep].to_numpy(), a["value"][keep].to_numpy(), rtol=1e-9, atol=1e-12)


def test_float32_agrees_with_float64():
    model, (x, t) = small_cnn(), data(4)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    m32 = small_cnn().float()
    for metric, params in [("faithfulness_correlation", {"runs": 10}), ("infidelity", {"samples": 5})]:
        a = evalxai.score(model, x, t, r, metric=metric, **params)
        b = evalxai.score(m32, x.float(), t, r.float(), metric=metric, **params)
        np.testing.assert_allclose(scalar(b, metric), scalar(a, metric), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("metric,params,match", [
    ("faithfulness_correlation", {"subset_size": 0}, "subset_size=0"),
    ("faithfulness_correlation", {"subset_size": 65}, "subset_size=65"),
    ("faithfulness_correlation", {"runs": 0}, "runs=0"),
    ("sensitivity_n", {"sizes": [1.5]}, "sizes=1.5"),
    ("monotonicity", {"tolerance": -1}, "tolerance=-1"),
    ("monotonicity_correlation", {"statistic": "max"}, "statistic 'max'"),
    ("irof", {"segmentation": "quickshift"}, "segmentation 'quickshift'"),
    ("irof", {"n_segments": 1}, "n_segments=1"),
    ("infidelity", {"perturbation": "blur"}, "perturbation 'blur'"),
    ("infidelity", {"square_size": 9}, "square_size=9"),
    ("sufficiency", {"method": "gradient", "threshold": 3}, "threshold=3"),
    ("sufficiency", {"method": "gradient", "nearest": 0}, "nearest=0"),
    ("sufficiency", {"method": "gradient", "applies": "all"}, "applies 'all'"),
    ("sufficiency", {}, "re-explains"),
])
def test_bad_parameters_are_named(metric, params, match):
    model, (x, t) = small_cnn(), data(2)
    with pytest.raises(ValueError, match=match):
        evalxai.score(model, x, t, torch.rand_like(x), metric=metric, **params)


def test_model_left_unchanged():
    from tests.conftest import no_hooks

    model, (x, t) = small_cnn(), data(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evalxai.score(model, x, t, torch.rand_like(x), metric="sufficiency", method="lrp_epsilon_plus", samples=2)
    assert no_hooks(model) and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
