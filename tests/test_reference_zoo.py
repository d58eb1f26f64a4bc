"""The torchvision zoo against the references (issue 27): zennit's composites, gradient x input, LXT's CP-LRP.

Runs in the reference environment only (``tools/reference_env.sh``: torch 2.14.1 with torchvision, zennit, lxt);
skipped elsewhere. Random weights with measured BatchNorm statistics, float64 unless said otherwise, small inputs.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import evalxai
from tests.lxt_reference import lxt_patches, patch_class

pytestmark = pytest.mark.reference
tv = pytest.importorskip("torchvision")
models = tv.models


# zennit's composite for each evalxai composite (evalxai uses zennit's defaults: epsilon 1e-6, gamma 0.25)
ZENNIT = {
    "lrp_epsilon_plus": "EpsilonPlus",
    "lrp_epsilon_plus_flat": "EpsilonPlusFlat",
    "lrp_epsilon_gamma_box": "EpsilonGammaBox",
    "lrp_epsilon_alpha2beta1": "EpsilonAlpha2Beta1",
    "lrp_epsilon_alpha2beta1_flat": "EpsilonAlpha2Beta1Flat",
}
COMPOSITES = ["lrp_0", "lrp_epsilon", "lrp_gamma", "lrp_zplus", *ZENNIT]


def _ready(model: nn.Module, size: int, dtype=torch.float64, bn_eps: float | None = None) -> nn.Module:
    """Eval-mode model with BatchNorm statistics measured on a random batch (so merging matters)."""
    torch.manual_seed(0)
    model = model.to(dtype).train()
    with torch.no_grad():
        model(torch.rand(8, 3, size, size, dtype=dtype))
    if bn_eps is not None:  # after the statistics: training mode refuses eps 0
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = bn_eps
    return model.eval()


def _small_vgg() -> nn.Module:
    """torchvision's VGG with batch norm (its feature stack and classes), a narrow classifier to stay small."""
    vgg = models.vgg.VGG(models.vgg.make_layers([16, "M", 32, "M", 64, 64, "M"], batch_norm=True), num_classes=10)
    vgg.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10))
    return vgg


def _zennit_map(model, x, target, name):
    zc = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canon = ResNetCanonizer() if isinstance(model, models.ResNet) else VGGCanonizer()
    kwargs = {"low": torch.zeros_like(x), "high": torch.ones_like(x)} if name == "EpsilonGammaBox" else {}
    composite = getattr(zc, name)(canonizers=[canon], **kwargs)
    with torch.no_grad():
        out = model(x)
    seed = torch.zeros_like(out)
    seed[torch.arange(len(x)), target] = out[torch.arange(len(x)), target]
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x, seed)
    return relevance


@pytest.mark.parametrize("arch", ["resnet18", "vgg_bn"])
@pytest.mark.parametrize("method", list(ZENNIT))
def test_equal_to_zennit(arch, method):
    """Every zennit composite on torchvision's ResNet-18 and VGG-bn: ≤ 1e-8 of max |R| in float64 (BatchNorm eps 0:
    zennit's merge keeps it, see docs/differences.md)."""
    model = _ready(models.resnet18(num_classes=10) if arch == "resnet18" else _small_vgg(), 32, bn_eps=0.0)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([1, 4, 7])
    ours = evalxai.explain(model, x, target, method=method)
    theirs = _zennit_map(copy.deepcopy(model), x, target, ZENNIT[method])
    err = float((ours - theirs).abs().max() / theirs.abs().max())
    assert err <= 1e-8, f"{arch} {method}: max |evalxai - zennit| / max |R| = {err:.3g}"


# ReLU models where LRP-0 is gradient x input, and those where it is not (with the reason).
RELU_ZOO = {
    "resnet18": 32, "resnext50_32x4d": 32, "alexnet": 64, "googlenet": 32, "squeezenet1_1": 32,
    "shufflenet_v2_x0_5": 32, "mnasnet0_5": 32, "regnet_x_400mf": 32, "vgg_bn": 32,
}
NOT_GXI = {
    "densenet121": "pre-activation BatchNorm (after a concatenation) cannot be merged into a layer: LRP passes "
                   "relevance through it unchanged while the gradient scales by the BatchNorm",
    "mobilenet_v2": "ReLU6 passes relevance unchanged (the identity rule) while its gradient is 0 above 6",
    "regnet_y_400mf": "the squeeze-and-excitation gate gets no relevance (signal-take-all, Arras et al. 2017) while "
                      "the gradient also flows into the gate",
}


def _build(name: str) -> nn.Module:
    if name == "vgg_bn":
        return _small_vgg()
    kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return models.get_model(name, num_classes=10, **kw)


@pytest.mark.parametrize("name", list(RELU_ZOO))
def test_lrp_0_is_gradient_x_input(name):
    """On ReLU networks LRP-0 is gradient x input, layer by layer (BatchNorm merged, residual sums and average pooling
    by the proportional rule): equal to 1e-9 of max |R| in float64."""
    size = RELU_ZOO[name]
    model = _ready(_build(name), size)
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    target = torch.tensor([3, 5])
    lrp = evalxai.explain(model, x, target, method="lrp_0")
    gxi = evalxai.explain(model, x, target, method="gradient_x_input")
    err = float((lrp - gxi).abs().max() / gxi.abs().max())
    assert err <= 1e-9, f"{name}: |lrp_0 - gradient x input| / max = {err:.3g}"


@pytest.mark.parametrize("name", list(NOT_GXI))
def test_lrp_0_differs_from_gradient_x_input_for_the_stated_reason(name):
    """Where LRP-0 is not gradient x input the difference is real (and ``NOT_GXI`` says why)."""
    model = _ready(_build(name), 32)
    if name == "mobilenet_v2":  # make some ReLU6 saturate
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.mul_(3)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    lrp = evalxai.explain(model, x, [3, 5], method="lrp_0")
    gxi = evalxai.explain(model, x, [3, 5], method="gradient_x_input")
    assert float((lrp - gxi).abs().max() / gxi.abs().max()) > 1e-6, NOT_GXI[name]


# One model per family, built by torchvision's own classes at a small width where the constructor allows it (the
# bench runs the full-size list: python -m evalxai.bench --zoo).
FAMILIES = {
    "resnet": 32, "vgg_bn": 32, "densenet": 32, "mobilenet_v3_small": 32, "efficientnet_b0": 32, "convnext": 32,
    "regnet_y_400mf": 32, "shufflenet_v2_x0_5": 32, "squeezenet1_1": 32, "mnasnet0_5": 32, "swin": 32, "swin_v2": 32,
    "vit": 32, "googlenet": 32, "alexnet": 64, "inception_v3": 75, "maxvit": 64,
}
# float32 vs float64 (lrp_epsilon_plus), relative to max |R|: 1e-3, and where measured larger, the measured bound
# with its cause: DenseNet's unmerged pre-activation BatchNorms and concatenations amplify rounding (9e-3 measured).
FLOAT32_TOL = {"densenet": 2e-2}


def _family(name: str) -> nn.Module:
    if name == "resnet":
        return models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)
    if name == "densenet":
        return models.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, num_classes=10)
    if name == "convnext":
        cfg = models.convnext.CNBlockConfig
        return models.ConvNeXt([cfg(16, 32, 1), cfg(32, 64, 1), cfg(64, None, 1)], num_classes=10)
    if name in ("swin", "swin_v2"):
        v2 = {"block": models.swin_transformer.SwinTransformerBlockV2,
              "downsample_layer": models.swin_transformer.PatchMergingV2} if name == "swin_v2" else {}
        return models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                      window_size=[4, 4], num_classes=10, **v2)
    if name == "maxvit":
        return models.MaxVit(input_size=(64, 64), stem_channels=8, partition_size=4, block_channels=[16, 32],
                             block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.1, num_classes=10)
    if name == "vit":
        vit = models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                       mlp_dim=64, num_classes=10)
        nn.init.normal_(vit.heads.head.weight, std=0.2)  # torchvision zero-initialises the head: all logits 0
        return vit
    if name == "inception_v3":
        return models.inception_v3(num_classes=10, aux_logits=False, init_weights=True)
    return _build(name)


ATTENTION = {"swin", "swin_v2", "vit", "maxvit"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_composite_on_every_family(name):
    """Every LRP composite (and attnlrp / cp_lrp on attention models) explains one model of each torchvision family
    in float32: finite maps shaped like x."""
    size = FAMILIES[name]
    model = _ready(_family(name), size, torch.float32)
    x = torch.rand(2, 3, size, size)
    target = torch.tensor([2, 6])
    methods = [*ZENNIT, "lrp_0"] + (["attnlrp", "cp_lrp"] if name in ATTENTION else [])
    for method in methods:
        r = evalxai.explain(model, x, target, method=method)
        assert r.shape == x.shape and torch.isfinite(r).all(), (name, method)


@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in ("inception_v3", "alexnet")])
def test_batch_and_dtype_independence(name):
    """A batch gives each sample the map it has alone (float64, ≤ 1e-10 of max |R|); float32 is within
    ``FLOAT32_TOL`` (default 1e-3) of max |R| of float64 (lrp_epsilon_plus; attnlrp on attention models)."""
    size = FAMILIES[name]
    method = "attnlrp" if name in ATTENTION else "lrp_epsilon_plus"
    model64 = _ready(_family(name), size)
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    target = torch.tensor([2, 6])
    both = evalxai.explain(model64, x, target, method=method)
    alone = torch.cat([evalxai.explain(model64, x[i:i + 1], target[i:i + 1], method=method) for i in range(2)])
    assert float((both - alone).abs().max() / both.abs().max()) <= 1e-10, name
    r32 = evalxai.explain(copy.deepcopy(model64).float(), x.float(), target, method=method).double()
    err = float((r32 - both).abs().max() / both.abs().max())
    assert err <= FLOAT32_TOL.get(name, 1e-3), f"{name}: float32 vs float64 {err:.3g}"


def test_cp_lrp_equals_lxt_on_torchvision_vit(monkeypatch):
    """CP-LRP with epsilon 0 on torchvision's VisionTransformer equals LXT 2.1's own map for it (its ``vit_torch``
    patch map: CP attention, LayerNorm with the std held constant, GELU by the identity rule; relevance = input x
    gradient), ≤ 1e-6 of max |R| in float64 (measured 1e-9 to 3e-8: LXT divides without stabilisers). LXT patches
    torch.nn classes in place: the test restores them."""
    patches = lxt_patches(monkeypatch)
    model = _ready(_family("vit"), 32)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([0, 4, 9])
    ours = evalxai.explain(model, x, target, method="cp_lrp", epsilon=0.0)
    # LXT's map for torchvision's ViT (lxt/efficient/models/vit_torch.py: cp_LRP), applied as that file applies it
    patch_class(monkeypatch, patches, nn.GELU, patches.non_linear_forward, keep_original=True)
    patch_class(monkeypatch, patches, nn.LayerNorm, patches.layer_norm_forward)
    patch_class(monkeypatch, patches, nn.MultiheadAttention, patches.cp_multi_head_attention_forward,
                keep_original=True)
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    idx = torch.arange(len(x))
    out[idx, target].sum().backward()
    theirs = (xg * xg.grad).detach()
    err = float((ours - theirs).abs().max() / theirs.abs().max())
    assert err <= 1e-6, f"max |evalxai cp_lrp - LXT| / max |R| = {err:.3g}"  # the bound issue 30 sets for LXT
    attn = evalxai.explain(model, x, target, method="attnlrp", epsilon=0.0)  # another rule: the comparison can fail
    assert float((attn - theirs).abs().max() / theirs.abs().max()) > 1e-3


@pytest.mark.parametrize("method", ["attnlrp", "cp_lrp"])
def test_attnlrp_and_cp_lrp_equal_lxt_on_huggingface_vit(monkeypatch, method):
    """AttnLRP and CP-LRP (epsilon 0) on Hugging Face's ViTForImageClassification (eager attention, wrapped to return
    its logits) equal LXT 2.1's maps built from its own patch functions the way its model files apply them
    (``models/bert.py`` for AttnLRP: LayerNorm with the std held constant, the identity rule on the activation,
    ``wrap_attention_forward``'s gradient division at q, k, v; ``patch_cp_attention``'s ``cp_wrap_attention_forward``
    for CP-LRP; relevance = input x gradient), ≤ 1e-6 of max |R| in float64. LXT's ``patch_attention`` replaces
    ``ALL_ATTENTION_FUNCTIONS`` by a dict, which transformers 5 no longer accepts (it calls ``.get_interface``): the
    eager function is wrapped instead."""
    transformers = pytest.importorskip("transformers")
    from transformers.activations import GELUActivation
    from transformers.models.vit import modeling_vit

    from evalxai.models import LogitsOnly

    patches = lxt_patches(monkeypatch)
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32, num_labels=5,
                                    attn_implementation="eager")
    model = LogitsOnly(transformers.ViTForImageClassification(config)).double().eval()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([0, 2, 4])
    ours = evalxai.explain(model, x, target, method=method, epsilon=0.0)

    wrap = patches.wrap_attention_forward if method == "attnlrp" else patches.cp_wrap_attention_forward
    monkeypatch.setattr(modeling_vit, "eager_attention_forward", wrap(modeling_vit.eager_attention_forward))
    patch_class(monkeypatch, patches, nn.LayerNorm, patches.layer_norm_forward)
    patch_class(monkeypatch, patches, GELUActivation, patches.non_linear_forward, keep_original=True)
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    out[torch.arange(len(x)), target].sum().backward()
    theirs = (xg * xg.grad).detach()
    err = float((ours - theirs).abs().max() / theirs.abs().max())
    assert err <= 1e-6, f"{method}: max |evalxai - LXT| / max |R| = {err:.3g}"
