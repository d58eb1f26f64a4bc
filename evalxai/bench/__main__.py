"""``python -m evalxai.bench`` (``evalxai bench``): run the benches and write their CSV and Markdown tables into
``--out`` (default results/bench). See ``evalxai.bench`` for what each flag measures."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import evalxai
from evalxai.bench import __doc__ as BENCH_DOC
from evalxai.bench.end_to_end import bench_end_to_end
from evalxai.bench.imagenet import (
    IMAGENET_DEFAULT_MODELS,
    IMAGENET_METHODS,
    IMAGENET_MODELS,
    bench_imagenet,
    imagenet_report,
    resolve_device,
    torchvision_error,
)
from evalxai.bench.methods import BENCH_UNITS, TARGETS, VIT_METHODS, bench_api, bench_methods, bench_vit
from evalxai.bench.metrics import bench_all_metrics, bench_flip_race, image_metrics, mnist_case
from evalxai.bench.quantus import bench_quantus, bench_quantus_realistic, quantus_report
from evalxai.bench.targets import TARGET_COMPOSITES, target_rows
from evalxai.bench.timing import markdown
from evalxai.methods import METHODS
from evalxai.metrics import METRICS
from evalxai.runs import allocator


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _main_zoo(args, out: Path) -> pd.DataFrame:
    from evalxai.bench.zoo import bench_zoo

    table = bench_zoo(args.zoo_models, args.zoo_library, size=args.zoo_size, timing=not args.zoo_no_timing,
                      log=log)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"zoo_{args.zoo_library}_{args.zoo_size}"
    table.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(markdown(table.drop(columns=["trace"], errors="ignore")) + "\n")
    print(f"wrote {stem}.csv and {stem}.md")
    return table


def main(argv=None) -> pd.DataFrame:
    prog = "python -m evalxai.bench" if sys.argv[0].endswith("__main__.py") else None  # else: evalxai bench
    p = argparse.ArgumentParser(prog=prog, description=BENCH_DOC.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None,
                   help="default: lenet vgg_bn; with --imagenet: vgg16 resnet50 (also torchvision_vgg16 "
                        "torchvision_resnet50, where torchvision imports); with --api: lenet vgg_bn")
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
                        "times recorded in reference.json); in the default run: Quantus joins the pixel-flipping race")
    p.add_argument("--quantus-model", default="fixture", choices=["fixture", "resnet18"],
                   help="with --quantus: the fixture CNN (default) or a ResNet-18 shape at --size 64 (batch --batch 8, "
                        "random weights; needs --quantus-python)")
    p.add_argument("--no-flip", action="store_true",
                   help="skip the pixel-flipping race (LeNet, 32 MNIST images, 49 steps of 16 pixels: time / its bare "
                        "per-step forwards, and against Quantus with --quantus-python)")
    p.add_argument("--zoo", action="store_true",
                   help="instead: the coverage table of the torchvision (or --zoo-library timm) classifiers: "
                        "composites that run, LRP-0 vs gradient x input, refusals, LRP time / gradient")
    p.add_argument("--zoo-models", nargs="+", default=None, help="with --zoo: these models (default: all of them)")
    p.add_argument("--zoo-library", default="torchvision", choices=["torchvision", "timm"])
    p.add_argument("--zoo-no-timing", action="store_true", help="with --zoo: skip the LRP / gradient timing")
    p.add_argument("--zoo-size", type=int, default=64, help="with --zoo: input size of models that take any (64)")
    p.add_argument("--targets", action="store_true",
                   help="instead: issue 29's targets in one run (pixel flipping, every metric on LeNet, the Quantus "
                        "0.6 entries on the ResNet-18 shape with --quantus-python, the LRP composites at 224 on "
                        "torchvision's VGG-16 / ResNet-50 where it imports (batch --batch, default 2), AttnLRP on "
                        "vit_tiny at 2 threads): a summary table of measured against wanted, ~10 min at 1 thread")
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)  # tests: smaller 224-case models
    p.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="results/bench")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.api:
        return _main_api(args, out)
    if args.targets:
        return _main_targets(args, out)
    if args.quantus:  # before tune(): both processes on glibc's default allocator
        if args.quantus_model == "resnet18":
            return _main_quantus_realistic(args, p, out)
        return _main_quantus(args, out)
    tuned = allocator.tune()  # as the CLI does: baseline and methods run under the same allocator
    if args.zoo:
        return _main_zoo(args, out)
    if args.vit:
        return _main_vit(args, out)
    if args.imagenet:
        return _main_imagenet(args, p, out)
    models = args.models or ["lenet", "vgg_bn"]
    batch = args.batch or 128
    repeats = args.repeats or 7
    methods = args.methods or sorted(m for m in METHODS if m != "occlusion")
    metrics = image_metrics() if args.metrics == ["all"] else args.metrics
    unknown = [m for m in methods if m not in METHODS] + [m for m in metrics if m not in METRICS]
    if unknown:
        p.error(f"unknown methods/metrics {unknown}: choose from {sorted(METHODS)} / {sorted(METRICS)}")
    # End to end first: the child processes then share the machine with a small parent, not with one that holds
    # the memory of vgg_bn's batched Integrated Gradients (with it, a warm run read 55 s instead of 25 s here).
    load_start, t_start = os.getloadavg(), time.perf_counter()
    e2e = None if args.no_e2e else bench_end_to_end()
    df = pd.concat([bench_methods(m, methods, batch, repeats) for m in models])
    df["meets_target"] = [None if pd.isna(tg) else bool(r <= tg) for r, tg in zip(df["ratio"], df["target"])]
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench.csv", index=False)
    table = df.pivot(index="method", columns="model", values="ratio").round(2)
    table["target"] = [TARGETS.get(m, "") for m in table.index]
    text = (f"Machine load (1, 5, 15 min) at the start: {_load(load_start)}\n\n"
            f"Methods: time per batch of {batch} / k plain gradient passes (k = {BENCH_UNITS} for "
            f"integrated_gradients and smoothgrad, run with steps / samples = {BENCH_UNITS}, else 1; "
            f"median of {repeats} interleaved rounds, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"allocator {'tuned' if tuned else 'default'})\n\n" + markdown(table.reset_index()) + "\n")
    if metrics:
        mdf = bench_all_metrics(*mnist_case("lenet", batch), metrics, repeats)
        mdf.to_csv(out / "bench_metrics.csv", index=False)
        text += (f"\nMetrics (lenet, lrp_epsilon_plus maps, batch {batch}): time / bare cost, the forwards and "
                 "explains each metric makes (counted, per image) at the time of one batch forward / explain\n\n"
                 + markdown(mdf.round(2)) + "\n")
    if not args.no_flip:
        flip = flip_race(args.quantus_python, repeats, tuned)
        flip.to_csv(out / "bench_flip.csv", index=False)
        text += ("\nPixel flipping (LeNet, the first 32 MNIST test images, lrp_epsilon_plus maps, 1-pixel features, 16 "
                 "per step: 50 forwards of the batch; MoRF, zero baseline, logits): median ms of "
                 f"{repeats} interleaved rounds, ratio to the bare per-step forwards (target <= 1.0), evalxai's "
                 "speedup over each (target >= 2 over Quantus 0.6); same allocator "
                 f"({'tuned' if tuned else 'default'}) for all\n\n" + markdown(flip.round(3)) + "\n")
    if e2e is not None:
        e2e.to_csv(out / "bench_e2e.csv", index=False)
        text += ("\nEnd to end (`python -m evalxai experiment=mnist_lrp`, wall time; peak resident memory of the "
                 "run, target 2 GB)\n\n" + markdown(e2e) + "\n")
    text += (f"\nMachine load at the end: {_load(os.getloadavg())}; the bench took "
             f"{time.perf_counter() - t_start:.0f} s\n")
    (out / "bench.md").write_text(text)
    print(text)
    return df


def _load(avg) -> str:
    return ", ".join(f"{v:.2f}" for v in avg)


def flip_race(quantus_python: str | None, repeats: int, tuned: bool) -> pd.DataFrame:
    """``bench_flip_race`` on the first 32 MNIST test images with the trained LeNet and lrp_epsilon_plus maps."""
    model, x, t, _ = mnist_case("lenet", 32)
    r = evalxai.explain(model, x, t, method="lrp_epsilon_plus")
    return bench_flip_race(model, x, t, r, repeats, quantus_python, same_allocator=tuned)


def _main_quantus_realistic(args, p, out: Path) -> pd.DataFrame:
    if not args.quantus_python:
        p.error("--quantus-model resnet18 needs --quantus-python (a Python with quantus 0.6)")
    repeats, batch, size = args.repeats or 3, args.batch or 8, args.size or 64
    load_start, t0 = os.getloadavg(), time.perf_counter()
    df = bench_quantus_realistic(args.quantus_python, repeats, batch=batch, size=size, log=log)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench_quantus_resnet18.csv", index=False)
    text = quantus_report(df, args.quantus_python, repeats).replace(
        "on the same batch (tests/fixtures/quantus: 8 x 1 x 16 x 16, bias-free CNN, gradient x input maps), matched "
        "parameters from reference.json",
        f"on a ResNet-18 shape (random weights, BatchNorm), {batch} x 3 x {size} x {size}, gradient x input maps, "
        "reference.json's parameters scaled to the image (evalxai.bench.quantus.REALISTIC)")
    text += (f"\nMachine load (1, 5, 15 min): {_load(load_start)} at the start, {_load(os.getloadavg())} at the end; "
             f"{time.perf_counter() - t0:.0f} s\n")
    (out / "bench_quantus_resnet18.md").write_text(text)
    print(text)
    return df


def _main_imagenet(args, p, out: Path) -> pd.DataFrame:
    models = args.models or list(IMAGENET_DEFAULT_MODELS)
    methods = args.methods or list(IMAGENET_METHODS)
    unknown = [m for m in models if m not in IMAGENET_MODELS] + [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown models/methods {unknown}: choose from {sorted(IMAGENET_MODELS)} / {sorted(METHODS)}")
    error = torchvision_error() if any(m.startswith("torchvision_") for m in models) else None
    if error:
        p.error(f"--models {' '.join(models)} needs torchvision, which does not import here ({error}); run it in the "
                "reference environment (tools/reference_env.sh)")
    batch, repeats = args.batch or 8, args.repeats or 3
    dev = resolve_device(args.device)
    print(f"224 case on {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else
                                  f" ({torch.get_num_threads()} threads)"), flush=True)
    t0 = time.perf_counter()
    df = pd.concat([bench_imagenet(m, methods, batch, repeats, str(dev), args.size or 224, args.width,
                                   log=log, memory_budget=args.memory_budget) for m in models])
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "bench_imagenet.csv", index=False)
    text = imagenet_report(df, seconds, repeats)
    (out / "bench_imagenet.md").write_text(text)
    print(text)
    return df


def _main_targets(args, out: Path) -> pd.DataFrame:
    """``--targets``: the benches behind issue 29's targets in one process, then ``target_rows``; the Quantus
    entries first, on glibc's default allocator in both processes (as ``--quantus``), the rest tuned (as the CLI)."""
    load_start, t0 = os.getloadavg(), time.perf_counter()
    threads, repeats = torch.get_num_threads(), args.repeats or 3
    parts: dict[str, pd.DataFrame] = {}
    if args.quantus_python:
        log("targets: Quantus 0.6 on the ResNet-18 shape")
        parts["quantus"] = bench_quantus_realistic(args.quantus_python, repeats, log=log)
    tuned = allocator.tune()
    log("targets: pixel flipping")
    parts["flip"] = flip_race(args.quantus_python, repeats, tuned)
    log("targets: metrics on LeNet")
    parts["metrics"] = bench_all_metrics(*mnist_case("lenet", 32), image_metrics(), repeats)
    models = list(IMAGENET_DEFAULT_MODELS) if torchvision_error() else ["torchvision_vgg16", "torchvision_resnet50"]
    log(f"targets: LRP at 224 on {models}")
    parts["imagenet"] = pd.concat([bench_imagenet(m, ("gradient", *TARGET_COMPOSITES), args.batch or 2, repeats,
                                                  "cpu", log=log) for m in models])
    log("targets: AttnLRP on vit_tiny, 2 threads")
    torch.set_num_threads(2)
    try:
        parts["vit"] = bench_vit(("attnlrp", "cp_lrp"), 128, repeats)
    finally:
        torch.set_num_threads(threads)
    summary = target_rows(**parts)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "bench_targets.csv", index=False)
    for name, df in parts.items():
        df.to_csv(out / f"bench_targets_{name}.csv", index=False)
    text = (f"Issue 29's targets, one run: torch {torch.__version__}, {threads} thread(s) (vit_tiny: 2), allocator "
            f"{'tuned' if tuned else 'default'} (the Quantus entries: default in both processes); load (1, 5, 15 min) "
            f"{_load(load_start)} at the start, {_load(os.getloadavg())} at the end; "
            f"{time.perf_counter() - t0:.0f} s. Details: the CSV files next to this one.\n\n"
            + markdown(summary) + "\n")
    (out / "bench_targets.md").write_text(text)
    print(text)
    return summary


def _main_quantus(args, out: Path) -> pd.DataFrame:
    repeats = args.repeats or 3
    df = bench_quantus(args.quantus_python, repeats, log=log)
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


if __name__ == "__main__":
    main()
