"""Complexity (complexity, effective_complexity) and axiomatic (non_sensitivity, input_invariance) metrics:
explicit float64 computations, known answers, batch-size independence, rescaling invariance, the model untouched."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import evalxai
from evalxai.core.baselines import reference
from evalxai.metrics.axiomatic import shift_absorbing_model
from evalxai.models.zoo import MLP, LeNet
from tests.conftest import no_hooks


def values(df, measure):
    return df[df.measure == measure].sort_values("sample").value.to_numpy()


def one_by_one(model, x, t, r, metric, **kw):
    """Scores of each sample scored alone (batch of one), concatenated."""
    return pd.concat(
        [evalxai.score(model, x[i:i + 1], t[i:i + 1], r[i:i + 1], metric=metric, **kw).assign(sample=i)
         for i in range(len(x))], ignore_index=True)


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    model = LeNet((1, 12, 12), channels=(4, 6), hidden=16).eval()
    x = torch.rand(5, 1, 12, 12)
    x[:, :, :3] = 0.0  # a black band, as MNIST's background
    return model, x, model(x).argmax(1)


# ---------------------------------------------------------------- complexity


def test_complexity_explicit_float64_and_rescaling():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 3)).eval()
    x = torch.randn(4, 2, 5, 5)
    r = torch.randn(4, 2, 5, 5)
    r[1, :, :2] = 0.0
    t = torch.zeros(4, dtype=torch.long)
    got = values(evalxai.score(model, x, t, r, metric="complexity"), "entropy")
    a = np.abs(r.double().numpy().reshape(4, -1))
    expected = []
    for row in a:
        p = row / row.sum()
        expected.append(-sum(pi * math.log(pi) for pi in p if pi > 0))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    for scale in (3.7, -0.01):  # entropy of |R| / sum |R| does not see the scale or the sign
        again = values(evalxai.score(model, x, t, r * scale, metric="complexity"), "entropy")
        np.testing.assert_allclose(again, got, rtol=1e-6)
    float64 = values(evalxai.score(model.double(), x.double(), t, r.double(), metric="complexity"), "entropy")
    np.testing.assert_allclose(float64, expected, rtol=1e-12)


def test_complexity_known_answers():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.rand(4, 1, 4, 4)
    t = torch.zeros(4, dtype=torch.long)
    r = torch.zeros(4, 1, 4, 4)
    r[0] = 1.0  # uniform: maximal entropy log(D)
    r[1, 0, 2, 3] = -5.0  # one-hot: 0
    r[2, 0, 0, :2] = 2.0  # two equal features: log 2
    df = evalxai.score(model, x, t, r, metric="complexity")  # sample 3: all zero -> NaN
    h = values(df, "entropy")
    np.testing.assert_allclose(h[:3], [math.log(16), 0.0, math.log(2)], atol=1e-12)
    assert np.isnan(h[3])
    assert set(df.direction) == {"lower"}


def test_effective_complexity_explicit_and_scale():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    x = torch.rand(3, 3, 4, 4)
    t = torch.zeros(3, dtype=torch.long)
    r = torch.randn(3, 3, 4, 4) * torch.logspace(-8, 0, 48).view(1, 3, 4, 4)  # magnitudes over 8 decades
    r[2] = 0.0
    for eps in (1e-5, 1e-2, 0.0):
        got = values(evalxai.score(model, x, t, r, metric="effective_complexity", eps=eps), "effective_complexity")
        a = np.abs(r.double().numpy().reshape(3, -1))
        expected = [int((row > eps * row.max()).sum()) if row.max() > 0 else 0 for row in a]
        np.testing.assert_array_equal(got, expected)
        scaled = values(evalxai.score(model, x, t, r * 1e3, metric="effective_complexity", eps=eps),
                        "effective_complexity")
        np.testing.assert_array_equal(scaled, expected)
    assert 0 < got[0] == 48  # eps=0: every nonzero element
    with pytest.raises(ValueError, match="effective_complexity: eps=1.5"):
        evalxai.score(model, x, t, r, metric="effective_complexity", eps=1.5)


def test_complexity_metrics_batch_size_independent(lenet):
    model, x, t = lenet
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    for metric in ("complexity", "effective_complexity"):
        whole = evalxai.score(model, x, t, r, metric=metric)
        alone = one_by_one(model, x, t, r, metric)
        np.testing.assert_array_equal(whole.sort_values("sample").value.to_numpy(),
                                      alone.sort_values("sample").value.to_numpy())


# ---------------------------------------------------------------- non-sensitivity


@torch.no_grad()
def explicit_non_sensitivity(model, x, t, r, eps, tol, patch, ref):
    """Per sample, one patch at a time, float64: |{zero relevance and output moves} U {relevance and it does not}|."""
    model = model.double()
    x, ref = x.double(), ref.double()
    a = r.double().abs().numpy()
    h, w = x.shape[-2:]
    patches = [(i, j) for i in range(0, h, patch) for j in range(0, w, patch)]
    counts = []
    for n in range(len(x)):
        f0 = model(x[n:n + 1])[0, t[n]].item()
        rel = [float(a[n, :, i:i + patch, j:j + patch].sum()) for i, j in patches]
        perturbed = []
        for i, j in patches:
            xp = x[n].clone()
            xp[:, i:i + patch, j:j + patch] = ref[n, :, i:i + patch, j:j + patch]
            perturbed.append(xp)
        scores = model(torch.stack(perturbed))[:, t[n]].tolist()  # one forward per patch, in one call
        count = 0
        for rp, fp in zip(rel, scores):
            moved = abs(fp - f0) > tol
            zero = rp <= eps * max(rel)
            count += int(zero and moved) + int(not zero and not moved)
        counts.append(count)
    return np.array(counts, dtype=float)


@torch.no_grad()
def test_non_sensitivity_linear_model_known_answer():
    """f = w . x with w zero on half the features: the gradient (= w) scores 0; gradient x input is charged for the
    features where x = 0 but w != 0 (zero relevance, yet the output moves when they are perturbed)."""
    d = 12
    w = torch.zeros(2, d, dtype=torch.float64)
    w[0, ::2] = torch.linspace(1, 2, d // 2, dtype=torch.float64)
    model = nn.Linear(d, 2, bias=False).double().eval()
    model.weight.copy_(w)
    x = torch.rand(3, d, dtype=torch.float64) + 0.1
    x[0, 0] = x[1, :4] = 0.0  # features 0 (sample 0), 0 and 2 (sample 1) are sensitive but get zero G x I
    t = torch.zeros(3, dtype=torch.long)
    grad = w[0].expand(3, d).clone()
    df = evalxai.score(model, x, t, grad, metric="non_sensitivity", tolerance=1e-9)
    np.testing.assert_array_equal(values(df, "non_sensitivity"), [0, 0, 0])
    gxi = grad * x
    df = evalxai.score(model, x, t, gxi, metric="non_sensitivity", tolerance=1e-9)
    np.testing.assert_array_equal(values(df, "non_sensitivity"), [1, 2, 0])
    np.testing.assert_array_equal(values(df, "zero_but_sensitive"), [1, 2, 0])
    np.testing.assert_array_equal(values(df, "relevant_but_insensitive"), [0, 0, 0])
    # a map that puts relevance on the ignored features is charged for each of them, and for the missed ones
    wrong = torch.zeros(3, d, dtype=torch.float64)
    wrong[:, 1::2] = 1.0
    df = evalxai.score(model, x, t, wrong, metric="non_sensitivity", tolerance=1e-9)
    np.testing.assert_array_equal(values(df, "non_sensitivity"), [d, d, d])
    assert set(df.direction) == {"lower"}


@pytest.mark.parametrize("patch,baseline", [(1, "uniform"), (2, "zero"), (5, "uniform")])
def test_non_sensitivity_explicit_float64(lenet, patch, baseline):
    x = lenet[1][:2]
    model = LeNet((1, 12, 12), channels=(4, 6), hidden=16).eval()
    with torch.no_grad():  # dead units: a quarter of the first layer's filters never fire
        model.features[0].bias[:1] = -50.0
    model = model.double()
    xd = x.double()
    t = model(xd).argmax(1)
    r = evalxai.explain(model, xd, t, method="gradient_x_input")
    r[r.abs() < 1e-3 * r.abs().max()] = 0.0  # some exactly-zero relevance
    df = evalxai.score(model, xd, t, r, metric="non_sensitivity", patch_size=patch, baseline=baseline, seed=3,
                       tolerance=1e-6, eps=1e-4)
    ref = reference(xd, baseline, low=0.0, high=1.0, seed=3)
    expected = explicit_non_sensitivity(model, xd, t, r, 1e-4, 1e-6, patch, ref)
    np.testing.assert_array_equal(values(df, "non_sensitivity"), expected)
    parts = values(df, "zero_but_sensitive") + values(df, "relevant_but_insensitive")
    np.testing.assert_array_equal(parts, expected)


def test_non_sensitivity_batch_size_and_scale_independent(lenet):
    model, x, t = lenet
    x, t = x[:2], t[:2]
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    whole = evalxai.score(model, x, t, r, metric="non_sensitivity", seed=1)
    alone = one_by_one(model, x, t, r, "non_sensitivity", seed=1)
    key = ["measure", "sample"]
    np.testing.assert_array_equal(whole.sort_values(key).value.to_numpy(), alone.sort_values(key).value.to_numpy())
    capped = evalxai.score(model, x, t, r, metric="non_sensitivity", seed=1, batch_size=7)  # stacks in chunks of 7
    np.testing.assert_array_equal(whole.value.to_numpy(), capped.value.to_numpy())
    scaled = evalxai.score(model, x, t, r * 250.0, metric="non_sensitivity", seed=1)
    np.testing.assert_array_equal(whole.value.to_numpy(), scaled.value.to_numpy())
    assert (values(whole, "non_sensitivity") > 0).all()  # black band: zero G x I but the output depends on it
    with pytest.raises(ValueError, match="patch_size=20"):
        evalxai.score(model, x, t, r, metric="non_sensitivity", patch_size=20)


# ---------------------------------------------------------------- input invariance


class Doubling(nn.Module):
    """Preprocesses before its first layer: a shift cannot be absorbed by that layer's bias."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(2 * x)


@pytest.mark.parametrize("build,shape", [
    (lambda: MLP((1, 4, 4), 3, hidden=(8,)), (5, 1, 4, 4)),
    (lambda: LeNet((2, 8, 8), 3, channels=(3, 4), hidden=8, bias=False), (5, 2, 8, 8)),  # zero padding, no bias
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding="same", dilation=2), nn.ReLU(), nn.Flatten(),
                           nn.Linear(3 * 8 * 8, 3)), (5, 2, 8, 8)),
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Flatten(),
                           nn.Linear(3 * 8 * 8, 3)), (5, 2, 8, 8)),
    (lambda: nn.Sequential(nn.Conv1d(2, 3, 3, padding=2), nn.Flatten(), nn.Linear(3 * 10, 3)), (5, 2, 8)),
    (lambda: nn.Linear(6, 3), (5, 6)),  # the model is its own first layer
])
def test_shift_absorbing_model_identical_outputs(build, shape):
    torch.manual_seed(4)
    model = build().double().eval()
    x = torch.rand(*shape, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for shift in (-1.0, 0.37):
        shifted = shift_absorbing_model(model, x, shift)
        torch.testing.assert_close(shifted(x + shift), model(x), rtol=1e-12, atol=1e-12)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is unchanged
    assert no_hooks(model)


@pytest.mark.parametrize("build,shape", [
    (lambda: LeNet((2, 8, 8), 3, channels=(3, 4), hidden=8), (5, 2, 8, 8)),  # zero padding: the first layer wrapped
    (lambda: nn.Linear(6, 3), (5, 6)),  # the model is its own first layer
])
def test_kept_shift_absorbing_copy_follows_weights_written_through_data(build, shape):
    """The copy is kept per model while its parameters' versions are unchanged; ``p.data`` written in place keeps
    the version, and the copy must still be the model as it is now (its first layer too)."""
    torch.manual_seed(5)
    model = build().double().eval()
    x = torch.rand(*shape, dtype=torch.float64)
    first = shift_absorbing_model(model, x, 0.5)
    for p in model.parameters():
        p.data.mul_(-1.5).add_(0.25)
    again = shift_absorbing_model(model, x, 0.5)
    assert again is first  # kept, not rebuilt
    torch.testing.assert_close(again(x + 0.5), model(x), rtol=1e-12, atol=1e-12)


def test_shift_absorbing_model_refuses_preprocessing():
    with pytest.raises(ValueError, match="input_invariance: .*first layer 'fc'"):
        shift_absorbing_model(Doubling(), torch.rand(2, 6), -1.0)


def test_input_invariance_gradient_yes_gradient_x_input_no(lenet):
    model, x, t = lenet
    model.train()  # score explains in eval mode and gives the mode back
    with pytest.warns(UserWarning, match="training mode"):
        grad = evalxai.explain(model, x, t, method="gradient")
        df = evalxai.score(model, x, t, grad, metric="input_invariance", method="gradient")
    assert model.training and no_hooks(model)
    model.eval()
    np.testing.assert_allclose(values(df, "max_relative_difference"), 0.0, atol=1e-5)
    np.testing.assert_array_equal(values(df, "unchanged_share"), 1.0)
    gxi = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, gxi, metric="input_invariance", method="gradient_x_input")
    # explicit: R' = grad * (x + c), R = grad * x, so |R' - R| = |c grad|
    g = grad.double().reshape(len(x), -1)
    xd = x.double().reshape(len(x), -1)
    scale = torch.maximum((g * xd).abs().max(1).values, (g * (xd - 1)).abs().max(1).values)
    np.testing.assert_allclose(values(df, "max_relative_difference"), (g.abs().max(1).values / scale).numpy(),
                               rtol=1e-4)
    share = ((g.abs() <= 1e-4 * scale.unsqueeze(1)).double().mean(1)).numpy()
    np.testing.assert_allclose(values(df, "unchanged_share"), share, atol=2 / g.shape[1])
    assert (values(df, "unchanged_share") < 0.9).all()
    assert set(df[df.measure == "unchanged_share"].direction) == {"higher"}


def test_input_invariance_reference_moves_with_the_data(lenet):
    """Integrated Gradients from a black image: invariant when the black image moves with the shift (the
    default), not when the reference stays at 0 (Kindermans et al. 2017, section 3)."""
    model, x, t = lenet
    ig = evalxai.explain(model, x, t, method="integrated_gradients", steps=8)
    kw = dict(metric="input_invariance", method="integrated_gradients", method_params={"steps": 8})
    moved = evalxai.score(model, x, t, ig, **kw)
    np.testing.assert_allclose(values(moved, "max_relative_difference"), 0.0, atol=1e-4)
    fixed = evalxai.score(model, x, t, ig, shift_bounds=False, **kw)
    assert (values(fixed, "max_relative_difference") > 0.1).all()


def test_input_invariance_lrp_runs_and_batch_size_independent(lenet):
    """The LRP engine explains the copy (its first conv behind a constant pad); the box rule's bounds move."""
    model, x, t = lenet
    x, t = x[:2], t[:2]
    for method in ("lrp_epsilon_gamma_box",):
        r = evalxai.explain(model, x, t, method=method)
        whole = evalxai.score(model, x, t, r, metric="input_invariance", method=method)
        alone = one_by_one(model, x, t, r, "input_invariance", method=method)
        capped = evalxai.score(model, x, t, r, metric="input_invariance", method=method, batch_size=2)
        # float32 maps of other batch shapes may differ by rounding: an element on the tolerance's edge may flip
        for other in (alone, capped):
            for measure, atol in (("max_relative_difference", 1e-6), ("unchanged_share", 1.5 / x[0].numel())):
                np.testing.assert_allclose(values(other, measure), values(whole, measure), rtol=1e-5, atol=atol)
    with pytest.raises(ValueError, match="re-explains"):
        evalxai.score(model, x, t, r, metric="input_invariance")
