"""What a run will cost, said before the work starts: the forwards and explains it makes, and a rough time.

Counts come from the parameters, per metric and method: each metric's registered ``cost`` gives the images it
forwards and explains per explained image (``evalxai.metrics.registry.Passes``), and each method's explain costs
the gradient passes ``method_cost`` reads from its parameters (Integrated Gradients: ``steps``, SmoothGrad:
``samples``). The time multiplies them by one forward and one gradient pass of the run's model, timed once on a
batch of the run's own inputs (``time_passes``): rough, since chunk sizes, LRP's rules and the machine's load move
the real cost (docs/benchmarks.md: LRP composites took 1.0-2.5 gradient passes on VGG-16 and ResNet-50; here 1.5).
Whatever cannot be counted (a metric without a declared cost, a foreign method) is listed as unknown and left out of
the total. The model's training, the tables and the plots are not part of the estimate.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from evalxai.core.guard import frozen
from evalxai.core.memory import images_per_chunk
from evalxai.methods import get_method
from evalxai.methods.occlusion import window_starts
from evalxai.metrics import get_metric

LRP_PASSES = 2.0  # gradient passes one LRP explain costs (1.7-3.0 measured at 224 px: docs/zoo.md, lrp_epsilon_plus)
DEEPLIFT_PASSES = 2.0  # its multipliers on every activation: 1.65-2.6 gradient passes (docs/benchmarks.md)
TIMED_BATCH = 16  # images per timed call: per-image cost at the batch sizes chunks run at, not a lone image's


@dataclass(frozen=True)
class MethodCost:
    """What one explain of one image costs: ``forwards`` (no gradient) and ``gradient_passes`` (forward + backward)."""
    forwards: float
    gradient_passes: float


def method_cost(method: object, params: Mapping | None, x: torch.Tensor) -> MethodCost | None:
    """The cost of one explain per image of x's shape, from the method's family and parameters: controls nothing,
    occlusion one forward per window (+ x), attention rollout one forward, LRP ``LRP_PASSES`` and DeepLIFT
    ``DEEPLIFT_PASSES`` gradient passes, any other method one; a ``steps`` or ``samples`` parameter (Integrated
    Gradients, SmoothGrad) repeats them. None for a foreign method (a ``_target_`` mapping or a callable)."""
    if not isinstance(method, str):
        return None
    spec = get_method(method)
    p = {**spec.defaults, **dict(params or {})}
    if spec.family == "control":
        return MethodCost(0, 0)
    if spec.family == "attention":
        return MethodCost(1, 0)
    if method == "occlusion":
        h, w = x.shape[-2:]
        windows = len(window_starts(h, int(p["patch"]), int(p["stride"]))) * len(
            window_starts(w, int(p["patch"]), int(p["stride"])))
        return MethodCost(windows + 1, 0)
    per = LRP_PASSES if spec.family == "lrp" else DEEPLIFT_PASSES if method == "deeplift" else 1.0
    return MethodCost(0, per * int(p.get("steps") or p.get("samples") or 1))


@dataclass(frozen=True)
class Timing:
    """Seconds per image of one forward (no gradient) and one gradient pass of the model, timed on ``batch`` images."""
    forward_s: float
    gradient_s: float
    batch: int


def time_passes(model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch: int = TIMED_BATCH) -> Timing:
    """Time one forward and one gradient pass (the target logit's gradient with respect to the input) of ``model``
    on ``batch`` of the run's images (repeated when there are fewer; at most what the memory budget allows), after
    one untimed forward that pays the first call's set-up."""
    batch = max(1, min(batch, images_per_chunk(model, x, "gradient", what="timing the model")))
    reps = math.ceil(batch / len(x))
    xb, tb = x.repeat(reps, *([1] * (x.dim() - 1)))[:batch], target.repeat(reps)[:batch]

    def sync():
        if xb.device.type == "cuda":
            torch.cuda.synchronize(xb.device)

    with frozen(model, warn_train=False):
        with torch.no_grad():
            model(xb)
            sync()
            t0 = time.perf_counter()
            model(xb)
            sync()
            forward = time.perf_counter() - t0
        xg = xb.detach().clone().requires_grad_(True)
        t0 = time.perf_counter()
        out = model(xg)
        torch.autograd.grad(out.gather(1, tb.view(-1, 1)).sum(), xg)
        sync()
        gradient = time.perf_counter() - t0
    return Timing(forward / batch, gradient / batch, batch)


@dataclass
class Row:
    """One metric (or ``(maps)``, the run's own explanations) for one method, over all images: forwards, explains,
    the gradient passes those explains make, the estimated seconds; None where unknown."""
    metric: str
    method: str
    forwards: float | None
    explains: float | None
    gradient_passes: float | None
    seconds: float | None


MAPS = "(maps)"  # the row of the run's own explanation of each image


def _row(metric: str, method: str, n: int, forwards, explains, cost: MethodCost | None, timing: Timing) -> Row:
    f = None if forwards is None else n * forwards
    e = None if explains is None else n * explains
    known = cost is not None or e == 0
    passes = None if e is None or not known else (0.0 if e == 0 else e * cost.gradient_passes)
    extra = 0.0 if e == 0 or cost is None else e * cost.forwards  # forwards inside explains (occlusion)
    seconds = (None if f is None or passes is None else
               (f + extra) * timing.forward_s + passes * timing.gradient_s)
    return Row(metric, method, f, e, passes, seconds)


@dataclass
class Estimate:
    """The cost of a run's explaining and scoring: one ``Row`` per (metric, method), the timing it rests on."""
    n: int
    shape: tuple[int, ...]
    model: str
    timing: Timing
    rows: list[Row]

    def total(self, field: str) -> float:
        return float(sum(getattr(r, field) or 0 for r in self.rows))

    @property
    def seconds(self) -> float:
        return self.total("seconds")

    def unknown(self) -> list[str]:
        """What is left out of the totals, one phrase each."""
        out = []
        for r in self.rows:
            if r.forwards is None or r.explains is None:
                what = " and ".join(k for k in ("forwards", "explains") if getattr(r, k) is None)
                out.append(f"{r.metric} x {r.method}: {what} (no cost declared for these parameters)")
            elif r.seconds is None:
                out.append(f"{r.metric} x {r.method}: the cost of an explain (a foreign method)")
        return out

    def _table(self, key: str) -> list[str]:
        groups: dict[str, list[Row]] = {}
        for r in self.rows:
            groups.setdefault(getattr(r, key), []).append(r)
        width = max(len(key), *(len(k) for k in groups))
        lines = [f"  {key:<{width}}  {'forwards':>9}  {'explains':>9}  {'grad passes':>11}  {'time':>8}"]
        for name, rows in groups.items():
            f, e, g = (_sum([getattr(r, k) for r in rows]) for k in ("forwards", "explains", "gradient_passes"))
            t = duration(sum(r.seconds or 0 for r in rows)) + ("+?" if any(r.seconds is None for r in rows) else "")
            lines.append(f"  {name:<{width}}  {f:>9}  {e:>9}  {g:>11}  {t:>8}")
        return lines

    def describe(self) -> str:
        """The lines the pipeline prints before the work starts."""
        t = self.timing
        shape = "x".join(map(str, self.shape))
        methods = len({r.method for r in self.rows})
        lines = [f"cost estimate (rough): {methods} methods x {self.n} images of {shape}; timed here on {self.model}: "
                 f"one forward {1e3 * t.forward_s:.1f} ms, one gradient pass {1e3 * t.gradient_s:.1f} ms per image "
                 f"(a batch of {t.batch}); an LRP explain counted as {LRP_PASSES} gradient passes",
                 *self._table("metric"), *self._table("method"),
                 f"  total: {self.total('forwards'):,.0f} forwards, {self.total('explains'):,.0f} explains "
                 f"({self.total('gradient_passes'):,.0f} gradient passes): about {duration(self.seconds)}; maps "
                 "found in the attribution cache cost nothing, training, tables, plots and per-call overheads are "
                 "left out (on a small model those overheads take longer than the passes)"]
        lines += [f"  unknown: {u}" for u in self.unknown()]
        return "\n".join(lines)

    def record(self) -> dict:
        """run.json's ``estimate``."""
        return {"rough": True, "seconds": round(self.seconds, 2), "forwards": self.total("forwards"),
                "explains": self.total("explains"), "gradient_passes": self.total("gradient_passes"),
                "forward_ms_per_image": round(1e3 * self.timing.forward_s, 3),
                "gradient_ms_per_image": round(1e3 * self.timing.gradient_s, 3), "timed_batch": self.timing.batch,
                "lrp_gradient_passes": LRP_PASSES, "images": self.n, "shape": list(self.shape),
                "rows": [asdict(r) for r in self.rows], "unknown": self.unknown()}


def _sum(values: list[float | None]) -> str:
    """A column's total; ``+?`` when part of it is unknown."""
    text = f"{sum(v for v in values if v is not None):,.0f}"
    return text + "+?" if None in values else text


def duration(seconds: float) -> str:
    """``"45 s"``, ``"4.6 min"``, ``"2.3 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else "<1 s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_run(model: nn.Module, x: torch.Tensor, plan: Iterable[tuple[str, object, dict, list[tuple[str, dict]]]],
                 timing: Timing, model_name: str = "the model") -> Estimate:
    """The ``Estimate`` of explaining x with every method of ``plan`` and scoring the maps with its metrics.

    plan: (method name, method, its parameters, [(metric, the parameters its call receives), ...]) per method, the
        metric parameters as ``evalxai.binding.bind`` gives them (the pipeline's ``metric_call``), so a metric that
        re-explains is charged what the method it calls costs.
    """
    n = len(x)
    rows = []
    for name, method, params, metrics in plan:
        own = method_cost(method, params, x)
        rows.append(_row(MAPS, name, n, 0, 1, own, timing))
        for metric, mp in metrics:
            passes = get_metric(metric).passes(model, x, mp)
            cost = method_cost(mp["method"], mp.get("method_params"), x) if "method" in mp else None
            rows.append(_row(metric, name, n, passes.forwards, passes.explains, cost, timing))
    return Estimate(n, tuple(x.shape[1:]), model_name, timing, rows)
