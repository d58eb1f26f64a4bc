"""Axiomatic: conservation (completeness) of relevance (Bach 2015; Montavon 2017; Sundararajan 2017).

Residual sum R - (f_c(x) - f_c(x_ref)) per sample, the relative residual, and for LRP methods the per-layer
residuals sum R_in - sum R_out (which layer absorbs relevance: biases, stabilisers, dropped negative parts).
"""
from __future__ import annotations

import pandas as pd
import torch

from evalxai.explain.gradient import make_baseline
from evalxai.metrics.common import scalar_rows, target_scores
from evalxai.metrics.registry import register_metric


@register_metric("conservation", reference="none", method=None, method_params=None, mean=None)
def conservation(model, x, target, attributions, reference="none", method=None, method_params=None, mean=None):
    """Rows: residual, relative_residual, abs_relative_residual (lower is better) and layer residuals.

    For an LRP method the recorded run that gives the layer residuals also gives f_c(x) (its own forward, with
    BatchNorm merged: equal to the model's logits up to rounding), so no separate forward is made."""
    rec = None
    if isinstance(method, str):
        from evalxai.explain import get_method
        from evalxai.explain.lrp.engine import Recorder

        spec = get_method(method)
        if spec.family == "lrp":
            rec = Recorder()
            spec.fn(model, x, target, recorder=rec, **{**spec.defaults, **(method_params or {})})
    with torch.no_grad():
        fx = target_scores(model(x) if rec is None else rec.logits, target, "logit")
        if reference == "none":
            fref = torch.zeros_like(fx)
        else:
            fref = target_scores(model(make_baseline(x, reference, mean)), target, "logit")
    delta = (fx - fref).double()
    residual = attributions.reshape(len(x), -1).double().sum(1) - delta
    relative = residual / delta.abs().clamp(min=1e-12)
    frames = [scalar_rows(residual, "residual", "none"), scalar_rows(relative, "relative_residual", "none"),
              scalar_rows(relative.abs(), "abs_relative_residual", "lower")]
    for row in [] if rec is None else rec.rows:
        frames.append(scalar_rows(row["relevance_in"] - row["relevance_out"], f"layer_residual:{row['layer']}",
                                  "none", layer_rule=row["kind"]))
    return pd.concat(frames, ignore_index=True)
