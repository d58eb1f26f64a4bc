"""The torch.fx graph toolkit of the methods that run a model node by node (LRP, DeepLIFT, Guided Backprop /
Deconvnet, CAM, attention rollout): tracing, node classification, relevance-carrying data flow and the executor.

- ``trace``: the model's torch.fx graph, traced once per model object (a weak cache).
- Node classification, method-independent: ``node_kind`` (module, function or tensor-method nodes sorted into
  kinds: linear layers, gradient-keeping ops such as ReLU, max-pooling and shape ops, element-wise pass-throughs,
  average pooling and means, additions, LocalResponseNorm, unsupported; with ``transformers=True`` also LayerNorm /
  RMSNorm, attention modules, ``F.scaled_dot_product_attention``, ``F.linear``, products, subtraction and negation),
  ``is_relu``, ``is_softmax``, ``is_inplace``, ``is_metadata`` (sizes, dtypes, comparisons, shape-only
  constructors: no data), ``layer_type`` (parametrised linear / conv layers), ``operands`` of a product.
- Data flow: ``carrying_nodes`` (whose tensor data depends on the explained input), ``needed_nodes`` (on a path from
  the input to the output), ``softmax_role`` and ``attention_nodes`` (the softmaxes whose weights multiply
  relevance-carrying values: attention).
- Running: ``execute`` runs the graph node by node with a handler that may replace any node's output (in-place
  operations on a copy, as eager mode computes them); ``check_function`` compares the traced logits with
  ``model(x)`` (once per key for a symbolic trace); ``refuse_tensors`` and ``owner`` name an unsupported node and
  the module it sits in.

Nothing here knows a relevance rule: the methods give the kinds their meaning. The model itself is never modified.
"""
from __future__ import annotations

import inspect
import operator
import weakref
from collections.abc import Callable, Collection

import torch
import torch.nn.functional as F
from torch import fx, nn

from evalxai.methods.tracing import LeafTracer, concrete_trace, is_library_activation, is_rms_norm, is_wrapped_function

_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# kind "grad": the operation keeps its gradient (ReLU, max-pooling: winner-takes-all routing; shape operations)
GRAD_MODULES = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                nn.AdaptiveMaxPool3d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                nn.AlphaDropout, nn.Identity, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
# kind "pass": element-wise activations (and softmax, BatchNorm), whose relevance LRP passes unchanged
PASS_MODULES = (nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus,
                nn.Hardtanh, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.PReLU, nn.Softsign, nn.Tanhshrink,
                nn.LogSigmoid, nn.Softmax, nn.LogSoftmax, *BATCH_NORMS)
# kind "norm": linear and bias-free (average pooling, mean, sum over a dimension, upsampling)
NORM_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveAvgPool3d, nn.Upsample)  # upsampling: linear, bias-free (nearest: copies)
SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax)

RELU_FUNCS = {torch.relu, F.relu, torch.relu_}
# Data movement: operations whose output elements are elements of their tensor input (moved, selected, copied,
# padded with constants), by name, for torch functions, torch.nn.functional, operator and tensor methods alike. They
# keep their gradient, so relevance follows the elements (summed over copies: conserved). One list for all, so a
# spelling (swapaxes, unflatten, roll, reshape_as, tensor_split, ...) is never missed one by one.
SHAPE_OPS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "ravel", "contiguous", "clone", "detach_copy",
    "permute", "transpose", "swapaxes", "swapdims", "moveaxis", "movedim", "t", "adjoint", "squeeze", "unsqueeze",
    "expand", "expand_as", "broadcast_to", "repeat", "repeat_interleave", "tile", "roll", "flip", "fliplr", "flipud",
    "rot90", "narrow", "select", "index_select", "gather", "take_along_dim", "getitem", "split", "chunk", "unbind",
    "tensor_split", "hsplit", "vsplit", "dsplit", "split_with_sizes", "cat", "concat", "concatenate", "stack", "hstack",
    "vstack", "dstack", "pad", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle",
    "unfold", "diagonal", "masked_fill", "to", "float", "double", "half", "bfloat16", "type", "type_as",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
}
_SHAPE_MODULES = ("torch", "torch.functional", "torch.nn.functional", "torch._C._nn", "torch._C._VariableFunctions",
                  "_operator", "operator", "builtins", None)
GRAD_FUNCS = {*RELU_FUNCS, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
              F.adaptive_max_pool3d, getattr}
GRAD_METHODS = {"relu", "relu_", "size", "dim"} | SHAPE_OPS
SOFTMAX_FUNCS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
PASS_FUNCS = {torch.tanh, torch.tanh_, torch.sigmoid, torch.sigmoid_, F.gelu, F.silu, F.elu, F.elu_, F.leaky_relu,
              F.leaky_relu_, F.softplus, F.relu6, F.hardtanh, F.hardtanh_, F.hardswish, F.hardsigmoid, F.mish,
              F.selu, torch.selu_, F.celu, torch.celu_, F.softsign, F.logsigmoid, F.tanhshrink, *SOFTMAX_FUNCS}
PASS_METHODS = {"sigmoid", "sigmoid_", "tanh", "tanh_"}  # x.sigmoid() (timm's SE gate), x.tanh()
NORM_FUNCS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
              F.adaptive_avg_pool3d, torch.mean, torch.sum, F.interpolate, F.upsample,
              F.fold}  # fold (col2im) sums overlapping patches: the proportional rule, not a copy
ADD_FUNCS = {operator.add, torch.add, operator.iadd}


def is_shape_function(fn) -> bool:
    """Whether a called function is one of ``SHAPE_OPS`` (a torch, functional or operator function by that name)."""
    name = getattr(fn, "__name__", None)
    return name in SHAPE_OPS and getattr(fn, "__module__", None) in _SHAPE_MODULES


ADD_METHODS = {"add", "add_"}
# transformer operations (LRP has rules for them; DeepLIFT and the others see them as unsupported)
SUB_FUNCS = {operator.sub, torch.sub}
PRODUCT_FUNCS = {torch.matmul, operator.matmul, torch.bmm, torch.einsum, operator.mul, torch.mul,
                 operator.truediv, torch.div}
PRODUCT_METHODS = {"matmul", "bmm", "mul", "div"}
SOFTMAX_METHODS = {"softmax", "log_softmax"}
NORM_LAYERS = (nn.LayerNorm, nn.RMSNorm)
NORM_LAYER_FUNCS = {F.layer_norm, F.rms_norm}
CONV_FUNCS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}  # functional convolutions and their spatial dimensions
NEG_FUNCS = {operator.neg, torch.neg}


# Functions that are the identity in eval mode, by (module, name) (not imported: torchvision is optional), with the
# argument that says so: torchvision's stochastic depth (ConvNeXt, EfficientNet, MaxViT) with training=False.
EVAL_IDENTITIES = {("torchvision.ops.stochastic_depth", "stochastic_depth"): ("training", 3)}


def is_eval_batch_norm(node: fx.Node) -> bool:
    """Whether a call is ``F.batch_norm`` in eval mode with running statistics (timm's ``BatchNormAct2d``, a
    hand-written BatchNorm): a per-channel affine map of its input, as ``nn.BatchNorm`` in eval mode. In training
    mode (batch statistics; timm's ``StdConv2d`` standardising its weight) it is not."""
    if node.op != "call_function" or node.target is not F.batch_norm:
        return False
    args = bind_arguments(F.batch_norm, node.args, node.kwargs)
    return args.get("training", False) is False and args.get("running_mean") is not None and \
        args.get("running_var") is not None


def is_eval_identity(node: fx.Node) -> bool:
    """Whether a call is one of ``EVAL_IDENTITIES`` with its training flag False: it returns its input."""
    if node.op != "call_function":
        return False
    key = (getattr(node.target, "__module__", None), getattr(node.target, "__name__", None))
    if key not in EVAL_IDENTITIES:
        return False
    name, position = EVAL_IDENTITIES[key]
    flag = node.kwargs.get(name, node.args[position] if len(node.args) > position else None)
    return flag is False


class LRPError(TypeError):
    """The model has a part the LRP engine cannot propagate through (raised by every method of this toolkit:
    DeepLIFT, Guided Backprop and attention rollout too)."""


def trace(model: nn.Module, x: torch.Tensor | None = None) -> fx.Graph:
    """The torch.fx graph of ``model``: symbolic (``torch.fx.Tracer``), traced once per model object (a weak cache).
    Where symbolic tracing fails (the forward asks Python questions about its input: ``if x.dtype != ...``,
    ``len(x)``) or records a ``torch.fx.wrap``-ped function as one opaque call (torchvision's Swin attention), and an
    example input ``x`` is given, the concrete trace of ``evalxai.methods.tracing`` instead, one per input shape,
    dtype and device. LRPError if neither traces."""
    cache = _TRACES.setdefault(model, {})
    if "symbolic" not in cache:  # (graph, None) or (None, why it cannot serve)
        cache["symbolic"] = _symbolic_trace(model)
    graph, why = cache["symbolic"]
    if graph is not None:
        return graph
    if x is not None:
        key = (tuple(x.shape), x.dtype, x.device)
        if key in cache:
            return cache[key]
        try:
            graph = concrete_trace(model, x.detach())
        except Exception as err:  # noqa: BLE001 - tracing errors come in many types
            why = f"{why}; with the example input: {type(err).__name__}: {err}"
        else:
            graph.example_shape = key[0]  # specialised: run it on inputs of this shape only
            cache[key] = graph
            return graph
    raise LRPError(f"the methods that run a model node by node trace it with torch.fx, and {type(model).__name__} "
                   f"cannot be traced ({why}); remove data-dependent control flow from forward, or use a gradient "
                   "method")


def _symbolic_trace(model: nn.Module) -> tuple[fx.Graph | None, str | None]:
    """(the symbolic graph, None), or (None, why it cannot serve: a tracing error, or an opaque wrapped call)."""
    try:
        graph = LeafTracer().trace(model)
    except Exception as err:  # noqa: BLE001 - tracing errors come in many types
        return None, f"{type(err).__name__}: {err}"
    opaque = [n for n in graph.nodes if n.op == "call_function" and is_wrapped_function(n.target)
              and not is_eval_identity(n)]
    if opaque:
        return None, f"it calls {opaque[0].target.__name__}, which torch.fx records as one opaque call"
    return graph, None


def layer_type(module: nn.Module) -> str | None:
    """``linear`` / ``conv`` for parametrised linear layers, else None."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    return None


def node_kind(model: nn.Module, node: fx.Node, what: str, transformers: bool = False) -> str:
    """How a traced node propagates: placeholder / get_attr / output, linear (has a rule), grad (keeps its
    gradient: ReLU, max-pooling, shape ops), pass (element-wise), norm (average pooling, mean), sum (addition;
    a proportional split when both operands are tensors), lrn, softmax, or unsupported (a function or tensor method
    with no rule: fine on Python numbers such as shape arithmetic, an error on tensors, see ``refuse_tensors``).
    ``transformers``: also the kinds of ``transformer_kind`` (LRP's). Raises LRPError naming the module and
    ``what`` (the method) for a module without a rule."""
    if node.op in ("placeholder", "get_attr", "output"):
        return node.op
    if is_metadata(node):
        return "grad"  # a size or a shape-only constant: runs as it is, carries nothing
    if is_eval_identity(node):
        return "grad"  # stochastic depth in eval mode: returns its input
    if is_softmax(model, node):
        return "softmax"
    if transformers:
        kind = transformer_kind(model, node)
        if kind is not None:
            return kind
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        if layer_type(m) is not None:
            return "linear"
        if is_library_activation(m):
            return "pass"
        for kind, types in (("grad", GRAD_MODULES), ("pass", PASS_MODULES), ("norm", NORM_MODULES),
                            ("lrn", nn.LocalResponseNorm)):
            if isinstance(m, types):
                return kind
        raise LRPError(f"module '{node.target}' of type {type(m).__name__} has no {what} rule: supported are "
                       "Linear, Conv1d/2d/3d, BatchNorm, pooling, LocalResponseNorm, element-wise "
                       "activations, shape layers" + (", LayerNorm, RMSNorm and MultiheadAttention" if transformers
                                                       else "") + "; replace it or explain with a gradient method")
    if node.op == "call_function":
        fn = node.target
        if fn in ADD_FUNCS:
            return "sum"
        if is_eval_batch_norm(node):
            return "pass"  # as nn.BatchNorm: LRP merges it into the layer before it where it can
        for kind, funcs in (("grad", GRAD_FUNCS), ("pass", PASS_FUNCS), ("norm", NORM_FUNCS)):
            if fn in funcs:
                return kind
        if is_shape_function(fn):
            return "grad"
        return "unsupported"
    if node.target in GRAD_METHODS:
        return "grad"
    if node.target in PASS_METHODS:
        return "pass"
    if node.target in ADD_METHODS:
        return "sum"
    if node.target in ("mean", "sum"):
        return "norm"
    return "unsupported"


def is_relu(model: nn.Module, node: fx.Node) -> bool:
    """Whether a traced node is a ReLU (module, function or tensor method)."""
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in RELU_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


# Operations whose output is non-negative wherever their first input is (pooling, reshapes, dropout; not upsampling:
# bicubic overshoots)
_SIGN_KEEPING_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                         nn.AdaptiveMaxPool3d, *NORM_MODULES[:-1], nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d,
                         nn.Dropout2d, nn.Dropout3d, nn.Identity, nn.ZeroPad2d)
_SIGN_KEEPING_FUNCS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                       F.adaptive_max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                       F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.flatten, F.dropout}
_SIGN_KEEPING_METHODS = {"view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze", "unsqueeze"}


def nonnegative_nodes(model: nn.Module, graph: fx.Graph) -> set[fx.Node]:
    """The nodes whose value is non-negative for every input: ReLUs, and pooling / reshapes / dropout of such a
    node (the sign-split LRP rules then skip the passes of a negative input part)."""
    found: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        if is_relu(model, node):
            found.add(node)
            continue
        keeps = (node.op == "call_module" and type(model.get_submodule(node.target)) in _SIGN_KEEPING_MODULES or
                 node.op == "call_function" and node.target in _SIGN_KEEPING_FUNCS or
                 node.op == "call_method" and node.target in _SIGN_KEEPING_METHODS)
        if keeps and node.args and node.args[0] in found:
            found.add(node)
    return found


GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
GATE_FUNCS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}


def is_gate(model: nn.Module, node: fx.Node) -> bool:
    """Whether a node is a sigmoid gate: a sigmoid / hard sigmoid, seen through shape operations (``view``,
    ``expand_as``, ...), as in squeeze-and-excitation (``x * sigmoid(fc(pool(x)))``), LSTM/GLU gates and a
    hand-written SiLU (``x * sigmoid(x)``)."""
    while True:
        if node.op == "call_module" and isinstance(model.get_submodule(node.target), GATE_MODULES):
            return True
        if node.op == "call_function" and node.target in GATE_FUNCS:
            return True
        if node.op == "call_method" and node.target in ("sigmoid", "sigmoid_"):
            return True
        shape = node.op == "call_method" and node.target in SHAPE_OPS or node.op == "call_function" and \
            is_shape_function(node.target)
        if not (shape and node.args and isinstance(node.args[0], fx.Node)):
            return False
        node = node.args[0]


def is_softmax(model: nn.Module, node: fx.Node) -> bool:
    """Whether a traced node is a softmax or log-softmax (module, function or tensor method)."""
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), SOFTMAX_MODULES)
    if node.op == "call_function":
        return node.target in SOFTMAX_FUNCS
    return node.op == "call_method" and node.target in SOFTMAX_METHODS


def transformer_kind(model: nn.Module, node: fx.Node) -> str | None:
    """The kinds of transformer parts (LRP has rules for them): layernorm, groupnorm (``nn.GroupNorm``,
    ``F.group_norm``), mha, encoder (``nn.TransformerEncoder(Layer)``), sdpa, product, flinear (``F.linear`` and
    ``F.conv1d/2d/3d``: a linear layer when the weight does not depend on the input), sub, neg, rescale
    (``F.normalize``: the input times a norm that LRP holds constant, as AttnLRP holds LayerNorm's); None for other
    nodes."""
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        if isinstance(m, NORM_LAYERS) or is_rms_norm(m):
            return "layernorm"
        if isinstance(m, nn.GroupNorm):
            return "groupnorm"
        if isinstance(m, nn.MultiheadAttention):
            return "mha"
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
            return "encoder"
        return None
    if node.op == "call_function":
        fn = node.target
        if fn in NORM_LAYER_FUNCS:
            return "layernorm"
        if fn is F.scaled_dot_product_attention:
            return "sdpa"
        if fn is F.linear or fn in CONV_FUNCS or fn is torch.addmm:
            return "flinear"
        if fn is F.group_norm:
            return "groupnorm"
        if fn in PRODUCT_FUNCS:
            return "product"
        if fn in SUB_FUNCS:
            return "sub"
        if fn in NEG_FUNCS:
            return "neg"
        if fn is F.normalize:
            return "rescale"
        return None
    if node.target in PRODUCT_METHODS:
        return "product"
    if node.target == "sub":
        return "sub"
    if node.target == "neg":
        return "neg"
    return None


def owner(model: nn.Module, node: fx.Node) -> str:
    """The module a traced node sits in, as ``module 'path' (Class)`` (from torch.fx's module stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return f"the forward of {type(model).__name__}"
    path, cls = next(reversed(stack.values()))
    name = cls.__name__ if isinstance(cls, type) else str(cls).rpartition(".")[2].strip("'>")
    return f"module '{path}' ({name})"


def refuse_tensors(model: nn.Module, node: fx.Node, args: tuple, kwargs: dict, what: str) -> None:
    """Raise LRPError naming the node's module if an unsupported operation receives a tensor; Python numbers
    (shape arithmetic on ``.size()``, as in a channel shuffle) carry no relevance and pass."""
    found = []
    fx.node.map_aggregate((args, kwargs), lambda a: found.append(a) if isinstance(a, torch.Tensor) else a)
    if not found:
        return
    op = getattr(node.target, "__name__", node.target)
    kind = "tensor method '." + str(op) + "()'" if node.op == "call_method" else f"operation '{op}'"
    raise LRPError(f"{kind} (graph node '{node.name}') in {owner(model, node)} has no {what} rule: replace that "
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


def carrying_nodes(graph: fx.Graph, cut: Collection[fx.Node] = frozenset()) -> dict:
    """Which nodes carry relevance: those whose tensor data depends on the explained input (the first placeholder),
    except through the nodes in ``cut`` (CP-LRP's attention weights, constants of the propagation). Shapes and sizes
    are not data: ``w.expand(x.shape[0], -1)`` and ``torch.zeros(x.size(0), d)`` are constants."""
    out, first = {}, True
    for node in graph.nodes:
        if node.op == "placeholder":
            out[node], first = first, False
        elif node.op == "get_attr" or node in cut or is_metadata(node):
            out[node] = False
        elif node.op == "call_method" and node.target in _AS_METHODS:
            out[node] = isinstance(node.args[0], fx.Node) and out[node.args[0]]
        else:
            out[node] = any(out[n] for n in node.all_input_nodes)
    return out


def needed_nodes(graph: fx.Graph, carries: dict) -> set:
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


def is_metadata(node: fx.Node) -> bool:
    """Whether a node's value is tensor metadata or a shape-only constructor (see ``_META_METHODS``)."""
    if node.op == "call_method":
        return node.target in _META_METHODS
    if node.op == "call_function":
        return node.target in _META_FUNCS or node.target is getattr and node.args[1] in _META_ATTRS
    return False


def operands(node: fx.Node) -> list:
    """The tensor operands of a product node (two for ``a @ b``, ``a * b``; those after the equation for einsum)."""
    if node.op == "call_function" and node.target is torch.einsum:
        ops = list(node.args[1:])
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = list(ops[0])
        return ops
    other = node.args[1] if len(node.args) > 1 else next(iter(node.kwargs.values()), None)
    return [node.args[0], other]


_SHAPE_USES = {"size", "dim"}


def softmax_role(node: fx.Node, kinds: dict, carries: dict) -> str:
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
            elif kind == "product" and len(operands(u)) == 2:
                others = [a for a in operands(u) if a is not n]
                if others and all(isinstance(a, fx.Node) and carries[a] for a in others):
                    attention = True
                else:
                    other = True
            else:
                other = True
    if other:
        return "other"
    return "attention" if attention and not output else "output" if output and not attention else "other"


def attention_nodes(model: nn.Module, x: torch.Tensor | None = None) -> tuple[fx.Graph, set]:
    """The traced graph and its attention nodes: ``nn.MultiheadAttention`` modules, ``F.scaled_dot_product_attention``
    calls and softmaxes whose weights multiply relevance-carrying values (hand-written attention). ``x``: the example
    input of ``trace``. Module calls that do not depend on the input are constants, as the LRP plan takes them (BERT's
    token-type embedding of its zero buffer needs no rule)."""
    graph = trace(model, x)
    carries = carrying_nodes(graph)
    kinds = {node: "grad" if node.op == "call_module" and not carries[node] else  # LRP's kinds, messages
             node_kind(model, node, "LRP", transformers=True) for node in graph.nodes}
    found = set()
    for node, kind in kinds.items():
        if kind in ("mha", "sdpa") or kind == "softmax" and softmax_role(node, kinds, carries) == "attention":
            found.add(node)
    return graph, found


_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # symbolic graph -> keys check_function passed


def check_function(model: nn.Module, x: torch.Tensor, logits: torch.Tensor, graph: fx.Graph | None = None,
                   tag: str = "") -> None:
    """Raise LRPError unless the logits computed from the traced graph equal ``model(x)`` (without gradients, as the
    model predicts) up to float rounding: an explanation of another function (a fast path that tracing cannot see,
    a forward that branches on the grad mode) would be wrong without a word. Costs one forward.

    Given the symbolic ``graph`` the logits came from (and ``tag``, the method's handling of it), the check runs
    once per tag, input shape past the batch, dtype, device and training flags of the modules: a symbolic trace
    cannot bake in the data (a Python branch on a traced tensor fails to trace), only Python state, which these
    keys cover. A concrete trace (``graph.example_shape`` set) may have baked in a branch on the data: checked on
    every call."""
    key = None
    if graph is not None and getattr(graph, "example_shape", None) is None:
        key = (tag, tuple(x.shape[1:]), x.dtype, x.device, tuple(m.training for m in model.modules()))
        if key in _CHECKED.get(graph, ()):
            return
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
    if key is not None:
        _CHECKED.setdefault(graph, set()).add(key)


def execute(model: nn.Module, graph: fx.Graph, x: torch.Tensor,
            handle: Callable[[fx.Node, Callable, tuple, dict], object]) -> torch.Tensor:
    """Run a traced graph node by node; ``handle(node, call, args, kwargs)`` may return a replacement output.

    ``handle`` returns ``NotImplemented`` to run the node unchanged. Returns the graph's output. In-place
    operations (``ReLU(inplace=True)``, ``F.relu_``, ...) on tensors that depend on the input run on a copy of them,
    and later uses of the overwritten node see the result, as in eager mode: a tensor that a rule keeps (a layer's
    output z) is never overwritten, and an in-place activation never adds its gradient to a pass-through. In-place
    operations on constants of the run (a mask, a cloned bias) change them in place, as eager mode does.
    """
    env: dict[fx.Node, object] = {}
    order = {n: i for i, n in enumerate(graph.nodes)}
    carries = carrying_nodes(graph)
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
            if node.op == "call_function" and node.target is operator.setitem and carries.get(node.args[0]):
                raise LRPError(f"slice assignment (graph node '{node.name}') in {owner(model, node)} writes into a "
                               "tensor computed from the input: write it out of place (torch.where, torch.cat) so "
                               "that the traced graph says what the model computes")
            inplace = is_inplace(model, node)
            if inplace and _constant_scratch(node, args, carries):  # a mask, a cloned bias: as eager mode does
                inplace = False
            if inplace:
                _refuse_inplace_on_used_view(model, node, args, order)
                call = _out_of_place(model, node, call)
            out = handle(node, call, args, kwargs)
            env[node] = call(*args, **kwargs) if out is NotImplemented else out
            if inplace and node.args and isinstance(node.args[0], fx.Node):
                env[node.args[0]] = env[node]
    raise LRPError("the traced graph has no output")


def _refuse_inplace_on_used_view(model: nn.Module, node: fx.Node, args, order: dict) -> None:
    """An in-place operation on a view (``h[:, :3].relu_()``) also changes the viewed tensor in eager mode; running
    it on a copy would not. Refused when the viewed tensor is used after the operation (else it makes no
    difference)."""
    if not (args and isinstance(args[0], torch.Tensor) and args[0]._is_view()):
        return
    view = node.args[0]
    bases = [a for a in view.args if isinstance(a, fx.Node)] if isinstance(view, fx.Node) else []
    if any(order[u] > order[node] for base in bases for u in base.users if u is not view):
        raise LRPError(f"in-place operation '{node.name}' in {owner(model, node)} writes into a view of a tensor "
                       "that is used afterwards: write it out of place (for example x = torch.cat([act(x[:, :k]), "
                       "x[:, k:]], 1)) so that the traced graph says what the model computes")


def _constant_scratch(node: fx.Node, args, carries: dict) -> bool:
    """Whether an in-place operation writes into a tensor that does not depend on the input and is not a
    parameter: a scratch constant of the forward (``qkv_bias.clone()[k:2k].zero_()``), changed as eager mode does."""
    t = args[0] if args and isinstance(args[0], torch.Tensor) else None
    return t is not None and isinstance(node.args[0], fx.Node) and not carries[node.args[0]] and \
        not isinstance(t, nn.Parameter) and not (t._is_view() and isinstance(t._base, nn.Parameter))


_RELU_INPLACE = {torch.relu_, F.relu_}


def _out_of_place(model: nn.Module, node: fx.Node, call):
    """``call`` as an out-of-place operation: an in-place ReLU by ``torch.relu`` (one pass over memory), anything
    else on a copy of its first argument (the same dtype and aliasing semantics as in place)."""
    if (node.op == "call_module" and type(model.get_submodule(node.target)) is nn.ReLU or
            node.op == "call_function" and (node.target in _RELU_INPLACE or node.target is F.relu) or
            node.op == "call_method" and node.target == "relu_"):
        return lambda a, *rest, **kwargs: torch.relu(a)

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


def bind_arguments(fn: Callable, args: tuple, kwargs: dict) -> dict:
    """The arguments of a node's call of ``fn`` by parameter name (``F.linear``, ``F.conv1d/2d/3d``,
    ``F.layer_norm``, ``F.rms_norm``, ``F.group_norm``, ``F.batch_norm``; ``torch.addmm`` as bias, input, weight
    (in, out), beta, alpha), defaults included."""
    if fn is torch.addmm:  # bias + input @ weight (Hugging Face's Conv1D): weight is (in, out), mat2 of addmm
        rename = {"input": "bias", "mat1": "input", "mat2": "weight"}
        return {"beta": 1, "alpha": 1, **dict(zip(("bias", "input", "weight", "beta", "alpha"), args)),
                **{rename.get(k, k): v for k, v in kwargs.items()}}
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)
    except (TypeError, ValueError):  # builtins without a signature: positional order of the documentation
        conv = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        names = {F.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
                 F.rms_norm: ("input", "normalized_shape", "weight", "eps"),
                 F.linear: ("input", "weight", "bias"), F.conv1d: conv, F.conv2d: conv, F.conv3d: conv}[fn]
        return {**dict(zip(names, args)), **kwargs}
