"""Metrics against the passes they make: each metric's time on a batch divided by its bare cost, the model passes
it makes, counted.

Each metric runs once untimed with counters on: ``forward`` counts the images pushed through the model outside an
explanation, ``explain`` the images explained (the run's method, here ``lrp_epsilon_plus``). Its bare cost is then
forward_images / batch x (one batch forward) + explained_images / batch x (one batch explain), both timed in the
same interleaved rounds; ratio = metric time / bare cost. A ratio near 1 means the metric spends its time in the
model, as it must; above 1 is its own overhead (sorting, perturbing, statistics). The counts say what each metric
costs in passes per image, so two metrics of one family can be compared.

Work that defines a metric besides its model passes (``SOLVES``: ROAD's noisy linear imputation, one linear system per
sample and removed fraction) is part of the bare cost too: its calls are recorded in the counting run and the same
calls on the same inputs are timed bare in the same rounds (``solve_ms``).

The inputs are real MNIST images and the trained LeNet of experiment=mnist_lrp (``mnist_case``). Localisation
metrics need masks: the bench uses the digit's own pixels (x > 0.5 in pixel space), a known answer for a LeNet on
MNIST. ``focus`` gets a pool of 256 training images, as the pipeline passes it.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

import evalxai
from evalxai.bench.timing import interleaved
from evalxai.core.validate import check_logits
from evalxai.metrics import METRICS
from evalxai.runs.reproduce import dataset_and_model

# Settings of experiment=mnist_lrp for the metrics it runs; other metrics use their registered defaults.
METRIC_PARAMS = {
    "pixel_flipping": {"patch_size": 4, "per_step": 3, "order": ["morf", "lerf"]},
    "selectivity": {"patch_size": 4, "steps": 10},
    "continuity": {"shift": 3},
}
TARGET = 1.2
# Counted by their declared cost (metrics.registry ``cost``), not through the counting callable: conservation makes
# one recorded LRP run for an LRP method's name (its explain, which also gives f_c(x)), a plain forward for a callable.
DECLARED = ("conservation",)
# Solvers a metric's definition calls (module, function), recorded and timed bare as part of its bare cost.
SOLVES = (("evalxai.metrics.road", "linear_imputation"),)


class PassCounter:
    """Counts images forwarded outside explanations (a forward hook on the model, removed on exit) and images
    explained (the method wraps its calls); a deep copy of the model (randomisation metrics) keeps counting."""

    def __init__(self, method: str):
        self.forward = 0
        self.explained = 0
        self._inside = False
        self._method = method

    def explain(self, model, x, target):
        self.explained += len(x)
        self._inside = True
        try:
            return evalxai.explain(model, x, target, method=self._method)
        finally:
            self._inside = False

    def _hook(self, module, args, output):
        if not self._inside:
            self.forward += len(args[0])

    def __deepcopy__(self, memo):  # copies of the hooked model report to the same counter
        return self

    @contextlib.contextmanager
    def counting(self, model):
        """Count the model's forwards and record the ``SOLVES`` calls (``solves``: (function, args, kwargs))."""
        self.solves = []
        handle = model.register_forward_hook(self._hook)
        modules = [importlib.import_module(name) for name, _ in SOLVES]
        originals = [getattr(m, fn) for m, (_, fn) in zip(modules, SOLVES)]
        for m, (_, fn), solve in zip(modules, SOLVES, originals):
            setattr(m, fn, functools.partial(self._record, solve))
        try:
            yield self
        finally:
            handle.remove()
            for m, (_, fn), solve in zip(modules, SOLVES, originals):
                setattr(m, fn, solve)

    def _record(self, solve, *args, **kwargs):
        self.solves.append((solve, args, kwargs))
        return solve(*args, **kwargs)


def image_metrics() -> list[str]:
    """Every registered metric of images, sorted (token metrics score text classifiers: not this LeNet bench)."""
    return sorted(m for m, spec in METRICS.items() if "float" in spec.inputs)


def metric_inputs(name: str, x: torch.Tensor, pool) -> dict:
    """The data a metric takes besides the map: masks (the digit, x > 0.5) and the focus pool."""
    params = inspect.signature(METRICS[name].fn).parameters
    extra = {}
    if "masks" in params:
        extra["masks"] = x[:, 0] > 0.5
    if "pool" in params:
        extra["pool"] = pool
    return extra


def mnist_case(model_name: str, batch: int):
    """(model, x, target, pool) of experiment=mnist_lrp with ``model_name``: the first ``batch`` test images, their
    predicted classes and the dataset's pool (the model is trained once and cached)."""
    _, dataset, model = dataset_and_model(["experiment=mnist_lrp", f"model={model_name}"])
    x = dataset.x_test[:batch]
    with torch.no_grad():
        t = model(x).argmax(1)
    return model, x, t, dataset.pool()


def bench_all_metrics(model, x, t, pool, metrics: list[str], repeats: int,
                      method: str = "lrp_epsilon_plus") -> pd.DataFrame:
    """Rows per metric: median time, forwarded and explained images per input image, the bare time of its
    ``SOLVES`` calls, bare cost, ratio."""
    r = evalxai.explain(model, x, t, method=method)
    check_logits(model, x)  # remembered for this x: not a pass of the metrics
    n = len(x)
    counts, calls, solves = {}, {}, {}
    for name in metrics:
        takes_method = "method" in METRICS[name].defaults
        kwargs = {**METRIC_PARAMS.get(name, {}), **metric_inputs(name, x, pool)}
        counter = PassCounter(method)
        with counter.counting(model):
            evalxai.score(model, x, t, r, metric=name, **kwargs,
                          **({"method": counter.explain} if takes_method else {}))
        counts[name] = (counter.forward, counter.explained)
        if counter.solves:
            solves[name] = lambda recorded=counter.solves: [f(*a, **k) for f, a, k in recorded]
        if takes_method:
            kwargs["method"] = method
        if name in DECLARED:  # given an LRP method's name it takes another path than with the counting callable
            spec = METRICS[name]
            cost = spec.cost(model, x, {**spec.defaults, **kwargs})
            counts[name] = (cost.forwards * n, cost.explains * n)
        calls[name] = lambda name=name, kwargs=kwargs: evalxai.score(model, x, t, r, metric=name, **kwargs)

    def forward():
        with torch.no_grad():
            return model(x)

    bare_calls = 3  # back to back per round: one lone short call after a metric that churned memory reads slow
    calls = {"<forward>": lambda: [forward() for _ in range(bare_calls)],
             "<explain>": lambda: [evalxai.explain(model, x, t, method=method) for _ in range(bare_calls)], **calls,
             **{f"<solves:{name}>": f for name, f in solves.items()}}
    times = interleaved(calls, repeats)
    fwd, exp = (statistics.median(times[k]) / bare_calls for k in ("<forward>", "<explain>"))
    rows = []
    for name in metrics:
        med = statistics.median(times[name])
        f, e = counts[name]
        solve = statistics.median(times[f"<solves:{name}>"]) if name in solves else 0.0
        cost = f / n * fwd + e / n * exp + solve
        rows.append({"metric": name, "median_ms": 1e3 * med, "forwards_per_image": f / n,
                     "explains_per_image": e / n, "solve_ms": 1e3 * solve, "bare_ms": 1e3 * cost,
                     "ratio": med / cost if cost > 0 else float("nan"), "target": TARGET})
    return pd.DataFrame(rows)


# The pixel-flipping race of issue 29: 784 one-pixel features removed 16 per step (49 steps + the clean input), MoRF,
# zero baseline, logits; Quantus 0.6's PixelFlipping with features_in_step=16 does the same per-step forwards.
FLIP_RACE = {"patch_size": 1, "per_step": 16, "order": "morf", "baseline": "zero", "score_space": "logit"}
FLIP_QUANTUS = {"name": "PixelFlipping", "cls": "PixelFlipping", "a": "summed",
                "init": {"abs": False, "normalise": False, "perturb_baseline": 0.0, "features_in_step": 16},
                "call": {"softmax": False}}


def bench_flip_race(model, x, t, r, repeats: int, quantus_python: str | None = None,
                    same_allocator: bool = False) -> pd.DataFrame:
    """Pixel flipping (``FLIP_RACE``) against its bare per-step forwards (K + 1 plain ``model(x)`` calls on the batch)
    and, with ``quantus_python``, against Quantus 0.6's PixelFlipping on the same model, batch and maps (one child
    process, same threads, the same glibc thresholds when ``same_allocator``), timed interleaved in ``repeats``
    rounds; rows: contestant, median ms, ratio to the bare forwards, and evalxai's speedup over each."""
    import tempfile

    from evalxai.bench.quantus import CASE_SCRIPT, QuantusTimer, write_case
    from evalxai.metrics.faithfulness import flip_steps

    steps = flip_steps(x, FLIP_RACE["patch_size"], FLIP_RACE["per_step"], None) + 1

    def bare():
        with torch.no_grad():
            for _ in range(steps):
                model(x)

    calls = {"bare forwards": bare,
             "evalxai": lambda: evalxai.score(model, x, t, r, metric="pixel_flipping", **FLIP_RACE)}
    with tempfile.TemporaryDirectory() as tmp:
        timer = None
        if quantus_python:
            masks = torch.zeros(len(x), *x.shape[-2:], dtype=torch.bool)
            path = write_case(Path(tmp) / "lenet.pt", "lenet", (model, x, t, r, masks))
            timer = QuantusTimer(quantus_python, 1, 0.0, argv=[str(CASE_SCRIPT), str(path)],
                                 same_allocator=same_allocator)
            calls["quantus 0.6"] = lambda: timer.time(FLIP_QUANTUS)
        try:
            quantus_seconds = []
            for f in calls.values():
                f()
            times: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(repeats):
                for name, f in calls.items():
                    t0 = time.perf_counter()
                    out = f()
                    times[name].append(time.perf_counter() - t0)
                    if name == "quantus 0.6":
                        if out["error"]:
                            raise RuntimeError(f"bench flip race: Quantus failed: {out['error']}")
                        quantus_seconds += out["seconds"]  # its own timing, without the pipe
        finally:
            if timer is not None:
                timer.close()
    if quantus_seconds:
        times["quantus 0.6"] = quantus_seconds
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return pd.DataFrame([{"contestant": k, "median_ms": v, "ratio_to_bare": v / med["bare forwards"],
                          "evalxai_speedup": v / med["evalxai"], "forwards": steps, "batch": len(x)}
                         for k, v in med.items()])
