"""LRP engine: conservation, LRP-0 = gradient x input, canonization, residuals, LRN, model untouched."""
import copy

import pytest
import torch
from torch import nn

import evalxai
from evalxai.core.guard import frozen
from evalxai.methods import get_method
from evalxai.methods.lrp import COMPOSITES, LRPError, Recorder, make_composite, merged_weights, run_lrp
from evalxai.methods.lrp.functions import lrn_denominator
from evalxai.models.zoo import build_model
from tests.conftest import no_hooks


def relu_net(bias=False):
    """Conv, max-pool, avg-pool, dense: every pooling kind, ReLU everywhere."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 8, 1, bias=bias), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 10, bias=bias), nn.ReLU(), nn.Linear(10, 3, bias=bias),
    ).double().eval()


class Block(nn.Module):
    """A residual block adding the skip with a plain `+` inside forward."""

    def __init__(self, c, bias=False):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=bias)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


class ResNet(nn.Module):
    def __init__(self, bias=False):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=bias)
        self.block = Block(4, bias)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3, bias=bias))

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))))


def data(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(n) % 3


def logits(model, x, t):
    with torch.no_grad():
        return model(x)[torch.arange(len(x)), t]


@pytest.mark.parametrize("method", ["lrp_0", "lrp_zplus", "dtd", "lrp_gamma", "lrp_epsilon_plus_flat"])
@pytest.mark.parametrize("net", ["plain", "residual"])
def test_conservation_on_bias_free_relu_nets(method, net):
    torch.manual_seed(1)
    model = relu_net() if net == "plain" else ResNet().double().eval()
    x, t = data()
    zero = {k: 0.0 for k in ("stabilizer", "epsilon") if k in get_method(method).defaults}
    r = evalxai.explain(model, x, t, method=method, **zero)
    f = logits(model, x, t)
    rel_err = ((r.sum((1, 2, 3)) - f).abs() / f.abs()).max().item()
    assert rel_err <= 1e-6


def test_per_layer_conservation_recorded():
    torch.manual_seed(2)
    model, (x, t) = relu_net(), data()
    rec = Recorder()
    with frozen(model):
        run_lrp(model, x, t, make_composite("lrp_zplus", stabilizer=0.0), rec)
    assert len(rec.rows) >= 6
    for row in rec.rows:
        torch.testing.assert_close(row["relevance_in"], row["relevance_out"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("net", ["plain", "residual"])
def test_lrp0_equals_gradient_times_input(net):
    torch.manual_seed(3)
    model = relu_net(bias=True) if net == "plain" else ResNet(bias=True).double().eval()
    x, t = data()
    r = evalxai.explain(model, x, t, method="lrp_0")
    gxi = evalxai.explain(model, x, t, method="gradient_x_input")
    torch.testing.assert_close(r, gxi, rtol=1e-9, atol=1e-12)


def randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model


def test_batchnorm_merge_preserves_outputs_and_matches_manual_merge():
    torch.manual_seed(4)
    bn_net = randomize_bn(nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                                        nn.Linear(192, 3)).double().eval())
    w, b = merged_weights(bn_net[0], bn_net[1])
    plain = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(192, 3)).double().eval()
    plain[0].weight.data.copy_(w)
    plain[0].bias.data.copy_(b)
    plain[3].load_state_dict(bn_net[4].state_dict())
    x, t = data()
    torch.testing.assert_close(plain(x), bn_net(x))
    for method in ["lrp_epsilon_gamma_box", "lrp_epsilon_plus", "lrp_0"]:
        torch.testing.assert_close(evalxai.explain(bn_net, x, t, method=method),
                                   evalxai.explain(plain, x, t, method=method))


def test_local_response_norm_conserves():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.ReLU(), nn.LocalResponseNorm(3, alpha=0.5),
                          nn.Flatten(), nn.Linear(384, 3, bias=False)).double().eval()
    x, t = data()
    r = evalxai.explain(model, x, t, method="lrp_zplus", stabilizer=0.0)
    torch.testing.assert_close(r.sum((1, 2, 3)), logits(model, x, t), rtol=1e-9, atol=1e-12)


def test_lrn_denominator_matches_torch():
    m = nn.LocalResponseNorm(5, alpha=0.3, beta=0.75, k=2.0)
    a = torch.randn(2, 7, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(a / lrn_denominator(a, m) ** m.beta, m(a))


@pytest.mark.parametrize("arch", ["mlp", "lenet", "vgg_bn", "resnet_small"])
def test_every_lrp_method_accounts_for_all_relevance_on_the_zoo(arch):
    """sum R_input = f_c(x) - (relevance absorbed by each recorded layer): nothing is lost or created between
    layers (ReLU, pooling and shape operations route relevance without changing its total), for every composite."""
    torch.manual_seed(6)
    model = build_model(arch, (1, 28, 28)).double().eval()
    x, t = torch.rand(3, 1, 28, 28, dtype=torch.float64), torch.tensor([0, 4, 9])
    before = copy.deepcopy(model.state_dict())
    f = logits(model, x, t)
    for name in COMPOSITES:
        spec = get_method(name)
        rec = Recorder()
        with frozen(model):
            r = spec.fn(model, x, t, recorder=rec, **spec.defaults)
        assert r.shape == x.shape
        absorbed = sum(row["relevance_out"] - row["relevance_in"] for row in rec.rows)
        torch.testing.assert_close(r.sum((1, 2, 3)), f - absorbed, rtol=1e-9, atol=1e-9 * f.abs().max().item())
        assert len(rec.rows) >= sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    assert no_hooks(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_model_untouched_modes_and_flags():
    model = relu_net()
    model.train()
    model[0].weight.requires_grad_(False)
    x, t = data()
    with pytest.warns(UserWarning, match="training mode"):
        evalxai.explain(model, x, t, method="lrp_epsilon_plus")
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert no_hooks(model)


@pytest.mark.parametrize("method", ["lrp_epsilon_gamma_box", "lrp_epsilon_alpha2beta1_flat", "dtd"])
def test_batch_size_independence(method):
    torch.manual_seed(7)
    model = build_model("vgg_bn", (1, 28, 28)).double().eval()
    x, t = torch.rand(7, 1, 28, 28, dtype=torch.float64), torch.arange(7)
    full = evalxai.explain(model, x, t, method=method)
    parts = torch.cat([evalxai.explain(model, x[i:i + 2], t[i:i + 2], method=method) for i in range(0, 7, 2)])
    torch.testing.assert_close(full, parts, rtol=1e-10, atol=1e-12)


def test_float32_and_float64_agree():
    torch.manual_seed(8)
    model = build_model("lenet", (1, 28, 28)).eval()
    x, t = torch.rand(2, 1, 28, 28), torch.tensor([1, 2])
    r32 = evalxai.explain(model, x, t, method="lrp_epsilon_plus")
    r64 = evalxai.explain(model.double(), x.double(), t, method="lrp_epsilon_plus")
    torch.testing.assert_close(r32.double(), r64, rtol=1e-3, atol=1e-5)


def test_unsupported_layer_is_named():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Bilinear(4, 4, 2)

        def forward(self, x):
            return self.emb(x, x)

    with pytest.raises(LRPError, match="'emb' of type Bilinear"):
        evalxai.explain(Weird().double().eval(), torch.rand(2, 4, dtype=torch.float64), torch.tensor([0, 1]),
                        method="lrp_0")


def test_unsupported_function_is_named():
    class Mul(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x * x)

    with pytest.raises(LRPError, match="mul"):
        evalxai.explain(Mul().eval(), torch.rand(2, 4), torch.tensor([0, 1]), method="lrp_0")


def test_composite_override_by_name():
    torch.manual_seed(9)
    model, (x, t) = relu_net(bias=True), data()
    base = evalxai.explain(model, x, t, method="lrp_epsilon_plus")
    same = evalxai.explain(model, x, t, method="lrp_epsilon_plus", composite={"names": {"10": "epsilon"}})
    flat0 = evalxai.explain(model, x, t, method="lrp_epsilon_plus", composite={"names": {"0": "flat"}})
    torch.testing.assert_close(base, same)
    assert not torch.allclose(base, flat0)
