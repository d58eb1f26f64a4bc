"""Metrics against explicit per-sample loops; known answers. Batch-size and memory-budget independence of every
metric: tests/test_contracts.py."""
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
