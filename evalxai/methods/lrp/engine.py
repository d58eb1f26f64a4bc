"""The LRP engine: one backward pass over a torch.fx trace of the model with modified layer gradients.

The model is traced once (cached per model object). Each node is classified: linear layers get their rule
from the composite (BatchNorm right after a linear/conv layer is merged into it — canonization — for the
propagation only), average pooling and residual additions (also a plain ``+`` inside ``forward``) use the
proportional Norm rule, LocalResponseNorm is linearised by a first-order Taylor expansion (Binder et al.
2016), element-wise activations pass relevance unchanged (the identity rule), max-pooling and shape operations
keep their gradient (winner-takes-all routing). Anything else raises an error that names the node: never a silent
pass-through.

Transformers (AttnLRP, Achtibat et al. 2024; CP-LRP, Ali et al. 2022; see ``_TransformerOps``): LayerNorm and
RMSNorm with the normaliser as a constant (epsilon rule on what remains linear), products of two relevance-carrying
tensors (``matmul``, ``bmm``, ``einsum``, ``*``) by the uniform rule, products with a constant by the epsilon
rule, the softmax of an attention (its weights multiply a relevance-carrying tensor) by AttnLRP's rule
R_in = x (R - s sum R) or, with ``Composite.softmax="constant"`` (CP-LRP), as a constant; ``nn.MultiheadAttention``
and ``F.scaled_dot_product_attention`` are decomposed into those operations. A softmax at the model's output
passes relevance unchanged (with a warning, as before); any other softmax is an error.

The relevance flows as the "gradient" of a single ``torch.autograd.grad`` call, seeded with the target logit, so
sum R = f_c(x) wherever the rules conserve. The model itself is never modified: no hooks, no parameter swaps.
"""
from __future__ import annotations

import operator
import warnings
import weakref
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from evalxai.methods.lrp.composites import Composite, layer_type
from evalxai.methods.lrp.rules import LinearOp, Rule, ZBox, divide

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
_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)
_LINEAR_PROTO = nn.Linear(1, 1, bias=False)  # the layer type of ``F.linear`` nodes for a composite

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
_GRAD_FUNCS |= {torch.unbind, torch.chunk, torch.split, torch.stack, torch.movedim, torch.narrow, torch.flip}
_GRAD_METHODS = {"view", "reshape", "flatten", "size", "contiguous", "permute", "transpose", "squeeze",
                 "unsqueeze", "relu", "relu_", "dim", "float", "double", "to", "clone", "expand", "expand_as",
                 "repeat", "chunk", "split", "unbind", "movedim", "narrow", "masked_fill", "type_as", "flip"}
_ADD_METHODS = {"add", "add_"}
_SUB_FUNCS = {operator.sub, torch.sub}
# transformer operations (LRP only; DeepLIFT and the others see them as unsupported)
_PRODUCT_FUNCS = {torch.matmul, operator.matmul, torch.bmm, torch.einsum, operator.mul, torch.mul,
                  operator.truediv, torch.div}
_PRODUCT_METHODS = {"matmul", "bmm", "mul", "div"}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}
_NORM_LAYERS = (nn.LayerNorm, nn.RMSNorm)
_NORM_LAYER_FUNCS = {F.layer_norm, F.rms_norm}
_NEG = {operator.neg, torch.neg}


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
    """How one graph node runs: kind in {linear, skip, grad, pass, norm, sum, lrn, unsupported} (``node_kind``)
    and, for transformers, {softmax, product, layernorm, flinear, mha, sdpa, sub, neg}; ``carries`` says which
    operands of a product carry relevance (depend on the input, and not only through a CP-LRP constant)."""

    kind: str
    module: nn.Module | None = None
    bn: nn.Module | None = None
    rule: Rule | None = None
    carries: tuple = ()


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
    if _is_metadata(node):
        return "grad"  # a size or a shape-only constant: runs as it is, carries nothing
    if is_softmax(model, node):
        return "softmax"
    if what == "LRP":
        kind = _transformer_kind(model, node)
        if kind is not None:
            return kind
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
                       "activations, shape layers" + (", LayerNorm, RMSNorm and MultiheadAttention" if what == "LRP"
                                                       else "") + "; replace it or explain with a gradient method")
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


def is_softmax(model: nn.Module, node: fx.Node) -> bool:
    """Whether a traced node is a softmax or log-softmax (module, function or tensor method)."""
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), _SOFTMAX_MODULES)
    if node.op == "call_function":
        return node.target in _SOFTMAX_FUNCS
    return node.op == "call_method" and node.target in _SOFTMAX_METHODS


def _transformer_kind(model: nn.Module, node: fx.Node) -> str | None:
    """LRP's kinds for transformer parts: layernorm, mha, sdpa, product, flinear (``F.linear``), sub, neg."""
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        if isinstance(m, _NORM_LAYERS):
            return "layernorm"
        if isinstance(m, nn.MultiheadAttention):
            return "mha"
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
            return "encoder"
        return None
    if node.op == "call_function":
        fn = node.target
        if fn in _NORM_LAYER_FUNCS:
            return "layernorm"
        if fn is F.scaled_dot_product_attention:
            return "sdpa"
        if fn is F.linear:
            return "flinear"
        if fn in _PRODUCT_FUNCS:
            return "product"
        if fn in _SUB_FUNCS:
            return "sub"
        if fn in _NEG:
            return "neg"
        return None
    if node.target in _PRODUCT_METHODS:
        return "product"
    if node.target == "sub":
        return "sub"
    if node.target == "neg":
        return "neg"
    return None


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


# Nodes whose value is metadata of a tensor (a size, a dtype), or a new tensor that takes only the shape of its
# tensor argument: they carry no relevance, whatever they were computed from.
# Comparisons, boolean and integer results (a padding mask ``x.abs().sum(-1) == 0``) are not relevance either.
_BOOL_NAMES = {"eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or", "logical_xor", "isnan",
               "isinf", "isfinite", "argmax", "argmin"}
_META_METHODS = {"size", "dim", "numel", "nelement", "stride", "element_size", "get_device", "new_zeros", "new_ones",
                 "new_full", "new_empty", "bool", "long", "int", *_BOOL_NAMES}
_META_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "layout"}
_META_FUNCS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like, torch.numel, len,
               operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.invert,
               *(getattr(torch, name) for name in _BOOL_NAMES)}
_AS_METHODS = {"expand_as", "view_as", "reshape_as", "type_as"}  # data from self, only the shape of the argument


def _carries(graph: fx.Graph, cut=frozenset()) -> dict:
    """Which nodes carry relevance: those whose tensor data depends on the explained input (the first placeholder),
    except through the nodes in ``cut`` (CP-LRP's attention weights, constants of the propagation). Shapes and sizes
    are not data: ``w.expand(x.shape[0], -1)`` and ``torch.zeros(x.size(0), d)`` are constants."""
    out, first = {}, True
    for node in graph.nodes:
        if node.op == "placeholder":
            out[node], first = first, False
        elif node.op == "get_attr" or node in cut or _is_metadata(node):
            out[node] = False
        elif node.op == "call_method" and node.target in _AS_METHODS:
            out[node] = isinstance(node.args[0], fx.Node) and out[node.args[0]]
        else:
            out[node] = any(out[n] for n in node.all_input_nodes)
    return out


def _needed(graph: fx.Graph, carries: dict) -> set:
    """The nodes on a relevance path: relevance-carrying nodes from which the output is reached through carrying
    nodes. An operation off every such path (``abs`` feeding a comparison) runs as it is, with no rule needed."""
    out, frontier = set(), [n for n in graph.nodes if n.op == "output"]
    while frontier:
        node = frontier.pop()
        for n in node.all_input_nodes:
            if carries[n] and n not in out:
                out.add(n)
                frontier.append(n)
    return out


def _is_metadata(node: fx.Node) -> bool:
    """Whether a node's value is tensor metadata or a shape-only constructor (see ``_META_METHODS``)."""
    if node.op == "call_method":
        return node.target in _META_METHODS
    if node.op == "call_function":
        return node.target in _META_FUNCS or node.target is getattr and node.args[1] in _META_ATTRS
    return False


def _operands(node: fx.Node) -> list:
    """The tensor operands of a product node (two for ``a @ b``, ``a * b``; those after the equation for einsum)."""
    if node.op == "call_function" and node.target is torch.einsum:
        ops = list(node.args[1:])
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = list(ops[0])
        return ops
    other = node.args[1] if len(node.args) > 1 else next(iter(node.kwargs.values()), None)
    return [node.args[0], other]


_SHAPE_USES = {"size", "dim"}


def _softmax_role(node: fx.Node, kinds: dict, carries: dict) -> str:
    """'attention' when every use of the softmax (through shape ops and dropout) is a product with a
    relevance-carrying tensor (attention weights times values), 'output' when it only reaches the model's output,
    else 'other'."""
    attention = output = other = False
    frontier, seen = [node], {node}
    while frontier:
        n = frontier.pop()
        for u in n.users:
            if u in seen:
                continue
            seen.add(u)
            kind = kinds[u]
            if u.op == "call_method" and u.target in _SHAPE_USES or u.op == "call_function" and u.target is getattr:
                continue  # shape arithmetic
            if kind == "output":
                output = True
            elif kind == "grad":
                frontier.append(u)
            elif kind == "product" and len(_operands(u)) == 2:
                others = [a for a in _operands(u) if a is not n]
                if others and all(isinstance(a, fx.Node) and carries[a] for a in others):
                    attention = True
                else:
                    other = True
            else:
                other = True
    if other:
        return "other"
    return "attention" if attention and not output else "output" if output and not attention else "other"


def attention_nodes(model: nn.Module) -> tuple[fx.Graph, set]:
    """The traced graph and its attention nodes: ``nn.MultiheadAttention`` modules, ``F.scaled_dot_product_attention``
    calls and softmaxes whose weights multiply relevance-carrying values (hand-written attention)."""
    graph = _trace(model)
    kinds = {node: node_kind(model, node) for node in graph.nodes}
    carries = _carries(graph)
    found = set()
    for node, kind in kinds.items():
        if kind in ("mha", "sdpa") or kind == "softmax" and _softmax_role(node, kinds, carries) == "attention":
            found.add(node)
    return graph, found


def build_plan(model: nn.Module, composite: Composite) -> tuple[fx.Graph, dict]:
    """Classify every node of the traced model (``node_kind``) and give linear layers their rule.

    A softmax is an attention's (its weights multiply relevance-carrying values: the composite's softmax rule), the
    model's output (relevance passes unchanged, with a warning, as zennit does), or an error."""
    graph = _trace(model)
    plan: dict[fx.Node, Step] = {}
    seen_first = False
    passed = []  # softmax and BatchNorm layers that relevance passes unchanged (warned about once)
    kinds = {node: node_kind(model, node) for node in graph.nodes}
    carries = _carries(graph)
    attention, outputs = set(), set()
    for node, kind in kinds.items():
        if kind != "softmax":
            continue
        role = _softmax_role(node, kinds, carries)
        is_log = node.target in (F.log_softmax, torch.log_softmax, "log_softmax") or node.op == "call_module" and \
            isinstance(model.get_submodule(node.target), nn.LogSoftmax)
        if role == "attention" and not is_log:
            attention.add(node)
        elif role == "output":
            kinds[node] = "pass"
            outputs.add(node)
        else:
            raise LRPError(f"softmax (graph node '{node.name}') in {_owner(model, node)} is neither the model's output "
                           "nor attention weights that multiply values (softmax(q k^T) @ v): LRP has no rule for it; "
                           "explain the logits before it, write the attention as matmul + softmax + matmul, or use a "
                           "gradient method")
    if composite.softmax == "constant":
        carries = _carries(graph, frozenset(attention))
    needed = _needed(graph, carries)
    for node in graph.nodes:
        if node in plan:
            continue
        kind = kinds[node]
        if kind == "unsupported" and node not in needed:
            kind = "grad"  # off every relevance path (e.g. a padding mask computed from the input)
        if kind == "linear":
            m = model.get_submodule(node.target)
            merged = _merge_target(node, model, m)
            bn = None
            if merged is not None:
                plan[merged[0]] = Step("skip")
                bn = merged[1]
            plan[node] = Step("linear", m, bn, composite.rule_for(node.target, m, not seen_first))
            seen_first = True
        elif kind == "flinear":
            if carries[node.args[1]] if isinstance(node.args[1], fx.Node) else False:
                raise LRPError(f"F.linear (graph node '{node.name}') in {_owner(model, node)} multiplies by a weight "
                               "that depends on the input: write it as a product (torch.matmul) instead")
            plan[node] = Step("flinear", rule=composite.rule_for(node.name, _LINEAR_PROTO, not seen_first))
            seen_first = True
        elif kind in ("mha", "encoder"):
            plan[node] = Step(kind, model.get_submodule(node.target))
        elif kind == "product":
            ops = _operands(node)
            plan[node] = Step("product", carries=tuple(isinstance(a, fx.Node) and carries[a] for a in ops))
        elif kind == "lrn":
            plan[node] = Step("lrn", model.get_submodule(node.target))
        else:
            plan[node] = Step(kind, model.get_submodule(node.target) if kind == "layernorm" and
                              node.op == "call_module" else None)
            if node in outputs or kind == "pass" and node.op == "call_module" and isinstance(
                    model.get_submodule(node.target), _BN):
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


class _ProductFn(torch.autograd.Function):
    """y = f(a, b), bilinear (``matmul``, ``bmm``, ``einsum``, ``*``) or linear in ``a`` (division by a constant):
    R_a = w_a a (J_a^T s), R_b = w_b b (J_b^T s), s = R / stab(y). Two relevance-carrying factors get the uniform
    rule (w_a = w_b = 1/2, AttnLRP Prop. 3.3: the epsilon rule over the sum, each product split equally); a
    constant factor (w = 0) makes f linear in the other, which then gets the epsilon rule (w = 1). ``fn`` None is
    ``a @ b * scale`` (attention scores and outputs), whose products are written out, with no autograd graph; a
    number ``scale`` cancels in s and leaves the rule unchanged."""

    @staticmethod
    def forward(ctx, a, b, fn, wa, wb, eps, hook, scale=None):
        ctx.fn, ctx.w, ctx.eps, ctx.hook = fn, (wa, wb), eps, hook
        if fn is None:
            y = torch.matmul(a, b)
            if scale is not None:
                y.mul_(scale)
            ctx.save_for_backward(a, b, y)
            ctx.scale = 1.0 if scale is None else scale
            return y
        with torch.enable_grad():  # keep f's graph: the vector-Jacobian products in backward need no re-run of f
            ctx.a = a.detach().requires_grad_(wa != 0)
            ctx.b = b.detach().requires_grad_(wb != 0)
            ctx.y = fn(ctx.a, ctx.b)
        return ctx.y.detach()

    @staticmethod
    def backward(ctx, r):
        wa, wb = ctx.w
        if ctx.fn is None:
            a, b, y = ctx.saved_tensors
            s = divide(r, y, ctx.eps * abs(ctx.scale))  # = R / stab(a @ b) * scale: epsilon on the unscaled product
            if ctx.scale != 1.0:
                s.mul_(ctx.scale)
            ra = None if not wa else torch.matmul(s, b.mT).sum_to_size(a.shape).mul_(a)
            rb = None if not wb else torch.matmul(a.mT, s).sum_to_size(b.shape).mul_(b)
            if ra is not None and wa != 1:
                ra.mul_(wa)
            if rb is not None and wb != 1:
                rb.mul_(wb)
            out = [ra, rb]
        else:
            a, b, y = ctx.a, ctx.b, ctx.y
            ctx.a = ctx.b = ctx.y = None
            inputs = [t for t, w in zip((a, b), ctx.w) if w]
            grads = iter(torch.autograd.grad(y, inputs, divide(r, y.detach(), ctx.eps)))
            out = [None if not w else next(grads).mul_(t.detach()).mul_(w) for t, w in zip((a, b), ctx.w)]
        if ctx.hook is not None:
            ctx.hook(r, tuple(o for o in out if o is not None))
        return out[0], out[1], None, None, None, None, None, None


class _SoftmaxFn(torch.autograd.Function):
    """AttnLRP's softmax rule (Achtibat et al. 2024, Prop. 3.1): the first-order Taylor expansion at x with the
    bias absorbing relevance, R_in = x * (R - s * sum_dim R), s = softmax(x). Inputs of -inf (masked) get 0."""

    @staticmethod
    def forward(ctx, x, dim, hook, fn=None):
        s = torch.softmax(x, dim) if fn is None else fn(x)
        ctx.dim, ctx.hook = dim, hook
        ctx.save_for_backward(x, s)
        return s

    @staticmethod
    def backward(ctx, r):
        x, s = ctx.saved_tensors
        r_in = (s * r.sum(ctx.dim, keepdim=True)).neg_().add_(r).mul_(x).nan_to_num_(0.0, 0.0, 0.0)  # x = -inf
        if ctx.hook is not None:
            ctx.hook(r, r_in)
        return r_in, None, None, None


class _NormLayerFn(torch.autograd.Function):
    """LayerNorm / RMSNorm with the normaliser sigma held constant: y = C a / sigma * w + b (C centres, or is the
    identity for RMSNorm), linear in a; the epsilon rule R_a = a * C^T (w / sigma * R / stab(y))."""

    @staticmethod
    def forward(ctx, a, shape, weight, bias, norm_eps, rms, eps, hook):
        dims = tuple(range(-len(shape), 0))
        if rms:
            norm_eps = torch.finfo(a.dtype).eps if norm_eps is None else norm_eps
            inv = torch.rsqrt(a.pow(2).mean(dims, keepdim=True).add_(norm_eps))
            y = F.rms_norm(a, shape, weight, norm_eps)
        else:
            y, _, inv = torch.native_layer_norm(a, shape, weight, bias, norm_eps)  # inv: 1 / sigma
        ctx.dims, ctx.rms, ctx.eps, ctx.hook = dims, rms, eps, hook
        ctx.save_for_backward(a, y, inv, weight)
        return y

    @staticmethod
    def backward(ctx, r):
        a, y, inv, weight = ctx.saved_tensors
        g = divide(r, y, ctx.eps).mul_(inv)
        if weight is not None:
            g.mul_(weight)
        if not ctx.rms:
            g = g - g.mean(ctx.dims, keepdim=True)
        r_in = g.mul_(a)
        if ctx.hook is not None:
            ctx.hook(r, r_in)
        return r_in, None, None, None, None, None, None, None


class _TransformerOps:
    """Relevance-propagating building blocks of attention, shared by the traced graph and the decompositions of
    ``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention``."""

    def __init__(self, composite: Composite, eps: float, hook_for):
        self.composite, self.eps, self.hook_for = composite, eps, hook_for
        self.constant_softmax = composite.softmax == "constant"

    def linear(self, name: str, x, w, b, module: nn.Module = _LINEAR_PROTO, rule: Rule | None = None):
        rule = rule or self.composite.rule_for(name, module, False)
        w = w.detach()
        layer = {"op": LinearOp(module, w, None if b is None else b.detach()), "rule": rule,
                 "hook": self.hook_for(name, rule.name)}
        return _LayerFn.apply(x, layer)

    def product(self, name: str, fn, a, b, carries=(True, True), scale=None):
        """fn(a, b) by the uniform / epsilon rule (``_ProductFn``); ``fn`` None: ``a @ b * scale``. A factor
        carries relevance when ``carries`` says so and it depends on the input in this run (requires grad: the model
        is frozen), so a learned attention query (``mha(q0.expand(B, -1, -1), h, h)``) is a constant."""
        ca, cb = carries[0] and a.requires_grad, carries[1] and b.requires_grad
        if not (ca or cb):
            y = torch.matmul(a, b) if fn is None else fn(a, b)
            return y if scale is None else y * scale
        w = (0.5, 0.5) if ca and cb else (1.0, 0.0) if ca else (0.0, 1.0)
        return _ProductFn.apply(a, b, fn, *w, self.eps, self.hook_for(name, "uniform" if ca and cb else "epsilon"),
                                scale)

    def add(self, name: str, a, b):
        return _SumFn.apply(a, b, 1, self.eps, self.hook_for(name, "sum"))

    def softmax(self, name: str, x, dim: int, fn=None):
        """softmax(x) over ``dim`` (``fn(x)`` if given): AttnLRP's rule, or a constant for CP-LRP."""
        if self.constant_softmax:
            with torch.no_grad():
                return torch.softmax(x, dim) if fn is None else fn(x)
        return _SoftmaxFn.apply(x, dim, self.hook_for(name, "softmax"), fn)

    def attention(self, name: str, q, k, v, mask=None, scale=None):
        """softmax(q k^T * scale + mask) v over the last two dimensions; a boolean ``mask`` is True where
        attention is allowed. Returns (output, attention weights)."""
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        scores = self.product(f"{name}.qk", None, q, k.transpose(-2, -1), scale=scale)
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, float("-inf"))
            else:
                scores = self.add(f"{name}.mask", scores, mask.to(scores.dtype).expand_as(scores))
        a = self.softmax(f"{name}.softmax", scores, -1)
        out = self.product(f"{name}.av", None, a, v, (not self.constant_softmax, True))
        return out, a

    def sdpa(self, name: str, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        """``F.scaled_dot_product_attention`` decomposed (no dropout: an explanation needs a fixed forward)."""
        if dropout_p:
            raise LRPError(f"scaled_dot_product_attention '{name}' has dropout_p={dropout_p}: LRP needs a fixed "
                           "forward; pass dropout_p=0.0 in eval mode (e.g. dropout_p=p if self.training else 0.0)")
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            rep = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
        mask = attn_mask
        if is_causal:
            ql, kl = query.shape[-2], key.shape[-2]
            mask = torch.ones(ql, kl, dtype=torch.bool, device=query.device).tril()
        return self.attention(name, query, key, value, mask, scale)[0]

    def mha(self, name: str, m: nn.MultiheadAttention, query, key, value, key_padding_mask=None, need_weights=True,
            attn_mask=None, average_attn_weights=True, is_causal=False):
        """``nn.MultiheadAttention`` decomposed: packed (or separate) in-projections and the out-projection by the
        composite's linear rule, then ``attention``; ``batch_first`` either way, unbatched inputs too."""
        if m.bias_k is not None or m.add_zero_attn:
            raise LRPError(f"nn.MultiheadAttention '{name}' with add_bias_kv or add_zero_attn has no LRP rule: "
                           "build it without them")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if not m.batch_first or unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        e, h = m.embed_dim, m.num_heads
        n, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        if m._qkv_same_embed_dim and query is key and key is value:  # self-attention: one packed projection
            q, k, v = self.linear(f"{name}.in_proj", query, m.in_proj_weight, m.in_proj_bias, m.out_proj).chunk(3, -1)
        else:
            if m._qkv_same_embed_dim:
                wq, wk, wv = m.in_proj_weight.chunk(3)
            else:
                wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
            bq, bk, bv = (None,) * 3 if m.in_proj_bias is None else m.in_proj_bias.chunk(3)
            q = self.linear(f"{name}.in_proj_q", query, wq, bq, m.out_proj)
            k = self.linear(f"{name}.in_proj_k", key, wk, bk, m.out_proj)
            v = self.linear(f"{name}.in_proj_v", value, wv, bv, m.out_proj)
        q, k, v = (t.reshape(n, t.shape[1], h, e // h).transpose(1, 2) for t in (q, k, v))
        mask = _mha_mask(attn_mask, key_padding_mask, n, h, lq, lk, q.dtype)
        o, a = self.attention(name, q, k, v, mask)
        o = o.transpose(1, 2).reshape(n, lq, e)
        out = self.linear(f"{name}.out_proj", o, m.out_proj.weight, m.out_proj.bias, m.out_proj)
        if not m.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        weights = None
        if need_weights:
            weights = a.detach().mean(1) if average_attn_weights else a.detach()
            weights = weights.squeeze(0) if unbatched else weights
        return out, weights

    def layer_norm(self, name: str, m: nn.LayerNorm, x):
        return _NormLayerFn.apply(x, tuple(m.normalized_shape), None if m.weight is None else m.weight.detach(),
                                  None if m.bias is None else m.bias.detach(), m.eps, False, self.eps,
                                  self.hook_for(name, "layernorm"))

    def encoder(self, name: str, m: nn.Module, src, mask=None, src_key_padding_mask=None, is_causal=None, **kw):
        """``nn.TransformerEncoderLayer`` (pre- or post-norm) and ``nn.TransformerEncoder`` written out: attention
        as ``mha``, LayerNorms, linear layers, the activation (ReLU keeps its gradient, others pass relevance
        unchanged), residual additions; dropout is off in eval mode."""
        if isinstance(m, nn.TransformerEncoder):
            x, keep = src, nested_tokens(m, src, mask, src_key_padding_mask)
            for i, layer in enumerate(m.layers):
                x = self.encoder(f"{name}.layers.{i}", layer, x, mask, src_key_padding_mask)
            if keep is not None:  # torch's nested-tensor path: padded positions come out 0 (a constant gate)
                x = x * keep.unsqueeze(-1).to(x.dtype)
            return x if m.norm is None else self.layer_norm(f"{name}.norm", m.norm, x)
        if kw or not isinstance(m.norm1, nn.LayerNorm):
            raise LRPError(f"TransformerEncoderLayer '{name}': arguments {sorted(kw)} or norm "
                           f"{type(m.norm1).__name__} have no LRP rule")

        def sa(h):
            return self.mha(f"{name}.self_attn", m.self_attn, h, h, h, key_padding_mask=src_key_padding_mask,
                            need_weights=False, attn_mask=mask)[0]

        def ff(h):
            h = self.linear(f"{name}.linear1", h, m.linear1.weight, m.linear1.bias, m.linear1)
            act = m.activation
            if act in (F.relu, torch.relu) or isinstance(act, nn.ReLU):
                h = torch.relu(h)
            else:
                h = _PassFn.apply(h, act(h).detach())
            return self.linear(f"{name}.linear2", h, m.linear2.weight, m.linear2.bias, m.linear2)

        x = src
        if m.norm_first:
            x = self.add(f"{name}.add1", x, sa(self.layer_norm(f"{name}.norm1", m.norm1, x)))
            return self.add(f"{name}.add2", x, ff(self.layer_norm(f"{name}.norm2", m.norm2, x)))
        x = self.layer_norm(f"{name}.norm1", m.norm1, self.add(f"{name}.add1", x, sa(x)))
        return self.layer_norm(f"{name}.norm2", m.norm2, self.add(f"{name}.add2", x, ff(x)))


def nested_tokens(m: nn.TransformerEncoder, src, mask, src_key_padding_mask) -> torch.Tensor | None:
    """The tokens (N, T) that ``nn.TransformerEncoder`` keeps when it takes torch's nested-tensor fast path (eval
    mode, no gradients, a left-aligned key-padding mask and no attention mask: the conditions of its ``forward``);
    the outputs at the other positions are 0 there. None when it takes the ordinary path."""
    if src_key_padding_mask is None or mask is not None or src.dim() != 3 or m.layers[0].training:
        return None
    if not (torch.backends.mha.get_fastpath_enabled() and getattr(m, "use_nested_tensor", False)) or \
            torch.is_autocast_enabled():
        return None
    pad = src_key_padding_mask
    keep = pad.logical_not() if pad.dtype == torch.bool else pad == 0  # a float mask adds -inf where padded
    left_aligned = bool((keep[:, 1:] <= keep[:, :-1]).all())
    return keep if left_aligned or not getattr(m, "mask_check", True) else None


def check_function(model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> None:
    """Raise LRPError unless the logits computed from the traced graph equal ``model(x)`` (without gradients, as the
    model predicts) up to float rounding: an explanation of another function (a fast path that tracing cannot see,
    a forward that branches on the grad mode) would be wrong without a word. Costs one forward."""
    with torch.no_grad():
        ref = model(x.detach())
    if not isinstance(ref, torch.Tensor) or ref.shape != logits.shape:
        raise LRPError(f"model(x) returns {type(ref).__name__} {tuple(getattr(ref, 'shape', ()))}, the traced graph "
                       f"logits {tuple(logits.shape)}: explain a model whose forward returns one logits tensor")
    tol = 1e-8 if ref.dtype == torch.float64 else 1e-3 if ref.dtype == torch.float32 else 1e-2
    scale = ref.detach().abs().flatten(1).amax(1).clamp(min=torch.finfo(ref.dtype).tiny)
    err = ((logits.detach() - ref).abs().flatten(1).amax(1) / scale).nan_to_num(float("inf"))
    if bool((err > tol).any()):
        i = int(err.argmax())
        raise LRPError(f"the traced forward of {type(model).__name__} computes other logits than model(x) (sample {i}: "
                       f"{logits[i].detach().flatten()[:4].tolist()} vs {ref[i].flatten()[:4].tolist()}, relative "
                       f"difference {float(err[i]):.3g} > {tol:g}): a path torch.fx cannot see (a fast path, a branch "
                       "on the grad mode or on a Python value) would be explained instead of the model; remove the "
                       "branch or explain with a gradient method")


def _mha_mask(attn_mask, key_padding_mask, n, h, lq, lk, dtype):
    """nn.MultiheadAttention's masks (boolean: True = not allowed; float: added) as one additive (n, h, lq, lk)
    mask, or None."""
    total = None
    for mask in (attn_mask, key_padding_mask):
        if mask is None:
            continue
        if mask is key_padding_mask:
            mask = mask.view(n, 1, 1, lk)
        elif mask.dim() == 3:
            mask = mask.view(n, h, lq, lk)
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf")) \
            if mask.dtype == torch.bool else mask.to(dtype)
        total = mask if total is None else total + mask
    return None if total is None else total.expand(n, h, lq, lk)


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


_TRANSFORMER_KINDS = {"softmax", "product", "layernorm", "flinear", "mha", "sdpa", "sub", "neg", "encoder"}


def _transformer_step(model, node, step, name, call, args, kwargs, ops: _TransformerOps, eps, hook_for):
    """Run one transformer node with its relevance rule (see ``_TransformerOps``)."""
    kind = step.kind
    if kind == "softmax":
        return ops.softmax(name, args[0], _softmax_dim(model, node, args, kwargs),
                           lambda t: call(t, *args[1:], **kwargs))
    if kind == "layernorm":
        if node.op == "call_module":
            m = step.module
            rms = isinstance(m, nn.RMSNorm)
            shape, w, b, e = m.normalized_shape, m.weight, getattr(m, "bias", None), m.eps
        else:
            rms = node.target is F.rms_norm
            bound = _bind(F.rms_norm if rms else F.layer_norm, args, kwargs)
            shape, w, b = bound["normalized_shape"], bound.get("weight"), bound.get("bias")
            e = bound.get("eps", None if rms else 1e-5)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return _NormLayerFn.apply(args[0], shape, None if w is None else w.detach(), None if b is None else b.detach(),
                                  e, rms, eps, hook_for(name, "layernorm"))
    if kind == "flinear":
        bound = _bind(F.linear, args, kwargs)
        return ops.linear(name, bound["input"], bound["weight"], bound.get("bias"), rule=step.rule)
    if kind == "mha":
        return ops.mha(name, step.module, *args, **kwargs)
    if kind == "encoder":
        return ops.encoder(name, step.module, *args, **kwargs)
    if kind == "sdpa":
        return ops.sdpa(name, *args, **kwargs)
    if kind == "neg":
        return _PassFn.apply(args[0], call(*args, **kwargs).detach())
    if kind == "sub":
        if not all(isinstance(a, torch.Tensor) for a in args[:2]):
            return NotImplemented  # a number: a constant shift, relevance passes unchanged
        return _SumFn.apply(args[0], args[1], -kwargs.get("alpha", 1), eps, hook_for(name, "sum"))
    # product
    if node.op == "call_function" and node.target is torch.einsum:
        eq, vals = args[0], list(args[1:])
        if len(vals) == 1 and isinstance(vals[0], (list, tuple)):
            vals = list(vals[0])
        if len(vals) == 1:  # one operand: a linear map (permutation, sum), the proportional rule
            return _LinearizedFn.apply(vals[0], lambda t: torch.einsum(eq, t), lambda a, y: y, eps,
                                       hook_for(name, "norm"))
        if len(vals) != 2:
            raise LRPError(f"einsum of {len(vals)} tensors (graph node '{node.name}') in {_owner(model, node)} has no "
                           "LRP rule: split it into products of two")
        fn = lambda a, b: torch.einsum(eq, a, b)  # noqa: E731
    elif len(args) > 1:
        vals, rest = [args[0], args[1]], args[2:]
        fn = lambda a, b: call(a, b, *rest, **kwargs)  # noqa: E731
    else:
        key = next(iter(kwargs))
        vals, kw = [args[0], kwargs[key]], {k: v for k, v in kwargs.items() if k != key}
        fn = lambda a, b: call(a, **{key: b}, **kw)  # noqa: E731
    carries = [c and isinstance(v, torch.Tensor) and v.requires_grad for c, v in zip(step.carries, vals)]
    if not any(carries):
        return NotImplemented
    if all(carries) and vals[0] is vals[1]:  # x * x is a power (a non-linearity), not a product of two signals
        op = getattr(node.target, "__name__", node.target)
        raise LRPError(f"operation '{op}' (graph node '{node.name}') in {_owner(model, node)} multiplies a tensor by "
                       "itself (a power): LRP's uniform rule is for products of two different tensors; replace it "
                       "or explain with a gradient method")
    if node.target in (operator.truediv, torch.div, "div") and carries[1]:  # division by the input: no rule
        refuse_tensors(model, node, args, kwargs)
    if not all(isinstance(v, torch.Tensor) for v in vals):  # times a number: linear, relevance unchanged
        carrier = vals[0] if carries[0] else vals[1]
        out = call(*args, **kwargs)
        if out.shape != carrier.shape:
            return NotImplemented
        return _PassFn.apply(carrier, out.detach())
    return ops.product(name, fn, vals[0], vals[1], tuple(carries))


def _softmax_dim(model, node, args, kwargs) -> int:
    if node.op == "call_module":
        dim = model.get_submodule(node.target).dim
    else:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dim is None:
        raise LRPError(f"softmax (graph node '{node.name}') without dim: give dim=-1")
    return dim


def _bind(fn, args, kwargs) -> dict:
    import inspect

    try:
        return dict(inspect.signature(fn).bind(*args, **kwargs).arguments)
    except (TypeError, ValueError):  # builtins without a signature: positional order of the documentation
        names = {F.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
                 F.rms_norm: ("input", "normalized_shape", "weight", "eps"),
                 F.linear: ("input", "weight", "bias")}[fn]
        return {**dict(zip(names, args)), **kwargs}


class _FirstLayerInput(Exception):
    def __init__(self, value):
        super().__init__()
        self.value = value


def box_bounds_at_first_layer(model: nn.Module, graph: fx.Graph, plan: dict, x: torch.Tensor) -> None:
    """Give a box (zB) rule at the first layer its bounds where that layer reads them: input-space ``low`` / ``high``
    run through the operations between the input and the layer (padding, reshapes, an affine normalisation: the
    elementwise min / max of the two images). A padded constant thus gets low = high = the constant and no
    relevance, as in a convolution's own padding (Kindermans et al.'s input invariance holds). Bounds that do not
    broadcast to one input (per feature of a flattened image) are left to the rule."""
    node = next((n for n in graph.nodes if n in plan and plan[n].kind in ("linear", "flinear")), None)
    if node is None or not isinstance(plan[node].rule, ZBox):
        return
    rule = plan[node].rule

    def grab(n, call, args, kwargs):
        if n is node:
            raise _FirstLayerInput(args[0] if n.op == "call_module" else _bind(F.linear, args, kwargs)["input"])
        return NotImplemented

    images = []
    for v in (rule.low, rule.high):
        t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
        t = t.unsqueeze(0) if t.dim() == x.dim() - 1 else t
        try:
            t = t.expand(1, *x.shape[1:]).clone()
        except RuntimeError:
            return
        try:
            with torch.no_grad():
                execute(model, graph, t, grab)
        except _FirstLayerInput as found:
            images.append(found.value)
    lo, hi = torch.minimum(*images), torch.maximum(*images)
    plan[node] = replace(plan[node], rule=replace(rule, low=lo, high=hi))


def run_lrp(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite: Composite,
            recorder: Recorder | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of ``x`` for the ``target`` logits: (R shaped like x, logits). The model must be frozen."""
    graph, plan = build_plan(model, composite)
    box_bounds_at_first_layer(model, graph, plan, x)
    eps = composite.params.get("stabilizer", 1e-6)

    def hook_for(name, kind):
        return None if recorder is None else (lambda r, r_in: recorder(name, kind, r, r_in))

    ops = _TransformerOps(composite, eps, hook_for)

    def handle(node, call, args, kwargs):
        step = plan[node]
        name = str(node.target) if node.op == "call_module" else node.name
        if step.kind in _TRANSFORMER_KINDS:
            return _transformer_step(model, node, step, name, call, args, kwargs, ops, eps, hook_for)
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
    check_function(model, x, out)
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
