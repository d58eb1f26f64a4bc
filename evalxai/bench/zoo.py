"""The zoo coverage table (``python -m evalxai.bench --zoo``): which LRP composites explain each classification model
of torchvision (and of timm, where installed), whether LRP-0 equals gradient x input, the reference's error where
one exists (zennit), and the time of one explanation over one gradient.

Random weights with BatchNorm statistics measured on a random batch, eval mode, float32 (float64 for the equality
columns), a batch of two. Every refusal is kept with its message (the op and the module it names). torchvision and
timm are optional: without them the table says so. Each model is built in this process, so the largest variants take
minutes; ``--zoo-models`` narrows the list.
"""
from __future__ import annotations

import time
import traceback
from collections.abc import Iterable

import pandas as pd
import torch
from torch import nn

import evalxai
from evalxai.methods.graph import attention_nodes

COMPOSITES = ("lrp_0", "lrp_epsilon_plus", "lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box",
              "lrp_epsilon_alpha2beta1", "lrp_epsilon_alpha2beta1_flat")
ATTENTION_METHODS = ("attnlrp", "cp_lrp")
# Models that take only one input size (their patch/window grids are fixed) and Inception's minimum.
FIXED_SIZE = {"vit_": 224, "maxvit": 224, "inception": 75}
GXI_MAX_PARAMS_M = 60  # the float64 copy of larger models costs more than the table is worth


def _size(name: str, size: int) -> int:
    return next((s for prefix, s in FIXED_SIZE.items() if name.startswith(prefix)), size)


def torchvision_models() -> list[str]:
    """The classification models of ``torchvision.models.list_models(module=torchvision.models)``."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _build(library: str, name: str, size: int) -> nn.Module:
    if library == "torchvision":
        import torchvision

        kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        return torchvision.models.get_model(name, num_classes=10, **kw)
    import timm

    try:  # fixed-grid models (ViT, DeiT, Swin, Mixer) take the input size as img_size
        return timm.create_model(name, pretrained=False, num_classes=10, img_size=size)
    except TypeError:
        return timm.create_model(name, pretrained=False, num_classes=10)


def _measured(model: nn.Module, size: int, dtype: torch.dtype) -> nn.Module:
    """Eval mode, BatchNorm statistics of a random batch; BatchNorm scales initialised to zero (timm's
    ``zero_init_last``: every residual branch starts as 0) drawn from U(0.5, 1.5), and zero-initialised linear heads
    (torchvision's ViT, timm's Mixer) from N(0, 0.1²), so that every branch and logit counts."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not bool(m.weight.any()):
            nn.init.uniform_(m.weight, 0.5, 1.5)
        if isinstance(m, nn.Linear) and not bool(m.weight.any()):  # zero-initialised heads: every logit 0
            nn.init.normal_(m.weight, std=0.1)
    model = model.to(dtype).train()
    with torch.no_grad():
        model(torch.rand(4, 3, size, size, dtype=dtype))
    return model.eval()


def _seconds(fn, repeats: int = 2) -> float:
    fn()  # warm: traces, caches
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"


def zoo_row(library: str, name: str, size: int = 64, timing: bool = True) -> dict:
    """One row of the coverage table for ``library`` (torchvision, timm) model ``name``."""
    size = _size(name, size)
    row = {"library": library, "model": name, "input": size}
    try:
        model = _measured(_build(library, name, size), size, torch.float32)
    except Exception as err:  # noqa: BLE001 - the table records every failure
        return {**row, "error": "build: " + _error(err)}
    row["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    x = torch.rand(2, 3, size, size)
    target = torch.tensor([1, 2])
    try:
        attention = bool(attention_nodes(model, x)[1])
    except Exception:  # noqa: BLE001 - an untraceable model: its refusal is recorded per composite below
        attention = False
    runs, refused = [], []
    for method in COMPOSITES + (ATTENTION_METHODS if attention else ()):
        try:
            r = evalxai.explain(model, x, target, method=method)
            if not torch.isfinite(r).all():
                raise ValueError("non-finite relevance")
            runs.append(method)
        except Exception as err:  # noqa: BLE001
            refused.append(f"{method}: {_error(err)}")
    row["composites"] = f"{sum(m in COMPOSITES for m in runs)}/{len(COMPOSITES)}"
    row["attention"] = "/".join(m for m in runs if m in ATTENTION_METHODS) or ("-" if not attention else "refused")
    row["refusal"] = refused[0] if refused else ""
    if "lrp_0" in runs and row["params_M"] <= GXI_MAX_PARAMS_M:
        row["lrp0_vs_gxi"] = _gxi_error(model, size)
    if timing and "lrp_epsilon_plus" in runs:
        grad = _seconds(lambda: evalxai.explain(model, x, target, method="gradient"))
        lrp = _seconds(lambda: evalxai.explain(model, x, target, method="lrp_epsilon_plus"))
        row["lrp_s"] = round(lrp, 3)
        row["lrp_over_gradient"] = round(lrp / grad, 2)
    return row


def _gxi_error(model: nn.Module, size: int) -> float:
    """max |lrp_0 - gradient x input| / max |gradient x input| in float64 (0 up to rounding on ReLU networks)."""
    import copy

    m64 = copy.deepcopy(model).double()
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    lrp = evalxai.explain(m64, x, [1, 2], method="lrp_0")
    gxi = evalxai.explain(m64, x, [1, 2], method="gradient_x_input")
    return float((lrp - gxi).abs().max() / gxi.abs().max().clamp(min=1e-300))


def bench_zoo(names: Iterable[str] | None = None, library: str = "torchvision", size: int = 64,
              timing: bool = True, log=print) -> pd.DataFrame:
    """The coverage table for ``names`` (default: every torchvision classification model)."""
    try:
        names = list(names) if names else torchvision_models()
    except ImportError as err:
        raise ImportError(f"--zoo needs torchvision ({err}); install the reference environment: "
                          "tools/reference_env.sh") from None
    rows = []
    for name in names:
        t = time.perf_counter()
        try:
            row = zoo_row(library, name, size, timing)
        except Exception as err:  # noqa: BLE001
            row = {"library": library, "model": name, "error": _error(err), "trace": traceback.format_exc(limit=2)}
        row["seconds"] = round(time.perf_counter() - t, 1)
        log(f"{library} {name}: {row.get('composites', '')} {row.get('refusal') or row.get('error') or 'ok'}")
        rows.append(row)
    return pd.DataFrame(rows)
