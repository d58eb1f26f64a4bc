"""Selectivity, insertion/deletion, ROAD, continuity, max-sensitivity, randomization: each against an explicit
per-sample loop, known answers (the max(x1, x2) toy). Batch-size independence and repeatable draws of every
metric: tests/test_contracts.py."""
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import evalxai
from evalxai.metrics.road import linear_imputation
from evalxai.metrics.robustness import path_continuity, translate
from tests.test_metrics import data, small_cnn


def curve(df, measure):
    return df[df["measure"] == measure].pivot(index="sample", columns="step", values="value").to_numpy()


def scalar(df, measure):
    return df[df["measure"] == measure].sort_values("sample")["value"].to_numpy()


def logit(model, xi, t):
    with torch.no_grad():
        return float(model(xi[None])[0, t])


def test_selectivity_equals_explicit_loop():
    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="selectivity", method="gradient_x_input", patch_size=2, steps=6)
    want = []
    for i in range(3):
        xi, ri, removed, ys = x[i].clone(), r[i], set(), [logit(model, x[i], t[i])]
        for k in range(6):
            if k > 0:  # relevance of the perturbed image, one sample at a time
                ri = evalxai.explain(model, xi[None], t[i:i + 1], method="gradient_x_input")[0]
            scores = {(a, b): float(ri[:, 2 * a:2 * a + 2, 2 * b:2 * b + 2].sum()) for a in range(4) for b in range(4)
                      if (a, b) not in removed}
            a, b = max(scores, key=lambda ab: (scores[ab], -ab[0] * 4 - ab[1]))
            removed.add((a, b))
            xi[:, 2 * a:2 * a + 2, 2 * b:2 * b + 2] = 0
            ys.append(logit(model, xi, t[i]))
        want.append(ys)
    want = np.array(want)
    np.testing.assert_allclose(curve(df, "curve"), want, rtol=1e-10, atol=1e-10)
    frac = np.arange(7) / 16
    np.testing.assert_allclose(scalar(df, "auc"), np.trapezoid(want, frac, axis=1) / frac[-1], rtol=1e-10)


def test_selectivity_without_recompute_is_morf_pixel_flipping():
    model, (x, t) = small_cnn(), data(5)
    r = evalxai.explain(model, x, t, method="gradient")
    sel = evalxai.score(model, x, t, r, metric="selectivity", recompute=False, patch_size=2, steps=16)
    pf = evalxai.score(model, x, t, r, metric="pixel_flipping", order="morf", patch_size=2)
    np.testing.assert_allclose(curve(sel, "curve"), curve(pf, "curve_morf"), rtol=1e-12)


def test_insertion_deletion_equals_explicit_loop():
    from evalxai.core.baselines import gaussian_blur

    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="insertion_deletion", per_step=8, score_space="softmax")
    blurred = gaussian_blur(x, 5.0, 5)
    for i in range(3):
        order = np.argsort(-r[i].sum(0).flatten().numpy(), kind="stable")
        xd, xi = x[i].clone().view(1, -1), blurred[i].clone().view(1, -1)
        dele, ins = [], []
        for k in range(9):
            if k > 0:
                idx = torch.as_tensor(order[(k - 1) * 8:k * 8])
                xd[:, idx] = 0
                xi[:, idx] = x[i].view(1, -1)[:, idx]
            with torch.no_grad():
                dele.append(float(model(xd.view(1, 1, 8, 8)).softmax(1)[0, t[i]]))
                ins.append(float(model(xi.view(1, 1, 8, 8)).softmax(1)[0, t[i]]))
        np.testing.assert_allclose(curve(df, "curve_deletion")[i], dele, rtol=1e-10)
        np.testing.assert_allclose(curve(df, "curve_insertion")[i], ins, rtol=1e-10)
        # RISE: (sum y - y0/2 - yK/2) / K
        np.testing.assert_allclose(scalar(df, "auc_insertion")[i], (sum(ins) - ins[0] / 2 - ins[-1] / 2) / 8)


def dense_imputation(img: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Reference: one equation per missing pixel, value = weighted mean of its in-image neighbours."""
    h, w = img.shape
    idx = {p: k for k, p in enumerate(zip(*np.nonzero(missing)))}
    a, b = np.zeros((len(idx), len(idx))), np.zeros(len(idx))
    for (i, j), k in idx.items():
        total = 0.0
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ii, jj = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= ii < h and 0 <= jj < w):
                    continue
                wgt = 1 / 12 if di and dj else 1 / 6
                total += wgt
                if (ii, jj) in idx:
                    a[k, idx[(ii, jj)]] -= wgt
                else:
                    b[k] += wgt * img[ii, jj]
        a[k, k] += total
    out = img.copy()
    for (i, j), v in zip(idx, np.linalg.solve(a, b)):
        out[i, j] = v
    return out


def test_linear_imputation_solves_the_neighbour_system():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 7, 9, generator=g, dtype=torch.float64)
    missing = torch.rand(3, 1, 7, 9, generator=g) < torch.tensor([0.2, 0.6, 0.95]).view(3, 1, 1, 1)
    got = linear_imputation(x, missing)
    for n in range(3):
        for c in range(2):
            want = dense_imputation(x[n, c].numpy(), missing[n, 0].numpy())
            np.testing.assert_allclose(got[n, c].numpy(), want, rtol=1e-7, atol=1e-8)


def test_linear_imputation_float32_batch_matches_float64():
    """A large float32 stack (depthwise-convolution stencil, systems leaving the batch as they converge) agrees
    with the float64 solve (shifted-add stencil) to the float32 tolerance; each system is solved on its own."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(80, 1, 12, 10, generator=g, dtype=torch.float64)
    missing = torch.rand(80, 1, 12, 10, generator=g) < torch.linspace(0.05, 0.95, 80).view(80, 1, 1, 1)
    want = linear_imputation(x, missing)
    got = linear_imputation(x.float(), missing)
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), atol=1e-4)
    one = linear_imputation(x[37:38], missing[37:38])
    np.testing.assert_allclose(want[37:38].numpy(), one.numpy(), rtol=1e-8, atol=1e-9)


def test_road_equals_explicit_loop():
    model, (x, t) = small_cnn(), data(2)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="road", fractions=[0.25, 0.5], noise=0.0, score_space="logit")
    for i in range(2):
        rel = r[i].sum(0).flatten().numpy()
        for o, order in (("morf", np.argsort(-rel, kind="stable")), ("lerf", np.argsort(rel, kind="stable"))):
            ys = [logit(model, x[i], t[i])]
            for f in (0.25, 0.5):
                miss = np.zeros(64, bool)
                miss[order[:round(f * 64)]] = True
                img = dense_imputation(x[i, 0].numpy(), miss.reshape(8, 8))
                ys.append(logit(model, torch.from_numpy(img)[None], t[i]))
            np.testing.assert_allclose(curve(df, f"curve_{o}")[i], ys, rtol=1e-7)
    assert set(df["measure"]) >= {"road_combined", "auc_morf", "auc_lerf", "correct_morf"}


def max_net():
    """max(x1, x2) on R+^2 as a ReLU net (Montavon 2018, §7.1): (relu(x1-x2) + relu(x2-x1) + relu(x1+x2)) / 2."""
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False)).double().eval()
    model[0].weight.data = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    model[2].weight.data = torch.full((1, 3), 0.5, dtype=torch.float64)
    return model


def test_max_toy_gradient_jumps_and_zplus_is_continuous():
    model = max_net()
    s = torch.linspace(-1e-3, 1e-3, 21, dtype=torch.float64)
    xs = torch.stack([1.0 + s, 1.0 - s], 1)  # crosses x1 = x2 at s = 0
    t = torch.zeros(21, dtype=torch.long)
    zplus = evalxai.explain(model, xs, t, method="lrp_zplus")
    x1, x2 = xs[:, 0], xs[:, 1]
    want = torch.where((x1 > x2).unsqueeze(1), torch.stack([(2 * x1 - x2) / 2, x2 / 2], 1),
                       torch.stack([x1 / 2, (2 * x2 - x1) / 2], 1))
    torch.testing.assert_close(zplus, want, rtol=1e-5, atol=1e-6)  # deep Taylor (up to the 1e-6 stabiliser)
    est = {m: path_continuity(evalxai.explain(model, xs, t, method=m).unsqueeze(1), xs.unsqueeze(1), 10)
           for m in ("gradient", "gradient_x_input", "lrp_zplus")}
    assert est["lrp_zplus"]["continuity_path"][0] < 2  # Lipschitz: bounded as the path gets finer
    assert est["gradient"]["continuity_path"][0] > 100  # a unit jump over a 1e-4 step
    assert est["gradient_x_input"]["continuity_path"][0] > 100


def test_continuity_equals_explicit_loop():
    model, (x, t) = small_cnn(), data(2)
    r = evalxai.explain(model, x, t, method="gradient")
    df = evalxai.score(model, x, t, r, metric="continuity", method="gradient", shift=3, stride=1)
    for i in range(2):
        maps, imgs = [], []
        for s in range(-3, 4):
            xi = torch.zeros_like(x[i])
            if s >= 0:
                xi[..., s:] = x[i][..., :8 - s]
            else:
                xi[..., :8 + s] = x[i][..., -s:]
            imgs.append(xi)
            maps.append(evalxai.explain(model, xi[None], t[i:i + 1], method="gradient")[0])
        path = max(float((maps[k + 1] - maps[k]).abs().sum() / (imgs[k + 1] - imgs[k]).norm()) for k in range(6))
        ref = max(float((maps[k] - maps[3]).abs().sum() / (imgs[k] - imgs[3]).norm()) for k in range(7) if k != 3)
        np.testing.assert_allclose(scalar(df, "continuity_path")[i], path, rtol=1e-10)
        np.testing.assert_allclose(scalar(df, "continuity_ref")[i], ref, rtol=1e-10)
        q1 = df[(df["measure"] == "quadrant_1") & (df["sample"] == i)].sort_values("step")["value"].to_numpy()
        np.testing.assert_allclose(q1, [float(m[:, :4, :4].sum()) for m in maps], rtol=1e-10, atol=1e-12)
    assert sorted(df["step"].dropna().unique()) == list(range(-3, 4))


def test_translate_zero_fill():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    assert translate(x, 1)[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 2.0]
    assert translate(x, -2, "y")[0, 0, 0].tolist() == [8.0, 9.0, 10.0, 11.0]
    two = torch.ones(1, 2, 2, 3)
    filled = translate(two, -1, fill=torch.tensor([-1.0, -2.0]).view(2, 1, 1))  # per-channel black
    assert filled[0, :, 0].tolist() == [[1.0, 1.0, -1.0], [1.0, 1.0, -2.0]]


def test_continuity_fills_shifted_in_columns_with_black():
    """On normalised data black is ``low`` (per channel), not 0 (the mean colour): the path's inputs, its scores
    and its ||x_t - x_t'|| see a black border."""
    model, (x, t) = small_cnn(), data(2)
    low = -0.8
    r = evalxai.explain(model, x, t, method="gradient")
    df = evalxai.score(model, x, t, r, metric="continuity", method="gradient", shift=2, low=low)
    for s in (-2, -1, 1, 2):
        xs = torch.full_like(x, low)
        if s > 0:
            xs[..., s:] = x[..., :-s]
        else:
            xs[..., :s] = x[..., -s:]
        got = df[(df["measure"] == "score") & (df["step"] == s)].sort_values("sample")["value"].to_numpy()
        np.testing.assert_allclose(got, [logit(model, xs[i], t[i]) for i in range(2)], rtol=1e-10)
        ref = (xs - x).flatten(1).norm(dim=1)
        rs = evalxai.explain(model, xs, t, method="gradient")
        ratio = ((rs - r).flatten(1).abs().sum(1) / ref).numpy()
        assert (scalar(df, "continuity_ref") >= ratio - 1e-10).all()


def test_max_sensitivity_equals_explicit_loop():
    from evalxai.core.seeding import per_sample_noise

    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient")
    df = evalxai.score(model, x, t, r, metric="max_sensitivity", method="gradient", samples=4, radius=0.05)
    for i in range(3):
        delta = (per_sample_noise(x[i:i + 1], 4242, 4, "uniform") * 2 - 1) * 0.05  # same draws as in the metric
        ratios = [float((evalxai.explain(model, x[i:i + 1] + delta[k], t[i:i + 1], method="gradient")[0] - r[i]).norm()
                        / r[i].norm()) for k in range(4)]
        np.testing.assert_allclose(scalar(df, "max_sensitivity")[i], max(ratios), rtol=1e-10)
        np.testing.assert_allclose(scalar(df, "avg_sensitivity")[i], np.mean(ratios), rtol=1e-10)


def test_randomization_equals_explicit_loop_and_leaves_model_alone():
    import copy

    model, (x, t) = small_cnn(), data(4)
    before = copy.deepcopy(model.state_dict())
    r = evalxai.explain(model, x, t, method="gradient")
    df = evalxai.score(model, x, t, r, metric="randomization", method="gradient", seed=3)
    for key, v in model.state_dict().items():
        assert torch.equal(v, before[key])
    rand = copy.deepcopy(model)
    for k, name in enumerate(["4", "0"], start=1):  # top layer first
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(3 * 7919 + k)
            dict(rand.named_modules())[name].reset_parameters()
        rr = evalxai.explain(rand, x, t, method="gradient")
        got = df[(df["measure"] == "spearman_abs") & (df["step"] == k)].sort_values("sample")["value"].to_numpy()
        want = [spearmanr(r[i].abs().flatten(), rr[i].abs().flatten()).statistic for i in range(4)]
        np.testing.assert_allclose(got, want, rtol=1e-10)
    # a model-independent map does not decorrelate at all
    edge = evalxai.explain(model, x, t, method="edge")
    de = evalxai.score(model, x, t, edge, metric="randomization", method="edge")
    np.testing.assert_allclose(scalar(de, "spearman_full"), 1.0)


@pytest.mark.parametrize("metric,params,match", [
    ("selectivity", {"method": "gradient", "steps": 0}, "steps=0"),
    ("selectivity", {}, "needs|re-explains"),
    ("continuity", {"method": "gradient", "shift": 8}, "shift=8"),
    ("road", {"fractions": [0.5, 0.2]}, "fractions"),
    ("max_sensitivity", {"method": "gradient", "radius": 0}, "radius=0"),
])
def test_bad_parameters_are_named(metric, params, match):
    model, (x, t) = small_cnn(), data(2)
    with pytest.raises(ValueError, match=match):
        evalxai.score(model, x, t, torch.rand_like(x), metric=metric, **params)


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    from evalxai.metrics.randomization import average_ranks

    a = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_array_equal(average_ranks(a).numpy(), rankdata(a.numpy(), axis=1))
