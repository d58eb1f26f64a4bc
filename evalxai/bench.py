"""Benchmark: each method's time per batch divided by its bare cost, k plain gradients (forward + backward) on the
same batch, k = 1 except for integrated_gradients (steps) and smoothgrad (samples), both timed with k = 8.

    python -m evalxai.bench [--models lenet vgg_bn] [--batch 128] [--repeats 15] [--methods ...] [--out DIR]

Timings are interleaved (every method once per round, rounds repeated) and medians are taken, so drift on a
shared machine hits all methods alike. Method timings use random inputs and randomly initialised models (their
cost does not depend on either); metric timings use real MNIST images and the trained model (``bench_metrics``).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

import evalxai
import evalxai.metrics
from evalxai import allocator
from evalxai.explain import METHODS
from evalxai.explain.gradient import target_grad
from evalxai.explain.guard import frozen
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
    torch.manual_seed(0)
    model = build_model(model_name, (1, 28, 28)).eval()
    x = torch.rand(batch, 1, 28, 28)
    t = torch.randint(0, 10, (batch,))
    calls = {"<gradient pass>": lambda: _plain(model, x, t)}
    unsupported = []
    for name in methods:
        try:
            evalxai.explain(model, x[:2], t[:2], method=name)
        except Exception:  # noqa: BLE001 - e.g. cam on a model without global average pooling
            unsupported.append(name)
            continue
        params = {UNITS[name]: BENCH_UNITS} if name in UNITS else {}
        calls[name] = lambda name=name, params=params: evalxai.explain(model, x, t, method=name, **params)
    times = _interleaved(calls, repeats)
    base = statistics.median(times["<gradient pass>"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        n_units = units(name) if name in METHODS else 1
        rows.append({"model": model_name, "batch": batch, "method": name, "median_ms": 1e3 * med,
                     "gradient_passes": n_units, "ratio": med / base / n_units, "target": TARGETS.get(name)})
    rows += [{"model": model_name, "batch": batch, "method": name, "target": TARGETS.get(name)} for name in unsupported]
    return pd.DataFrame(rows)


# Metric parameters benchmarked (those of experiment=mnist_lrp where it uses the metric) and the bare cost:
# the number of batch forwards ("fwd") and batch explains ("exp") the metric cannot avoid, one batch per step.
METRIC_CASES = {
    "pixel_flipping": ({"patch_size": 4, "per_step": 3, "order": ["morf", "lerf"]}, {"fwd": 2 * 18}),
    "selectivity": ({"patch_size": 4, "steps": 10}, {"fwd": 11, "exp": 9}),
    "insertion_deletion": ({}, {"fwd": 2 * 29}),
    "road": ({}, {"fwd": 1 + 2 * 9}),
    "continuity": ({"shift": 3}, {"fwd": 7, "exp": 7}),
    "max_sensitivity": ({"samples": 10}, {"exp": 10}),
    "randomization": ({}, {"exp": 4}),
    "conservation": ({}, {"fwd": 1, "exp": 1}),
}
METRIC_TARGETS = {"pixel_flipping": 1.0}
BARE_CALLS = 3


def bench_metrics(model_name: str, batch: int, repeats: int, method: str = "lrp_epsilon_plus") -> pd.DataFrame:
    """Each metric's median time / its bare cost (n_fwd x one batch forward + n_exp x one batch explain).

    Metrics are timed on real data, since some costs depend on it (ROAD's solver iterations, ties in ranks): the
    first ``batch`` MNIST test images, their predicted classes, and the trained model of ``experiment=mnist_lrp``
    (from the model cache; trained there on first use)."""
    model, x, t = _mnist_case(model_name, batch)
    r = evalxai.explain(model, x, t, method=method)

    def forward():
        with torch.no_grad():
            return model(x)

    def explain():
        return evalxai.explain(model, x, t, method=method)

    # The bare costs run BARE_CALLS times back to back per round (time per call): one lone forward of ~20 ms after
    # a metric that churned through memory reads as up to 1.7x slower, which made every metric ratio jump.
    calls = {"<forward>": lambda: [forward() for _ in range(BARE_CALLS)],
             "<explain>": lambda: [explain() for _ in range(BARE_CALLS)]}
    for name, (params, _) in METRIC_CASES.items():
        extra = {"method": method} if "method" in evalxai.metrics.get_metric(name).defaults else {}
        calls[name] = lambda name=name, params=params, extra=extra: evalxai.score(model, x, t, r, metric=name,
                                                                                  **params, **extra)
    times = _interleaved(calls, repeats)
    fwd, exp = (statistics.median(times[k]) / BARE_CALLS for k in ("<forward>", "<explain>"))
    rows = []
    for name, (_, bare) in METRIC_CASES.items():
        med = statistics.median(times[name])
        cost = bare.get("fwd", 0) * fwd + bare.get("exp", 0) * exp
        rows.append({"model": model_name, "batch": batch, "metric": name, "median_ms": 1e3 * med,
                     "bare_ms": 1e3 * cost, "bare": ", ".join(f"{v} {k}" for k, v in bare.items()),
                     "ratio": med / cost, "target": METRIC_TARGETS.get(name, 1.2)})
    return pd.DataFrame(rows)


def _mnist_case(model_name: str, batch: int):
    from evalxai.reproduce import dataset_and_model

    _, dataset, model = dataset_and_model(["experiment=mnist_lrp", f"model={model_name}"])
    x = dataset.x_test[:batch]
    with torch.no_grad():
        t = model(x).argmax(1)
    return model, x, t


def _interleaved(calls: dict, repeats: int) -> dict[str, list[float]]:
    """Median-ready timings: every call once per round (after a warm-up round), ``repeats`` rounds."""
    for f in calls.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, f in calls.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return times


def bench_end_to_end(experiment: str = "mnist_lrp") -> pd.DataFrame:
    """Wall time of ``python -m evalxai experiment=...`` with an empty cache (cold: MNIST parse, training) and
    again with the filled cache (warm), and the peak resident memory of those runs."""
    import os
    import re
    import subprocess
    import sys
    import tempfile

    # The child reports its own high-water RSS (VmHWM of its own address space; getrusage would also count the
    # pages it shared with this process between fork and exec).
    wrapper = ("import atexit, runpy, sys\n"
               "def peak():\n"
               "    try:\n"
               "        line = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
               "        print('PEAK_RSS_KB', line.split()[1], file=sys.stderr)\n"
               "    except OSError:\n"
               "        pass\n"
               "atexit.register(peak)\n"
               "sys.argv = ['evalxai', *sys.argv[1:]]\n"
               "runpy.run_module('evalxai', run_name='__main__')\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "EVALXAI_CACHE": str(Path(tmp) / "cache")}
        for kind in ("cold", "warm"):
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", wrapper, f"experiment={experiment}", "progress=false",
                                  f"hydra.run.dir={Path(tmp) / kind}"], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(f"{experiment} failed: {res.stderr.strip().splitlines()[-1:]}")
            found = re.findall(r"PEAK_RSS_KB (\d+)", res.stderr)
            rows.append({"experiment": experiment, "run": kind, "wall_s": round(wall, 1),
                         "peak_rss_mb": round(int(found[-1]) / 1024) if found else None,
                         "target_s": 120 if kind == "cold" else 30, "target_mb": 2048})
    return pd.DataFrame(rows)


def _plain(model, x, t):
    with frozen(model, warn_train=False):
        return target_grad(model, x, t)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet", "vgg_bn"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--methods", nargs="+", default=sorted(m for m in METHODS if m != "occlusion"),
                   help="occlusion (one forward per window: ~100 gradient passes) is left out unless named")
    p.add_argument("--metrics", nargs="*", default=list(METRIC_CASES), help="metrics to time on lenet (none: skip)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end mnist_lrp runs (cold and warm)")
    p.add_argument("--out", default="results/bench")
    args = p.parse_args(argv)
    tuned = allocator.tune()  # as the CLI does: baseline and methods run under the same allocator
    unknown = [m for m in args.methods if m not in METHODS] + [m for m in args.metrics if m not in METRIC_CASES]
    if unknown:
        p.error(f"unknown methods/metrics {unknown}: choose from {sorted(METHODS)} / {sorted(METRIC_CASES)}")
    # End to end first: the child processes then share the machine with a small parent, not with one that holds
    # the memory of vgg_bn's batched Integrated Gradients (with it, a warm run read 55 s instead of 25 s here).
    e2e = None if args.no_e2e else bench_end_to_end()
    df = pd.concat([bench_methods(m, args.methods, args.batch, args.repeats) for m in args.models])
    df["meets_target"] = [None if pd.isna(tg) else bool(r <= tg) for r, tg in zip(df["ratio"], df["target"])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench.csv", index=False)
    table = df.pivot(index="method", columns="model", values="ratio").round(2)
    table["target"] = [TARGETS.get(m, "") for m in table.index]
    text = (f"Methods: time per batch of {args.batch} / k plain gradient passes (k = {BENCH_UNITS} for "
            f"integrated_gradients and smoothgrad, run with steps / samples = {BENCH_UNITS}, else 1; "
            f"median of {args.repeats} interleaved rounds, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"allocator {'tuned' if tuned else 'default'})\n\n" + markdown(table.reset_index()) + "\n")
    if args.metrics:
        mdf = bench_metrics("lenet", args.batch, args.repeats)
        mdf = mdf[mdf["metric"].isin(args.metrics)]
        mdf.to_csv(out / "bench_metrics.csv", index=False)
        shown = mdf[["metric", "median_ms", "bare", "bare_ms", "ratio", "target"]].round(2)
        text += (f"\nMetrics (lenet, lrp_epsilon_plus maps, batch {args.batch}): time / bare cost (fwd: one batch "
                 "forward, exp: one batch explain)\n\n" + markdown(shown) + "\n")
    if e2e is not None:
        e2e.to_csv(out / "bench_e2e.csv", index=False)
        text += ("\nEnd to end (`python -m evalxai experiment=mnist_lrp`, wall time; peak resident memory of the "
                 "run, target 2 GB)\n\n" + markdown(e2e) + "\n")
    (out / "bench.md").write_text(text)
    print(text)
    return df


if __name__ == "__main__":
    main()
