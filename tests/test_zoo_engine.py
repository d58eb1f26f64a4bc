"""The LRP engine on the patterns of the timm and Hugging Face zoos (issue 27): timm's ``BatchNormAct2d`` (a
functional eval-mode ``F.batch_norm`` then an activation), the weight-standardised ``StdConv2d`` (``F.conv2d`` with a
weight computed from parameters), GroupNorm (``nn.GroupNorm``, ``F.group_norm``), an SE gate written
``x.sigmoid()``, and Hugging Face's Python branching on the input (``if pixel_values.dtype != expected_dtype``),
attention by a looked-up function (eager or ``F.scaled_dot_product_attention`` with dropout / causal arguments) and
an output dataclass. The modules here reproduce each pattern without timm or transformers, and every check is an
explicit float64 formula; the tests marked ``reference`` run the real models (tools/reference_env.sh)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evalxai

COMPOSITES = ["lrp_0", "lrp_epsilon", "lrp_epsilon_plus", "lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box",
              "lrp_epsilon_alpha2beta1", "lrp_epsilon_alpha2beta1_flat", "lrp_zplus", "lrp_gamma"]


def explain(model, x, t, method, **kw):
    return evalxai.explain(model, x, t, method=method, **kw)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over samples of max |a - b| / max |b|."""
    return ((a - b).abs().flatten(1).amax(1) / b.abs().flatten(1).amax(1).clamp(min=1e-300)).max().item()


def grad_x_input(model, x, t):
    x = x.detach().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.gather(1, t.view(-1, 1)).sum(), x)
    return g * x


def _randomise_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    return bn


# --- timm's BatchNormAct2d: functional batch_norm, merged into the conv before it ------------------------------------

class BatchNormAct(nn.BatchNorm2d):
    """timm.layers.BatchNormAct2d, cut down: the eval-mode ``F.batch_norm`` of nn.BatchNorm2d's forward, then an
    activation, with timm's ``_assert(x.ndim == 4)`` (a metadata use of the conv's output)."""

    def __init__(self, c: int, act: type[nn.Module] = nn.ReLU):
        super().__init__(c)
        self.act = act()

    def forward(self, x):
        torch._assert(x.ndim == 4, "expected 4D input")
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1,
                         self.eps)
        return self.act(x)


class FunctionalConv(nn.Conv2d):
    """A convolution that calls ``F.conv2d`` itself (as timm's ``StdConv2d`` or ``Conv2dSame`` do)."""

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def bn_net(conv: type[nn.Conv2d] = nn.Conv2d) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(conv(3, 8, 3, padding=1), _randomise_bn(BatchNormAct(8)),
                         conv(8, 8, 3, stride=2, padding=1, groups=2), _randomise_bn(BatchNormAct(8)),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).double().eval()


def hand_merged(model: nn.Sequential) -> nn.Module:
    """The same function with each BatchNorm folded into the conv before it by hand (float64)."""
    layers = []
    for i in (0, 2):
        conv, bn = model[i], model[i + 1]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        merged = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           groups=conv.groups).double()
        with torch.no_grad():
            merged.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            merged.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
        layers += [merged, nn.ReLU()]
    return nn.Sequential(*layers, *model[4:]).eval()


@pytest.mark.parametrize("conv", [nn.Conv2d, FunctionalConv], ids=["module_conv", "functional_conv"])
def test_functional_batch_norm_is_merged_into_the_conv_before_it(conv):
    model = bn_net(conv)
    ref = hand_merged(model)
    x, t = torch.rand(3, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 2, 4])
    torch.testing.assert_close(model(x), ref(x), rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # merged: no "passes relevance unchanged" warning
        for method in COMPOSITES:
            assert rel_err(explain(model, x, t, method), explain(ref, x, t, method)) < 1e-10, method


def test_unmerged_functional_batch_norm_passes_relevance_like_an_unmerged_module():
    """Pre-activation (DenseNet): BatchNorm after ReLU cannot be merged; relevance passes it unchanged, with the same
    warning as an unmerged nn.BatchNorm2d."""
    torch.manual_seed(1)
    bn = _randomise_bn(nn.BatchNorm2d(8))
    fbn = BatchNormAct(8, nn.Identity)
    fbn.load_state_dict(bn.state_dict())

    def net(norm):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), norm, nn.Conv2d(8, 4, 3), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double().eval()

    torch.manual_seed(2)
    model = net(fbn)
    ref = net(bn)
    ref.load_state_dict(model.state_dict())
    x, t = torch.rand(2, 3, 6, 6, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.warns(UserWarning, match="passes relevance unchanged through batch_norm"):  # once per model
        explain(model, x, t, "lrp_0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("lrp_0", "lrp_epsilon_plus", "lrp_gamma"):
            assert rel_err(explain(model, x, t, method), explain(ref, x, t, method)) < 1e-10, method


# --- timm's StdConv2d: F.conv2d with a weight computed from parameters -----------------------------------------------

class StdConv(nn.Module):
    """timm.layers.StdConv2d (weight standardisation, Qiao et al. 2019) in 1, 2 or 3 dimensions: the weight is
    standardised by a training-mode ``F.batch_norm`` and the convolution is functional."""

    def __init__(self, dim, cin, cout, k, stride=1, padding=0, dilation=1, groups=1, bias=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin // groups, *[k] * dim))
        self.bias = nn.Parameter(torch.randn(cout) * 0.1) if bias else None
        self.conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dim]
        self.stride, self.padding, self.dilation, self.groups, self.cout = stride, padding, dilation, groups, cout

    def standardised(self):
        return F.batch_norm(self.weight.reshape(1, self.cout, -1), None, None, training=True, momentum=0.0,
                            eps=1e-6).reshape_as(self.weight)

    def forward(self, x):
        return self.conv(x, self.standardised(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def std_net(dim: int, bias: bool = False) -> nn.Module:
    torch.manual_seed(dim)
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[dim]
    return nn.Sequential(StdConv(dim, 2, 6, 3, padding=1, bias=bias), nn.ReLU(),
                         StdConv(dim, 6, 6, 3, stride=2, padding=1, groups=2, bias=bias), nn.ReLU(),
                         StdConv(dim, 6, 4, 3, dilation=2, padding="same", bias=bias), nn.ReLU(),
                         pool(1), nn.Flatten(), nn.Linear(4, 3, bias=bias)).double().eval()


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_functional_conv_lrp_0_is_gradient_x_input_on_a_bias_free_relu_net(dim):
    model = std_net(dim)
    x, t = torch.rand(2, 2, *[6] * dim, dtype=torch.float64), torch.tensor([0, 2])
    assert rel_err(explain(model, x, t, "lrp_0"), grad_x_input(model, x, t)) < 1e-10


def as_module_convs(model: nn.Sequential) -> nn.Sequential:
    """The same net with every StdConv replaced by an nn.ConvNd holding its standardised weight."""
    layers = []
    for m in model:
        if isinstance(m, StdConv):
            w = m.standardised().detach()
            dim = w.dim() - 2
            conv = getattr(nn, f"Conv{dim}d")(w.shape[1] * m.groups, m.cout, w.shape[2], m.stride, m.padding,
                                              m.dilation, m.groups, bias=m.bias is not None).double()
            with torch.no_grad():
                conv.weight.copy_(w)
                if m.bias is not None:
                    conv.bias.copy_(m.bias)
            m = conv
        layers.append(m)
    return nn.Sequential(*layers).eval()


def test_functional_conv_gets_the_composites_conv_rule():
    """Every composite gives F.conv2d with a computed weight the map of an nn.Conv2d with that weight: its conv rule,
    the first-layer rule (flat, box) at the first one."""
    model = std_net(2, bias=True)
    ref = as_module_convs(model)
    x, t = torch.rand(3, 2, 7, 7, dtype=torch.float64), torch.tensor([0, 1, 2])
    torch.testing.assert_close(model(x), ref(x), rtol=1e-12, atol=1e-12)
    for method in COMPOSITES:
        assert rel_err(explain(model, x, t, method), explain(ref, x, t, method)) < 1e-10, method


def test_functional_conv_with_asymmetric_same_padding_is_refused():
    model = nn.Sequential(StdConv(2, 2, 4, 2, padding="same"), nn.Flatten(), nn.Linear(4 * 25, 3)).double().eval()
    with pytest.raises(NotImplementedError, match="asymmetrically"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: padding="same" with an even kernel copies the input
        explain(model, torch.rand(1, 2, 5, 5, dtype=torch.float64), torch.tensor([0]), "lrp_0")


def test_functional_conv_whose_weight_depends_on_the_input_is_refused():
    class Dynamic(nn.Module):
        def forward(self, x):
            return F.conv2d(x, x[:1].mean(0, keepdim=True).expand(4, -1, -1, -1)[:, :, :3, :3]).flatten(1)

    with pytest.raises(evalxai.methods.lrp.LRPError, match="weight that depends on the input"):
        explain(Dynamic().eval(), torch.rand(1, 2, 5, 5, dtype=torch.float64), torch.tensor([0]), "lrp_0")


# --- GroupNorm: the group normaliser held constant ----------------------------------------------------------

class FunctionalGroupNorm(nn.GroupNorm):
    """timm.layers.GroupNormAct's normalisation: ``F.group_norm`` called in ``forward``."""

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def gn_net(norm: type[nn.GroupNorm]) -> nn.Module:
    torch.manual_seed(3)
    gn1, gn2 = norm(2, 8), norm(4, 8)
    with torch.no_grad():
        for gn in (gn1, gn2):
            gn.weight.uniform_(0.5, 1.5)  # the affine bias stays 0: a bias-free net
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), gn1, nn.ReLU(),
                         nn.Conv2d(8, 8, 3, bias=False), gn2, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4, bias=False)).double().eval()


@pytest.mark.parametrize("norm", [nn.GroupNorm, FunctionalGroupNorm], ids=["module", "functional"])
def test_group_norm_conserves_relevance_on_a_bias_free_net(norm):
    model = gn_net(norm)
    x, t = torch.rand(3, 3, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 3])
    r = explain(model, x, t, "lrp_0")
    logit = model(x).gather(1, t.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(r.flatten(1).sum(1), logit, rtol=1e-10, atol=1e-12)


def test_group_norm_module_and_function_give_the_same_maps():
    x, t = torch.rand(2, 3, 6, 6, dtype=torch.float64), torch.tensor([0, 2])
    a, b = gn_net(nn.GroupNorm), gn_net(FunctionalGroupNorm)
    b.load_state_dict(a.state_dict())
    for method in ("lrp_0", "lrp_epsilon_plus", "lrp_gamma"):
        assert rel_err(explain(a, x, t, method), explain(b, x, t, method)) < 1e-12, method


def test_group_norm_rule_in_closed_form():
    """One GroupNorm then a bias-free linear layer, by LRP-0: R_y = y * W_c, and with sigma_g held constant
    R_a = a * C_g^T (gamma / sigma_g * W_c), C_g centring over each group's channels and positions."""
    torch.manual_seed(4)
    n, c, g, h = 2, 6, 3, 4
    gn = nn.GroupNorm(g, c)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.2, 0.2)
    lin = nn.Linear(c * h * h, 3, bias=False)
    model = nn.Sequential(gn, nn.Flatten(), lin).double().eval()
    x, t = torch.randn(n, c, h, h, dtype=torch.float64), torch.tensor([0, 2])
    sigma = x.reshape(n, g, -1).var(-1, unbiased=False).add(gn.eps).sqrt()  # (n, g)
    s = lin.weight[t].reshape(n, c, h, h) * gn.weight.view(1, c, 1, 1)
    s = s.reshape(n, g, -1) / sigma.unsqueeze(-1)
    expected = x * (s - s.mean(-1, keepdim=True)).reshape(n, c, h, h)
    assert rel_err(explain(model, x, t, "lrp_0"), expected) < 1e-10


# --- an SE gate written x.sigmoid() --------------------------------------------------------------------------------

class SEMethodGate(nn.Module):
    """timm's SqueezeExcite with a gate module that calls ``x.sigmoid()`` (RegNetY)."""

    def __init__(self, c, method: bool):
        super().__init__()
        self.fc1, self.fc2, self.method = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1), method

    def forward(self, x):
        s = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * (s.sigmoid() if self.method else torch.sigmoid(s))


def test_sigmoid_method_is_a_gate_like_torch_sigmoid():
    def net(method):
        torch.manual_seed(5)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), SEMethodGate(8, method), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 3)).double().eval()

    x, t = torch.rand(2, 3, 6, 6, dtype=torch.float64), torch.tensor([0, 1])
    for method in ("lrp_0", "lrp_epsilon_plus", "lrp_gamma"):
        assert rel_err(explain(net(True), x, t, method), explain(net(False), x, t, method)) < 1e-12, method


# --- split attention (ResNeSt, SKNet) and multi-resolution fusion (HRNet): sums over a dimension, upsampling ------

class FuseNet(nn.Module):
    """Branches summed over a stacked dimension (``x.sum(1)``, ``torch.sum``: timm's SplitAttn and
    SelectiveKernel), and low-resolution maps upsampled and added (``nn.Upsample``, ``F.interpolate``: HRNet)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Conv2d(3, 4, 5, padding=2, bias=False)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        h = F.relu(torch.stack([self.a(x), self.b(x)], 1).sum(1))
        low = F.relu(self.down(h))
        h = h + self.up(low) + F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
        h = torch.sum(h.flatten(2), dim=2) / h[0, 0].numel()
        return self.head(h)


def test_sums_over_a_dimension_and_upsampling_lrp_0_is_gradient_x_input():
    torch.manual_seed(8)
    model = FuseNet().double().eval()
    x, t = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 2])
    r = explain(model, x, t, "lrp_0")
    assert rel_err(r, grad_x_input(model, x, t)) < 1e-10
    torch.testing.assert_close(r.flatten(1).sum(1), model(x).gather(1, t.view(-1, 1)).squeeze(1), rtol=1e-10,
                               atol=1e-12)


# --- Hugging Face's patterns: Python branches on the input, a looked-up attention function, an output dataclass ----

@dataclass
class ClassifierOutput:
    logits: torch.Tensor
    hidden_states: tuple | None = None


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager_attention_forward: the softmax in float32, then back to the query's dtype."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def sdpa_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' sdpa_attention_forward: is_causal and dropout_p passed as arguments."""
    is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", False)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, is_causal=is_causal)
    return out.transpose(1, 2).contiguous(), None


ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention}


class TinyHFViT(nn.Module):
    """A ViT written the way transformers writes ViTForImageClassification: dtype and shape checks on
    ``pixel_values``, position-embedding interpolation behind a shape branch, the attention function looked up by
    the configured implementation, dropout by ``self.training``, an output dataclass."""

    def __init__(self, impl: str = "sdpa", size: int = 8, patch: int = 4, dim: int = 16, heads: int = 2):
        super().__init__()
        self.impl, self.size, self.heads, self.is_causal = impl, size, heads, False
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.1)
        self.norm1, self.norm2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2, self.head = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.Linear(dim, 5)

    def forward(self, pixel_values, interpolate_pos_encoding: bool | None = None):
        expected_dtype = self.patch.weight.dtype
        if pixel_values.dtype != expected_dtype:
            pixel_values = pixel_values.to(expected_dtype)
        batch, channels, height, width = pixel_values.shape
        if channels != 3:
            raise ValueError("wrong number of channels")
        h = self.patch(pixel_values).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(batch, -1, -1), h], dim=1)
        if interpolate_pos_encoding or height != self.size:
            raise NotImplementedError("not exercised")
        h = h + self.pos
        x = self.norm1(h)
        shape = (batch, -1, self.heads, x.shape[-1] // self.heads)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.q, self.k, self.v))
        attention = ATTENTION_FUNCTIONS[self.impl]
        a, _ = attention(self, q, k, v, None, scaling=q.shape[-1] ** -0.5, dropout=0.0 if not self.training else 0.1)
        h = h + self.o(a.reshape(batch, -1, h.shape[-1]))
        h = h + self.fc2(F.gelu(self.fc1(self.norm2(h))))
        return ClassifierOutput(logits=self.head(self.norm(h)[:, 0]), hidden_states=(h,))


class LogitsOnly(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


def test_hugging_face_patterns_explain_with_every_composite():
    torch.manual_seed(6)
    model = LogitsOnly(TinyHFViT("sdpa")).eval()
    x, t = torch.rand(2, 3, 8, 8), torch.tensor([0, 4])
    for method in [*COMPOSITES, "attnlrp", "cp_lrp"]:
        r = explain(model, x, t, method)
        assert r.shape == x.shape and bool(torch.isfinite(r).all()), method


def test_hugging_face_sdpa_and_eager_attention_give_the_same_maps():
    """The decomposed F.scaled_dot_product_attention equals the eager matmul + softmax + matmul (whose float32
    softmax is why this compares in float32)."""
    torch.manual_seed(7)
    sdpa = LogitsOnly(TinyHFViT("sdpa")).eval()
    eager = LogitsOnly(TinyHFViT("eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    x, t = torch.rand(2, 3, 8, 8), torch.tensor([1, 3])
    for method in ("lrp_epsilon_plus", "attnlrp", "cp_lrp"):
        assert rel_err(explain(sdpa, x, t, method), explain(eager, x, t, method)) < 1e-4, method


# --- the real zoos (reference environment) -----------------------------------------------------------------------

TIMM_MODELS = {  # name: input size (the smallest each takes: inception_v3 needs 75 px)
    "efficientnet_b0": 32, "mobilenetv3_small_100": 32, "regnety_002": 32, "densenet121": 32,
    "inception_v3": 75, "resnetv2_50x1_bit": 32, "resnest14d": 64, "skresnet18": 32, "hrnet_w18_small": 64,
}


@pytest.mark.reference
@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_timm_models_explain_with_every_composite(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    size = TIMM_MODELS[name]
    x, t = torch.rand(1, 3, size, size), torch.tensor([3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DenseNet's pre-activation BatchNorms: the unmerged-BatchNorm warning
        for method in COMPOSITES:
            r = explain(model, x, t, method)
            assert r.shape == x.shape and bool(torch.isfinite(r).all()), method


def bias_free(model: nn.Module) -> nn.Module:
    """Biases 0 and every BatchNorm the identity (running mean 0, variance 1, weight sqrt(1 + eps)), in float64: a
    ReLU net built from convolutions, pooling, concatenation and additions is then positively homogeneous, and LRP-0
    is gradient x input."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.weight.fill_((1.0 + m.eps) ** 0.5)
                m.bias.zero_()
            elif getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter):
                m.bias.zero_()
    return model.double().eval()


# lrp_0 = gradient x input needs a ReLU net without biases: efficientnet_b0 (SiLU, SE gates), mobilenetv3_small_100
# (hard-swish, SE gates) and regnety_002 (SE gates: the gate takes no relevance) have other rules than the gradient
# at their activations and gates; resnetv2_50x1_bit holds GroupNorm's normaliser constant (not its gradient);
# resnest14d and skresnet18 weight their branches by a softmax (AttnLRP's softmax rule); hrnet_w18_small is a ReLU
# net but costs more than these two to run.
@pytest.mark.reference
@pytest.mark.parametrize("name", ["densenet121", "inception_v3"])
def test_timm_relu_nets_lrp_0_is_gradient_x_input(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = bias_free(timm.create_model(name, num_classes=10))
    size = TIMM_MODELS[name]
    x, t = torch.rand(1, 3, size, size, dtype=torch.float64), torch.tensor([3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert rel_err(explain(model, x, t, "lrp_0"), grad_x_input(model, x, t)) < 1e-10


def hf_models():
    transformers = pytest.importorskip("transformers")
    vit = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 64, "num_labels": 10}
    return {
        "vit_sdpa": lambda: transformers.ViTForImageClassification(
            transformers.ViTConfig(**vit, attn_implementation="sdpa")),
        "vit_eager": lambda: transformers.ViTForImageClassification(
            transformers.ViTConfig(**vit, attn_implementation="eager")),
        "deit": lambda: transformers.DeiTForImageClassification(transformers.DeiTConfig(**vit)),
        "convnext": lambda: transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
            hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=10)),
        "resnet": lambda: transformers.ResNetForImageClassification(transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)),
        "swin": lambda: transformers.SwinForImageClassification(transformers.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
            num_labels=10)),
    }


@pytest.mark.reference
@pytest.mark.parametrize("name", ["vit_sdpa", "vit_eager", "deit", "convnext", "resnet", "swin"])
def test_hugging_face_models_explain_with_every_composite(name):
    torch.manual_seed(0)
    model = LogitsOnly(hf_models()[name]()).eval()
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    for method in COMPOSITES:
        r = explain(model, x, t, method)
        assert r.shape == x.shape and bool(torch.isfinite(r).all()), (name, method)


@pytest.mark.reference
def test_hugging_face_vit_sdpa_and_eager_give_the_same_maps():
    torch.manual_seed(0)
    models = hf_models()
    sdpa, eager = LogitsOnly(models["vit_sdpa"]()).eval(), LogitsOnly(models["vit_eager"]()).eval()
    eager.load_state_dict(sdpa.state_dict())
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    for method in ("lrp_epsilon_plus", "attnlrp"):
        assert rel_err(explain(sdpa, x, t, method), explain(eager, x, t, method)) < 1e-4, method


@pytest.mark.reference
def test_hugging_face_resnet_lrp_0_is_gradient_x_input():
    """HF ResNet is a ReLU net: with biases 0 and identity BatchNorms LRP-0 is gradient x input (float64)."""
    torch.manual_seed(0)
    model = bias_free(LogitsOnly(hf_models()["resnet"]()))
    x, t = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 7])
    assert rel_err(explain(model, x, t, "lrp_0"), grad_x_input(model, x, t)) < 1e-10


# Review findings (issue 27): each case failed before its fix.
class _GateTimesConstant(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.a, self.b = nn.Linear(6, 5, bias=False), nn.Linear(5, 3, bias=False)

    def forward(self, x):
        h = self.a(x)
        g = {"sigmoid": lambda: torch.sigmoid(h) * 2.0, "tensor": lambda: torch.full_like(h, 2.0) * torch.sigmoid(h),
             "gelu": lambda: F.gelu(h) * 2.0}[self.form]()
        return self.b(g)


@pytest.mark.parametrize("form,method", [("sigmoid", "lrp_0"), ("sigmoid", "cp_lrp"), ("tensor", "lrp_0"),
                                         ("gelu", "cp_lrp")])
def test_a_gate_times_a_constant_conserves_relevance(form, method):
    """A sigmoid (or, for CP-LRP, an activated) factor times a constant is no gated product: relevance passes as
    through any activation, sum R = f_c (it was scaled by the constant)."""
    torch.manual_seed(0)
    model = _GateTimesConstant(form).double().eval()
    x = torch.rand(4, 6, dtype=torch.float64)
    r = evalxai.explain(model, x, [0, 1, 2, 0], method=method, **({} if method == "lrp_0" else {"epsilon": 0.0}))
    logits = model(x)[torch.arange(4), torch.tensor([0, 1, 2, 0])]
    assert torch.allclose(r.sum(1), logits, rtol=1e-9, atol=1e-12)


class _Fold(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(2 * 6 * 6, 3, bias=False)

    def forward(self, x):
        cols = F.unfold(torch.relu(self.conv(x)), kernel_size=3, padding=1)  # overlapping patches
        return self.fc(F.fold(cols, (6, 6), kernel_size=3, padding=1).flatten(1))


def test_fold_sums_overlapping_patches_and_conserves():
    """F.fold adds overlapping patches: the proportional rule (it duplicated relevance as a 'copy': sum R = 8 f)."""
    torch.manual_seed(0)
    model = _Fold().double().eval()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    r = evalxai.explain(model, x, [0, 2], method="lrp_0")
    logits = model(x)[torch.arange(2), torch.tensor([0, 2])]
    assert torch.allclose(r.flatten(1).sum(1), logits, rtol=1e-9)
    gxi = evalxai.explain(model, x, [0, 2], method="gradient_x_input")
    assert torch.allclose(evalxai.explain(model, x, [0, 2], method="lrp_0"), gxi, rtol=0, atol=1e-12)


class _InputBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.w = nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        return torch.addmm(self.lin(x), x, self.w)


class _SliceWrite(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.lin(x)
        h[:, 0] = 0
        return self.out(h)


def test_an_input_dependent_bias_and_a_slice_write_are_refused_in_one_line():
    from evalxai.methods.graph import LRPError

    x = torch.rand(2, 4, dtype=torch.float64)
    with pytest.raises(LRPError, match="adds a bias that depends on the input"):
        evalxai.explain(_InputBias().double().eval(), x, [0, 1], method="lrp_0")
    with pytest.raises(LRPError, match="slice assignment .* writes into a tensor computed from the input"):
        evalxai.explain(_SliceWrite().double().eval(), x, [0, 1], method="lrp_0")
