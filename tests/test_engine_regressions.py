"""Cases that once gave wrong LRP / DeepLIFT / Guided Backprop maps without an error (issue 17, items 1-7, 9, 10).

Each test states the property the engine must keep; each failed on the engine before the fix.
"""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evalxai
from evalxai.methods import get_method
from evalxai.methods.lrp import COMPOSITES, LRPError

NON_BOX = [c for c in COMPOSITES if c not in ("dtd", "lrp_epsilon_gamma_box")]


def per_sample_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over samples of max |a - b| / max |b|."""
    return ((a - b).abs().flatten(1).amax(1) / b.abs().flatten(1).amax(1).clamp(min=1e-300)).max().item()


def set_inplace(model: nn.Module, flag: bool) -> nn.Module:
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = flag
    return model


class ActNet(nn.Module):
    """Convs separated by element-wise activations that a user may well write with inplace=True."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(1, 6, 3, padding=1), nn.LeakyReLU(0.1, inplace=inplace)
        self.c2, self.a2 = nn.Conv2d(6, 6, 3, padding=1), nn.ReLU6(inplace=inplace)
        self.c3, self.a3 = nn.Conv2d(6, 6, 3, padding=1), nn.Hardtanh(-0.5, 2.0, inplace=inplace)
        self.c4, self.a4 = nn.Conv2d(6, 6, 3, padding=1), nn.SiLU(inplace=inplace)
        self.c5, self.a5 = nn.Conv2d(6, 4, 3, padding=1), nn.ELU(inplace=inplace)
        self.relu = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(4 * 64, 3)

    def forward(self, x):
        x = self.a2(self.c2(self.a1(self.c1(x))))
        x = self.a5(self.c5(self.a4(self.c4(self.a3(self.c3(x))))))
        return self.fc(self.relu(x).flatten(1))


def data(n=4, seed=0, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g, dtype=torch.float64), torch.arange(n) % 3


@pytest.mark.parametrize("method", [*COMPOSITES, "deeplift", "guided_backprop", "deconvnet"])
def test_inplace_activations_give_the_maps_of_their_out_of_place_twins(method):
    torch.manual_seed(0)
    model = ActNet(inplace=True).double().eval()
    twin = set_inplace(copy.deepcopy(model), False)
    x, t = data()
    torch.testing.assert_close(model(x), twin(x))
    r_in, r_out = evalxai.explain(model, x, t, method=method), evalxai.explain(twin, x, t, method=method)
    assert per_sample_rel_err(r_in, r_out) < 1e-12


class FunctionalReLU(nn.Module):
    """ReLUs written as F.relu_, torch.relu_, Tensor.relu_ and F.relu(inplace=True), and one whose overwritten
    input (not its return value) is used afterwards, as eager mode allows."""

    def __init__(self, style: str):
        super().__init__()
        self.style = style
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c3, self.fc = nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4 * 64, 3)

    def act(self, x):
        if self.style == "plain":
            return torch.relu(x)
        if self.style == "F.relu_":
            return F.relu_(x)
        if self.style == "method":
            return x.relu_()
        return F.relu(x, inplace=True)

    def forward(self, x):
        x = self.act(self.c1(x))
        y = self.c2(x)
        if self.style == "plain":
            y = torch.relu(y)
        else:
            torch.relu_(y)  # the result is discarded: y itself was overwritten
        return self.fc(self.act(self.c3(y)).flatten(1))


@pytest.mark.parametrize("style", ["F.relu_", "method", "inplace_kw"])
@pytest.mark.parametrize("method", ["deeplift", "guided_backprop", "deconvnet", "lrp_0", "lrp_epsilon_plus"])
def test_functional_inplace_relu_is_a_relu(style, method):
    torch.manual_seed(1)
    plain = FunctionalReLU("plain").double().eval()
    model = FunctionalReLU(style).double().eval()
    model.load_state_dict(plain.state_dict())
    x, t = data(seed=1)
    torch.testing.assert_close(model(x), plain(x))
    assert per_sample_rel_err(evalxai.explain(model, x, t, method=method),
                              evalxai.explain(plain, x, t, method=method)) < 1e-12


def test_deeplift_sums_to_delta_with_functional_inplace_relu():
    torch.manual_seed(2)
    model = FunctionalReLU("F.relu_").double().eval()
    x, t = data(seed=2)
    r = evalxai.explain(model, x, t, method="deeplift")
    with torch.no_grad():
        delta = model(x)[range(4), t] - model(torch.zeros_like(x))[range(4), t]
    torch.testing.assert_close(r.sum((1, 2, 3)), delta, rtol=1e-10, atol=1e-12)


def test_guided_backprop_is_not_the_gradient_with_functional_inplace_relu():
    torch.manual_seed(3)
    model = FunctionalReLU("F.relu_").double().eval()
    x, t = data(seed=3)
    assert not torch.allclose(evalxai.explain(model, x, t, method="guided_backprop"),
                              evalxai.explain(model, x, t, method="gradient"))


def nearly_positive_net(dtype):
    """Convs whose weights are almost all positive: z- = a W- + b- is tiny next to z+, the case where computing
    z- as z0 - z+ loses it to rounding in float32."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 3))
    with torch.no_grad():
        for m in (model[2], model[4]):
            m.weight.copy_(m.weight.abs() - 0.02 * torch.rand_like(m.weight))
    return model.to(dtype).eval()


@pytest.mark.parametrize("method", list(COMPOSITES))
def test_float32_agrees_with_float64_per_sample(method):
    x, t = data(n=8, seed=4)
    r64 = evalxai.explain(nearly_positive_net(torch.float64), x, t, method=method)
    r32 = evalxai.explain(nearly_positive_net(torch.float32), x.float(), t, method=method)
    assert per_sample_rel_err(r32.double(), r64) < 1e-5


class AlphaAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 64, 3, bias=False)

    def forward(self, x):
        return self.fc(torch.relu(torch.add(torch.relu(self.a(x)), torch.relu(self.b(x)), alpha=0.5)).flatten(1))


def test_add_with_alpha_conserves_and_equals_gradient_times_input():
    torch.manual_seed(5)
    model = AlphaAdd().double().eval()
    x, t = data(seed=5)
    r = evalxai.explain(model, x, t, method="lrp_0")
    with torch.no_grad():
        f = model(x)[range(4), t]
    torch.testing.assert_close(r.sum((1, 2, 3)), f, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r, evalxai.explain(model, x, t, method="gradient_x_input"), rtol=1e-9, atol=1e-12)


def test_pass_through_layers_warn_once_naming_them():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3),
                          nn.Flatten(), nn.Linear(72, 3), nn.Softmax(dim=1)).double().eval()
    x, t = data(seed=6)
    with pytest.warns(UserWarning, match=r"'2', '6'"):
        evalxai.explain(model, x, t, method="lrp_epsilon_plus")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evalxai.explain(model, x, t, method="lrp_epsilon_plus")  # once per model


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: shape arithmetic on Python ints from .size()."""

    def __init__(self, groups=2):
        super().__init__()
        self.groups = groups
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4 * 64, 3, bias=False)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        n, c, h, w = x.size()
        x = x.view(n, self.groups, c // self.groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous().view(n, -1, h * w // w, w)
        return self.fc(torch.relu(self.c2(x)).flatten(1))


def test_shape_arithmetic_is_not_a_relevance_path():
    torch.manual_seed(7)
    model = ChannelShuffle().double().eval()
    x, t = data(seed=7)
    r = evalxai.explain(model, x, t, method="lrp_0")
    torch.testing.assert_close(r, evalxai.explain(model, x, t, method="gradient_x_input"), rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(r.sum((1, 2, 3)), model(x)[range(4), t], rtol=1e-10, atol=1e-12)


class Mystery(nn.Module):
    def forward(self, x):  # (x * sigmoid(x) is a product of two tensors: LRP's uniform rule covers it)
        return x / torch.sigmoid(x)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.gate, self.fc2 = nn.Linear(4, 4), Mystery(), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.gate(self.fc1(x)))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Gated()

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("method", ["lrp_0", "deeplift"])
def test_unsupported_operation_names_its_module(method):
    with pytest.raises(LRPError,
                       match=r"operation 'truediv' \(graph node 'truediv'\) in module 'block.gate' \(Mystery\)"):
        evalxai.explain(Outer().eval(), torch.rand(2, 4), torch.tensor([0, 1]), method=method)


def test_lrp_methods_take_exactly_the_parameters_they_use():
    model, (x, t) = nearly_positive_net(torch.float64), data()
    with pytest.raises(TypeError, match=r"'lrp_0' has no parameter \['epsilon'\].*\['composite', 'stabilizer'\]"):
        evalxai.explain(model, x, t, method="lrp_0", epsilon=100)
    with pytest.raises(TypeError, match="has no parameter"):
        evalxai.explain(model, x, t, method="lrp_zplus", gamma=0.5)
    with pytest.raises(TypeError, match=r"'lrp_epsilon_plus' has no parameter \['gamma'\]"):
        evalxai.explain(model, x, t, method="lrp_epsilon_plus", composite={"gamma": 0.5})
    # a rule brought in by a composite override takes its parameters inside the override, and they are used
    g1 = evalxai.explain(model, x, t, method="lrp_epsilon_plus", composite={"layers": {"conv": "gamma"}, "gamma": 1.0})
    g2 = evalxai.explain(model, x, t, method="lrp_epsilon_plus", composite={"layers": {"conv": "gamma"}})
    assert per_sample_rel_err(g1, g2) > 1e-3
    for name in COMPOSITES:
        for param, value in get_method(name).defaults.items():  # every accepted parameter changes the map
            if param in ("composite", "low", "high", "stabilizer"):  # (bounds: below; stabilizer: additions)
                continue
            changed = {"alpha": 3.0, "beta": 2.0} if param in ("alpha", "beta") else {param: value * 4 + 0.5}
            if name == "lrp_alpha1beta0" and param in ("alpha", "beta"):
                changed = {"alpha": 2.0, "beta": 1.0}
            r0, r1 = (evalxai.explain(model, x, t, method=name, **p) for p in ({}, changed))
            assert per_sample_rel_err(r1, r0) > 1e-6, (name, param)


@pytest.mark.parametrize("method", ["lrp_epsilon_gamma_box", "dtd"])
def test_box_bounds_must_contain_the_inputs(method):
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 64, 3, bias=False)).double().eval()
    x, t = data(shape=(3, 8, 8), seed=8)
    mean, std = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64), torch.tensor([0.2, 0.25, 0.3], dtype=torch.float64)
    xn = (x - mean.view(3, 1, 1)) / std.view(3, 1, 1)  # normalised: about [-3, 2]
    with pytest.raises(ValueError, match=r"low=0, high=1 do not contain the inputs.*\(0 - mean\) / std"):
        evalxai.explain(model, xn, t, method=method)
    low, high = ((0 - mean) / std).view(3, 1, 1), ((1 - mean) / std).view(3, 1, 1)
    r = evalxai.explain(model, xn, t, method=method, low=low, high=high)
    if method == "dtd":  # z+ above zB on a bias-free ReLU net conserves (without the stabiliser)
        r = evalxai.explain(model, xn, t, method=method, low=low, high=high, stabilizer=0.0)
        with torch.no_grad():
            torch.testing.assert_close(r.sum((1, 2, 3)), model(xn)[range(4), t], rtol=1e-9, atol=1e-12)
    # the per-channel bounds are used: a scalar box around all channels gives another map
    one = evalxai.explain(model, xn, t, method=method, low=float(low.min()), high=float(high.max()))
    assert per_sample_rel_err(r, one) > 1e-3


class ViewInplace(nn.Module):
    """ReLU in place on a view: eager mode changes the viewed tensor too."""

    def __init__(self, base_used_later: bool):
        super().__init__()
        self.base_used_later = base_used_later
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        v = h.view(-1, 2, 3)
        v.relu_()
        return self.b(h if self.base_used_later else v.flatten(1))


def test_inplace_on_a_view_is_refused_when_the_viewed_tensor_is_used_later():
    torch.manual_seed(9)
    x, t = torch.randn(4, 6, dtype=torch.float64), torch.arange(4) % 3
    with pytest.raises(LRPError, match="in-place operation 'relu_' .* writes into a view"):
        evalxai.explain(ViewInplace(True).double().eval(), x, t, method="lrp_0")
    model = ViewInplace(False).double().eval()  # the view itself carries on: nothing differs from eager mode
    torch.testing.assert_close(evalxai.explain(model, x, t, method="lrp_0"),
                               evalxai.explain(model, x, t, method="gradient_x_input"), rtol=1e-9, atol=1e-12)


def test_box_bounds_per_channel_reach_a_dense_first_layer_on_flattened_images():
    """dtd (box rule at the first layer) on an MLP over normalised 3-channel images: per-channel bounds (C, 1, 1)
    mean, for the flattened input (N, C*H*W), each channel's bound on its H*W features (it failed to expand)."""
    from evalxai.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (3, 4, 4), 3).double().eval()
    lo = torch.tensor([-1.0, -0.5, -2.0], dtype=torch.float64).view(3, 1, 1)
    hi = torch.tensor([1.0, 1.5, 0.5], dtype=torch.float64).view(3, 1, 1)
    x = lo + (hi - lo) * torch.rand(5, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 0, 1])
    r = evalxai.explain(model, x, t, method="dtd", low=lo, high=hi)
    flat_lo, flat_hi = lo.reshape(3).repeat_interleave(16), hi.reshape(3).repeat_interleave(16)
    expected = evalxai.explain(model, x, t, method="dtd", low=flat_lo, high=flat_hi)
    torch.testing.assert_close(r, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(r, evalxai.explain(model, x, t, method="dtd", low=-2.0, high=1.5))
