"""evalxai against Quantus 0.6 on the batch of tests/fixtures/quantus (``bench_quantus``; same parameters as the
agreement test, see its docstring): ``python -m evalxai.bench --quantus [--quantus-python PY]``. Quantus is not a
dependency: it runs in another Python (``QuantusTimer``), or its recorded times are used."""
from __future__ import annotations

import inspect
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import evalxai
from evalxai.bench.timing import markdown
from evalxai.core.validate import check_logits
from evalxai.metrics import METRICS
from evalxai.runs import allocator

PACKAGE = Path(__file__).resolve().parents[1]
QUANTUS_FIXTURES = PACKAGE.parent / "tests" / "fixtures" / "quantus"
QUANTUS_SCRIPT = PACKAGE / "experiments" / "quantus_reference" / "make_reference.py"
CASE_SCRIPT = QUANTUS_SCRIPT.with_name("time_case.py")
QUANTUS_TARGET = 2.0  # evalxai at least this many times faster than Quantus 0.6 on the same call
QUANTUS_COLUMNS = ["metric", "quantus_class", "evalxai_ms", "quantus_ms", "speedup", "quantus_source",
                   "evalxai_cpu_ms", "quantus_cpu_ms", "cpu_speedup", "calls", "quantus_calls", "note"]


def quantus_fixture(fixtures: Path = QUANTUS_FIXTURES):
    """The Quantus reference case: (model, x, target, attributions, masks) from ``inputs.pt`` (a seeded bias-free
    CNN, 8 inputs 1 x 16 x 16, gradient x input maps, disk masks) and the parsed ``reference.json``."""
    data = torch.load(fixtures / "inputs.pt", weights_only=True)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 3, bias=False))
    model.load_state_dict({k[len("model."):]: v for k, v in data.items() if k.startswith("model.")})
    reference = json.loads((fixtures / "reference.json").read_text())
    return (model.eval(), data["x"], data["target"], data["attributions"], data["masks"]), reference


def evalxai_call(case, entry: dict):
    """``evalxai.score`` of a reference.json entry with its matched parameters (``evalxai_params``); the fixture's
    masks go to metrics that take ``masks``."""
    model, x, t, a, masks = case
    name = entry["evalxai_metric"]
    params = dict(entry["evalxai_params"])
    if "masks" in inspect.signature(METRICS[name].fn).parameters:
        params["masks"] = masks
    return lambda: evalxai.score(model, x, t, a, metric=name, **params)


def _timed(f, repeats: int, budget: float) -> tuple[list[float], list[float]]:
    """Wall and process CPU seconds of up to ``repeats`` calls, fewer once ``budget`` seconds are spent, after one
    untimed call (first-call costs: imports, caches)."""
    f()
    wall, cpu = [], []
    while len(wall) < repeats and (not wall or sum(wall) < budget):
        t0, c0 = time.perf_counter(), time.process_time()
        f()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


class QuantusTimer:
    """One Quantus process (``make_reference.py --time -``, the scratch environment's Python) that times the entries
    it is sent, with this process's thread count: Quantus is not a dependency of evalxai."""

    def __init__(self, python: str, repeats: int, budget: float, argv: list[str] | None = None,
                 same_allocator: bool = False):
        argv = argv or [str(QUANTUS_SCRIPT), "--time", "-", "--repeats", str(repeats), "--budget", str(budget)]
        env = None
        if same_allocator:  # glibc thresholds of evalxai.runs.allocator.tune(), set as the environment sets them
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD),
                   "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD)}
        self._proc = subprocess.Popen([python, *argv, "--threads", str(torch.get_num_threads())],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self._proc.stdout.readline()
        while line and not line.startswith('{"ready"'):  # wait out its imports (skipping anything else printed)
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench --quantus: {python} {QUANTUS_SCRIPT.name} --time - did not start (exit "
                               f"{self._proc.poll()}); is quantus 0.6 installed in that Python?")

    def time(self, name: str) -> dict:
        """One timing line of entry ``name`` (make_reference.py), or of a request dict (time_case.py)."""
        self._proc.stdin.write((name if isinstance(name, str) else json.dumps(name)) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        while line and not line.startswith('{"name"'):  # anything else Quantus printed
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench --quantus: the Quantus process ended (exit {self._proc.poll()}) before timing "
                               f"{name}; run {QUANTUS_SCRIPT.name} --time NAME (or {CASE_SCRIPT.name}) with that "
                               "Python to see why")
        return json.loads(line)

    def close(self):
        self._proc.stdin.close()
        self._proc.wait()


def bench_quantus(quantus_python: str | None = None, repeats: int = 3, budget: float = 20.0,
                  entries: list[str] | None = None, fixtures: Path = QUANTUS_FIXTURES,
                  log=None, timer=_timed) -> pd.DataFrame:
    """evalxai against Quantus 0.6 on the reference batch (8 x 1 x 16 x 16), one row per reference.json entry.

    evalxai: ``evalxai.score`` with the entry's matched parameters, median wall time of up to ``repeats`` calls after
    one untimed call (fewer once ``budget`` seconds are spent). Quantus: with ``quantus_python`` (a Python with
    quantus 0.6 installed), re-timed now in one child process with the same torch thread count, its calls
    interleaved with evalxai's (evalxai, Quantus, evalxai, ...: both under the same load), after an untimed call
    where cheap ("measured"); without it, the one call recorded in reference.json ("recorded": measured once, on a
    loaded machine). speedup = quantus_ms / evalxai_ms (cpu_speedup: the same with process CPU time, less sensitive
    to other jobs); entries whose Quantus call fails or does different work get no speedup and say why (``note``).
    ``timer(f, repeats, budget)`` -> (wall seconds, CPU seconds) times the evalxai calls of the recorded case (tests
    pass a stub)."""
    case, reference = quantus_fixture(fixtures)
    check_logits(case[0], case[1])  # remembered for this x, as in bench_all_metrics
    quantus_timer = QuantusTimer(quantus_python, 1, 0.0) if quantus_python else None  # one call per request
    rows = []
    try:
        for name, entry in reference["metrics"].items():
            if entries and name not in entries:
                continue
            row = dict.fromkeys(QUANTUS_COLUMNS)
            row.update(metric=name, quantus_class=entry["quantus_class"], calls=0, quantus_calls=0)
            notes = []
            f = None
            if entry["timing"]:
                notes.append("not comparable: " + entry["timing"])
            elif entry["evalxai_metric"] not in METRICS:
                notes.append(f"evalxai metric '{entry['evalxai_metric']}' is not registered")
            else:
                f = evalxai_call(case, entry)
            if quantus_timer is None:
                if f is not None:
                    ew, ec = timer(f, repeats, budget)
                error, qw, qc = entry["error"], [entry["seconds"]], [entry["cpu_seconds"]]
                row["quantus_source"] = "recorded"
            else:  # interleaved; Quantus's untimed first call only where cheap
                ew, ec, qw, qc, error = race(f, quantus_timer, name, repeats, budget,
                                             warm_quantus=(entry["seconds"] or 0) < budget / 4)
                row["quantus_source"] = "measured"
            if f is not None and ew:
                row.update(evalxai_ms=1e3 * statistics.median(ew), evalxai_cpu_ms=1e3 * statistics.median(ec),
                           calls=len(ew))
            wall, cpu = qw, qc
            if error:
                notes.append("Quantus fails: " + error.splitlines()[0][:160])
            elif wall and wall[0] is not None:
                row.update(quantus_ms=1e3 * statistics.median(wall), quantus_cpu_ms=1e3 * statistics.median(cpu),
                           quantus_calls=len(wall))
            if row["evalxai_ms"] is not None and row["quantus_ms"] is not None and not notes:
                row["speedup"] = row["quantus_ms"] / row["evalxai_ms"]
                row["cpu_speedup"] = row["quantus_cpu_ms"] / row["evalxai_cpu_ms"]
            row["note"] = "; ".join(notes) or None
            rows.append(row)
            if log:
                log(f"{name:34s} evalxai {row['evalxai_ms']} ms  quantus {row['quantus_ms']} ms  {row['note'] or ''}")
    finally:
        if quantus_timer is not None:
            quantus_timer.close()
    return pd.DataFrame(rows, columns=QUANTUS_COLUMNS)


def quantus_report(df: pd.DataFrame, quantus_python: str | None, repeats: int) -> str:
    """The Markdown text of ``bench_quantus``'s table, with how the Quantus times were taken."""
    source = (f"re-timed now with {quantus_python} (one child process, same thread count), its calls interleaved "
              f"with evalxai's on each entry" if quantus_python else
              "RECORDED in tests/fixtures/quantus/reference.json (one call each, on a loaded machine); pass "
              "--quantus-python to re-time Quantus now")
    ok = df["speedup"].notna()
    summary = (f"{int((df.loc[ok, 'speedup'] >= QUANTUS_TARGET).sum())} of {int(ok.sum())} comparable entries are "
               f">= {QUANTUS_TARGET:g}x faster than Quantus")
    shown = df.copy()
    for c in ("evalxai_ms", "quantus_ms", "evalxai_cpu_ms", "quantus_cpu_ms"):
        shown[c] = shown[c].map(lambda v: None if v is None or pd.isna(v) else float(f"{v:.3g}"))
    for c in ("speedup", "cpu_speedup"):
        shown[c] = shown[c].map(lambda v: None if v is None or pd.isna(v) else round(v, 2))
    return (f"evalxai vs Quantus 0.6 on the same batch (tests/fixtures/quantus: 8 x 1 x 16 x 16, bias-free CNN, "
            f"gradient x input maps), matched parameters from reference.json; median of up to {repeats} calls each "
            f"(fewer once the budget is spent: see calls), torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads. Quantus times: {source}. "
            f"ms = wall milliseconds per call on the batch; cpu_ms = process CPU. {summary}.\n\n"
            + markdown(shown) + "\n")


# The realistic case (issue 29): a ResNet-18 shape at 64 x 64, batch 8, random weights. The fixture's parameters
# are scaled to the image so that both libraries make the same number of forwards (Quantus gets the maps summed
# over the channels, so both remove whole pixels: 4 096 features per image): entry -> (Quantus init overrides,
# evalxai parameter overrides).
REALISTIC = {
    "TopKIntersection": ({"k": 320}, {"k": 320}),
    "FaithfulnessEstimate": ({"features_in_step": 64}, {"patch_size": 8}),  # 64 forwards
    "Monotonicity": ({"features_in_step": 128}, {"per_step": 128}),  # 32 steps
    "PixelFlipping": ({"features_in_step": 128}, {"per_step": 128}),
    "PixelFlipping_auc": ({"features_in_step": 128}, {"per_step": 128}),
    "RegionPerturbation": ({"patch_size": 8, "regions_evaluation": 32}, {"patch_size": 8, "steps": 32}),
    "RegionPerturbation_lerf": ({"patch_size": 8, "regions_evaluation": 32}, {"patch_size": 8, "steps": 32}),
    "Selectivity": ({"patch_size": 16}, {"patch_size": 16, "steps": 16}),
    "NonSensitivity": ({"features_in_step": 64}, {"patch_size": 8}),  # Quantus 0.6 fails on 3 channels (either map)
    "Continuity": ({"nr_steps": 11}, {"shift": 5}),
    "FaithfulnessCorrelation": ({"nr_runs": 32, "subset_size": 64}, {"runs": 32, "subset_size": 64}),
    "MonotonicityCorrelation": ({"nr_samples": 5, "features_in_step": 256}, {"samples": 5, "patch_size": 16}),
    "RandomLogit": ({"num_classes": 10}, {}),
}


def resnet18_case(batch: int = 8, size: int = 64, seed: int = 0):
    """(model, x, target, attributions, masks): ``standalone.ResNet18`` with seeded random weights, ``batch`` seeded
    images 3 x size x size in [0, 1], the predicted classes, gradient x input maps and a centred disk as masks."""
    from evalxai.bench.standalone import ResNet18

    torch.manual_seed(seed)
    model = ResNet18().eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, 3, size, size, generator=g)
    with torch.no_grad():
        target = model(x).argmax(1)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).gather(1, target.view(-1, 1)).sum(), xg)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 4) ** 2).expand(batch, size, size).clone()
    return model, x, target, (grad * x).detach(), masks


def write_case(path: Path, arch: str, case) -> Path:
    """The case as time_case.py reads it: architecture name (``standalone.ARCHITECTURES``), state dict, inputs."""
    model, x, t, a, masks = case
    torch.save({"arch": arch, "state": model.state_dict(), "x": x, "target": t, "attributions": a,
                "masks": masks}, path)
    return path


def quantus_request(name: str, entry: dict, init: dict | None = None) -> dict:
    """time_case.py's request for a reference.json entry: its class, constructor (with ``init`` overrides) and call,
    and the map it reads (x-shaped where Quantus re-explains, else the map summed over channels)."""
    a = "attributions" if "explain_func" in entry["call"] else {"attributions": "summed"}.get(entry["a_batch"],
                                                                                              entry["a_batch"])
    return {"name": name, "cls": entry["quantus_class"], "init": {**entry["init"], **(init or {})},
            "call": entry["call"], "a": a}


def race(f, quantus_timer, request, repeats: int, budget: float,
         warm_quantus: bool = True) -> tuple[list, list, list, list, str | None]:
    """Interleaved calls (evalxai, Quantus, evalxai, ...: the same moment, the same load) after one untimed call of
    each (of Quantus only with ``warm_quantus``): evalxai wall and CPU seconds, Quantus wall and CPU seconds,
    Quantus's error."""
    ew, ec, qw, qc, error = [], [], [], [], None
    if f is not None:
        f()
    if warm_quantus:
        error = quantus_timer.time(request)["error"]
    while len(qw) < repeats and not error and (not qw or sum(ew) + sum(qw) < budget):
        if f is not None:
            t0, c0 = time.perf_counter(), time.process_time()
            f()
            ew.append(time.perf_counter() - t0)
            ec.append(time.process_time() - c0)
        q = quantus_timer.time(request)
        error = q["error"]
        qw += q["seconds"]
        qc += q["cpu_seconds"]
    return ew, ec, qw, qc, error


def bench_quantus_realistic(quantus_python: str, repeats: int = 3, budget: float = 60.0, batch: int = 8,
                            size: int = 64, entries: list[str] | None = None, fixtures: Path = QUANTUS_FIXTURES,
                            log=None) -> pd.DataFrame:
    """evalxai against Quantus 0.6 on a realistic model (``resnet18_case``: ResNet-18 shape, 3 x 64 x 64, batch 8,
    random weights), every comparable reference.json entry with the parameters of ``REALISTIC`` (the same forwards on
    both sides), timed interleaved in one Quantus process (time_case.py) with this process's thread count; columns
    as ``bench_quantus``."""
    import tempfile

    _, reference = quantus_fixture(fixtures)
    case = resnet18_case(batch, size)
    check_logits(case[0], case[1])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_case(Path(tmp) / "case.pt", "resnet18", case)
        timer = QuantusTimer(quantus_python, 1, 0.0, argv=[str(CASE_SCRIPT), str(path)])
        try:
            for name, entry in reference["metrics"].items():
                if (entries and name not in entries) or entry["timing"]:
                    continue
                q_init, e_params = REALISTIC.get(name, ({}, {}))
                entry = {**entry, "evalxai_params": {**entry["evalxai_params"], **e_params}}
                f = evalxai_call(case, entry) if entry["evalxai_metric"] in METRICS else None
                ew, ec, qw, qc, error = race(f, timer, quantus_request(name, entry, q_init), repeats, budget)
                rows.append(_row(name, entry, ew, ec, qw, qc, error))
                if log:
                    r = rows[-1]
                    log(f"{name:34s} evalxai {r['evalxai_ms']} ms  quantus {r['quantus_ms']} ms  {r['note'] or ''}")
        finally:
            timer.close()
    return pd.DataFrame(rows, columns=QUANTUS_COLUMNS)


def _row(name: str, entry: dict, ew, ec, qw, qc, error) -> dict:
    row = dict.fromkeys(QUANTUS_COLUMNS)
    row.update(metric=name, quantus_class=entry["quantus_class"], quantus_source="measured", calls=len(ew),
               quantus_calls=len(qw))
    if ew:
        row.update(evalxai_ms=1e3 * statistics.median(ew), evalxai_cpu_ms=1e3 * statistics.median(ec))
    if error:
        row["note"] = "Quantus fails: " + error.splitlines()[0][:160]
    elif qw:
        row.update(quantus_ms=1e3 * statistics.median(qw), quantus_cpu_ms=1e3 * statistics.median(qc))
    if row["evalxai_ms"] is not None and row["quantus_ms"] is not None:
        row["speedup"] = row["quantus_ms"] / row["evalxai_ms"]
        row["cpu_speedup"] = row["quantus_cpu_ms"] / row["evalxai_cpu_ms"]
    return row
