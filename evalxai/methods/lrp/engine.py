"""The LRP engine: one backward pass over a torch.fx trace of the model with modified layer gradients.

``run_lrp`` builds the plan (``evalxai.methods.lrp.plan``: every node's kind and rule), runs the traced graph with
the toolkit's executor (``evalxai.methods.graph.execute``), each node through its autograd Function
(``evalxai.methods.lrp.functions``; transformer parts through ``evalxai.methods.lrp.transformer``), checks that the
traced logits are the model's, and seeds the backward pass with the target logit.

The relevance flows as the "gradient" of a single ``torch.autograd.grad`` call, seeded with the target logit, so
sum R = f_c(x) wherever the rules conserve. The model itself is never modified: no hooks, no parameter swaps.
"""
from __future__ import annotations

import weakref
from dataclasses import replace

import torch
from torch import fx, nn

from evalxai.methods.graph import LRPError, bind_arguments, check_function, execute, refuse_tensors, trace
from evalxai.methods.lrp.composites import Composite
from evalxai.methods.lrp.functions import LayerFn, LinearizedFn, PassFn, ReluPassFn, SumFn, lrn_denominator
from evalxai.methods.lrp.plan import build_plan, merged_weights
from evalxai.methods.lrp.rules import LinearOp, ZBox
from evalxai.methods.lrp.transformer import TRANSFORMER_KINDS, TransformerOps, transformer_step


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
            "relevance_in": sum(_per_sample(r.detach(), n, name) for r in r_in),
        })


def _per_sample(r: torch.Tensor, n: int, name: str) -> torch.Tensor:
    """Relevance summed per sample; a constant operand shared by the batch may only have received none."""
    if r.dim() > 0 and r.shape[0] == n:
        return r.reshape(n, -1).sum(1)
    if not bool(r.any()):
        return r.new_zeros(n)
    raise LRPError(f"layer '{name}' passes relevance to an input of shape {tuple(r.shape)} that the batch of {n} "
                   "shares: its per-sample share is lost (report this model)")


def _first_tensor(args) -> torch.Tensor:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    raise LRPError("a pass-through node has no tensor input")


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
            raise _FirstLayerInput(args[0] if n.op == "call_module" else
                                   bind_arguments(n.target, args, kwargs)["input"])
        return NotImplemented

    images = []
    for v in (rule.low, rule.high):
        t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
        t = t.unsqueeze(0) if t.dim() == x.dim() - 1 else t
        try:
            images.append(t.expand(1, *x.shape[1:]))
        except RuntimeError:
            return

    def first_layer_input(batch):
        try:
            with torch.no_grad():
                execute(model, graph, batch, grab)
        except _FirstLayerInput as found:
            return found.value
        raise LRPError("the traced graph never reached its first layer")

    if getattr(graph, "example_shape", None) is None:  # both bounds in one pass: a batch of two images
        both = first_layer_input(torch.cat(images))
        lo, hi = both[:1], both[1:]
    else:  # a graph specialised to x's shape (evalxai.methods.tracing) runs on batches of that shape
        lo, hi = (first_layer_input(image.expand_as(x))[:1] for image in images)
    plan[node] = replace(plan[node], rule=replace(rule, low=torch.minimum(lo, hi), high=torch.maximum(lo, hi)))


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: (graph, plan)}, the last few
_PLANS_KEPT = 8


def cached_plan(model: nn.Module, composite: Composite, x: torch.Tensor) -> tuple[fx.Graph, dict]:
    """``build_plan``, remembered per model for the last few keys: the graph, the composite's value (tensor
    parameters by identity and version), the input's dtype and device and the identity of every parameter and
    buffer (the plan holds BatchNorm statistics by reference: a replaced buffer makes a new plan). A copy of the
    plan's dict, so that a call may replace steps (the box rule's bounds)."""
    graph = trace(model, x)

    def value(v):
        if isinstance(v, torch.Tensor):
            return ("tensor", id(v), v._version)
        if isinstance(v, dict):
            return tuple(sorted((k, value(u)) for k, u in v.items()))
        return repr(v)

    key = (graph, value({"layers": composite.layers, "first": composite.first, "names": composite.names,
                         "params": composite.params, "softmax": composite.softmax}), x.dtype, x.device,
           tuple(id(t) for t in model.parameters()), tuple(id(t) for t in model.buffers()))
    plans = _PLANS.setdefault(model, {})
    if key not in plans:
        if len(plans) >= _PLANS_KEPT:
            del plans[next(iter(plans))]
        plans[key] = build_plan(model, composite, x)
    graph, plan = plans[key]
    return graph, dict(plan)


def run_lrp(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite: Composite,
            recorder: Recorder | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of ``x`` for the ``target`` logits: (R shaped like x, logits). The model must be frozen."""
    graph, plan = cached_plan(model, composite, x)
    box_bounds_at_first_layer(model, graph, plan, x)
    eps = composite.params.get("stabilizer", 1e-6)

    def hook_for(name, kind):
        return None if recorder is None else (lambda r, r_in: recorder(name, kind, r, r_in))

    ops = TransformerOps(composite, eps, hook_for)
    relu_readers = {}  # linear node -> its LinearOp of this run, for layers whose ReLUs hand over their output

    def handle(node, call, args, kwargs):
        step = plan[node]
        name = str(node.target) if node.op == "call_module" else node.name
        if step.kind in TRANSFORMER_KINDS:
            return transformer_step(model, node, step, name, call, args, kwargs, ops, eps, hook_for)
        if step.kind == "skip":
            return args[0]
        if step.kind == "linear":
            w, b = merged_weights(step.module, step.bn)
            op = LinearOp(step.module, w, b, None, step.nonneg_in, step.relu_out, step.relu_pass_out)
            if step.relu_pass_out:
                relu_readers[node] = op
            return LayerFn.apply(args[0], {"op": op, "rule": step.rule, "hook": hook_for(name, step.rule.name)})
        if step.kind == "relu_pass":
            y = ReluPassFn.apply(args[0])
            if step.source is not None:  # the layer read by these ReLUs alone divides by y (Epsilon.backward)
                relu_readers[step.source].relu_output = y.detach()  # detached: no reference cycle through autograd
            return y
        if step.kind == "pass":
            return PassFn.apply(_first_tensor(args), call(*args, **kwargs).detach())
        if step.kind == "norm":
            rest = args[1:]
            return LinearizedFn.apply(args[0], lambda t: call(t, *rest, **kwargs), lambda a, y: y, eps,
                                      hook_for(name, "norm"))
        if step.kind == "sum":
            if not all(isinstance(a, torch.Tensor) for a in args[:2]):
                return NotImplemented  # a constant or shape arithmetic: the gradient passes relevance unchanged
            return SumFn.apply(args[0], args[1], kwargs.get("alpha", 1), eps, hook_for(name, "sum"))
        if step.kind == "unsupported":
            refuse_tensors(model, node, args, kwargs, "LRP")
        if step.kind == "lrn":
            m, window = step.module, {}

            def lrn(t):  # LRN(t) = t / D^beta with D kept for the linearisation: one window pass, not two
                window["d"] = lrn_denominator(t, m)
                return t / window["d"].pow(m.beta)

            def linear_output(a, y):  # J a (see LinearizedFn)
                d = window.pop("d").detach()
                return y * (1 - 2 * m.beta * (d - m.k) / d)

            return LinearizedFn.apply(args[0], lrn, linear_output, eps, hook_for(name, "lrn"))
        return NotImplemented

    x = x.detach().requires_grad_(True)
    out = execute(model, graph, x, handle)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise LRPError("LRP needs a model whose forward returns one logits tensor of shape (N, classes)")
    check_function(model, x, out, graph, f"lrp:{composite.softmax}")
    if recorder is not None:
        recorder.logits = out.detach()
    seed = torch.zeros_like(out)
    idx = torch.arange(len(out), device=out.device)
    seed[idx, target] = out.detach()[idx, target]
    (relevance,) = torch.autograd.grad(out, x, seed)
    return relevance, out.detach()

