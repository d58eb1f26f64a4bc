"""The LRP engine: one backward pass over a torch.fx trace of the model with modified layer gradients.

The model is traced once (cached per model object). Each node is classified: linear layers get their rule
from the composite (BatchNorm right after a linear/conv layer is merged into it — canonization — for the
propagation only), average pooling and residual additions (also a plain ``+`` inside ``forward``) use the
proportional Norm rule, LocalResponseNorm is linearised by a first-order Taylor expansion (Binder et al.
2016), element-wise activations pass relevance unchanged, max-pooling and shape operations keep their
gradient (winner-takes-all routing). Anything else raises an error that names the node: never a silent
pass-through. The relevance flows as the "gradient" of a single ``torch.autograd.grad`` call, seeded with
the target logit, so sum R = f_c(x) wherever the rules conserve. The model itself is never modified: no
hooks, no parameter swaps.
"""
from __future__ import annotations

import operator
import warnings
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from evalxai.explain.lrp.composites import Composite, layer_type
from evalxai.explain.lrp.rules import LinearOp, Rule, divide

_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_GRAD_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                 nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout, nn.Identity, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
_PASS_MODULES = (nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus,
                 nn.Hardtanh, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.PReLU, nn.Softsign, nn.Tanhshrink,
                 nn.LogSigmoid, nn.Softmax, nn.LogSoftmax, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORM_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveAvgPool3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

_RELU_FUNCS = {torch.relu, F.relu, torch.relu_}
_GRAD_FUNCS = {*_RELU_FUNCS, torch.flatten, torch.reshape, operator.getitem, getattr, torch.cat, F.max_pool1d,
               F.max_pool2d, F.max_pool3d, F.dropout, torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute,
               F.adaptive_max_pool2d, F.pad}
_SOFTMAX_FUNCS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_PASS_FUNCS = {torch.tanh, torch.tanh_, torch.sigmoid, torch.sigmoid_, F.gelu, F.silu, F.elu, F.elu_, F.leaky_relu,
               F.leaky_relu_, F.softplus, F.relu6, F.hardtanh, F.hardtanh_, F.hardswish, F.hardsigmoid, F.mish,
               F.selu, torch.selu_, F.celu, torch.celu_, F.softsign, F.logsigmoid, F.tanhshrink, *_SOFTMAX_FUNCS}
_NORM_FUNCS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
               F.adaptive_avg_pool3d, torch.mean}
_ADD_FUNCS = {operator.add, torch.add, operator.iadd}
_GRAD_METHODS = {"view", "reshape", "flatten", "size", "contiguous", "permute", "transpose", "squeeze",
                 "unsqueeze", "relu", "relu_", "dim", "float", "double", "to", "clone"}
_ADD_METHODS = {"add", "add_"}


class LRPError(TypeError):
    """The model has a part the LRP engine cannot propagate through."""


def _trace(model: nn.Module) -> fx.Graph:
    graph = _TRACES.get(model)
    if graph is None:
        try:
            graph = fx.Tracer().trace(model)
        except Exception as err:  # noqa: BLE001 - tracing errors come in many types
            raise LRPError(f"LRP traces the model with torch.fx, and {type(model).__name__} cannot be traced "
                           f"({type(err).__name__}: {err}); remove data-dependent control flow from forward, "
                           "or use a gradient method") from None
        _TRACES[model] = graph
    return graph


@dataclass
class Step:
    """How one graph node runs: kind in {linear, skip, grad, pass, norm, sum, lrn, unsupported} (``node_kind``)."""

    kind: str
    module: nn.Module | None = None
    bn: nn.Module | None = None
    rule: Rule | None = None


def _merge_target(node: fx.Node, model: nn.Module, module: nn.Module) -> tuple[fx.Node, nn.Module] | None:
    """The BatchNorm node that follows ``node`` alone (merged into the linear layer), if any."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module":
        return None
    bn = model.get_submodule(users[0].target)
    out_features = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    if isinstance(bn, _BN) and bn.num_features == out_features and bn.running_mean is not None:
        return users[0], bn
    return None


def node_kind(model: nn.Module, node: fx.Node, what: str = "LRP") -> str:
    """How a traced node propagates: placeholder / get_attr / output, linear (has a rule), grad (keeps its
    gradient: ReLU, max-pooling, shape ops), pass (element-wise), norm (average pooling, mean), sum (addition;
    a proportional split when both operands are tensors), lrn, or unsupported (a function or tensor method with no
    rule: fine on Python numbers such as shape arithmetic, an error on tensors, see ``refuse_tensors``).
    Raises LRPError naming the module for a module without a rule."""
    if node.op in ("placeholder", "get_attr", "output"):
        return node.op
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        if layer_type(m) is not None:
            return "linear"
        for kind, types in (("grad", _GRAD_MODULES), ("pass", _PASS_MODULES), ("norm", _NORM_MODULES),
                            ("lrn", nn.LocalResponseNorm)):
            if isinstance(m, types):
                return kind
        raise LRPError(f"module '{node.target}' of type {type(m).__name__} has no {what} rule: supported are "
                       "Linear, Conv1d/2d/3d, BatchNorm, pooling, LocalResponseNorm, element-wise "
                       "activations and shape layers; replace it or explain with a gradient method")
    if node.op == "call_function":
        fn = node.target
        if fn in _ADD_FUNCS:
            return "sum"
        for kind, funcs in (("grad", _GRAD_FUNCS), ("pass", _PASS_FUNCS), ("norm", _NORM_FUNCS)):
            if fn in funcs:
                return kind
        return "unsupported"
    if node.target in _GRAD_METHODS:
        return "grad"
    if node.target in _ADD_METHODS:
        return "sum"
    if node.target == "mean":
        return "norm"
    return "unsupported"


def _owner(model: nn.Module, node: fx.Node) -> str:
    """The module a traced node sits in, as ``module 'path' (Class)`` (from torch.fx's module stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return f"the forward of {type(model).__name__}"
    path, cls = next(reversed(stack.values()))
    name = cls.__name__ if isinstance(cls, type) else str(cls).rpartition(".")[2].strip("'>")
    return f"module '{path}' ({name})"


def refuse_tensors(model: nn.Module, node: fx.Node, args, kwargs, what: str = "LRP") -> None:
    """Raise LRPError naming the node's module if an unsupported operation receives a tensor; Python numbers
    (shape arithmetic on ``.size()``, as in a channel shuffle) carry no relevance and pass."""
    found = []
    fx.node.map_aggregate((args, kwargs), lambda a: found.append(a) if isinstance(a, torch.Tensor) else a)
    if not found:
        return
    op = getattr(node.target, "__name__", node.target)
    kind = "tensor method '." + str(op) + "()'" if node.op == "call_method" else f"operation '{op}'"
    raise LRPError(f"{kind} (graph node '{node.name}') in {_owner(model, node)} has no {what} rule: replace that "
                   "module with supported layers (Linear, Conv, pooling, element-wise activations, additions) or "
                   "explain with a gradient method")


def is_inplace(model: nn.Module, node: fx.Node) -> bool:
    """Whether a traced node overwrites its first argument: a module with ``inplace=True``, a function called
    with ``inplace=True``, or an in-place torch function or tensor method (name ending in ``_``: ``F.relu_``,
    ``x.relu_()``). (torch.fx records ``a += b`` as an out-of-place ``operator.add``.)"""
    if node.op == "call_module":
        return getattr(model.get_submodule(node.target), "inplace", False) is True
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.kwargs.get("inplace") is True or (name.endswith("_") and not name.startswith("_"))
    return node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_")


_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)
_WARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _warn_pass_through(model: nn.Module, names: list[str]) -> None:
    """Warn once per model (and set of layers) that relevance passes these layers unchanged."""
    key = tuple(names)
    if not names or key in _WARNED.setdefault(model, set()):
        return
    _WARNED[model].add(key)
    warnings.warn(f"LRP passes relevance unchanged through {', '.join(names)} of {type(model).__name__} (as zennit "
                  "does): a softmax is not part of the explained logit, and a BatchNorm that does not directly follow "
                  "a Linear/Conv layer cannot be merged into it; explain the logits of a model without them to "
                  "avoid this", UserWarning, stacklevel=4)


def build_plan(model: nn.Module, composite: Composite) -> tuple[fx.Graph, dict]:
    """Classify every node of the traced model (``node_kind``) and give linear layers their rule."""
    graph = _trace(model)
    plan: dict[fx.Node, Step] = {}
    seen_first = False
    passed = []  # softmax and BatchNorm layers that relevance passes unchanged (warned about once)
    for node in graph.nodes:
        if node in plan:
            continue
        kind = node_kind(model, node)
        if kind == "linear":
            m = model.get_submodule(node.target)
            merged = _merge_target(node, model, m)
            bn = None
            if merged is not None:
                plan[merged[0]] = Step("skip")
                bn = merged[1]
            plan[node] = Step("linear", m, bn, composite.rule_for(node.target, m, not seen_first))
            seen_first = True
        elif kind == "lrn":
            plan[node] = Step("lrn", model.get_submodule(node.target))
        else:
            plan[node] = Step(kind)
            if kind == "pass" and (node.target in _SOFTMAX_FUNCS or node.op == "call_module" and isinstance(
                    model.get_submodule(node.target), (*_SOFTMAX_MODULES, *_BN))):
                passed.append(f"'{node.target}'" if node.op == "call_module" else
                              f"{node.name} in {_owner(model, node)}")
    _warn_pass_through(model, passed)
    return graph, plan


def merged_weights(module: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) of a linear/conv layer with a following eval-mode BatchNorm folded in (canonization)."""
    w = module.weight.detach()
    b = None if module.bias is None else module.bias.detach()
    if bn is None:
        return w, b
    scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
    shift = -bn.running_mean.detach() * scale
    if bn.affine:
        scale = scale * bn.weight.detach()
        shift = shift * bn.weight.detach() + bn.bias.detach()
    w = w * scale.view(-1, *[1] * (w.dim() - 1))
    b = shift if b is None else b * scale + shift
    return w, b


class Recorder:
    """Collects per-layer relevance sums (per sample) during the backward pass, and the logits of the forward."""

    def __init__(self):
        self.rows: list[dict] = []
        self.logits: torch.Tensor | None = None

    def __call__(self, name: str, kind: str, r_out: torch.Tensor, r_in: torch.Tensor | tuple):
        r_in = r_in if isinstance(r_in, tuple) else (r_in,)
        n = r_out.shape[0]
        self.rows.append({
            "layer": name, "kind": kind,
            "relevance_out": r_out.detach().reshape(n, -1).sum(1),
            "relevance_in": sum(r.detach().reshape(n, -1).sum(1) for r in r_in),
        })


_SAVED = object()  # marks the places of saved tensors in a rule's state


class _LayerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, layer):
        op, rule = layer["op"], layer["rule"]
        z0 = op.fwd(a, op.weight, op.bias)
        state = rule.forward(op, a, z0)
        # The state's tensors go through save_for_backward: kept as a plain ctx attribute, the output z0 (which
        # LRP-0/epsilon/gamma keep) would close a cycle output -> graph node -> ctx -> output that Python's gc cannot
        # see, and every call would leak its layers' outputs.
        items = state if isinstance(state, tuple) else (state,)
        ctx.is_tuple = isinstance(state, tuple)
        ctx.others = [_SAVED if isinstance(s, torch.Tensor) else s for s in items]
        ctx.layer = layer
        ctx.save_for_backward(a, *[s for s in items if isinstance(s, torch.Tensor)])
        return z0

    @staticmethod
    def backward(ctx, r):
        a, *tensors = ctx.saved_tensors
        tensors = iter(tensors)
        items = tuple(next(tensors) if s is _SAVED else s for s in ctx.others)
        state = items if ctx.is_tuple else items[0]
        layer = ctx.layer
        r_in = layer["rule"].backward(layer["op"], a, state, r)
        if layer["hook"] is not None:
            layer["hook"](r, r_in)
        return r_in, None


class _PassFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, out):
        ctx.shape = a.shape
        return out.clone()

    @staticmethod
    def backward(ctx, r):
        if r.shape != ctx.shape:
            raise LRPError("a pass-through layer changed the tensor shape; it needs a rule of its own")
        return r, None


class _LinearizedFn(torch.autograd.Function):
    """R_in = a * J_f(a)^T (R / stab(z)): contributions a_j dy_k/da_j of y = f(a), normalised by z = denom(a, y).

    With ``denom`` = y this is the proportional Norm rule of a linear, bias-free f (pooling, mean); for
    LocalResponseNorm ``denom`` is J a = y (1 - 2 beta (D - k) / D), D = k + alpha * window mean of a^2 (Binder
    et al. 2016 linearisation; normalising by J a makes sum R_in = sum R_out up to the stabiliser).
    """

    @staticmethod
    def forward(ctx, a, f, denom, eps, hook):
        ctx.denom, ctx.eps, ctx.hook = denom, eps, hook
        with torch.enable_grad():  # keep f's own graph: its vjp in backward needs no second evaluation of f
            ctx.a, ctx.y = a.detach().requires_grad_(True), None
            ctx.y = f(ctx.a)
        return ctx.y.detach()

    @staticmethod
    def backward(ctx, r):
        a, y = ctx.a, ctx.y
        (c,) = torch.autograd.grad(y, a, divide(r, ctx.denom(a.detach(), y.detach()), ctx.eps))
        ctx.a = ctx.y = None
        a = a.detach()
        r_in = a * c
        if ctx.hook is not None:
            ctx.hook(r, r_in)
        return r_in, None, None, None, None


class _SumFn(torch.autograd.Function):
    """Residual addition z = a + alpha b: R_a = a R / stab(z), R_b = alpha b R / stab(z) (proportional split)."""

    @staticmethod
    def forward(ctx, a, b, alpha, eps, hook):
        ctx.alpha, ctx.eps, ctx.hook = alpha, eps, hook
        ctx.save_for_backward(a, b)
        return torch.add(a, b, alpha=alpha)

    @staticmethod
    def backward(ctx, r):
        a, b = ctx.saved_tensors
        s = divide(r, torch.add(a, b, alpha=ctx.alpha), ctx.eps)
        ra, rb = (a * s).sum_to_size(a.shape), (b * s).mul_(ctx.alpha).sum_to_size(b.shape)
        if ctx.hook is not None:
            ctx.hook(r, (ra, rb))
        return ra, rb, None, None, None


def lrn_denominator(a: torch.Tensor, m: nn.LocalResponseNorm) -> torch.Tensor:
    """D = k + alpha * mean over the channel window of a^2, so that LRN(a) = a / D^beta (as torch computes it)."""
    sq = a.pow(2).unsqueeze(1)
    pad = (m.size // 2, (m.size - 1) // 2)
    if a.dim() == 3:
        d = F.avg_pool2d(F.pad(sq, (0, 0, *pad)), (m.size, 1), stride=1).squeeze(1)
    else:
        shape = sq.shape
        sq = sq.reshape(shape[0], 1, shape[2], shape[3], -1)
        d = F.avg_pool3d(F.pad(sq, (0, 0, 0, 0, *pad)), (m.size, 1, 1), stride=1).squeeze(1).reshape(a.shape)
    return d * m.alpha + m.k


def _first_tensor(args) -> torch.Tensor:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    raise LRPError("a pass-through node has no tensor input")


def execute(model: nn.Module, graph: fx.Graph, x: torch.Tensor, handle) -> torch.Tensor:
    """Run a traced graph node by node; ``handle(node, call, args, kwargs)`` may return a replacement output.

    ``handle`` returns ``NotImplemented`` to run the node unchanged. Returns the graph's output. In-place
    operations (``ReLU(inplace=True)``, ``F.relu_``, ...) run on a copy of their input, and later uses of the
    overwritten node see the result, as in eager mode: a tensor that a rule keeps (a layer's output z) is never
    overwritten, and an in-place activation never adds its gradient to a pass-through.
    """
    env: dict[fx.Node, object] = {}
    order = {n: i for i, n in enumerate(graph.nodes)}
    placeholders = 0
    for node in graph.nodes:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "placeholder":
            if placeholders == 0:
                env[node] = x
            elif node.args:
                env[node] = node.args[0]
            else:
                raise LRPError(f"forward argument '{node.target}' has no default: explain() passes one input")
            placeholders += 1
        elif node.op == "get_attr":
            env[node] = _getattr_path(model, node.target)
        elif node.op == "output":
            return args[0]
        else:
            call = _callable(model, node)
            inplace = is_inplace(model, node)
            if inplace:
                _refuse_inplace_on_used_view(model, node, args, order)
                call = _out_of_place(call)
            out = handle(node, call, args, kwargs)
            env[node] = call(*args, **kwargs) if out is NotImplemented else out
            if inplace and node.args and isinstance(node.args[0], fx.Node):
                env[node.args[0]] = env[node]
    raise LRPError("the traced graph has no output")


def run_lrp(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite: Composite,
            recorder: Recorder | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of ``x`` for the ``target`` logits: (R shaped like x, logits). The model must be frozen."""
    graph, plan = build_plan(model, composite)
    eps = composite.params.get("stabilizer", 1e-6)

    def hook_for(name, kind):
        return None if recorder is None else (lambda r, r_in: recorder(name, kind, r, r_in))

    def handle(node, call, args, kwargs):
        step = plan[node]
        name = str(node.target) if node.op == "call_module" else node.name
        if step.kind == "skip":
            return args[0]
        if step.kind == "linear":
            w, b = merged_weights(step.module, step.bn)
            layer = {"op": LinearOp(step.module, w, b), "rule": step.rule, "hook": hook_for(name, step.rule.name)}
            return _LayerFn.apply(args[0], layer)
        if step.kind == "pass":
            return _PassFn.apply(_first_tensor(args), call(*args, **kwargs).detach())
        if step.kind == "norm":
            rest = args[1:]
            return _LinearizedFn.apply(args[0], lambda t: call(t, *rest, **kwargs), lambda a, y: y, eps,
                                       hook_for(name, "norm"))
        if step.kind == "sum":
            if not all(isinstance(a, torch.Tensor) for a in args[:2]):
                return NotImplemented  # a constant or shape arithmetic: the gradient passes relevance unchanged
            return _SumFn.apply(args[0], args[1], kwargs.get("alpha", 1), eps, hook_for(name, "sum"))
        if step.kind == "unsupported":
            refuse_tensors(model, node, args, kwargs)
        if step.kind == "lrn":
            m, window = step.module, {}

            def lrn(t):  # LRN(t) = t / D^beta with D kept for the linearisation: one window pass, not two
                window["d"] = lrn_denominator(t, m)
                return t / window["d"].pow(m.beta)

            def linear_output(a, y):  # J a (see _LinearizedFn)
                d = window.pop("d").detach()
                return y * (1 - 2 * m.beta * (d - m.k) / d)

            return _LinearizedFn.apply(args[0], lrn, linear_output, eps, hook_for(name, "lrn"))
        return NotImplemented

    x = x.detach().requires_grad_(True)
    out = execute(model, graph, x, handle)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise LRPError("LRP needs a model whose forward returns one logits tensor of shape (N, classes)")
    if recorder is not None:
        recorder.logits = out.detach()
    seed = torch.zeros_like(out)
    idx = torch.arange(len(out), device=out.device)
    seed[idx, target] = out.detach()[idx, target]
    (relevance,) = torch.autograd.grad(out, x, seed)
    return relevance, out.detach()


def is_relu(model: nn.Module, node: fx.Node) -> bool:
    """Whether a traced node is a ReLU (module, function or tensor method)."""
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _refuse_inplace_on_used_view(model: nn.Module, node: fx.Node, args, order: dict) -> None:
    """An in-place operation on a view (``h[:, :3].relu_()``) also changes the viewed tensor in eager mode; running
    it on a copy would not. Refused when the viewed tensor is used after the operation (else it makes no
    difference)."""
    if not (args and isinstance(args[0], torch.Tensor) and args[0]._is_view()):
        return
    view = node.args[0]
    bases = [a for a in view.args if isinstance(a, fx.Node)] if isinstance(view, fx.Node) else []
    if any(order[u] > order[node] for base in bases for u in base.users if u is not view):
        raise LRPError(f"in-place operation '{node.name}' in {_owner(model, node)} writes into a view of a tensor "
                       "that is used afterwards: write it out of place (for example x = torch.cat([act(x[:, :k]), "
                       "x[:, k:]], 1)) so that the traced graph says what the model computes")


def _out_of_place(call):
    def run(*args, **kwargs):
        if args and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(), *args[1:])
        return call(*args, **kwargs)
    return run


def _getattr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _callable(model: nn.Module, node: fx.Node):
    if node.op == "call_module":
        return model.get_submodule(node.target)
    if node.op == "call_function":
        return node.target
    return lambda self_, *a, **k: getattr(self_, node.target)(*a, **k)
