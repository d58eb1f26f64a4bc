"""The LRP plan: how each node of the traced model propagates relevance (``build_plan``, ``Step``).

The model is traced once (cached per model object, ``evalxai.methods.graph.trace``). Each node is classified: linear
layers get their rule from the composite (BatchNorm right after a linear/conv layer is merged into it — canonization,
``merged_weights`` — for the propagation only), average pooling and residual additions (also a plain ``+`` inside
``forward``) use the proportional Norm rule, LocalResponseNorm is linearised by a first-order Taylor expansion
(Binder et al. 2016), element-wise activations pass relevance unchanged (the identity rule), max-pooling and shape
operations keep their gradient (winner-takes-all routing). Anything else raises an error that names the node: never a
silent pass-through.

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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from evalxai.methods.graph import (
    BATCH_NORMS,
    LRPError,
    carrying_nodes,
    is_gate,
    needed_nodes,
    node_kind,
    operands,
    owner,
    softmax_role,
    trace,
)
from evalxai.methods.lrp.composites import Composite
from evalxai.methods.lrp.rules import Rule

LINEAR_PROTO = nn.Linear(1, 1, bias=False)  # the layer type of ``F.linear`` nodes for a composite
_WARNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class Step:
    """How one graph node runs: kind in {linear, skip, grad, pass, norm, sum, lrn, unsupported} (``node_kind``)
    and, for transformers, {softmax, product, layernorm, flinear, mha, encoder, sdpa, sub, neg}; ``carries`` says which
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
    if isinstance(bn, BATCH_NORMS) and bn.num_features == out_features and bn.running_mean is not None:
        return users[0], bn
    return None


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
    kinds = {node: node_kind(model, node, "LRP", transformers=True) for node in graph.nodes}
    carries = carrying_nodes(graph)
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
            merged = _merge_target(node, model, m)
            bn = None
            if merged is not None:
                plan[merged[0]] = Step("skip")
                bn = merged[1]
            plan[node] = Step("linear", m, bn, composite.rule_for(node.target, m, not seen_first))
            seen_first = True
        elif kind == "flinear":
            if carries[node.args[1]] if isinstance(node.args[1], fx.Node) else False:
                raise LRPError(f"F.linear (graph node '{node.name}') in {owner(model, node)} multiplies by a weight "
                               "that depends on the input: write it as a product (torch.matmul) instead")
            plan[node] = Step("flinear", rule=composite.rule_for(node.name, LINEAR_PROTO, not seen_first))
            seen_first = True
        elif kind in ("mha", "encoder"):
            plan[node] = Step(kind, model.get_submodule(node.target))
        elif kind == "product":
            ops = operands(node)
            multiply = node.target in (operator.mul, torch.mul, "mul")  # a gate multiplies (x / sigmoid: no rule)
            gates = [multiply and isinstance(a, fx.Node) and is_gate(model, a) for a in ops]
            if all(gates):
                gates = [False] * len(ops)  # a product of two gates: no signal to give it all to
            plan[node] = Step("product", carries=tuple(isinstance(a, fx.Node) and carries[a] and not g
                                                       for a, g in zip(ops, gates)))
        elif kind == "lrn":
            plan[node] = Step("lrn", model.get_submodule(node.target))
        else:
            plan[node] = Step(kind, model.get_submodule(node.target) if kind == "layernorm" and
                              node.op == "call_module" else None)
            if node in outputs or kind == "pass" and node.op == "call_module" and isinstance(
                    model.get_submodule(node.target), BATCH_NORMS):
                passed.append(f"'{node.target}'" if node.op == "call_module" else
                              f"{node.name} in {owner(model, node)}")
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
