"""Benchmark: each method's time per batch divided by its bare cost, k plain gradients (forward + backward) on the
same batch, k = 1 except for integrated_gradients (steps) and smoothgrad (samples), both timed with k = 8.

    python -m evalxai.bench [--models lenet vgg_bn] [--batch 128] [--repeats 15] [--methods ...] [--out DIR]
    python -m evalxai.bench --imagenet [--models vgg16 resnet50] [--device cuda] [--memory-budget 1.5GB]   # 224^2
    python -m evalxai.bench --api        # LRP / gradient from evalxai.explain, with and without tune_allocator()
    python -m evalxai.bench --vit        # attnlrp / cp_lrp on vit_tiny, time / one gradient pass (target 1.5x)

Timings are interleaved (every method once per round, rounds repeated) and medians are taken, so drift on a
shared machine hits all methods alike. Method timings use random inputs and randomly initialised models (their
cost does not depend on either); metric timings use real MNIST images and the trained model, each metric against
the forwards and explains it makes (``evalxai.metric_bench``).

The 224x224 case (``bench_imagenet``) uses a VGG-16 (with BatchNorm, torchvision's ``vgg16_bn`` layout) and a
ResNet-50 defined here (no torchvision), at batch 8, on the GPU when one is present; it also records each method's
peak memory (``peak_memory``).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import evalxai
import evalxai.metrics
from evalxai import allocator
from evalxai.memory import budget as memory_budget_bytes
from evalxai.memory import images_per_chunk
from evalxai.methods import METHODS
from evalxai.methods.gradient import target_grad
from evalxai.methods.guard import frozen
from evalxai.methods.lrp import COMPOSITES
from evalxai.metric_bench import bench_all_metrics
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


def _mnist_case(model_name: str, batch: int):
    from evalxai.reproduce import dataset_and_model

    _, dataset, model = dataset_and_model(["experiment=mnist_lrp", f"model={model_name}"])
    x = dataset.x_test[:batch]
    with torch.no_grad():
        t = model(x).argmax(1)
    return model, x, t, dataset.pool()


def _interleaved(calls: dict, repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Median-ready timings: every call once per round (after a warm-up round, unless the caller ran one),
    ``repeats`` rounds."""
    for f in calls.values() if warmup else ():
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


# ---- ImageNet size: 3x224x224 inputs, 1000 classes ------------------------------------------------------------

VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def vgg16(num_classes: int = 1000, width: float = 1.0) -> nn.Sequential:
    """VGG-16 with BatchNorm after every convolution (torchvision's ``vgg16_bn`` layout: 13 conv-BN-ReLU, 5 max-pools,
    adaptive average pooling to 7x7, three dense layers with dropout). ``width`` scales every channel count (tests)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            c = _scaled(v, width)
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
    hidden = _scaled(4096, width)
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                          nn.Linear(c_in * 49, hidden), nn.ReLU(inplace=True), nn.Dropout(),
                          nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(),
                          nn.Linear(hidden, num_classes))
    return _init(model)


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1, 3x3 (strided), 1x1 (4x the width) convolutions with BatchNorm, in-place ReLU, and
    ``out += identity`` (a 1x1 strided projection where the shape changes)."""

    def __init__(self, c_in: int, planes: int, stride: int = 1):
        super().__init__()
        c_out = 4 * planes
        self.conv1, self.bn1 = nn.Conv2d(c_in, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    """ResNet-50 (torchvision's layout): 7x7/2 stem, max-pool, bottleneck stages [3, 4, 6, 3], global average
    pooling, one dense layer. ``width`` scales every channel count (tests)."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0, blocks=(3, 4, 6, 3)):
        super().__init__()
        c = _scaled(64, width)
        self.conv1, self.bn1 = nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        for i, n in enumerate(blocks):
            planes = _scaled(64 * 2 ** i, width)
            stage = []
            for j in range(n):
                stage.append(Bottleneck(c, planes, 2 if i > 0 and j == 0 else 1))
                c = 4 * planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init(model: nn.Module) -> nn.Module:
    """torchvision's initialisation (He for convolutions, N(0, 0.01) for dense layers; BatchNorm statistics left at
    mean 0, variance 1), so that activations keep their scale through the random network."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


IMAGENET_MODELS = {"vgg16": vgg16, "resnet50": ResNet50}
# gradient through evalxai.explain (the plain pass is the reference), the two multi-pass methods, every composite
IMAGENET_METHODS = ("gradient", "integrated_gradients", "smoothgrad", *COMPOSITES)
LRP_TARGET_224 = 1.5  # issue: every LRP composite within 1.5 gradient passes at 224x224


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def peak_memory(call, device: torch.device) -> tuple[float | None, float | None]:
    """Run ``call`` once; return (peak MB, peak MB above the memory held before the call).

    CUDA: torch's allocator statistics (``max_memory_allocated`` after ``reset_peak_memory_stats``): tensor memory
    on the GPU, model included. CPU (Linux): the process's peak resident set, with every block of 64 KiB or more
    mapped on its own for the call (``allocator.exact_resident_set``: the resident set follows the live tensors,
    not the heap's layout) and freed heap memory handed back to the OS first (``allocator.release``); the kernel's
    high-water mark is reset (``/proc/self/clear_refs``) and read (``VmHWM``) after the call. The peak includes the
    model, the inputs and torch itself; the second figure is what the method added. (None, None) where the kernel
    does not offer this."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak / 2**20, (peak - before) / 2**20
    with allocator.exact_resident_set():
        allocator.release()
        try:
            before = _status_mb("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            call()
            return None, None
        call()
        peak = _status_mb("VmHWM")
    return peak, peak - before


def bench_imagenet(model_name: str, methods=IMAGENET_METHODS, batch: int = 8, repeats: int = 3, device: str = "auto",
                   size: int = 224, width: float = 1.0, log=None, memory_budget=None) -> pd.DataFrame:
    """Time per image, ratio to a plain gradient pass (per pass for IG / SmoothGrad, run with 8 steps / samples in
    chunks of the batch) and peak memory of each method on a random-weight ``model_name`` at ``size`` x ``size``.

    The first round runs every call once and measures its peak memory (``peak_memory``; it is also the warm-up);
    a method that raises is recorded with its error and left out of the timed rounds. ``memory_budget`` (e.g.
    "1.5GB"; default: evalxai's own, half the available memory) applies to every call; ``within_budget`` says
    whether what a call added to the process stayed within the budget + 10 %. ``size`` and ``width`` shrink the
    case for tests."""
    with evalxai.memory_budget(memory_budget) if memory_budget is not None else contextlib.nullcontext():
        return _bench_imagenet(model_name, methods, batch, repeats, resolve_device(device), size, width, log)


def _bench_imagenet(model_name, methods, batch, repeats, dev, size, width, log) -> pd.DataFrame:
    torch.manual_seed(0)
    model = IMAGENET_MODELS[model_name](width=width).eval().to(dev)
    model_mb = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20
    x = torch.rand(batch, 3, size, size, device=dev)
    t = torch.randint(0, 1000, (batch,), device=dev)

    def synced(f):
        if dev.type != "cuda":
            return f
        return lambda: (f(), torch.cuda.synchronize(dev))

    budget_mb = memory_budget_bytes(dev) / 2**20
    try:  # explain's chunks (the budget's)
        per_call = min(batch, images_per_chunk(model, x, "lrp", None, "explaining"))
    except MemoryError:  # not even one image fits: every explain call fails, and says so in its row
        per_call = None
    calls = {"<gradient pass>": synced(lambda: _plain(model, x, t))}
    calls["<gradient pass>"]()  # one-time costs (thread pools, kernel caches) would read as its peak memory
    for name in methods:
        params = {}
        if name in UNITS:
            params[UNITS[name]] = BENCH_UNITS
            if "batch_size" in METHODS[name].defaults:  # one pass over the batch per chunk: memory of one gradient
                params["batch_size"] = batch
        calls[name] = synced(lambda name=name, params=params: evalxai.explain(model, x, t, method=name, **params))
    memory, errors = {}, {}
    for name in list(calls):
        t0 = time.perf_counter()
        try:
            memory[name] = peak_memory(calls[name], dev)
        except Exception as err:  # noqa: BLE001 - a method that fails on the model is a finding, not a crash
            errors[name] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            del calls[name]
        if log is not None:
            log(f"  {model_name} {name}: {time.perf_counter() - t0:.1f} s" + (f" FAILED {errors[name]}"
                                                                               if name in errors else ""))
    times = _interleaved(calls, repeats, warmup=False)
    base = statistics.median(times["<gradient pass>"])
    rows = []
    for name in ["<gradient pass>", *methods]:
        row = {"model": model_name, "device": dev.type, "size": size, "batch": batch, "method": name,
               "model_mb": round(model_mb, 1), "budget_mb": round(budget_mb),
               "images_per_call": batch if name == "<gradient pass>" else per_call}
        if name in times:
            med = statistics.median(times[name])
            n_units = units(name) if name in METHODS else 1
            row.update(median_ms=1e3 * med, ms_per_image=1e3 * med / batch, gradient_passes=n_units,
                       ratio=med / base / n_units)
        if name in memory and memory[name][0] is not None:
            row.update(peak_mb=memory[name][0], extra_mb=memory[name][1],
                       within_budget=bool(memory[name][1] <= 1.1 * budget_mb))
        row["target"] = LRP_TARGET_224 if name in COMPOSITES else TARGETS.get(name)
        row["error"] = errors.get(name)
        rows.append(row)
    df = pd.DataFrame(rows)
    df["meets_target"] = [None if pd.isna(tg) or pd.isna(r) else bool(r <= tg)
                          for r, tg in zip(df["ratio"], df["target"])]
    return df


IMAGENET_COLUMNS = ["model", "method", "images_per_call", "ms_per_image", "ratio", "target", "meets_target",
                    "peak_mb", "extra_mb", "within_budget", "error"]


def imagenet_report(df: pd.DataFrame, seconds: float, repeats: int) -> str:
    """The Markdown text of the 224 case: one table per model."""
    dev = df["device"].iloc[0]
    how = ("torch.cuda.max_memory_allocated (tensors on the GPU, model included)" if dev == "cuda" else
           "peak resident set of the bench process during the method's first call (VmHWM reset after handing freed "
           "heap back to the OS; model, inputs and torch included), extra = above the resident set before the call")
    text = (f"224 case: {int(df['size'].iloc[0])}x{int(df['size'].iloc[0])} inputs, batch {int(df['batch'].iloc[0])}, "
            f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads; time per image and ratio "
            f"to a plain gradient pass (per pass for integrated_gradients / smoothgrad: {BENCH_UNITS} steps / samples "
            f"in chunks of the batch), median of {repeats} interleaved rounds after a warm-up round that measures "
            f"peak memory: {how}; within_budget: extra <= 1.1 x the memory budget of {df['budget_mb'].iloc[0]:.0f} MB; "
            "images_per_call: the chunks evalxai.explain cuts the batch into to fit the budget. "
            f"Total {seconds / 60:.1f} min.\n")
    for model_name, part in df.groupby("model", sort=False):
        shown = part.reindex(columns=IMAGENET_COLUMNS).drop(columns="model").round(2)
        shown["ratio"] = part["ratio"].round(3)  # meets_target compares the unrounded ratio
        shown = shown.drop(columns=[c for c in ("within_budget", "error") if shown[c].isna().all()])
        text += (f"\n{model_name} (random weights, parameters and buffers {part['model_mb'].iloc[0]:.0f} MB)\n\n"
                 + markdown(shown) + "\n")
    return text


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
    calls = {"<gradient pass>": lambda: _plain(model, x, t)}
    calls.update({m: lambda m=m: evalxai.explain(model, x, t, method=m) for m in API_METHODS})
    times = {k: statistics.median(v) for k, v in _interleaved(calls, repeats).items()}
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
            code = ("import json, sys; from evalxai.bench import api_child; "
                    f"print('API_RESULT', json.dumps(api_child({model_name!r}, {batch}, {repeats}, {tune})))")
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env=env if tune else {**env, "EVALXAI_MALLOC": "default"})
            if res.returncode != 0:
                raise RuntimeError(f"API bench child failed: {res.stderr.strip().splitlines()[-1:]}")
            line = next(ln for ln in res.stdout.splitlines() if ln.startswith("API_RESULT "))
            rows.append(json.loads(line.split(" ", 1)[1]))
    return pd.DataFrame(rows)


VIT_METHODS = ("attnlrp", "cp_lrp", "lrp_epsilon", "gradient_x_input", "attention_rollout")
VIT_TARGET = 1.5  # attnlrp / cp_lrp time over one gradient pass (LXT's AttnLRP costs about one gradient x input)


def bench_vit(methods=VIT_METHODS, batch: int = 128, repeats: int = 7) -> pd.DataFrame:
    """vit_tiny (random weights, 1x28x28, batch ``batch``): each method's time per batch / one plain gradient pass
    (interleaved medians, as ``bench_methods``); attnlrp and cp_lrp are held to ``VIT_TARGET``."""
    df = bench_methods("vit_tiny", list(methods), batch, repeats)
    df.loc[df["method"].isin(["attnlrp", "cp_lrp"]), "target"] = VIT_TARGET
    df["meets_target"] = [None if pd.isna(tg) else bool(r <= tg) for r, tg in zip(df["ratio"], df["target"])]
    return df


def _main_vit(args, out: Path) -> pd.DataFrame:
    methods = args.methods or list(VIT_METHODS)
    batch, repeats = args.batch or 128, args.repeats or 7
    df = bench_vit(methods, batch, repeats)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench_vit.csv", index=False)
    text = (f"vit_tiny (patch 7, width 64, 3 blocks; random weights), batch {batch}: time per batch / one plain "
            f"gradient pass, median of {repeats} interleaved rounds, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads\n\n"
            + markdown(df[["method", "median_ms", "ratio", "target", "meets_target"]].round(2)) + "\n")
    (out / "bench_vit.md").write_text(text)
    print(text)
    return df


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
    p.add_argument("--models", nargs="+", default=None,
                   help="default: lenet vgg_bn; with --imagenet: vgg16 resnet50; with --api: lenet vgg_bn")
    p.add_argument("--batch", type=int, default=None, help="default: 128; with --imagenet: 8")
    p.add_argument("--repeats", type=int, default=None, help="default: 7; with --imagenet: 3; with --api: 15")
    p.add_argument("--methods", nargs="+", default=None,
                   help="default: every method but occlusion (one forward per window: ~100 gradient passes); with "
                        "--imagenet: gradient, integrated_gradients, smoothgrad and every LRP composite")
    p.add_argument("--metrics", nargs="*", default=["all"],
                   help="metrics to time on lenet against the passes they make (default: all; none: skip)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end mnist_lrp runs (cold and warm)")
    p.add_argument("--imagenet", action="store_true",
                   help="run the 224x224 case instead (VGG-16 and ResNet-50, random weights; ~10 min on 2 CPU cores)")
    p.add_argument("--device", default="auto", help="device of the 224 case: auto (cuda when available), cpu, cuda")
    p.add_argument("--memory-budget", default=None, help="memory budget of the 224 case (e.g. 1.5GB; default: ours)")
    p.add_argument("--api", action="store_true",
                   help="instead: LRP / gradient ratios from evalxai.explain in fresh processes, with and without "
                        "evalxai.tune_allocator()")
    p.add_argument("--vit", action="store_true",
                   help="instead: attnlrp / cp_lrp (and --methods) on vit_tiny, time / one gradient pass (target 1.5x)")
    p.add_argument("--quantus", action="store_true",
                   help="instead: evalxai vs Quantus 0.6 on the batch of tests/fixtures/quantus (matched parameters)")
    p.add_argument("--quantus-python", default=None,
                   help="with --quantus: a Python with quantus 0.6 installed, to re-time Quantus now (default: the "
                        "times recorded in reference.json)")
    p.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)  # tests: smaller 224-case models
    p.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="results/bench")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.api:
        return _main_api(args, out)
    if args.quantus:  # before tune(): both processes on glibc's default allocator
        return _main_quantus(args, out)
    tuned = allocator.tune()  # as the CLI does: baseline and methods run under the same allocator
    if args.vit:
        return _main_vit(args, out)
    if args.imagenet:
        return _main_imagenet(args, p, out)
    models = args.models or ["lenet", "vgg_bn"]
    batch = args.batch or 128
    repeats = args.repeats or 7
    methods = args.methods or sorted(m for m in METHODS if m != "occlusion")
    metrics = sorted(evalxai.metrics.METRICS) if args.metrics == ["all"] else args.metrics
    unknown = [m for m in methods if m not in METHODS] + [m for m in metrics if m not in evalxai.metrics.METRICS]
    if unknown:
        p.error(f"unknown methods/metrics {unknown}: choose from {sorted(METHODS)} / "
                f"{sorted(evalxai.metrics.METRICS)}")
    # End to end first: the child processes then share the machine with a small parent, not with one that holds
    # the memory of vgg_bn's batched Integrated Gradients (with it, a warm run read 55 s instead of 25 s here).
    e2e = None if args.no_e2e else bench_end_to_end()
    df = pd.concat([bench_methods(m, methods, batch, repeats) for m in models])
    df["meets_target"] = [None if pd.isna(tg) else bool(r <= tg) for r, tg in zip(df["ratio"], df["target"])]
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench.csv", index=False)
    table = df.pivot(index="method", columns="model", values="ratio").round(2)
    table["target"] = [TARGETS.get(m, "") for m in table.index]
    text = (f"Methods: time per batch of {batch} / k plain gradient passes (k = {BENCH_UNITS} for "
            f"integrated_gradients and smoothgrad, run with steps / samples = {BENCH_UNITS}, else 1; "
            f"median of {repeats} interleaved rounds, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"allocator {'tuned' if tuned else 'default'})\n\n" + markdown(table.reset_index()) + "\n")
    if metrics:
        mdf = bench_all_metrics(*_mnist_case("lenet", batch), metrics, repeats)
        mdf.to_csv(out / "bench_metrics.csv", index=False)
        text += (f"\nMetrics (lenet, lrp_epsilon_plus maps, batch {batch}): time / bare cost, the forwards and "
                 "explains each metric makes (counted, per image) at the time of one batch forward / explain\n\n"
                 + markdown(mdf.round(2)) + "\n")
    if e2e is not None:
        e2e.to_csv(out / "bench_e2e.csv", index=False)
        text += ("\nEnd to end (`python -m evalxai experiment=mnist_lrp`, wall time; peak resident memory of the "
                 "run, target 2 GB)\n\n" + markdown(e2e) + "\n")
    (out / "bench.md").write_text(text)
    print(text)
    return df


def _main_imagenet(args, p, out: Path) -> pd.DataFrame:
    models = args.models or list(IMAGENET_MODELS)
    methods = args.methods or list(IMAGENET_METHODS)
    unknown = [m for m in models if m not in IMAGENET_MODELS] + [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown models/methods {unknown}: choose from {sorted(IMAGENET_MODELS)} / {sorted(METHODS)}")
    batch, repeats = args.batch or 8, args.repeats or 3
    dev = resolve_device(args.device)
    print(f"224 case on {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                                  f" ({torch.get_num_threads()} threads)"), flush=True)
    t0 = time.perf_counter()
    df = pd.concat([bench_imagenet(m, methods, batch, repeats, str(dev), args.size, args.width,
                                   log=lambda line: print(line, file=sys.stderr, flush=True),
                                   memory_budget=args.memory_budget) for m in models])
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench_imagenet.csv", index=False)
    text = imagenet_report(df, seconds, repeats)
    (out / "bench_imagenet.md").write_text(text)
    print(text)
    return df


def _main_quantus(args, out: Path) -> pd.DataFrame:
    from evalxai.metric_bench import bench_quantus, quantus_report

    repeats = args.repeats or 3
    df = bench_quantus(args.quantus_python, repeats, log=lambda line: print(line, file=sys.stderr, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench_quantus.csv", index=False)
    text = quantus_report(df, args.quantus_python, repeats)
    (out / "bench_quantus.md").write_text(text)
    print(text)
    return df


def _main_api(args, out: Path) -> pd.DataFrame:
    df = bench_api(args.models or ["lenet", "vgg_bn"], args.batch or 128, args.repeats or 15)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench_api.csv", index=False)
    shown = df.round(2)
    text = (f"evalxai.explain in a plain Python process (batch {args.batch or 128}, median of "
            f"{args.repeats or 15} interleaved rounds): median times (ms) and LRP time / plain gradient time (method "
            "columns), with glibc's default allocator and after evalxai.tune_allocator()\n\n" + markdown(shown) + "\n")
    (out / "bench_api.md").write_text(text)
    print(text)
    return df


if __name__ == "__main__":
    main()
