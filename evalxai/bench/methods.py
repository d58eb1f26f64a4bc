"""Methods against their bare cost: each method's time per batch divided by k plain gradient passes (forward +
backward) on the same batch, k = 1 except for integrated_gradients (steps) and smoothgrad (samples), both timed with
k = ``BENCH_UNITS``. Inputs are random and models randomly initialised (a method's cost depends on neither).

``bench_methods``: MNIST-size zoo models (lenet, vgg_bn); ``bench_vit``: vit_tiny's transformer rules;
``bench_api``: ``evalxai.explain`` as a library user calls it, in fresh processes, with and without
``evalxai.tune_allocator()``.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pandas as pd
import torch

import evalxai
from evalxai.bench.timing import gradient_pass, interleaved
from evalxai.methods import METHODS
from evalxai.models.zoo import build_model

TARGETS = {"lrp_0": 1.3, "lrp_epsilon": 1.3, "lrp_epsilon_plus": 2.0, "lrp_epsilon_plus_flat": 2.0,
           "lrp_epsilon_alpha2beta1": 2.0, "lrp_epsilon_gamma_box": 2.5, "integrated_gradients": 1.2,
           "smoothgrad": 1.2}
# Methods that must make several gradient passes: their ratio is divided by that number (the bare cost).
UNITS = {"integrated_gradients": "steps", "smoothgrad": "samples"}


# They are timed with 8 passes (the default 32 would make the bench 4x longer on vgg_bn for the same ratio:
# passes are batched 512 images at a time either way, so the cost per pass does not depend on their number).
BENCH_UNITS = 8


def units(method: str) -> int:
    """Plain gradient passes a method makes in the bench (1 unless listed in UNITS)."""
    return BENCH_UNITS if method in UNITS else 1


def bench_methods(model_name: str, methods: list[str], batch: int, repeats: int) -> pd.DataFrame:
    """One row per method (and one for the gradient pass itself): median time, gradient passes, ratio, target; a
    method the model does not support (cam without global average pooling) is a row without timing."""
    torch.manual_seed(0)
    model = build_model(model_name, (1, 28, 28)).eval()
    x = torch.rand(batch, 1, 28, 28)
    t = torch.randint(0, 10, (batch,))
    calls = {"<gradient pass>": lambda: gradient_pass(model, x, t)}
    unsupported = []
    for name in methods:
        try:
            evalxai.explain(model, x[:2], t[:2], method=name)
        except Exception:  # noqa: BLE001 - e.g. cam on a model without global average pooling
            unsupported.append(name)
            continue
        params = {UNITS[name]: BENCH_UNITS} if name in UNITS else {}
        calls[name] = lambda name=name, params=params: evalxai.explain(model, x, t, method=name, **params)
    times = interleaved(calls, repeats)
    base = statistics.median(times["<gradient pass>"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        n_units = units(name) if name in METHODS else 1
        rows.append({"model": model_name, "batch": batch, "method": name, "median_ms": 1e3 * med,
                     "gradient_passes": n_units, "ratio": med / base / n_units, "target": TARGETS.get(name)})
    rows += [{"model": model_name, "batch": batch, "method": name, "target": TARGETS.get(name)} for name in unsupported]
    return pd.DataFrame(rows)


# ---- vit_tiny --------------------------------------------------------------------------------------------------

VIT_METHODS = ("attnlrp", "cp_lrp", "lrp_epsilon", "gradient_x_input", "attention_rollout")
VIT_TARGET = 1.5  # attnlrp / cp_lrp time over one gradient pass (LXT's AttnLRP costs about one gradient x input)


def bench_vit(methods=VIT_METHODS, batch: int = 128, repeats: int = 7) -> pd.DataFrame:
    """vit_tiny (random weights, 1x28x28, batch ``batch``): each method's time per batch / one plain gradient pass
    (interleaved medians, as ``bench_methods``); attnlrp and cp_lrp are held to ``VIT_TARGET``."""
    df = bench_methods("vit_tiny", list(methods), batch, repeats)
    df.loc[df["method"].isin(["attnlrp", "cp_lrp"]), "target"] = VIT_TARGET
    df["meets_target"] = [None if pd.isna(tg) else bool(r <= tg) for r, tg in zip(df["ratio"], df["target"])]
    return df


# ---- The Python API with and without the allocator tuning ------------------------------------------------------

API_METHODS = ("lrp_epsilon", "lrp_epsilon_plus")


def api_child(model_name: str, batch: int, repeats: int, tune: bool) -> dict:
    """In a fresh process: ``evalxai.explain`` as a library user calls it, after ``evalxai.tune_allocator()`` or not;
    returns the median times (ms) and each method's median time over a plain gradient pass's (the ratio)."""
    tuned = evalxai.tune_allocator() if tune else False
    torch.manual_seed(0)
    model = build_model(model_name, (1, 28, 28)).eval()
    x = torch.rand(batch, 1, 28, 28)
    t = torch.randint(0, 10, (batch,))
    calls = {"<gradient pass>": lambda: gradient_pass(model, x, t)}
    calls.update({m: lambda m=m: evalxai.explain(model, x, t, method=m) for m in API_METHODS})
    times = {k: statistics.median(v) for k, v in interleaved(calls, repeats).items()}
    return {"model": model_name, "tune_allocator": tune, "tuned": tuned, "gradient_ms": 1e3 * times["<gradient pass>"],
            **{f"{m}_ms": 1e3 * times[m] for m in API_METHODS},
            **{m: times[m] / times["<gradient pass>"] for m in API_METHODS}}


def bench_api(models=("lenet", "vgg_bn"), batch: int = 128, repeats: int = 15) -> pd.DataFrame:
    """LRP's ratio to a gradient through the Python API, each case in a fresh Python process: without the opt-in
    (``EVALXAI_MALLOC=default``, glibc's default allocator) and with ``evalxai.tune_allocator()``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "EVALXAI_MALLOC"}
    rows = []
    for model_name in models:
        for tune in (False, True):
            code = ("import json, sys; from evalxai.bench.methods import api_child; "
                    f"print('API_RESULT', json.dumps(api_child({model_name!r}, {batch}, {repeats}, {tune})))")
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env=env if tune else {**env, "EVALXAI_MALLOC": "default"})
            if res.returncode != 0:
                raise RuntimeError(f"API bench child failed: {res.stderr.strip().splitlines()[-1:]}")
            line = next(ln for ln in res.stdout.splitlines() if ln.startswith("API_RESULT "))
            rows.append(json.loads(line.split(" ", 1)[1]))
    return pd.DataFrame(rows)
