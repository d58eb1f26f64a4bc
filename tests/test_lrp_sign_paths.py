"""The LRP engine's cheaper forms (issue 29): facts about signs read from the graph (non-negative inputs, outputs read
only by a ReLU), the forms the sign-split rules take on them (float64 formulas), the out-of-place ReLU and the
check of the traced function run once per key on a symbolic trace."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import evalxai
from evalxai.methods import graph as graph_module
from evalxai.methods.graph import LRPError, check_function, nonnegative_nodes, trace
from evalxai.methods.lrp import make_composite
from evalxai.methods.lrp.plan import build_plan
from evalxai.methods.lrp.rules import LinearOp, make_rule
from tests.test_lrp_rules import reference


class Block(nn.Module):
    """conv - BN - ReLU - max-pool - conv - BN, a residual sum, ReLU, upsampling, a dense head."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bicubic")
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        h = self.pool(torch.relu(self.b1(self.c1(x))))
        h = torch.relu(self.b2(self.c2(h)) + h)
        return self.fc(self.c3(self.up(h)).flatten(1))


def test_sign_facts_from_the_graph():
    model = Block().eval()
    graph, plan = build_plan(model, make_composite("lrp_epsilon_gamma_box"), torch.rand(2, 2, 8, 8))
    nodes = {n.name: n for n in graph.nodes}
    nonneg = nonnegative_nodes(model, graph)
    assert {n.name for n in nonneg} == {"relu", "pool", "relu_1"}
    facts = {n.target: (s.nonneg_in, s.relu_out) for n, s in plan.items() if s.kind == "linear"}
    # c1 reads the input (checked at run time); c2 a pooled ReLU, its output a residual sum; c3 an upsampling
    # (bicubic overshoots: not known non-negative); fc a flattened conv output
    assert facts == {"c1": (False, True), "c2": (True, False), "c3": (False, False), "fc": (False, False)}
    assert nodes["relu"] in nonneg


LAYERS = {
    "linear": (lambda: nn.Linear(7, 5), (7,)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 5, 5)),
}


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule_case", [("gamma", {"gamma": 0.25}), ("alphabeta", {"alpha": 2.0, "beta": 1.0}),
                                       ("zplus", {})], ids=lambda c: c[0])
@pytest.mark.parametrize("relu_out", [False, True])
def test_known_signs_give_the_formula(layer_name, rule_case, relu_out):
    """A layer told that its input is non-negative (and that no relevance reaches its outputs z0 <= 0, as behind a
    ReLU) gives the explicit float64 formula; its output is W a + b."""
    torch.manual_seed(11)
    make_layer, in_shape = LAYERS[layer_name]
    layer = make_layer().double()
    nn.init.uniform_(layer.bias, -0.5, 0.5)
    a = torch.rand(3, *in_shape, dtype=torch.float64)
    name, params = rule_case
    rule = make_rule({"rule": name, **params})
    w, b = layer.weight.detach(), layer.bias.detach()
    op = LinearOp(layer, w, b, nonneg_in=True, relu_out=relu_out)
    z0, state = rule.output_and_state(op, a)
    torch.testing.assert_close(z0, layer(a).detach(), rtol=1e-12, atol=1e-12)
    r = torch.randn_like(z0)
    if relu_out:
        r = torch.where(z0 > 0, r, 0.0)
    torch.testing.assert_close(rule.backward(op, a, state, r), reference(name, params, layer, a, r),
                               rtol=1e-9, atol=1e-10)


def test_gamma_one_backward_where_no_relevance_reaches_negative_outputs():
    """Unflagged, the gamma rule sees at run time that R is zero at every z0 < 0 and makes one backward: the same
    numbers as the formula; with R at negative outputs it makes both."""
    torch.manual_seed(12)
    layer = nn.Conv2d(3, 4, 3, padding=1).double()
    a = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    rule = make_rule({"rule": "gamma", "gamma": 0.5})
    op = LinearOp(layer, layer.weight.detach(), layer.bias.detach())
    z0 = op.fwd(a, op.weight, op.bias)
    state = rule.forward(op, a, z0)
    calls = []
    vjp = op.vjp
    op.vjp = lambda *args: calls.append(1) or vjp(*args)
    for r in (torch.where(z0 > 0, torch.randn_like(z0), 0.0), torch.randn_like(z0)):
        calls.clear()
        got = rule.backward(op, a, state, r)
        torch.testing.assert_close(got, reference("gamma", {"gamma": 0.5}, layer, a, r), rtol=1e-9, atol=1e-10)
        assert len(calls) == (1 if not bool((r * (z0 < 0)).any()) else 0)


class Counting(nn.Sequential):
    """A symbolic-traceable model that counts its eager forwards."""

    calls = 0

    def forward(self, x):
        if isinstance(x, torch.Tensor):
            type(self).calls += 1
        return super().forward(x)


def test_check_runs_once_per_key_on_a_symbolic_trace():
    torch.manual_seed(13)
    model = Counting(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(3 * 36, 4)).eval()
    x, t = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    r1 = evalxai.explain(model, x, t, method="lrp_epsilon_plus")  # checked (and the model's first-call look-ups)
    checked = graph_module._CHECKED[trace(model)]
    assert len(checked) == 1
    Counting.calls = 0
    r2 = evalxai.explain(model, x[:2], t[:2], method="lrp_epsilon_plus")  # another batch size: the same key
    assert Counting.calls == 0 and len(checked) == 1
    torch.testing.assert_close(r2, r1[:2])
    evalxai.explain(model, x, t, method="cp_lrp")  # another softmax rule (tag): a new key
    assert len(checked) == 2
    evalxai.explain(model.double(), x.double(), t, method="lrp_epsilon_plus")  # another dtype: a new key
    assert len(checked) == 3


def test_check_still_refuses_a_mismatch_and_does_not_remember_it():
    """A traced graph that computes another function fails the check on every call (a failure is not memoised)."""
    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    graph = trace(model)
    x = torch.rand(2, 4)
    for _ in range(2):
        with pytest.raises(LRPError, match="other logits than model"):
            check_function(model, x, model(x).detach() + 1.0, graph, "test")
    check_function(model, x, model(x).detach(), graph, "test")


def test_inplace_relu_runs_out_of_place_and_keeps_the_input():
    torch.manual_seed(15)
    make = lambda inplace: nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=inplace), nn.Conv2d(3, 2, 3),  # noqa: E731
                                         nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(2 * 16, 4))
    a, b = make(True).double().eval(), make(False).double().eval()
    b.load_state_dict(a.state_dict())
    x, t = torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 3])
    x0 = x.clone()
    for method in ("lrp_epsilon_gamma_box", "lrp_epsilon_alpha2beta1", "gradient"):
        torch.testing.assert_close(evalxai.explain(a, x, t, method=method), evalxai.explain(b, x, t, method=method),
                                   rtol=0, atol=0)
    assert torch.equal(x, x0)


def test_remembered_plan_follows_replaced_buffers_and_composite_values():
    """The plan is reused across calls, but a replaced BatchNorm buffer (held by reference in the plan) or another
    composite parameter value gives the maps of a fresh model."""
    import copy

    torch.manual_seed(16)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4))
    model = model.double().eval()
    x, t = torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 3])
    first = evalxai.explain(model, x, t, method="lrp_epsilon_gamma_box")
    torch.testing.assert_close(evalxai.explain(model, x, t, method="lrp_epsilon_gamma_box"), first, rtol=0, atol=0)
    model[1].running_mean = torch.rand(3, dtype=torch.float64)  # a new tensor object, not an in-place change
    fresh = copy.deepcopy(model)
    got = evalxai.explain(model, x, t, method="lrp_epsilon_gamma_box")
    torch.testing.assert_close(got, evalxai.explain(fresh, x, t, method="lrp_epsilon_gamma_box"))
    assert not torch.allclose(got, first)
    for gamma in (0.1, 0.7):
        torch.testing.assert_close(evalxai.explain(model, x, t, method="lrp_epsilon_gamma_box", gamma=gamma),
                                   evalxai.explain(fresh, x, t, method="lrp_epsilon_gamma_box", gamma=gamma))
