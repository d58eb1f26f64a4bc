"""Robustness catalogue: local Lipschitz estimate, avg-sensitivity, relative input / output / representation
stability, consistency. Each against an explicit float64 per-sample loop with the same seeded noise, known answers
on linear models, the flip (NaN) policy, rescaling. Batch-size independence and the model left alone: every
metric's, in tests/test_contracts.py."""

import numpy as np
import pytest
import torch
from torch import nn

import evalxai
from evalxai.core.seeding import per_sample_noise
from tests.conftest import no_hooks
from tests.test_metrics import data, small_cnn


def scalar(df, measure):
    return df[df["measure"] == measure].sort_values("sample")["value"].to_numpy()


def neighbours(xi, seed, samples, sigma, low=None, high=None):
    """The metric's Gaussian neighbours of one sample (1, ...) -> list of (1, ...), float64."""
    xs = xi + per_sample_noise(xi, seed, samples, "normal") * sigma  # (S, 1, ...)
    if low is not None:
        xs = xs.clamp(low, high)
    return [xs[k] for k in range(samples)]


def linear(weights, bias=False):
    """f(x) = W x on flattened 1x4x4 images; class c's weights are all ``weights[c]``."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, len(weights), bias=bias)).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(weights, dtype=torch.float64)[:, None].expand(-1, 16))
        if bias:
            model[1].bias.zero_()
    return model


def gxi(model, x, t):
    return evalxai.explain(model, x, t, method="gradient_x_input")


# --- local Lipschitz estimate -------------------------------------------------------------------------------------

def test_lipschitz_equals_explicit_loop():
    model, (x, t) = small_cnn(), data(3)
    r = gxi(model, x, t)
    df = evalxai.score(model, x, t, r, metric="local_lipschitz_estimate", method="gradient_x_input", samples=4,
                       noise=0.2, seed=5, low=0.0, high=1.0)
    for i in range(3):
        ratios = []
        for xs in neighbours(x[i:i + 1], 5, 4, 0.2, 0.0, 1.0):
            rs = gxi(model, xs, t[i:i + 1])
            ratios.append(float(np.linalg.norm((rs - r[i:i + 1]).numpy()) / np.linalg.norm((xs - x[i:i + 1]).numpy())))
        np.testing.assert_allclose(scalar(df, "local_lipschitz_estimate")[i], max(ratios), rtol=1e-10)
    assert set(df["direction"]) == {"lower"}


def test_lipschitz_known_answers_on_a_linear_model():
    # gradient x input of f_c = w_c * sum(x) is w_c * x: ||R - R'|| / ||x - x'|| = |w_c| for every draw
    model = linear([2.0, -3.0, 0.5])
    x, t = torch.rand(4, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    df = evalxai.score(model, x, t, gxi(model, x, t), metric="local_lipschitz_estimate", method="gradient_x_input",
                       samples=3)
    np.testing.assert_allclose(scalar(df, "local_lipschitz_estimate"), [2.0, 3.0, 0.5, 3.0], rtol=1e-12)
    # the gradient of a linear model does not move at all
    g = evalxai.explain(model, x, t, method="gradient")
    df = evalxai.score(model, x, t, g, metric="local_lipschitz_estimate", method="gradient", samples=3)
    np.testing.assert_allclose(scalar(df, "local_lipschitz_estimate"), 0.0, atol=1e-15)
    # raw maps as in the paper: scaling the method's maps by c scales the estimate by c
    df3 = evalxai.score(model, x, t, 3 * gxi(model, x, t), metric="local_lipschitz_estimate",
                        method=lambda m, xx, tt: 3 * gxi(m, xx, tt), samples=3)
    np.testing.assert_allclose(scalar(df3, "local_lipschitz_estimate"), [6.0, 9.0, 1.5, 9.0], rtol=1e-12)


# --- avg-sensitivity ----------------------------------------------------------------------------------------------

def test_avg_sensitivity_is_max_sensitivitys_mean_and_known_answer():
    model, (x, t) = small_cnn(), data(3)
    r = gxi(model, x, t)
    kw = dict(method="gradient_x_input", samples=4, radius=0.1)
    avg = evalxai.score(model, x, t, r, metric="avg_sensitivity", **kw)
    mx = evalxai.score(model, x, t, r, metric="max_sensitivity", **kw)
    np.testing.assert_array_equal(scalar(avg, "avg_sensitivity"), scalar(mx, "avg_sensitivity"))
    assert set(avg["measure"]) == {"avg_sensitivity"}
    # linear model, gradient x input: ||w (x + d) - w x|| / ||w x|| = ||d|| / ||x||, explicit with the same draws
    lin = linear([2.0, -3.0])
    x, t = torch.rand(3, 1, 4, 4, dtype=torch.float64) + 0.5, torch.tensor([0, 1, 1])
    df = evalxai.score(lin, x, t, gxi(lin, x, t), metric="avg_sensitivity", method="gradient_x_input", samples=5,
                       radius=0.3, seed=2)
    for i in range(3):
        d = (per_sample_noise(x[i:i + 1], 2 + 4242, 5, "uniform")[:, 0] * 2 - 1) * 0.3
        want = np.mean([float(d[k].norm() / x[i].norm()) for k in range(5)])
        np.testing.assert_allclose(scalar(df, "avg_sensitivity")[i], want, rtol=1e-12)
    # invariant to a positive rescaling of the method's maps
    df2 = evalxai.score(lin, x, t, 7 * gxi(lin, x, t), metric="avg_sensitivity",
                        method=lambda m, xx, tt: 7 * gxi(m, xx, tt), samples=5, radius=0.3, seed=2)
    np.testing.assert_allclose(scalar(df2, "avg_sensitivity"), scalar(df, "avg_sensitivity"), rtol=1e-12)


class Pinned(nn.Module):
    """Class 0 only at (about) x = anchor (logit 1e-3 * sum(x) vs 50 * ||x - anchor||^2): any noise of sigma 0.1
    flips the prediction of the anchor; a far-away input is class 1 whatever the noise."""

    def __init__(self, anchor):
        super().__init__()
        self.anchor = nn.Parameter(anchor.clone(), requires_grad=False)

    def forward(self, x):
        d = 50 * (x - self.anchor).pow(2).flatten(1).sum(1)
        return torch.stack([1e-3 * x.flatten(1).sum(1), d], 1)


def test_flip_policy_nan_on_flip():
    anchor = torch.rand(1, 4, 4, dtype=torch.float64)
    model = Pinned(anchor).double().eval()
    x = torch.stack([anchor, anchor + 1.0])
    t = torch.tensor([0, 1])
    r = gxi(model, x, t)
    for metric in ("local_lipschitz_estimate", "avg_sensitivity", "max_sensitivity"):
        kept = evalxai.score(model, x, t, r, metric=metric, method="gradient_x_input", samples=3)
        dropped = evalxai.score(model, x, t, r, metric=metric, method="gradient_x_input", samples=3, nan_on_flip=True)
        main = metric
        assert np.isfinite(scalar(kept, main)).all()  # default: flips are kept
        assert np.isnan(scalar(dropped, main)[0]) and np.isfinite(scalar(dropped, main)[1])
        np.testing.assert_allclose(scalar(dropped, main)[1], scalar(kept, main)[1], rtol=1e-12)
        np.testing.assert_array_equal(scalar(dropped, "flip_rate"), [1.0, 0.0])
    for kind in ("input", "output", "representation"):
        metric = f"relative_{kind}_stability"
        extra = {"layer": ""} if kind == "representation" else {}  # Pinned has no Linear: the root's output
        df = evalxai.score(model, x, t, r, metric=metric, method="gradient_x_input", samples=3, **extra)
        assert np.isnan(scalar(df, metric)[0]) and np.isfinite(scalar(df, metric)[1])  # default: the paper's
        kept = evalxai.score(model, x, t, r, metric=metric, method="gradient_x_input", samples=3, nan_on_flip=False,
                             **extra)
        assert np.isfinite(scalar(kept, metric)).all()


def test_partial_flips_drop_only_the_flipped_draws():
    # a 2-class linear model at its decision boundary: about half of the draws flip; the value is the max over the
    # draws that keep the prediction, explicit
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False)).double().eval()
    torch.manual_seed(1)
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 16, dtype=torch.float64))
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    w = model[1].weight.detach()
    x = x - ((w[0] - w[1]) @ x.flatten() / (w[0] - w[1]).pow(2).sum() * (w[0] - w[1]) + 1e-9 * (w[0] - w[1])).view(
        1, 1, 4, 4)  # logit 0 just above logit 1
    t = torch.tensor([0])
    r = gxi(model, x, t)
    df = evalxai.score(model, x, t, r, metric="relative_input_stability", method="gradient_x_input", samples=8,
                       noise=0.05)
    pred0 = int(model(x).argmax())
    vals, flipped = [], []
    for xs in neighbours(x, 0, 8, 0.05):
        rs = gxi(model, xs, t)
        num = np.linalg.norm(((r - rs) / r).numpy())
        den = max(np.linalg.norm(((x - xs) / x).numpy()), 1e-6)
        vals.append(num / den)
        flipped.append(int(model(xs).argmax()) != pred0)
    assert 0 < sum(flipped) < 8
    np.testing.assert_allclose(scalar(df, "relative_input_stability")[0],
                               max(v for v, f in zip(vals, flipped) if not f), rtol=1e-10)
    np.testing.assert_allclose(scalar(df, "flip_rate")[0], np.mean(flipped))


# --- relative stabilities -----------------------------------------------------------------------------------------

def _rel(ref, other, eps=1e-6):
    ref = ref.astype(np.float64)
    return (ref - other) / np.where(ref == 0, eps, ref)


def test_relative_stabilities_equal_explicit_loop():
    model, (x, t) = small_cnn(), data(3)
    x[0, 0, :2] = 0.0  # zero pixels: their relative change divides by eps_min
    r = gxi(model, x, t)
    kw = dict(method="gradient_x_input", samples=4, noise=0.1, seed=1, low=0.0, high=1.0)
    ris = scalar(evalxai.score(model, x, t, r, metric="relative_input_stability", **kw), "relative_input_stability")
    ros = scalar(evalxai.score(model, x, t, r, metric="relative_output_stability", **kw), "relative_output_stability")
    rrs_df = evalxai.score(model, x, t, r, metric="relative_representation_stability", **kw)
    rrs = scalar(rrs_df, "relative_representation_stability")
    assert set(rrs_df["layer"]) == {"4"}  # default: the input of the last executed Linear (after Flatten)
    rrs1 = scalar(evalxai.score(model, x, t, r, metric="relative_representation_stability", layer="1", **kw),
                  "relative_representation_stability")

    def feats(xx):  # penultimate features and the ReLU output, by hand
        with torch.no_grad():
            a = model[1](model[0](xx))
            return model[3](model[2](a)).flatten(1).numpy(), a.flatten(1).numpy(), model(xx).numpy()

    for i in range(3):
        xi, ri = x[i:i + 1], r[i:i + 1].numpy()
        pen, relu, logit = feats(xi)
        want = {"ris": [], "ros": [], "rrs": [], "rrs1": []}
        for xs in neighbours(xi, 1, 4, 0.1, 0.0, 1.0):
            num = np.linalg.norm(_rel(ri, gxi(model, xs, t[i:i + 1]).numpy()))
            pen_s, relu_s, logit_s = feats(xs)
            want["ris"].append(num / max(np.linalg.norm(_rel(xi.numpy(), xs.numpy())), 1e-6))
            want["ros"].append(num / max(np.linalg.norm(logit - logit_s), 1e-6))
            want["rrs"].append(num / max(np.linalg.norm(_rel(pen, pen_s)), 1e-6))
            want["rrs1"].append(num / max(np.linalg.norm(_rel(relu, relu_s)), 1e-6))
        for got, key in ((ris, "ris"), (ros, "ros"), (rrs, "rrs"), (rrs1, "rrs1")):
            np.testing.assert_allclose(got[i], max(want[key]), rtol=1e-9, err_msg=key)


def test_relative_stability_known_answer_and_rescaling():
    # linear model, gradient x input, positive inputs: (R - R')/R = (x - x')/x element-wise, so RIS = 1 exactly
    model = linear([2.0, -3.0])
    x, t = torch.rand(3, 1, 4, 4, dtype=torch.float64) + 0.5, torch.tensor([0, 1, 0])
    df = evalxai.score(model, x, t, gxi(model, x, t), metric="relative_input_stability", method="gradient_x_input",
                       samples=3, nan_on_flip=False)
    np.testing.assert_allclose(scalar(df, "relative_input_stability"), 1.0, rtol=1e-10)
    # invariant to a positive rescaling of the method's maps (percent changes)
    model, (x, t) = small_cnn(), data(3)
    for metric in ("relative_input_stability", "relative_output_stability", "relative_representation_stability"):
        a = evalxai.score(model, x, t, gxi(model, x, t), metric=metric, method="gradient_x_input", samples=3)
        b = evalxai.score(model, x, t, 5 * gxi(model, x, t), metric=metric,
                          method=lambda m, xx, tt: 5 * gxi(m, xx, tt), samples=3)
        np.testing.assert_allclose(scalar(b, metric), scalar(a, metric), rtol=1e-10)


def test_zero_map_is_nan_for_relative_stabilities_and_sensitivity():
    model, (x, t) = small_cnn(), data(2)
    zero = lambda m, xx, tt: torch.zeros_like(xx)  # noqa: E731
    for metric in ("relative_input_stability", "avg_sensitivity"):
        df = evalxai.score(model, x, t, torch.zeros_like(x), metric=metric, method=zero, samples=2)
        assert np.isnan(scalar(df, metric)).all()
    df = evalxai.score(model, x, t, torch.zeros_like(x), metric="local_lipschitz_estimate", method=zero, samples=2)
    np.testing.assert_array_equal(scalar(df, "local_lipschitz_estimate"), 0.0)


class Reordered(nn.Module):
    """The head is registered before the body, and the forward flattens functionally."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(8, 3)
        self.body = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(torch.relu(self.body(x))), 1))


def test_representation_layer_found_by_execution_order():
    model = Reordered().double().eval()
    x, t = data(2)[0], torch.tensor([0, 2])
    r = gxi(model, x, t)
    df = evalxai.score(model, x, t, r, metric="relative_representation_stability", method="gradient_x_input",
                       samples=2)
    assert set(df["layer"]) == {"head"} and no_hooks(model)
    with pytest.raises(ValueError, match="layer='nope'"):
        evalxai.score(model, x, t, r, metric="relative_representation_stability", method="gradient_x_input",
                      samples=2, layer="nope")


# --- consistency --------------------------------------------------------------------------------------------------

def test_consistency_equals_explicit_loop_and_is_scale_free():
    model, (x, t) = small_cnn(), data(4)
    r = gxi(model, x, t)
    kw = dict(method="gradient_x_input", samples=6, noise=0.3, top_k=2, seed=3, low=0.0, high=1.0)
    df = evalxai.score(model, x, t, r, metric="consistency", **kw)

    def disc(a):
        a = a.flatten().numpy()
        top = sorted(np.argsort(-np.abs(a), kind="stable")[:2])
        return tuple(top), tuple(np.sign(a[top]))

    for i in range(4):
        pred = int(model(x[i:i + 1]).argmax())
        same, agree = 0, 0
        for xs in neighbours(x[i:i + 1], 3, 6, 0.3, 0.0, 1.0):
            if disc(gxi(model, xs, t[i:i + 1])[0]) == disc(r[i]):
                same += 1
                agree += int(model(xs).argmax()) == pred
        np.testing.assert_allclose(scalar(df, "match_rate")[i], same / 6)
        want = agree / same if same else np.nan
        np.testing.assert_allclose(scalar(df, "consistency")[i], want)
    scaled = evalxai.score(model, x, t, 4 * r, metric="consistency", **kw)
    np.testing.assert_array_equal(scalar(scaled, "consistency"), scalar(df, "consistency"))
    assert df[df["measure"] == "consistency"]["direction"].eq("higher").all()


def test_consistency_known_answer_fixed_maps():
    # the gradient of a linear model never changes: every neighbour shares the explanation, and consistency is the
    # fraction of neighbours that keep the prediction (1 far from the boundary)
    model = linear([2.0, -3.0, 1.0])
    x, t = torch.rand(3, 1, 4, 4, dtype=torch.float64) + 0.5, torch.tensor([0, 1, 2])
    g = evalxai.explain(model, x, t, method="gradient")
    df = evalxai.score(model, x, t, g, metric="consistency", method="gradient", samples=4, noise=0.01)
    np.testing.assert_array_equal(scalar(df, "match_rate"), 1.0)
    np.testing.assert_array_equal(scalar(df, "consistency"), 1.0)


def test_consistency_against_a_fixed_pool_is_the_papers_batch_estimate():
    # the pool = the whole batch: the paper's (and Quantus's) batch formula, with self-matches skipped; scoring the
    # batch in chunks against the same pool gives the same values
    model, (x, t) = small_cnn(), data(12)
    r = torch.zeros_like(x)
    r[:, 0, 0, :3] = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.5, 1.0]]).repeat(4, 1)  # 3 map kinds
    r[5, 0, 0, 0] = -1.0  # a sign flip: no other sample shares it
    df = evalxai.score(model, x, t, r, metric="consistency", top_k=1, reference=(x, r))
    pred = model(x).argmax(1).numpy()
    label = [(int(r[i].flatten().abs().argmax()), float(torch.sign(r[i].flatten()[r[i].flatten().abs().argmax()])))
             for i in range(12)]
    for i in range(12):
        same = [j for j in range(12) if j != i and label[j] == label[i]]
        want = np.mean([pred[j] == pred[i] for j in same]) if same else np.nan
        np.testing.assert_allclose(scalar(df, "consistency")[i], want)
        np.testing.assert_allclose(scalar(df, "match_rate")[i], len(same) / 12)
    assert np.isnan(scalar(df, "consistency")[5])
    parts = [evalxai.score(model, x[i:i + 5], t[i:i + 5], r[i:i + 5], metric="consistency", top_k=1,
                           reference=(x, r)) for i in range(0, 12, 5)]
    got = np.concatenate([scalar(p, "consistency") for p in parts])
    np.testing.assert_array_equal(got, scalar(df, "consistency"))
    with pytest.raises(ValueError, match="reference must be a pair"):
        evalxai.score(model, x, t, r, metric="consistency", reference=(x, r[:, :, :2]))


def test_zero_reference_skip_leaves_zero_elements_out():
    model, (x, t) = small_cnn(), data(2)
    x[:, 0, :3] = 0.0
    r = gxi(model, x, t)  # zero where x is zero
    df = evalxai.score(model, x, t, r, metric="relative_input_stability", method="gradient_x_input", samples=3,
                       zero_reference="skip", nan_on_flip=False, low=0.0, high=1.0)
    for i in range(2):
        xi, ri = x[i:i + 1].numpy(), r[i:i + 1].numpy()
        vals = []
        for xs in neighbours(x[i:i + 1], 0, 3, 0.05, 0.0, 1.0):
            rs = gxi(model, xs, t[i:i + 1]).numpy()
            num = np.linalg.norm(np.where(ri == 0, 0.0, (ri - rs) / np.where(ri == 0, 1, ri)))
            den = np.linalg.norm(np.where(xi == 0, 0.0, (xi - xs.numpy()) / np.where(xi == 0, 1, xi)))
            vals.append(num / max(den, 1e-6))
        np.testing.assert_allclose(scalar(df, "relative_input_stability")[i], max(vals), rtol=1e-10)


# --- every metric -------------------------------------------------------------------------------------------------

def test_float32_known_answers():
    # float32 draws differ from float64 ones (other bytes, other seeds), so compare known answers
    model = linear([2.0, -3.0]).float()
    x, t = torch.rand(2, 1, 4, 4) + 0.5, torch.tensor([0, 1])
    r = gxi(model, x, t)
    df = evalxai.score(model, x, t, r, metric="local_lipschitz_estimate", method="gradient_x_input", samples=2)
    np.testing.assert_allclose(scalar(df, "local_lipschitz_estimate"), [2.0, 3.0], rtol=1e-5)
    df = evalxai.score(model, x, t, r, metric="relative_input_stability", method="gradient_x_input", samples=2)
    np.testing.assert_allclose(scalar(df, "relative_input_stability"), 1.0, rtol=1e-4)


@pytest.mark.parametrize("metric,params,match", [
    ("local_lipschitz_estimate", {"noise": 0}, "noise=0"),
    ("avg_sensitivity", {"samples": 0}, "samples=0"),
    ("relative_input_stability", {"eps_min": 0}, "eps_min=0"),
    ("relative_output_stability", {"p": 0.5}, "p=0.5"),
    ("relative_input_stability", {"zero_reference": "drop"}, "zero_reference='drop'"),
    ("consistency", {"top_k": 0}, "top_k=0"),
])
def test_bad_parameters_are_named(metric, params, match):
    model, (x, t) = small_cnn(), data(2)
    with pytest.raises(ValueError, match=match):
        evalxai.score(model, x, t, torch.rand_like(x), metric=metric, method="gradient", **params)


def test_tabular_inputs():
    # (N, D) inputs: every noise-based metric runs; random_logit needs similarity='spearman' there
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    x, t = torch.rand(4, 6, dtype=torch.float64) + 0.1, torch.tensor([0, 1, 2, 0])
    r = gxi(model, x, t)
    for metric in ("local_lipschitz_estimate", "avg_sensitivity", "relative_input_stability",
                   "relative_representation_stability", "consistency"):
        df = evalxai.score(model, x, t, r, metric=metric, method="gradient_x_input", samples=2)
        assert len(scalar(df, metric)) == 4
    df = evalxai.score(model, x, t, r, metric="random_logit", method="gradient_x_input", similarity="spearman")
    assert np.isfinite(scalar(df, "random_logit")).all()
    with pytest.raises(ValueError, match="similarity='spearman'"):
        evalxai.score(model, x, t, r, metric="random_logit", method="gradient_x_input")


@pytest.mark.parametrize("k", [1, 2, 7, 64])
def test_top_k_sign_takes_the_lower_index_among_ties(k):
    """The discretisation of consistency: the k largest |R|, ties to the lower index (Dasgupta et al.'s top_n_sign
    as the paper means it), as the sorted index set with the signs there; checked against an explicit loop on maps
    of few distinct values (many ties, zeros of both signs)."""
    from evalxai.metrics.robustness import top_k_sign

    torch.manual_seed(7)
    r = torch.randint(-3, 4, (3, 2, 64)).float()
    r[..., 0] = -0.0
    idx, sign = top_k_sign(r, k)
    for i in range(3):
        for j in range(2):
            row = r[i, j].tolist()
            chosen = sorted(sorted(range(64), key=lambda d: (-abs(row[d]), d))[:k])
            assert idx[i, j].tolist() == chosen
            assert sign[i, j].tolist() == [float(np.sign(row[d])) for d in chosen]
