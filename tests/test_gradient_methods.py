"""Gradient family and controls: known answers, completeness, hand-computed ReLU variants, seeds. Batching, dtypes and
the model left alone: every method's, in tests/test_contracts.py."""
import pytest
import torch
from torch import nn

import evalxai
from tests.conftest import no_hooks


def linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double().eval()


def test_linear_model_exact_answers():
    model = linear_model()
    x = torch.rand(4, 1, 3, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 1])
    w = model[1].weight.detach()[t].view(4, 1, 3, 4)
    torch.testing.assert_close(evalxai.explain(model, x, t, method="gradient"), w)
    torch.testing.assert_close(evalxai.explain(model, x, t, method="sensitivity"), w ** 2)
    torch.testing.assert_close(evalxai.explain(model, x, t, method="gradient_x_input"), w * x)
    torch.testing.assert_close(evalxai.explain(model, x, t, method="integrated_gradients", steps=3), w * x)


def test_integrated_gradients_completeness_improves_with_steps():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(),
                          nn.Linear(20, 3)).double().eval()
    x, t = torch.rand(6, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        delta = model(x)[torch.arange(6), t] - model(torch.zeros_like(x))[torch.arange(6), t]
    errs = [(evalxai.explain(model, x, t, method="integrated_gradients", steps=s).sum((1, 2, 3)) - delta).abs().max()
            for s in (2, 8, 64, 512)]
    assert errs[-1] < errs[0] and errs[-1] < 1e-3 * delta.abs().max()


def test_guided_backprop_and_deconvnet_by_hand():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).double().eval()
    model[0].weight.data = torch.tensor([[1.0, -1.0], [-2.0, 1.0]], dtype=torch.float64)
    model[2].weight.data = torch.tensor([[1.0, -3.0]], dtype=torch.float64)
    x = torch.tensor([[2.0, 1.0]], dtype=torch.float64)  # hidden pre-activations: [1, -3] -> mask [1, 0]
    t = torch.tensor([0])
    # gradient: W1^T (mask * W2) = [1, -1] ; guided: mask * relu(W2) = [1, 0] -> [1, -1]
    torch.testing.assert_close(evalxai.explain(model, x, t, method="gradient"), torch.tensor([[1.0, -1.0]]).double())
    torch.testing.assert_close(evalxai.explain(model, x, t, method="guided_backprop"),
                               torch.tensor([[1.0, -1.0]]).double())
    # deconvnet ignores the forward mask: relu(W2) = [1, 0] -> W1^T [1, 0] = [1, -1]; flip W2 to see the difference
    model[2].weight.data = torch.tensor([[-1.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(evalxai.explain(model, x, t, method="guided_backprop"),
                               torch.tensor([[0.0, 0.0]]).double())
    torch.testing.assert_close(evalxai.explain(model, x, t, method="deconvnet"),
                               torch.tensor([[-6.0, 3.0]]).double())
    assert no_hooks(model)


@pytest.mark.parametrize("method", ["smoothgrad", "random"])
def test_seeds_reproduce_and_differ(method):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    x, t = torch.rand(3, 1, 3, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    a = evalxai.explain(model, x, t, method=method, seed=1)
    assert torch.equal(a, evalxai.explain(model, x, t, method=method, seed=1))
    assert not torch.equal(a, evalxai.explain(model, x, t, method=method, seed=2))


def test_foreign_callable_method():
    model = linear_model()
    x, t = torch.rand(2, 1, 3, 4, dtype=torch.float64), torch.tensor([0, 1])
    r = evalxai.explain(model, x, t, method=lambda m, x, t: torch.ones_like(x))
    assert torch.equal(r, torch.ones_like(x))


def test_bad_inputs_are_named():
    model = linear_model()
    x, t = torch.rand(3, 1, 3, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    x_nan = x.clone()
    x_nan[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        evalxai.explain(model, x_nan, t, method="gradient")
    with pytest.raises(ValueError, match=r"outside \[0, 2\]"):
        evalxai.explain(model, x, torch.tensor([0, 5, 1]), method="gradient")
    with pytest.raises(KeyError, match="unknown method 'nope'.*gradient"):
        evalxai.explain(model, x, t, method="nope")
    with pytest.raises(TypeError, match="no parameter"):
        evalxai.explain(model, x, t, method="gradient", steps=3)
    with pytest.raises(ValueError, match="steps=0"):
        evalxai.explain(model, x, t, method="integrated_gradients", steps=0)
