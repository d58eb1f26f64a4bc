"""Quantus 0.6 timings on a case written by ``python -m evalxai.bench`` (``evalxai.bench.quantus.write_case``): the
Quantus side of the pixel-flipping race on LeNet / MNIST and of the realistic-model table (a ResNet-18 shape).

Run by the bench with a Python that has quantus 0.6 (not evalxai):

    PY experiments/quantus_reference/time_case.py CASE.pt --threads T

The model is rebuilt from ``evalxai/bench/standalone.py`` (torch only) and the case's state dict. Then, per line on
stdin, a JSON request {"name", "cls", "init", "call", "a"} (Quantus class, constructor and call keyword arguments;
``call["explain_func"]`` names a function of make_reference.py; ``a``: which map: "attributions" (x-shaped),
"summed" (summed over channels, (N, 1, H, W)), "positive_part" or "per_sample_unit" of the summed map) is run once,
and one JSON line {name, seconds, cpu_seconds, error} is printed.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

np.trapz = np.trapezoid  # noqa: NPY201 (restored alias:) Quantus 0.6 on NumPy >= 2.4 (removed name)
np.NaN = np.nan  # noqa: NPY201 (restored alias:) Quantus 0.6 on NumPy >= 2.0 (removed name)

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(case_path: str, threads: int) -> None:
    import quantus

    torch.set_num_threads(threads)
    reference = _load("make_reference", HERE / "make_reference.py")
    standalone = _load("standalone", HERE.parents[1] / "bench" / "standalone.py")
    case = torch.load(case_path, weights_only=True)
    model = standalone.build(case["arch"], case["state"])
    x, y = case["x"].numpy(), case["target"].numpy()
    a = case["attributions"].numpy()
    summed = a.sum(1, keepdims=True)
    maps = {"attributions": a, "summed": summed, "positive_part": np.clip(summed, 0, None),
            "per_sample_unit": reference.per_sample_unit(summed)}
    masks = case["masks"].unsqueeze(1).numpy()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        row = {"name": req["name"], "seconds": [], "cpu_seconds": [], "error": None}
        try:
            call = dict(req["call"])
            if "explain_func" in call:
                call["explain_func"] = getattr(reference, call["explain_func"])
            kwargs = dict(model=model, x_batch=x, y_batch=y, a_batch=maps[req["a"]], device="cpu", batch_size=len(x),
                          **call)
            if req["cls"] in reference.LOCALISATION:
                kwargs["s_batch"] = masks
            metric = getattr(quantus, req["cls"])(**req["init"], disable_warnings=True)
            np.random.seed(0)  # noqa: NPY002 (Quantus draws from NumPy's global generator)
            t0, c0 = time.perf_counter(), time.process_time()
            with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
                warnings.simplefilter("ignore")
                metric(**kwargs)
            row["seconds"].append(time.perf_counter() - t0)
            row["cpu_seconds"].append(time.process_time() - c0)
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"[:400]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    main(args.case, args.threads)
