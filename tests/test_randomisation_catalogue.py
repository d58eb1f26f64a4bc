"""Randomisation catalogue: random_logit (torch SSIM), smooth_mprt, efficient_mprt. Each against an explicit
float64 per-sample loop, known answers (identical maps: SSIM 1; maps that do not depend on the parameters:
similarity 1, no entropy rise), rescaling. Batch-size independence and the model left alone: every metric's, in
tests/test_contracts.py."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import entropy, spearmanr

import evalxai
from evalxai.core.seeding import per_sample_noise, sample_generators
from evalxai.metrics.randomization import histogram_entropy, ssim
from tests.test_metrics import data, small_cnn


def scalar(df, measure):
    return df[df["measure"] == measure].sort_values("sample")["value"].to_numpy()


def randomised(model, seed, order):
    """Explicit cascade: Linear / Conv layers re-initialised one at a time, seed * 7919 + k (k = 1, 2, ...)."""
    names = ["0", "4"] if order == "bottom_up" else ["4", "0"]  # small_cnn's Conv2d and Linear
    rand = copy.deepcopy(model)
    for k, name in enumerate(names, start=1):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed * 7919 + k)
            dict(rand.named_modules())[name].reset_parameters()
        yield k, name, copy.deepcopy(rand)


# --- SSIM and random_logit ----------------------------------------------------------------------------------------

def test_ssim_matches_skimage_and_identical_maps_give_one():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 12, 10, generator=g, dtype=torch.float64)
    b = a + 0.7 * torch.randn(3, 2, 12, 10, generator=g, dtype=torch.float64)
    got = ssim(a, b, window=7).numpy()
    for i in range(3):
        rng = float(torch.cat([a[i], b[i]]).max() - torch.cat([a[i], b[i]]).min())
        want = metrics.structural_similarity(a[i].numpy(), b[i].numpy(), data_range=rng, channel_axis=0)
        np.testing.assert_allclose(got[i], want, rtol=1e-10)
    np.testing.assert_allclose(ssim(a, a).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(ssim(3 * a, 3 * b).numpy(), got, rtol=1e-10)  # scale-free
    assert np.isnan(ssim(torch.ones(1, 1, 8, 8), torch.ones(1, 1, 8, 8)).numpy()).all()  # no range: undefined
    with pytest.raises(ValueError, match="window=9"):
        ssim(a[:, :, :8, :8], b[:, :, :8, :8], window=9)


def test_random_logit_equals_explicit_loop():
    model, (x, t) = small_cnn(), data(4)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="random_logit", method="gradient_x_input", seed=4, window=5)
    sp = evalxai.score(model, x, t, r, metric="random_logit", method="gradient_x_input", seed=4,
                       similarity="spearman")
    others = df.sort_values("sample")["other_class"].to_numpy()
    for i in range(4):
        g = sample_generators(x[i:i + 1], 4)[0]
        c = int(torch.randint(4, (1,), generator=g))  # 5 classes: one of the 4 others, uniform
        c += int(c >= int(t[i]))
        assert others[i] == c != int(t[i])
        ro = evalxai.explain(model, x[i:i + 1], torch.tensor([c]), method="gradient_x_input")
        np.testing.assert_allclose(scalar(df, "random_logit")[i], float(ssim(r[i:i + 1], ro, 5)[0]), rtol=1e-12)
        want = spearmanr(r[i].flatten().numpy(), ro.flatten().numpy()).statistic
        np.testing.assert_allclose(scalar(sp, "random_logit")[i], want, rtol=1e-10)
    assert set(df["direction"]) == {"lower"}


def test_random_logit_known_answers():
    model, (x, t) = small_cnn(), data(3)
    edge = evalxai.explain(model, x, t, method="edge")  # the same map whatever the class: SSIM 1
    df = evalxai.score(model, x, t, edge, metric="random_logit", method="edge")
    np.testing.assert_allclose(scalar(df, "random_logit"), 1.0, rtol=1e-12)
    # invariant to a positive rescaling of the method's maps
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    a = evalxai.score(model, x, t, r, metric="random_logit", method="gradient_x_input")
    b = evalxai.score(model, x, t, 9 * r, metric="random_logit",
                      method=lambda m, xx, tt: 9 * evalxai.explain(m, xx, tt, method="gradient_x_input"))
    np.testing.assert_allclose(scalar(b, "random_logit"), scalar(a, "random_logit"), rtol=1e-10)


# --- efficient MPRT -----------------------------------------------------------------------------------------------

def test_histogram_entropy_matches_numpy_and_scipy():
    g = torch.Generator().manual_seed(1)
    rows = [torch.randn(50, generator=g, dtype=torch.float64), torch.full((50,), 2.5, dtype=torch.float64),
            torch.linspace(0, 1, 50, dtype=torch.float64),  # values on the bin edges
            torch.cat([torch.zeros(45), torch.ones(5)]).double(), torch.rand(50, generator=g).double() ** 4]
    a = torch.stack(rows)
    for bins in (2, 7, 100):
        want = [entropy(np.histogram(row.numpy(), bins=bins)[0]) for row in rows]
        np.testing.assert_allclose(histogram_entropy(a, bins).numpy(), want, rtol=1e-12, atol=1e-15)


def test_efficient_mprt_equals_explicit_loop_and_known_answers():
    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="efficient_mprt", method="gradient_x_input", seed=2, bins=20)
    *_, (_, _, rand) = randomised(model, 2, "top_down")
    rr = evalxai.explain(rand, x, t, method="gradient_x_input")
    for i in range(3):
        h0 = entropy(np.histogram(r[i].flatten().numpy(), bins=20)[0])
        h1 = entropy(np.histogram(rr[i].flatten().numpy(), bins=20)[0])
        np.testing.assert_allclose(scalar(df, "efficient_mprt")[i], (h1 - h0) / h0, rtol=1e-10)
        np.testing.assert_allclose(scalar(df, "entropy_random")[i], h1, rtol=1e-10)
    assert df[df["measure"] == "efficient_mprt"]["direction"].eq("higher").all()
    # a map that does not depend on the parameters does not gain complexity
    edge = evalxai.explain(model, x, t, method="edge")
    de = evalxai.score(model, x, t, edge, metric="efficient_mprt", method="edge")
    np.testing.assert_allclose(scalar(de, "efficient_mprt"), 0.0, atol=1e-12)
    # a constant trained map has no entropy: the rise is undefined
    const = lambda m, xx, tt: torch.ones_like(xx)  # noqa: E731
    dc = evalxai.score(model, x, t, torch.ones_like(x), metric="efficient_mprt", method=const)
    assert np.isnan(scalar(dc, "efficient_mprt")).all()
    # scale-free
    d9 = evalxai.score(model, x, t, 9 * r, metric="efficient_mprt", seed=2, bins=20,
                       method=lambda m, xx, tt: 9 * evalxai.explain(m, xx, tt, method="gradient_x_input"))
    np.testing.assert_allclose(scalar(d9, "efficient_mprt"), scalar(df, "efficient_mprt"), rtol=1e-9)


# --- smooth MPRT --------------------------------------------------------------------------------------------------

def test_smooth_mprt_equals_explicit_loop():
    model, (x, t) = small_cnn(), data(3)
    r = evalxai.explain(model, x, t, method="gradient")
    df = evalxai.score(model, x, t, r, metric="smooth_mprt", method="gradient", samples=3, noise=0.2, seed=1)

    def smoothed(m, i):
        xi = x[i:i + 1]
        sigma = 0.2 * float(xi.max() - xi.min())
        eps = per_sample_noise(xi, 1, 3, "normal") * sigma
        return torch.stack([evalxai.explain(m, xi + eps[s], t[i:i + 1], method="gradient")[0]
                            for s in range(3)]).mean(0)

    for i in range(3):
        ref = smoothed(model, i).flatten().numpy()
        for k, name, rand in randomised(model, 1, "bottom_up"):
            got = df[(df["measure"] == "spearman_abs") & (df["step"] == k) & (df["sample"] == i)]
            assert got["layer"].item() == name
            want = spearmanr(np.abs(ref), np.abs(smoothed(rand, i).flatten().numpy())).statistic
            np.testing.assert_allclose(got["value"].item(), want, rtol=1e-10)
        np.testing.assert_allclose(scalar(df, "spearman_abs_full")[i], want, rtol=1e-10)


def test_smooth_mprt_known_answer_and_scale():
    model, (x, t) = small_cnn(), data(3)
    edge = evalxai.explain(model, x, t, method="edge")  # does not depend on the parameters
    df = evalxai.score(model, x, t, edge, metric="smooth_mprt", method="edge", samples=2)
    np.testing.assert_allclose(scalar(df, "spearman_full"), 1.0, rtol=1e-12)
    np.testing.assert_allclose(scalar(df, "spearman_abs_full"), 1.0, rtol=1e-12)
    r = evalxai.explain(model, x, t, method="gradient")
    a = evalxai.score(model, x, t, r, metric="smooth_mprt", method="gradient", samples=2, order="top_down")
    b = evalxai.score(model, x, t, r, metric="smooth_mprt", samples=2, order="top_down",
                      method=lambda m, xx, tt: 4 * evalxai.explain(m, xx, tt, method="gradient"))
    np.testing.assert_allclose(scalar(b, "spearman_full"), scalar(a, "spearman_full"), rtol=1e-12)
    with pytest.raises(ValueError, match="order='sideways'"):
        evalxai.score(model, x, t, r, metric="smooth_mprt", method="gradient", order="sideways")


# --- every metric -------------------------------------------------------------------------------------------------

def test_bad_parameters_are_named():
    model, (x, t) = small_cnn(), data(2)
    r = torch.rand_like(x)
    with pytest.raises(ValueError, match="similarity='cosine'"):
        evalxai.score(model, x, t, r, metric="random_logit", method="gradient", similarity="cosine")
    with pytest.raises(ValueError, match="bins=1"):
        evalxai.score(model, x, t, r, metric="efficient_mprt", method="gradient", bins=1)
    with pytest.raises(ValueError, match="samples=0"):
        evalxai.score(model, x, t, r, metric="smooth_mprt", method="gradient", samples=0)


@pytest.mark.parametrize("metric", ["randomization", "efficient_mprt"])
def test_kept_randomised_copy_follows_tensors_written_through_data(metric):
    """The randomised copy is kept per model while its tensors' versions are unchanged; ``.data`` written in place
    keeps the version (here a BatchNorm's statistics and affine parameters, which the cascade does not
    re-initialise), and the score must be that of the model as it is now (a fresh copy of it)."""
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3)).double().eval()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 0])
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    evalxai.score(model, x, t, r, metric=metric, method="gradient_x_input", seed=1)
    bn = model[1]
    for v in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        v.data.mul_(3.0).add_(0.5)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    kept = evalxai.score(model, x, t, r, metric=metric, method="gradient_x_input", seed=1)
    fresh = evalxai.score(copy.deepcopy(model), x, t, r, metric=metric, method="gradient_x_input", seed=1)
    pd.testing.assert_frame_equal(kept, fresh)
