"""DeepLIFT, occlusion, CAM / Grad-CAM / Grad-CAM++ and foreign (captum) explainers: known answers. Batching, dtypes
and the model left alone: every method's, in tests/test_contracts.py."""
import pytest
import torch
from torch import nn

import evalxai
from evalxai.methods.cam import CAMError
from evalxai.models.zoo import build_model
from tests.conftest import no_hooks


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


def relu_net(pool: str) -> nn.Module:
    """Conv + BN + ReLU + pool + residual block + dense, float64, with non-trivial BN statistics."""
    torch.manual_seed(3)
    pool_layer = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), pool_layer, Residual(),
                          nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("baseline", ["zero", "blur"])
def test_deeplift_summation_to_delta_is_exact(pool, baseline):
    model = relu_net(pool)
    x, t = torch.randn(9, 1, 8, 8, dtype=torch.float64), torch.arange(9) % 3
    r = evalxai.explain(model, x, t, method="deeplift", baseline=baseline)
    from evalxai.core.baselines import reference

    with torch.no_grad():
        idx = torch.arange(9)
        delta = model(x)[idx, t] - model(reference(x, baseline))[idx, t]
    torch.testing.assert_close(r.sum((1, 2, 3)), delta, rtol=1e-9, atol=1e-9)
    assert no_hooks(model)


def test_deeplift_on_a_linear_model_is_w_times_delta_x():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double().eval()
    x, t = torch.rand(4, 1, 3, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    w = model[1].weight.detach()[t].view(4, 1, 3, 4)
    torch.testing.assert_close(evalxai.explain(model, x, t, method="deeplift"), w * x)


def test_deeplift_matches_captum_rescale():
    attr = pytest.importorskip("captum.attr")
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 10), nn.ReLU(),
                          nn.Linear(10, 3)).double().eval()
    x, t = torch.randn(5, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    ours = evalxai.explain(model, x, t, method="deeplift")
    theirs = attr.DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=t)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-6)  # captum accumulates in float32


def test_occlusion_known_answers_on_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double().eval()
    x, t = torch.rand(3, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 0])
    wx = model[1].weight.detach()[t].view(3, 1, 4, 4) * x
    torch.testing.assert_close(evalxai.explain(model, x, t, method="occlusion", patch=1, stride=1), wx)
    # 2x2 windows, stride 2: every pixel carries the sum of w*x over its window
    blocks = nn.functional.avg_pool2d(wx, 2) * 4
    expected = blocks.repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(evalxai.explain(model, x, t, method="occlusion", patch=2, stride=2), expected)


def test_occlusion_matches_captum():
    attr = pytest.importorskip("captum.attr")
    model = relu_net("max")
    x, t = torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2])
    ours = evalxai.explain(model, x, t, method="occlusion", patch=2, stride=2)
    theirs = attr.Occlusion(model).attribute(x, sliding_window_shapes=(1, 2, 2), strides=(1, 2, 2), target=t)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-6)  # captum accumulates in float32


class Detector(nn.Module):
    """Class 0 counts bright pixels (channel 0), class 1 counts dark pixels (channel 1): GAP + linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.conv.weight.data = torch.stack([torch.ones(1, 3, 3), -torch.ones(1, 3, 3)]).double() / 9
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        self.fc.weight.data = torch.eye(2, dtype=torch.float64)
        self.fc.bias.data = torch.tensor([0.1, -0.2], dtype=torch.float64)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def _regions():
    x = torch.zeros(4, 1, 16, 16, dtype=torch.float64)
    x[:, :, 2:7, 3:8] = 1.0      # the bright square class 0 depends on
    x[:, :, 9:14, 9:14] = -1.0   # a dark square only class 1 depends on
    return x + 0.01 * torch.rand_like(x)


@pytest.mark.parametrize("method", ["cam", "grad_cam", "grad_cam_pp"])
def test_cam_family_peaks_in_the_region_the_class_depends_on(method):
    model = Detector().double().eval()
    x = _regions()
    for cls, (rows, cols) in ((0, (slice(2, 7), slice(3, 8))), (1, (slice(9, 14), slice(9, 14)))):
        r = evalxai.explain(model, x, torch.full((4,), cls), method=method)
        peak = r[:, 0].flatten(1).argmax(1)
        i, j = peak // 16, peak % 16
        assert ((i >= rows.start - 1) & (i < rows.stop + 1) & (j >= cols.start - 1) & (j < cols.stop + 1)).all()
    assert no_hooks(model)


def test_cam_mean_plus_bias_is_the_logit():
    model = Detector().double().eval()
    x, t = _regions(), torch.tensor([0, 1, 0, 1])
    r = evalxai.explain(model, x, t, method="cam")  # feature maps have the input size: no resampling
    with torch.no_grad():
        logits = model(x)[torch.arange(4), t]
    torch.testing.assert_close(r[:, 0].mean((1, 2)) + model.fc.bias[t].detach(), logits)


def test_grad_cam_by_formula_and_layer_choice():
    model = Detector().double().eval()
    x, t = _regions(), torch.tensor([0, 1, 0, 1])
    a = model.relu(model.conv(x)).detach()
    alpha = model.fc.weight.detach()[t] / (16 * 16)  # d logit / dA = w_ck / (h w)
    expected = (alpha.view(4, 2, 1, 1) * a).sum(1, keepdim=True).clamp(min=0)
    torch.testing.assert_close(evalxai.explain(model, x, t, method="grad_cam", layer="relu"), expected)
    with pytest.raises(CAMError, match="layer 'nope' is not a module"):
        evalxai.explain(model, x, t, method="grad_cam", layer="nope")


@pytest.mark.parametrize("arch", ["lenet", "vgg_bn", "resnet_small"])
def test_methods_run_on_the_zoo(arch):
    torch.manual_seed(0)
    model = build_model(arch, (1, 28, 28)).eval()
    x, t = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    for method in ("deeplift", "occlusion", "grad_cam", "grad_cam_pp"):
        assert evalxai.explain(model, x, t, method=method).shape == x.shape
    if arch == "resnet_small":
        assert evalxai.explain(model, x, t, method="cam").shape == x.shape
    else:
        with pytest.raises(CAMError, match="global average pooling"):
            evalxai.explain(model, x, t, method="cam")
    assert no_hooks(model)


def test_cam_needs_convolutions():
    model = build_model("mlp", (1, 8, 8)).eval()
    with pytest.raises(CAMError, match="no convolution"):
        evalxai.explain(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), method="grad_cam")


def test_captum_classes_through_target_configs():
    pytest.importorskip("captum")
    model = relu_net("max")
    x, t = torch.rand(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    saliency = evalxai.explain(model, x, t, method={"_target_": "captum.attr.Saliency", "abs": False})
    torch.testing.assert_close(saliency, evalxai.explain(model, x, t, method="gradient"))
    ig = evalxai.explain(model, x, t, method={"_target_": "captum.attr.IntegratedGradients", "n_steps": 32,
                                              "method": "riemann_middle"})
    torch.testing.assert_close(ig, evalxai.explain(model, x, t, method="integrated_gradients", steps=32))
    gc = evalxai.explain(model, x, t, method={"_target_": "captum.attr.LayerGradCam", "init": {"layer": "4"},
                                              "relu_attributions": True})
    torch.testing.assert_close(gc, evalxai.explain(model, x, t, method="grad_cam", layer="4"))


def test_target_config_errors_are_clear():
    model = relu_net("avg")
    x, t = torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ModuleNotFoundError, match="needs the package 'not_a_package'"):
        evalxai.explain(model, x, t, method={"_target_": "not_a_package.Explainer"})
    with pytest.raises(ValueError, match="no _target_"):
        evalxai.explain(model, x, t, method={"n_steps": 3})
