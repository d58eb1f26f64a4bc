"""Every rule against its explicit matrix-form formula (float64) on Linear and Conv layers, +/- bias."""
import pytest
import torch
from torch import nn

from evalxai.methods.lrp import rules
from evalxai.methods.lrp.rules import LinearOp, make_rule


def as_matrix(layer, in_shape, weight=None):
    """(W, b): the layer as a dense matrix on one flattened input, via the Jacobian of the bias-free layer."""
    op = LinearOp(layer, layer.weight if weight is None else weight, None)
    w = weight if weight is not None else layer.weight
    jac = torch.autograd.functional.jacobian(lambda v: op.fwd(v.view(1, *in_shape), w).flatten(), torch.zeros(
        int(torch.tensor(in_shape).prod()), dtype=torch.float64))
    if layer.bias is None:
        b = torch.zeros(jac.shape[0], dtype=torch.float64)
    else:
        b = LinearOp(layer, layer.weight, layer.bias).fwd(torch.zeros(1, *in_shape, dtype=torch.float64),
                                                          layer.weight, layer.bias).flatten()
    return jac, b


def stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def reference(name, params, layer, a, r):
    """Explicit relevance per sample from contributions c_kj = a_j W_kj."""
    in_shape = a.shape[1:]
    W, b = as_matrix(layer, in_shape)
    out = []
    for i in range(len(a)):
        x = a[i].flatten()
        ro = r[i].flatten()
        c = W * x[None, :]                        # (out, in)
        if name in ("epsilon", "zero"):
            eps = params.get("epsilon", 0.0)
            z = c.sum(1) + b
            s = ro / stab(z, eps) if eps else torch.where(z == 0, 0.0, ro / torch.where(z == 0, 1.0, z))
            rin = (c * s[:, None]).sum(0)
        elif name in ("alphabeta", "zplus"):
            al, be = (params["alpha"], params["beta"]) if name == "alphabeta" else (1.0, 0.0)
            cp, cn = c.clamp(min=0), c.clamp(max=0)
            zp, zn = cp.sum(1) + b.clamp(min=0), cn.sum(1) + b.clamp(max=0)
            rin = (al * cp * (ro / stab(zp, 1e-6))[:, None] - be * cn * (ro / stab(zn, 1e-6))[:, None]).sum(0)
        elif name == "gamma":
            g = params["gamma"]
            z0 = c.sum(1) + b
            cpos, cneg = c + g * c.clamp(min=0), c + g * c.clamp(max=0)
            zp, zn = cpos.sum(1) + b + g * b.clamp(min=0), cneg.sum(1) + b + g * b.clamp(max=0)
            sp = torch.where(z0 > 0, ro / stab(zp, 1e-6), 0.0)
            sn = torch.where(z0 < 0, ro / stab(zn, 1e-6), 0.0)
            rin = (cpos * sp[:, None] + cneg * sn[:, None]).sum(0)
        elif name == "box":
            lo = torch.full_like(x, params["low"])
            hi = torch.full_like(x, params["high"])
            cb = c - W.clamp(min=0) * lo[None] - W.clamp(max=0) * hi[None]
            rin = (cb * (ro / stab(cb.sum(1), 1e-6))[:, None]).sum(0)
        elif name in ("flat", "wsquare"):
            wm = torch.ones_like(layer.weight) if name == "flat" else layer.weight ** 2
            M, _ = as_matrix(layer, in_shape, wm)
            bias = 0.0 if (name == "flat" or layer.bias is None) else layer.bias ** 2
            if name == "wsquare" and layer.bias is not None:
                bias = LinearOp(layer, wm, bias).fwd(torch.zeros(1, *in_shape, dtype=torch.float64), wm,
                                                      bias).flatten()
            rin = (M * (ro / stab(M.sum(1) + bias, 1e-6))[:, None]).sum(0)
        out.append(rin.view(in_shape))
    return torch.stack(out)


LAYERS = {
    "linear": (lambda bias: nn.Linear(7, 5, bias=bias), (7,)),
    "conv1d": (lambda bias: nn.Conv1d(2, 3, 3, padding=1, bias=bias), (2, 6)),
    "conv2d": (lambda bias: nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=bias), (2, 5, 5)),
    "conv2d_groups": (lambda bias: nn.Conv2d(4, 4, 2, groups=2, bias=bias), (4, 4, 4)),
    # single input channel: the vector-Jacobian products take the by-taps path
    "conv2d_1ch": (lambda bias: nn.Conv2d(1, 3, 3, stride=2, padding=1, bias=bias), (1, 5, 5)),
    "conv2d_1ch_dilated": (lambda bias: nn.Conv2d(1, 2, (3, 2), stride=(1, 2), padding=(2, 0), dilation=(2, 1),
                                                  bias=bias), (1, 6, 7)),
}
RULE_CASES = [("zero", {}), ("epsilon", {"epsilon": 0.3}), ("gamma", {"gamma": 0.25}),
              ("alphabeta", {"alpha": 2.0, "beta": 1.0}), ("alphabeta", {"alpha": 1.5, "beta": 0.5}),
              ("zplus", {}), ("box", {"low": -1.0, "high": 2.0}), ("flat", {}), ("wsquare", {})]


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rule_case", RULE_CASES, ids=lambda c: f"{c[0]}{c[1]}")
@pytest.mark.parametrize("signed", [True, False], ids=["signed-input", "nonneg-input"])
def test_rule_matches_matrix_formula(layer_name, bias, rule_case, signed):
    torch.manual_seed(hash((layer_name, bias, rule_case[0], signed)) % 2**31)
    make_layer, in_shape = LAYERS[layer_name]
    layer = make_layer(bias).double()
    if bias:
        nn.init.uniform_(layer.bias, -0.5, 0.5)
    a = torch.randn(3, *in_shape, dtype=torch.float64)
    if not signed:
        a = a.abs()
    name, params = rule_case
    if name == "box":  # the box rule refuses inputs outside its bounds
        a = a.clamp(params["low"], params["high"])
    rule = make_rule({"rule": name, **params})
    op = LinearOp(layer, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
    z0 = op.fwd(a, op.weight, op.bias)
    r = torch.randn_like(z0)
    got = rule.backward(op, a, rule.forward(op, a, z0), r)
    want = reference(name, params, layer, a, r)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_fast_path_equals_general_path(monkeypatch):
    """The non-negative-input shortcut gives the same numbers as the sign-split passes."""
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3, padding=1).double()
    a = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    op = LinearOp(layer, layer.weight.detach(), layer.bias.detach())
    z0 = op.fwd(a, op.weight, op.bias)
    r = torch.randn_like(z0)
    for spec in ({"rule": "gamma", "gamma": 0.5}, {"rule": "alphabeta", "alpha": 2.0, "beta": 1.0}):
        rule = make_rule(spec)
        fast = rule.backward(op, a, rule.forward(op, a, z0), r)
        with monkeypatch.context() as m:
            m.setattr(rules, "_nonneg", lambda op, a: False)  # force the sign-split passes
            general = rule.backward(op, a, rule.forward(op, a, z0), r)
        torch.testing.assert_close(fast, general, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k,stride,padding,dilation,size", [
    (5, 1, 2, 1, (28, 28)), (3, 2, 1, 1, (9, 8)), (3, 2, 0, 1, (10, 10)), (2, 3, 1, 2, (11, 7)),
    ((3, 1), (1, 2), (0, 1), (2, 1), (8, 9)), (1, 1, 0, 1, (4, 4)),
])
def test_vjp_by_taps_equals_library_kernel(k, stride, padding, dilation, size):
    """The single-input-channel vjp (matmul + strided adds) equals torch's input gradient, in float64."""
    torch.manual_seed(0)
    layer = nn.Conv2d(1, 6, k, stride=stride, padding=padding, dilation=dilation).double()
    a = torch.rand(3, 1, *size, dtype=torch.float64)
    s = torch.randn_like(layer(a))
    op = LinearOp(layer, layer.weight.detach(), None)
    got = rules.conv2d_input_vjp_by_taps(((s, op.weight),), a.shape, layer.stride, layer.padding, layer.dilation)
    want = torch.autograd.grad(layer(a.requires_grad_(True)), a, s)[0]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.vjp(s, op.weight, a), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec,match", [
    ({"rule": "alphabeta", "alpha": 2.0, "beta": 0.5}, "alpha - beta = 1"),
    ({"rule": "epsilon", "epsilon": -0.1}, "epsilon"),
    ({"rule": "gamma", "gamma": -1.0}, "gamma"),
    ({"rule": "box", "low": 1.0, "high": 0.0}, "low"),
])
def test_invalid_rule_parameters(spec, match):
    with pytest.raises(ValueError, match=match):
        make_rule(spec)


def test_unknown_rule_lists_names():
    with pytest.raises(KeyError, match="epsilon"):
        make_rule("nonsense")
