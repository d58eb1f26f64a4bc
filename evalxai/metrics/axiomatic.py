"""Axiomatic: conservation (completeness) of relevance (Bach 2015; Montavon 2017; Sundararajan 2017).

Residual sum R - (f_c(x) - f_c(x_ref)) per sample, the relative residual, and for LRP methods the per-layer
residuals sum R_in - sum R_out (which layer absorbs relevance: biases, stabilisers, dropped negative parts).

Each method is charged against the total it promises (``reference="auto"``): a method with a reference input
(Integrated Gradients, DeepLIFT, occlusion: their ``baseline``) against f_c(x) - f_c(x_ref) with that very
reference, every other method (LRP, gradient x input, ...) against f_c(x). The ``reference`` column says which.
"""
from __future__ import annotations

import pandas as pd
import torch

from evalxai.baselines import baseline_label
from evalxai.baselines import reference as reference_input
from evalxai.metrics.common import scalar_rows, target_scores
from evalxai.metrics.registry import register_metric

_REFERENCE_PARAMS = ("mean", "low", "high", "seed")


def promised_reference(method, method_params: dict | None) -> tuple[object, dict]:
    """(baseline, its parameters) of a registered method that explains against a reference input, else
    ("none", {})."""
    if not isinstance(method, str):
        return "none", {}
    from evalxai.explain import get_method

    spec = get_method(method)
    if "baseline" not in spec.defaults:
        return "none", {}
    params = {**spec.defaults, **(method_params or {})}
    return params["baseline"], {k: params[k] for k in _REFERENCE_PARAMS if k in params}


@register_metric("conservation", reference="auto", method=None, method_params=None, mean=None, low=None, high=None,
                 seed=0)
def conservation(model, x, target, attributions, reference="auto", method=None, method_params=None, mean=None,
                 low=None, high=None, seed=0):
    """Rows: residual, relative_residual, abs_relative_residual (lower is better) and layer residuals.

    ``reference``: ``auto`` (the method's own, see the module docstring), ``none`` (f_c(x) alone) or a baseline of
    ``evalxai.baselines`` (with ``mean``, ``low``, ``high``, ``seed``). For an LRP method the recorded run that gives
    the layer residuals also gives f_c(x) (its own forward, with BatchNorm merged: equal to the model's logits up
    to rounding), so no separate forward is made."""
    rec = None
    if isinstance(method, str):
        from evalxai.explain import get_method
        from evalxai.explain.lrp.engine import Recorder

        spec = get_method(method)
        if spec.family == "lrp":
            rec = Recorder()
            spec.fn(model, x, target, recorder=rec, **{**spec.defaults, **(method_params or {})})
    ref_params = {"mean": mean, "low": low, "high": high, "seed": seed}
    if reference is None or reference == "auto":
        reference, own = promised_reference(method, method_params)
        ref_params.update({k: v for k, v in own.items() if v is not None})
    with torch.no_grad():
        fx = target_scores(model(x) if rec is None else rec.logits, target, "logit")
        if reference == "none":
            fref = torch.zeros_like(fx)
        else:
            fref = target_scores(model(reference_input(x, reference, **ref_params)), target, "logit")
    delta = (fx - fref).double()
    residual = attributions.reshape(len(x), -1).double().sum(1) - delta
    relative = residual / delta.abs().clamp(min=1e-12)
    frames = [scalar_rows(residual, "residual", "none"), scalar_rows(relative, "relative_residual", "none"),
              scalar_rows(relative.abs(), "abs_relative_residual", "lower")]
    for row in [] if rec is None else rec.rows:
        frames.append(scalar_rows(row["relevance_in"] - row["relevance_out"], f"layer_residual:{row['layer']}",
                                  "none", layer_rule=row["kind"]))
    out = pd.concat(frames, ignore_index=True)
    out["reference"] = baseline_label(reference)
    return out
