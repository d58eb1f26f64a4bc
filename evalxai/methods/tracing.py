"""Concrete tracing: a torch.fx trace of a model whose forward asks Python questions about its input.

Plain symbolic tracing (``torch.fx.Tracer``) stops at ``if x.dtype != w.dtype``, ``if window >= H``, ``len(x)``,
``range(n_tokens)`` or ``int(h * w)``: the answers depend on the input. ``ConcreteTracer`` runs the example input
alongside the trace (every recorded node also gets its value, ``node.meta["value"]``) and answers those questions with
the example's values, as Hugging Face's former ``HFTracer`` did with meta tensors. The graph is then specialised to
the example's shape and dtype (``evalxai.methods.graph.trace`` keeps one per input shape); tensor operations stay
recorded, so the graph computes the model's function of any input of that shape. A branch on the *data* (not the
shape) would be baked in too: ``evalxai.methods.graph.check_function`` compares the traced logits with ``model(x)``
on every explanation and raises where they differ.

Functions registered with ``torch.fx.wrap`` (torchvision's ``shifted_window_attention``, ``stochastic_depth``,
``_patch_merging_pad``, ...) are recorded as single opaque calls by symbolic tracing; the concrete trace goes inside
them (``unwrapped``), so their attention, padding and window shuffles meet the same rules as everywhere else.
"""
from __future__ import annotations

import contextlib
import inspect
import operator

import torch
from torch import fx, nn
from torch.fx import _symbolic_trace as _fx_symbolic

# tensor metadata answered from the example value (``torch.finfo(x.dtype)``, ``mask.expand(*x.size()[:2], -1)``,
# ``x.to(other.device)`` in Hugging Face's attention-mask code): constants of the specialised graph
CONCRETE_ATTRIBUTES = frozenset({"dtype", "device", "shape", "ndim", "layout", "is_cuda", "size", "dim"})


def _value(a):
    """The example value behind a proxy (recursively through tuples, lists and dicts)."""
    return fx.node.map_aggregate(a, lambda v: v.node.meta["value"] if isinstance(v, fx.Proxy) else v)


class ConcreteProxy(fx.Proxy):
    """A proxy that knows its example value: ``len``, ``int``, indexing with it and iteration are answered from it."""

    def __len__(self) -> int:
        return len(self.node.meta["value"])

    def __index__(self) -> int:
        return int(self.node.meta["value"])

    def __int__(self) -> int:
        return int(self.node.meta["value"])

    def __float__(self) -> float:
        return float(self.node.meta["value"])

    def __getattr__(self, name: str):
        if name in CONCRETE_ATTRIBUTES:  # metadata of the example: the graph is specialised to its shape and dtype
            return getattr(self.node.meta["value"], name)
        return super().__getattr__(name)

    def __setitem__(self, key, value) -> None:  # attn_mask[h0:h1, w0:w1] = count: recorded, and done on the value
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


def is_rms_norm(m: nn.Module) -> bool:
    """A model library's own RMSNorm class (Hugging Face's ``LlamaRMSNorm`` and its copies: ``weight`` and
    ``variance_epsilon`` or ``eps``): traced as one layer, as ``nn.RMSNorm`` is (``evalxai.methods.lrp`` checks on
    every call that it computes ``weight * x / rms(x)``)."""
    eps = m.__dict__.get("variance_epsilon", m.__dict__.get("eps"))  # not getattr: tracing patches it
    return type(m).__name__.endswith("RMSNorm") and not isinstance(m, nn.RMSNorm) and \
        m._parameters.get("weight") is not None and isinstance(eps, float)


def is_library_activation(m: nn.Module) -> bool:
    """An element-wise activation of Hugging Face's ``transformers.activations`` (GPT-2's tanh-GELU written out,
    ``NewGELUActivation``; ``SiLUActivation``; ``GELUActivation``): one layer, relevance passed unchanged (AttnLRP's
    identity rule, LXT's ``non_linear_forward``), as torch.nn's activations."""
    return type(m).__module__ == "transformers.activations"


class LeafTracer(fx.Tracer):
    """torch.fx's tracer with library RMSNorm classes (``is_rms_norm``) and activations (``is_library_activation``)
    as leaves, like torch.nn's modules."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_rms_norm(m) or is_library_activation(m) or super().is_leaf_module(m, module_qualified_name)


class ConcreteTracer(LeafTracer):
    """torch.fx tracing with the example input ``x`` run alongside (see the module docstring)."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.example = x
        self._placeholders = 0

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        with torch.no_grad(), _fx_symbolic._maybe_revert_all_patches():  # run the op as eager mode does
            proxy.node.meta["value"] = self._run(kind, target, args, kwargs)
        return proxy

    def _run(self, kind, target, args, kwargs):
        if kind == "placeholder":
            self._placeholders += 1
            if self._placeholders == 1:
                return self.example
            return args[0] if args else None
        if kind == "get_attr":
            obj = self.root
            for part in target.split("."):
                obj = getattr(obj, part)
            return obj
        if kind == "output":
            return _value(args[0])
        a, k = _value(args), _value(kwargs)
        if kind == "call_module":
            return self.root.get_submodule(target)(*a, **k)
        if kind == "call_method":
            return getattr(a[0], target)(*a[1:], **k)
        return target(*a, **k)

    def call_module(self, m, forward, args, kwargs):
        try:
            self.path_of_module(m)
        except NameError:  # a module made on the fly, not the model's (a kernel hub's function as a layer): inline
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(obj.node.meta["value"])

    def iter(self, obj: fx.Proxy):
        return (obj[i] for i in range(len(obj.node.meta["value"])))

    def keys(self, obj: fx.Proxy):
        return obj.node.meta["value"].keys()


@contextlib.contextmanager
def unwrapped():
    """Trace inside the functions registered with ``torch.fx.wrap`` (they are recorded as opaque calls otherwise)."""
    saved = dict(_fx_symbolic._wrapped_fns_to_patch)
    _fx_symbolic._wrapped_fns_to_patch.clear()
    try:
        yield
    finally:
        _fx_symbolic._wrapped_fns_to_patch.update(saved)


def is_wrapped_function(fn) -> bool:
    """Whether ``fn`` is registered with ``torch.fx.wrap`` (symbolic tracing records it as one call)."""
    globals_ = getattr(fn, "__globals__", None)
    return globals_ is not None and (id(globals_), getattr(fn, "__name__", None)) in _fx_symbolic._wrapped_fns_to_patch


def concrete_trace(model: nn.Module, x: torch.Tensor) -> fx.Graph:
    """The torch.fx graph of ``model`` specialised to the shape and dtype of ``x`` (see ``ConcreteTracer``); the model
    is run once on ``x`` without gradients."""
    sig = inspect.signature(model.forward)
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        raise TypeError(f"{type(model).__name__}.forward takes *args: give it one named input")
    with unwrapped():
        graph = ConcreteTracer(x).trace(model)
    for node in graph.nodes:  # the example's activations are not kept with the cached graph
        node.meta.pop("value", None)
    return graph
