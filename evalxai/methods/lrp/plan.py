"""The LRP plan: how each node of the traced model propagates relevance (``build_plan``, ``Step``).

The model is traced once (cached per model object, ``evalxai.methods.graph.trace``). Each node is classified: linear
layers get their rule from the composite (BatchNorm right after a linear/conv layer is merged into it — canonization,
``merged_weights`` — for the propagation only; the eval-mode ``F.batch_norm`` of timm's ``BatchNormAct2d`` too),
functional linear layers (``F.linear``, ``F.conv1d/2d/3d`` with an input-independent weight, as timm's
weight-standardised ``StdConv2d``) the composite's linear / conv rule, average pooling and residual additions (also a
plain ``+`` inside ``forward``) use the proportional Norm rule, LocalResponseNorm is linearised by a first-order Taylor
expansion (Binder et al. 2016), element-wise activations pass relevance unchanged (the identity rule), max-pooling
and shape operations keep their gradient (winner-takes-all routing). Anything else raises an error that names the
node: never a silent pass-through.

A product with a sigmoid gate (squeeze-and-excitation, LSTM/GLU gates) gives all its relevance to the signal
and none to the gate, which is held constant: the signal-take-all rule of Arras et al. 2017 ("Explaining Recurrent
Neural Network Predictions in Sentiment Analysis"), also how zennit-based works treat SE blocks.

A softmax is an attention's (its weights multiply relevance-carrying values: the composite's softmax rule, AttnLRP or
CP-LRP, see ``evalxai.methods.lrp.transformer``), the model's output (relevance passes unchanged, with a warning, as
zennit does), or an error. Kinds LRP adds to those of the graph toolkit: ``skip`` (a BatchNorm merged into the layer
before it), and the transformer kinds (softmax, product, layernorm, flinear, mha, encoder, sdpa, sub, neg).
"""
from __future__ import annotations

import operator
import warnings
import weakref
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from evalxai.methods.graph import (
    BATCH_NORMS,
    CONV_FUNCS,
    LRPError,
    bind_arguments,
    carrying_nodes,
    is_eval_batch_norm,
    is_gate,
    is_metadata,
    is_relu,
    needed_nodes,
    node_kind,
    nonnegative_nodes,
    operands,
    owner,
    softmax_role,
    trace,
)
from evalxai.methods.lrp.composites import Composite
from evalxai.methods.lrp.rules import Rule

LINEAR_PROTO = nn.Linear(1, 1, bias=False)  # the layer type of ``F.linear`` nodes for a composite
CONV_PROTO = nn.Conv2d(1, 1, 1, bias=False)  # the layer type of ``F.conv1d/2d/3d`` nodes
_WARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class Step:
    """How one graph node runs: kind in {linear, skip, grad, pass, norm, sum, lrn, unsupported} (``node_kind``),
    relu_pass (a ReLU whose relevance passes unchanged, ``relu_passes``)
    and, for transformers, {softmax, product, layernorm, flinear, mha, encoder, sdpa, sub, neg}; ``carries`` says which
    operands of a product carry relevance (depend on the input, and not only through a CP-LRP constant); for linear
    layers ``nonneg_in`` (the input is a ReLU's output, maybe pooled or reshaped), ``relu_out`` (only ReLUs read
    the output, BatchNorm merged) and ``relu_pass_out`` (only ``relu_pass`` ReLUs read it: they hand the layer their
    output, ``source`` names the layer on their steps)."""

    kind: str
    module: nn.Module | None = None
    bn: BatchNormStats | None = None
    rule: Rule | None = None
    carries: tuple = ()
    nonneg_in: bool = False
    relu_out: bool = False
    relu_pass_out: bool = False
    source: fx.Node | None = None


@dataclass
class BatchNormStats:
    """An eval-mode BatchNorm's per-channel affine map: y = (z - running_mean) / sqrt(running_var + eps) * weight +
    bias, from an ``nn.BatchNorm`` module or the arguments of an ``F.batch_norm`` call (timm's ``BatchNormAct2d``)."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float

    @classmethod
    def of_module(cls, bn: nn.Module) -> BatchNormStats:
        return cls(bn.running_mean, bn.running_var, bn.weight if bn.affine else None, bn.bias if bn.affine else None,
                   bn.eps)


def _constant_value(model: nn.Module, a, carries: dict):
    """The value of a node argument that does not depend on the input and is known before the run: a Python value, a
    parameter or a buffer (``get_attr``); ``False`` otherwise."""
    if not isinstance(a, fx.Node):
        return a
    if carries.get(a, True):
        return False
    if a.op == "get_attr":
        obj = model
        for part in a.target.split("."):
            obj = getattr(obj, part)
        return obj
    return False  # computed statistics: not merged (a trace-time value could be stale when the model changes)


def functional_batch_norm(model: nn.Module, node: fx.Node, carries: dict) -> BatchNormStats | None:
    """The statistics of an eval-mode ``F.batch_norm`` node, or None where one of them is not a constant."""
    if not is_eval_batch_norm(node):
        return None
    args = bind_arguments(F.batch_norm, node.args, node.kwargs)
    vals = [_constant_value(model, args.get(k), carries) for k in ("running_mean", "running_var", "weight", "bias")]
    if any(v is False for v in vals) or not isinstance(args.get("eps", 1e-5), float):
        return None
    return BatchNormStats(*vals, args.get("eps", 1e-5))


def _merge_target(node: fx.Node, model: nn.Module, out_features: int | None,
                  carries: dict) -> tuple[fx.Node, BatchNormStats] | None:
    """The eval-mode BatchNorm (module or ``F.batch_norm``) that alone uses the output of the linear layer ``node``
    (uses for metadata, timm's ``x.ndim == 4`` assertion, aside), if any: merged into the layer. ``out_features``:
    the layer's output features (None: a convolution, whose channels are the BatchNorm's)."""
    users = [u for u in node.users if not is_metadata(u)]
    if len(users) != 1:
        return None
    user = users[0]
    if user.op == "call_module":
        bn = model.get_submodule(user.target)
        if not isinstance(bn, BATCH_NORMS) or bn.running_mean is None:
            return None
        stats = BatchNormStats.of_module(bn)
    elif user.op == "call_function" and user.args and user.args[0] is node:
        stats = functional_batch_norm(model, user, carries)
        if stats is None:
            return None
    else:
        return None
    if out_features is not None and stats.running_mean.numel() != out_features:
        return None
    return user, stats


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


def build_plan(model: nn.Module, composite: Composite, x: torch.Tensor | None = None) -> tuple[fx.Graph, dict]:
    """Classify every node of the traced model (``node_kind``) and give linear layers their rule.

    A softmax is an attention's (its weights multiply relevance-carrying values: the composite's softmax rule), the
    model's output (relevance passes unchanged, with a warning, as zennit does), or an error."""
    graph = trace(model, x)
    plan: dict[fx.Node, Step] = {}
    seen_first = False
    passed = []  # softmax and BatchNorm layers that relevance passes unchanged (warned about once)
    carries = carrying_nodes(graph)
    # a module call that does not depend on the input (GPT-2's position embedding of arange(T)) is a constant
    kinds = {node: "grad" if node.op == "call_module" and not carries[node] else
             node_kind(model, node, "LRP", transformers=True) for node in graph.nodes}
    attention, outputs = set(), set()
    for node, kind in kinds.items():
        if kind != "softmax":
            continue
        role = softmax_role(node, kinds, carries)
        is_log = node.target in (F.log_softmax, torch.log_softmax, "log_softmax") or node.op == "call_module" and \
            isinstance(model.get_submodule(node.target), nn.LogSoftmax)
        if role == "attention" and not is_log:
            attention.add(node)
        elif role == "output":
            kinds[node] = "pass"
            outputs.add(node)
        else:
            raise LRPError(f"softmax (graph node '{node.name}') in {owner(model, node)} is neither the model's output "
                           "nor attention weights that multiply values (softmax(q k^T) @ v): LRP has no rule for it; "
                           "explain the logits before it, write the attention as matmul + softmax + matmul, or use a "
                           "gradient method")
    if composite.softmax == "constant":
        carries = carrying_nodes(graph, frozenset(attention))
    needed = needed_nodes(graph, carries)
    for node in graph.nodes:
        if node in plan:
            continue
        kind = kinds[node]
        if kind == "unsupported" and node not in needed:
            kind = "grad"  # off every relevance path (e.g. a padding mask computed from the input)
        if kind == "linear":
            m = model.get_submodule(node.target)
            merged = _merge_target(node, model, m.out_features if isinstance(m, nn.Linear) else None, carries)
            bn = None
            if merged is not None:
                plan[merged[0]] = Step("skip")
                bn = merged[1]
            plan[node] = Step("linear", m, bn, composite.rule_for(node.target, m, not seen_first))
            seen_first = True
        elif kind == "flinear":
            fn = node.target
            bound = bind_arguments(fn, node.args, node.kwargs)
            weight, bias = bound["weight"], bound.get("bias")  # addmm: its first operand
            if isinstance(weight, fx.Node) and carries[weight]:
                raise LRPError(f"{fn.__name__} (graph node '{node.name}') in {owner(model, node)} multiplies by a "
                               "weight that depends on the input: write it as a product (torch.matmul) instead")
            if isinstance(bias, fx.Node) and carries[bias]:
                raise LRPError(f"{fn.__name__} (graph node '{node.name}') in {owner(model, node)} adds a bias that "
                               "depends on the input, which the linear rule would absorb: write it as "
                               "F.linear(x, w) + b so that the addition splits the relevance")
            conv = fn in CONV_FUNCS
            merged = _merge_target(node, model, None, carries) if conv else None  # F.linear: features unknown
            if merged is not None:
                plan[merged[0]] = Step("skip")
            plan[node] = Step("flinear", bn=None if merged is None else merged[1],
                              rule=composite.rule_for(node.name, CONV_PROTO if conv else LINEAR_PROTO, not seen_first))
            seen_first = True
        elif kind in ("mha", "encoder"):
            plan[node] = Step(kind, model.get_submodule(node.target))
        elif kind == "product":
            ops = operands(node)
            multiply = node.target in (operator.mul, torch.mul, "mul")  # a gate multiplies (x / sigmoid: no rule)
            # CP-LRP also holds an activated gate constant (a SwiGLU's act(gate_proj(x)) * up_proj(x)), as LXT's
            # cp_gated_mlp_forward does: all relevance goes to the other factor
            cp_gate = composite.softmax == "constant"
            gates = [multiply and isinstance(a, fx.Node) and (is_gate(model, a) or cp_gate and kinds[a] == "pass")
                     for a in ops]
            signal = [isinstance(a, fx.Node) and carries[a] and not g for a, g in zip(ops, gates)]
            if all(gates) or not any(signal):
                gates = [False] * len(ops)  # two gates, or a gate times a constant: no signal to give it all to
            plan[node] = Step("product", carries=tuple(isinstance(a, fx.Node) and carries[a] and not g
                                                       for a, g in zip(ops, gates)))
        elif kind == "lrn":
            plan[node] = Step("lrn", model.get_submodule(node.target))
        else:
            plan[node] = Step(kind, model.get_submodule(node.target) if kind in ("layernorm", "groupnorm") and
                              node.op == "call_module" else None)
            if node in outputs or kind == "pass" and (node.op == "call_module" and isinstance(
                    model.get_submodule(node.target), BATCH_NORMS) or is_eval_batch_norm(node)):
                passed.append(f"'{node.target}'" if node.op == "call_module" else
                              f"{node.name} in {owner(model, node)}")
    _warn_pass_through(model, passed)
    _sign_facts(model, graph, plan)
    relu_passes(model, plan)
    return graph, plan


def _sign_facts(model: nn.Module, graph: fx.Graph, plan: dict) -> None:
    """Mark linear layers whose input is non-negative and whose output only ReLUs read (their sign-split rules then
    take their cheaper forms)."""
    nonneg = nonnegative_nodes(model, graph)
    for node, step in plan.items():
        if step.kind not in ("linear", "flinear"):
            continue
        inp = node.args[0] if node.op == "call_module" else bind_arguments(node.target, node.args, node.kwargs)["input"]
        users = [u for u in _output_node(node, step, plan).users if not is_metadata(u)]
        relu_out = bool(users) and all(is_relu(model, u) and plan[u].kind in ("grad", "relu_pass") for u in users)
        plan[node] = replace(step, nonneg_in=inp in nonneg, relu_out=relu_out)


def _output_node(node: fx.Node, step: Step, plan: dict) -> fx.Node:
    """The node whose value is a linear layer's output: the layer's, or that of the BatchNorm merged into it."""
    if step.bn is None:
        return node
    return next(u for u in node.users if u in plan and plan[u].kind == "skip")


def relu_passes(model: nn.Module, plan: dict) -> None:
    """Make ReLUs whose mask cannot change their relevance pass it unchanged (kind ``relu_pass``): one pass over the
    activation less per ReLU in the backward, the same maps.

    The gradient of y = relu(x) zeroes the relevance at x <= 0, where y = 0. Where every reader of y gives y zero
    relevance wherever y = 0, the mask changes nothing: a linear layer whose rule multiplies by its input
    (``Rule.scales_by_input``: epsilon, alpha-beta, gamma), a residual sum and average pooling (shares in proportion
    to the summands), and reads through max pooling, shape operations and dropout (they route each element's
    relevance back to the element, whose value is the one the next reader multiplies by). Any other reader (the box,
    flat or w^2 rule, an activation, the model's output) keeps the mask."""
    for node, step in plan.items():
        if step.kind == "grad" and is_relu(model, node) and _zero_where_zero(model, plan, node):
            plan[node] = Step("relu_pass")
    for node, step in plan.items():  # layers read by such ReLUs alone
        if step.kind != "linear" or not step.relu_out:
            continue
        out = _output_node(node, step, plan)
        readers = [u for u in out.users if not is_metadata(u)]
        if all(plan[u].kind == "relu_pass" for u in readers):
            plan[node] = replace(step, relu_pass_out=True)
            for u in readers:
                plan[u] = Step("relu_pass", source=node)


def _zero_where_zero(model: nn.Module, plan: dict, src: fx.Node) -> bool:
    """Whether every reader of ``src`` gives it zero relevance wherever its value is zero (``relu_passes``)."""
    readers = [u for u in src.users if not is_metadata(u)]
    if not readers:
        return False
    for u in readers:
        step = plan.get(u)
        kind = None if step is None else step.kind
        if kind in ("linear", "flinear"):
            first = u.args[0] if u.op == "call_module" else bind_arguments(u.target, u.args, u.kwargs).get("input")
            operands_ = [a for a in (*u.args, *u.kwargs.values()) if a is src]
            if not (step.rule.scales_by_input and first is src and len(operands_) == 1):
                return False
        elif kind == "sum":  # SumFn on two tensors; with a Python number the gradient passes relevance unchanged
            if len(u.args) < 2 or not all(isinstance(a, fx.Node) and not is_metadata(a) for a in u.args[:2]):
                return False
        elif kind in ("norm", "lrn"):  # LinearizedFn: a * J^T s on its first argument, the others constant
            if not (u.args and u.args[0] is src) or any(a is src for a in (*u.args[1:], *u.kwargs.values())):
                return False
        elif kind == "grad" and not is_relu(model, u):  # max pooling, shape operations, dropout: element routing
            if not _zero_where_zero(model, plan, u):
                return False
        else:
            return False
    return True


def merged_weights(module: nn.Module | None, bn: BatchNormStats | nn.Module | None, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) of a linear/conv layer with a following eval-mode BatchNorm folded in (canonization): the module's
    parameters, or ``weight`` / ``bias`` of a functional layer (``module`` None)."""
    w = (module.weight if module is not None else weight).detach()
    b = module.bias if module is not None else bias
    b = None if b is None else b.detach()
    if bn is None:
        return w, b
    if isinstance(bn, nn.Module):
        bn = BatchNormStats.of_module(bn)
    scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
    shift = -bn.running_mean.detach() * scale
    if bn.weight is not None:
        scale, shift = scale * bn.weight.detach(), shift * bn.weight.detach()
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    w = w * scale.view(-1, *[1] * (w.dim() - 1))
    b = shift if b is None else b * scale + shift
    return w, b
