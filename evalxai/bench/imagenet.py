"""The 224x224 case: a VGG-16 (with BatchNorm, torchvision's ``vgg16_bn`` layout) and a ResNet-50 defined here (no
torchvision), random weights, 3x224x224 inputs, 1000 classes, batch 8, on the GPU when one is present. Each method's
time per image, its ratio to a plain gradient pass, and its peak memory (``peak_memory``)."""
from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time

import pandas as pd
import torch
from torch import nn

import evalxai
from evalxai.bench.methods import BENCH_UNITS, TARGETS, UNITS, units
from evalxai.bench.timing import gradient_pass, interleaved, markdown
from evalxai.core.memory import budget as memory_budget_bytes
from evalxai.core.memory import images_per_chunk
from evalxai.methods import METHODS
from evalxai.methods.lrp import COMPOSITES
from evalxai.runs import allocator

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


def torchvision_error() -> str | None:
    """Why torchvision does not import here ("Type: message"), or None where it does."""
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # noqa: BLE001 - a CUDA build next to the CPU wheel fails in many ways
        return f"{type(err).__name__}: {err}"
    return None


def _torchvision(arch: str):
    """torchvision's ``arch`` with random weights (its own initialisation), for the issue-29 targets, which name
    torchvision's VGG-16 (no BatchNorm) and ResNet-50; torchvision is imported only here (the reference environment)."""

    def build(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
        if width != 1.0:
            raise ValueError(f"torchvision_{arch} has no width={width}: only the models defined here scale")
        import torchvision  # torchvision_error() says where it does not import

        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)

    return build


IMAGENET_MODELS = {"vgg16": vgg16, "resnet50": ResNet50,
                   "torchvision_vgg16": _torchvision("vgg16"), "torchvision_resnet50": _torchvision("resnet50")}
IMAGENET_DEFAULT_MODELS = ("vgg16", "resnet50")
# gradient through evalxai.explain (the plain pass is the reference), the two multi-pass methods, every composite
IMAGENET_METHODS = ("gradient", "integrated_gradients", "smoothgrad", *COMPOSITES)
# Issue 29: the composites at their convolution count (plain gradient: forward + input gradient = 2 per layer; LRP-0/
# epsilon the same; z+ and gamma behind a ReLU one more forward; alpha-beta two signed forwards and two backwards)
LRP_TARGETS_224 = {"lrp_0": 1.15, "lrp_epsilon": 1.15, "lrp_epsilon_plus": 1.6, "lrp_epsilon_plus_flat": 1.6,
                   "lrp_epsilon_gamma_box": 1.6, "lrp_epsilon_alpha2beta1": 2.1}


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
    calls = {"<gradient pass>": synced(lambda: gradient_pass(model, x, t))}
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
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    times = interleaved(calls, repeats, warmup=False)
    load = None if load is None else max(load, os.getloadavg()[0])  # the higher of before and after the rounds
    base = statistics.median(times["<gradient pass>"])
    rows = []
    for name in ["<gradient pass>", *methods]:
        row = {"model": model_name, "device": dev.type, "size": size, "batch": batch, "method": name,
               "model_mb": round(model_mb, 1), "budget_mb": round(budget_mb),
               "images_per_call": batch if name == "<gradient pass>" else per_call, "load": load}
        if name in times:
            med = statistics.median(times[name])
            n_units = units(name) if name in METHODS else 1
            row.update(median_ms=1e3 * med, ms_per_image=1e3 * med / batch, gradient_passes=n_units,
                       ratio=med / base / n_units)
        if name in memory and memory[name][0] is not None:
            row.update(peak_mb=memory[name][0], extra_mb=memory[name][1],
                       within_budget=bool(memory[name][1] <= 1.1 * budget_mb))
        row["target"] = LRP_TARGETS_224.get(name) if name in COMPOSITES else TARGETS.get(name)
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
            f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
            f"{df['load'].max():.1f} on {os.cpu_count()} cores; time per image and ratio "
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
