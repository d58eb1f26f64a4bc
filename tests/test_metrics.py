"""Metrics against explicit per-sample loops; batch-size independence; known answers."""
import numpy as np
import pytest
import torch
from torch import nn

import evalxai


def small_cnn(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 4, 5, bias=bias)).double().eval()


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(n) % 5


def loop_pixel_flipping(model, x, t, r, order, patch, per_step):
    """Reference: one sample, one step at a time."""
    curves = []
    for i in range(len(x)):
        rel = r[i].sum(0)
        hp, wp = -(-8 // patch), -(-8 // patch)
        pr = np.zeros(hp * wp)
        for a in range(hp):
            for b in range(wp):
                pr[a * wp + b] = float(rel[a * patch:(a + 1) * patch, b * patch:(b + 1) * patch].sum())
        idx = np.argsort(-pr if order == "morf" else pr, kind="stable")
        xi = x[i].clone()
        ys = []
        k_max = -(-len(pr) // per_step)
        for k in range(k_max + 1):
            if k > 0:
                for p in idx[(k - 1) * per_step: k * per_step]:
                    a, b = divmod(int(p), wp)
                    xi[:, a * patch:(a + 1) * patch, b * patch:(b + 1) * patch] = 0
            with torch.no_grad():
                ys.append(float(model(xi[None])[0, t[i]]))
        curves.append(ys)
    return np.array(curves)


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("patch,per_step", [(1, 5), (3, 1)])
def test_pixel_flipping_equals_explicit_loop(order, patch, per_step):
    model, (x, t) = small_cnn(), data(4)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="pixel_flipping", order=order, patch_size=patch, per_step=per_step)
    curve = df[df["measure"] == f"curve_{order}"].pivot(index="sample", columns="step", values="value").to_numpy()
    want = loop_pixel_flipping(model, x, t, r, order, patch, per_step)
    np.testing.assert_allclose(curve, want, rtol=1e-10, atol=1e-10)
    aopc = df[df["measure"] == f"aopc_{order}"].sort_values("sample")["value"].to_numpy()
    np.testing.assert_allclose(aopc, (want[:, :1] - want).mean(1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("metric,params", [
    ("pixel_flipping", {"patch_size": 2, "per_step": 3, "baseline": "uniform"}),
    ("pixel_flipping", {"patch_size": 2, "order": "random", "score_space": "softmax"}),
    ("conservation", {"reference": "zero", "method": "lrp_epsilon_plus"}),
    ("sparseness", {}),
])
def test_metric_batch_size_independence(metric, params):
    assert_batch_size_independent(metric, params, rtol=1e-9)


def score_in_parts(model, x, t, r, metric, n, size, **params):
    """``evalxai.score`` of the first ``n`` samples, ``size`` at a time, numbered as in the whole batch."""
    import pandas as pd

    parts = []
    for i in range(0, n, size):
        p = evalxai.score(model, x[i:i + size], t[i:i + size], r[i:i + size], metric=metric, **params)
        p["sample"] += i
        parts.append(p)
    return pd.concat(parts)


def assert_same_rows(got, full, n, keys=("measure", "sample", "step"), rtol=1e-10, atol=1e-12):
    """The rows of ``got`` equal the rows of ``full`` for its first ``n`` samples (both sorted by ``keys``)."""
    keys = list(keys)
    got = got.sort_values(keys).reset_index(drop=True)
    want = full[full["sample"] < n].sort_values(keys).reset_index(drop=True)
    assert len(got) == len(want) and (got["measure"] == want["measure"]).all()
    np.testing.assert_allclose(got["value"].to_numpy(), want["value"].to_numpy(), rtol=rtol, atol=atol)


def assert_batch_size_independent(metric, params, rtol):
    """Scores of 14 samples in batches of 1 and 7 equal those of one batch of 64; returns the full frame."""
    model, (x, t) = small_cnn(), data(64)
    r = evalxai.explain(model, x, t, method="lrp_epsilon_plus")
    full = evalxai.score(model, x, t, r, metric=metric, **params)
    for bs in (1, 7):
        assert_same_rows(score_in_parts(model, x, t, r, metric, 14, bs, **params), full, 14, rtol=rtol, atol=1e-10)
    return model, x, t, r, full


def test_morf_of_exact_attributions_beats_random():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).double().eval()
    x, t = data(16)
    r = evalxai.explain(model, x, t, method="gradient_x_input")  # exact contributions of a linear model
    morf = evalxai.score(model, x, t, r, metric="pixel_flipping", order="morf", patch_size=2)
    rnd = evalxai.score(model, x, t, r, metric="pixel_flipping", order="random", patch_size=2)
    a_morf = morf[morf["measure"] == "aopc_morf"]["value"].to_numpy()
    a_rnd = rnd[rnd["measure"] == "aopc_random"]["value"].to_numpy()
    assert (a_morf >= a_rnd - 1e-12).all()


def test_conservation_residual_zero_for_lrp0_on_bias_free_relu_net():
    model, (x, t) = small_cnn(bias=False), data(6)
    r = evalxai.explain(model, x, t, method="lrp_0")
    df = evalxai.score(model, x, t, r, metric="conservation", method="lrp_0")
    assert df[df["measure"] == "abs_relative_residual"]["value"].max() < 1e-10
    layers = df[df["measure"].str.startswith("layer_residual:")]
    assert len(layers) == 2 * 6 and layers["value"].abs().max() < 1e-10


def test_gini_known_values():
    from evalxai.metrics.complexity import gini

    one_hot = torch.zeros(1, 10)
    one_hot[0, 3] = 5.0
    np.testing.assert_allclose(gini(one_hot).numpy(), [0.9])
    np.testing.assert_allclose(gini(torch.ones(1, 10)).numpy(), [0.0], atol=1e-12)


@pytest.mark.parametrize("params,match", [
    ({"patch_size": 9}, "patch_size=9"), ({"baseline": "purple"}, "baseline 'purple'"),
    ({"score_space": "prob"}, "score_space 'prob'"), ({"steps": 0}, "steps=0"), ({"order": "up"}, "order 'up'"),
])
def test_pixel_flipping_bad_parameters(params, match):
    model, (x, t) = small_cnn(), data(2)
    with pytest.raises(ValueError, match=match):
        evalxai.score(model, x, t, torch.rand_like(x), metric="pixel_flipping", **params)


def test_unknown_metric_lists_names():
    model, (x, t) = small_cnn(), data(2)
    with pytest.raises(KeyError, match="pixel_flipping"):
        evalxai.score(model, x, t, torch.rand_like(x), metric="nope")
