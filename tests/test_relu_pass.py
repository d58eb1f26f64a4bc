"""ReLUs that pass relevance unchanged (``evalxai.methods.lrp.plan.relu_passes``).

The gradient of a ReLU zeroes the relevance at inputs <= 0, where its output is 0. Where every reader of the output
gives it zero relevance wherever the output is 0 (a rule that multiplies by its input, a proportional sum or average
pooling, read through max pooling and shape operations), the engine skips that mask. What must hold:
- the maps are exactly those of the masked ReLUs (float64, every composite, the five tiny torchvision nets);
- a ReLU keeps its mask where a reader does not multiply by its input (a hidden flat / w^2 / box layer, an activation,
  the model's output, a sum with a number); skipping the mask there changes the map (shown, so the analysis matters).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import evalxai
from evalxai.methods.graph import is_relu
from evalxai.methods.lrp import COMPOSITES, build_plan, make_composite
from evalxai.methods.lrp import plan as plan_module
from tests.test_architectures import MAIN, build, inputs, targets


def relu_kinds(model: nn.Module, x: torch.Tensor, composite: str = "lrp_epsilon", **overrides) -> list[str]:
    """The plan kinds of the model's ReLUs, in graph order."""
    graph, plan = build_plan(model, make_composite(composite, **overrides), x)
    return [plan[n].kind for n in graph.nodes if n in plan and is_relu(model, n)]


def explain_masked(monkeypatch, model, x, t, method, **kw):
    """The map with every ReLU keeping its mask (relu_passes off, on a copy: no cached plan shared)."""
    with monkeypatch.context() as m:
        m.setattr(plan_module, "relu_passes", lambda model, plan: None)
        return evalxai.explain(copy.deepcopy(model), x, t, method=method, **kw)


@pytest.mark.filterwarnings("ignore:LRP passes relevance unchanged")  # DenseNet's pre-activation BatchNorms
@pytest.mark.parametrize("method", sorted(COMPOSITES))
@pytest.mark.parametrize("arch", MAIN)
def test_same_maps_as_masked_relus(monkeypatch, arch, method):
    model, x, t = build(arch), inputs(), targets(arch)
    if arch in ("resnet_basic", "resnet_bottleneck", "vgg16_bn", "densenet"):
        assert "relu_pass" in relu_kinds(model, x, method)  # the fast path is taken (MobileNet-V2: ReLU6 only)
    fast = evalxai.explain(model, x, t, method=method)
    masked = explain_masked(monkeypatch, model, x, t, method)
    assert torch.equal(fast, masked), float((fast - masked).abs().max())


class Net(nn.Module):
    """conv -> ReLU -> ``reader`` -> head, the ReLU's reader chosen per test."""

    def __init__(self, reader: str):
        super().__init__()
        torch.manual_seed(0)
        self.reader = reader
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.act = nn.Sigmoid()
        self.fc = nn.Linear(16, 3)
        with torch.no_grad():
            self.conv1.bias.fill_(-0.2)  # many negative pre-activations: the mask matters

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        if self.reader == "conv":
            h = self.conv2(h)
        elif self.reader == "maxpool_conv":
            h = self.conv2(self.pool(h))
        elif self.reader == "sum":
            h = self.conv2(h) + h
        elif self.reader == "sum_number":
            h = self.conv2(h + 1.0)
        elif self.reader == "sigmoid":
            h = self.conv2(self.act(h))
        return self.fc(self.avg(h).flatten(1))


PASSES = ["conv", "maxpool_conv", "sum"]


@pytest.mark.parametrize("reader", PASSES + ["sum_number", "sigmoid"])
def test_plan_passes_exactly_where_readers_multiply_by_the_input(monkeypatch, reader):
    model, x = Net(reader).eval().double(), torch.rand(3, 1, 8, 8, dtype=torch.float64)
    kinds = relu_kinds(model, x)
    assert kinds[0] == ("relu_pass" if reader in PASSES else "grad"), kinds
    t = torch.tensor([0, 1, 2])
    fast = evalxai.explain(model, x, t, method="lrp_epsilon")
    assert torch.equal(fast, explain_masked(monkeypatch, model, x, t, "lrp_epsilon"))


@pytest.mark.parametrize("rule", ["flat", "wsquare", "box"])
def test_a_hidden_layer_that_ignores_its_input_keeps_the_mask(monkeypatch, rule):
    """conv2 (reads the ReLU) given a rule whose relevance does not vanish at a zero input: the mask stays, and
    dropping it would change the map (so the check is not vacuous)."""
    model, x = Net("conv").eval().double(), torch.rand(3, 1, 8, 8, dtype=torch.float64)
    spec = {"rule": "box", "low": -1.0, "high": 2.0} if rule == "box" else rule
    comp = {"names": {"conv2": spec}}
    assert relu_kinds(model, x, "lrp_epsilon", **comp)[0] == "grad"
    assert relu_kinds(model, x, "lrp_epsilon")[0] == "relu_pass"
    t = torch.tensor([0, 1, 2])
    kept = evalxai.explain(model, x, t, method="lrp_epsilon", composite=comp)
    with monkeypatch.context() as m:  # wrong code: every ReLU passes
        m.setattr(plan_module, "_zero_where_zero", lambda model, plan, src: True)
        wrong = evalxai.explain(copy.deepcopy(model), x, t, method="lrp_epsilon", composite=comp)
    assert not torch.allclose(kept, wrong)


def test_layers_read_by_passing_relus_alone_take_their_output():
    """conv1 is read by a passing ReLU alone: it divides by the ReLU's output (``relu_pass_out``) and keeps no z0;
    where the ReLU keeps its mask it keeps z0."""
    model, x = Net("conv").eval().double(), torch.rand(3, 1, 8, 8, dtype=torch.float64)
    for comp, passes in (({}, True), ({"names": {"conv2": "flat"}}, False)):
        graph, plan = build_plan(model, make_composite("lrp_epsilon", **comp), x)
        conv1 = next(n for n in graph.nodes if n.target == "conv1")
        relu = next(n for n in graph.nodes if n in plan and is_relu(model, n))
        assert plan[conv1].relu_pass_out is passes and plan[conv1].relu_out
        assert plan[relu].source is (conv1 if passes else None)


def test_relu_at_the_output_keeps_the_mask():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU()).eval()
    assert relu_kinds(model, torch.rand(2, 6)) == ["grad"]


def test_in_place_relu_passes_with_the_same_maps(monkeypatch):
    """torchvision's ReLU(inplace=True): run on a copy, the conv's saved output untouched."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.ReLU(inplace=True),
                          nn.Flatten(), nn.Linear(64, 3)).eval().double()
    x, t = torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 2])
    assert relu_kinds(model, x) == ["relu_pass", "relu_pass"]
    for method in ("lrp_epsilon", "lrp_epsilon_gamma_box", "lrp_epsilon_alpha2beta1"):
        assert torch.equal(evalxai.explain(model, x, t, method=method),
                           explain_masked(monkeypatch, model, x, t, method))
