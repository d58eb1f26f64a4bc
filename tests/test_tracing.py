"""Concrete tracing (``evalxai.methods.tracing``): models whose forward asks Python about its input, and functions
registered with ``torch.fx.wrap``, explained exactly; one graph per input shape; a branch on the data that the trace
baked in is caught by ``check_function``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import evalxai
from evalxai.methods.graph import LRPError, trace


def window_mix(x: torch.Tensor, window: int) -> torch.Tensor:
    """A Swin-style partition: shape arithmetic and Python branches on the input's size, a mask filled slice by
    slice (in place, a constant), a roll; registered with torch.fx.wrap as torchvision registers its Swin attention."""
    b, c, h, w = x.shape
    pad = (window - w % window) % window
    x = F.pad(x, (0, pad))
    if x.shape[-1] > window:  # a Python question about the input
        x = torch.roll(x, shifts=1, dims=-1)
    mask = x.new_zeros((x.shape[-2], x.shape[-1]))
    mask[:, : x.shape[-1] // 2] = 1.0
    x = x * (1.0 + mask)
    x = x.unflatten(-1, (x.shape[-1] // window, window)).transpose(-1, -2).flatten(-2)
    return x[..., : h * w // h]


fx.wrap("window_mix")


class Windowed(nn.Module):
    def __init__(self, window: int = 3):
        super().__init__()
        self.window = window
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = window_mix(h, self.window)
        if len(h) > 0 and h.dtype == torch.float64:  # more questions: len, dtype
            h = h * 1.0
        return self.fc(h.flatten(1))


def test_wrapped_function_with_python_branches_is_traced_inside_and_exact():
    """lrp_0 equals gradient x input (float64, 1e-12) through the wrapped function: it was traced inside (no opaque
    node), with the mask as a constant of the run."""
    torch.manual_seed(0)
    model = Windowed().double().eval()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    lrp = evalxai.explain(model, x, [0, 1, 2], method="lrp_0")
    gxi = evalxai.explain(model, x, [0, 1, 2], method="gradient_x_input")
    assert float((lrp - gxi).abs().max() / gxi.abs().max()) < 1e-12
    graph = trace(model, x)
    assert getattr(graph, "example_shape", None) == (3, 2, 5, 5)
    assert not any(n.op == "call_function" and n.target is window_mix for n in graph.nodes)
    with pytest.raises(LRPError, match="cannot be traced"):  # without an example input there is no trace
        trace(Windowed().double().eval())


def test_one_graph_per_input_shape_and_batch_independence():
    torch.manual_seed(0)
    model = Windowed().double().eval()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    both = evalxai.explain(model, x, [1, 2], method="lrp_epsilon_plus")
    alone = torch.cat([evalxai.explain(model, x[i:i + 1], [[1, 2][i]], method="lrp_epsilon_plus") for i in range(2)])
    assert torch.allclose(both, alone, rtol=0, atol=1e-12 * float(both.abs().max()))
    assert trace(model, x) is not trace(model, x[:1]) and trace(model, x) is trace(model, x.clone())


class DataBranch(nn.Module):
    """A branch on the data, not the shape: the concrete trace bakes in the example's branch."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)


def test_a_baked_in_branch_on_the_data_is_caught():
    torch.manual_seed(0)
    model = DataBranch().double().eval()
    pos = torch.rand(2, 4, dtype=torch.float64)
    evalxai.explain(model, pos, [0, 1], method="lrp_0")  # traced with sum > 0
    with pytest.raises(LRPError, match="other logits than model"):
        evalxai.explain(model, -pos, [0, 1], method="lrp_0")  # same shape, the other branch
