"""Speed plumbing: the benchmark command, and the allocator tuning (applied once on glibc, skipped when asked)."""
import subprocess
import sys

import pandas as pd
import pytest
import torch

import evalxai

pytestmark = pytest.mark.slow  # end to end: runs through the CLI or the pipeline (pytest -m 'not slow' skips)

CODE = "from evalxai.runs import allocator; print(allocator.tune(), allocator.tune())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_applies_once_and_can_be_turned_off():
    on = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split()
    assert on == ["True", "True"]
    off = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True,
                         env={"EVALXAI_MALLOC": "default", "PATH": ""}).stdout.split()
    assert off == ["False", "False"]


def test_bench_methods_table(tmp_path):
    """The benchmark command runs (methods only, tiny batch) and writes its CSV and Markdown table; each ratio is
    the method's median time over k bare gradient passes, from the same table's medians (speed is not asserted)."""
    from evalxai.bench import methods
    from evalxai.bench.__main__ import main

    df = main(["--models", "lenet", "--batch", "4", "--repeats", "1", "--methods", "lrp_0", "smoothgrad",
                     "cam", "--metrics", "--no-e2e", "--out", str(tmp_path)])
    rows = df.set_index("method")
    base = rows.loc["<gradient pass>", "median_ms"]
    assert base > 0 and rows.loc["<gradient pass>", "ratio"] == 1.0
    # LRP is one modified backward pass: its bare cost is one gradient pass. SmoothGrad's is its samples.
    assert rows.loc["lrp_0", "gradient_passes"] == methods.units("lrp_0") == 1
    assert rows.loc["smoothgrad", "gradient_passes"] == methods.units("smoothgrad") == methods.BENCH_UNITS
    for method in ("lrp_0", "smoothgrad"):
        expected = rows.loc[method, "median_ms"] / base / rows.loc[method, "gradient_passes"]
        assert rows.loc[method, "ratio"] == pytest.approx(expected, rel=1e-12), method
        assert rows.loc[method, "target"] == methods.TARGETS[method]
        assert rows.loc[method, "meets_target"] == (rows.loc[method, "ratio"] <= methods.TARGETS[method])
    assert pd.isna(rows.loc["cam", "ratio"]) and pd.isna(rows.loc["cam", "median_ms"])  # lenet has no GAP: no CAM
    csv = pd.read_csv(tmp_path / "bench.csv").set_index("method")
    assert csv.loc["lrp_0", "ratio"] == pytest.approx(rows.loc["lrp_0", "ratio"], rel=1e-9)
    text = (tmp_path / "bench.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("| lrp_0 |"))
    assert float(line.split("|")[2]) == pytest.approx(round(rows.loc["lrp_0", "ratio"], 2), abs=1e-9)


def test_bench_imagenet_table(tmp_path):
    """The 224 case's path on tiny versions of its models (32x32, 1/16 of the channels): the models are what the
    bench says (1000 classes, ResNet-50's [3, 4, 6, 3] bottlenecks, VGG-16's 13 convolutions with BatchNorm), the
    table has its columns, ratio = time / gradient time, time per image = time / batch, and peak memory is measured
    (speed and memory are not asserted)."""
    from evalxai.bench import imagenet
    from evalxai.bench.__main__ import main
    from evalxai.bench.methods import BENCH_UNITS

    vgg, res = imagenet.vgg16(width=1 / 16), imagenet.ResNet50(width=1 / 16)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.modules()) == 13
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in vgg.modules()) == 13
    assert [len(s) for s in (res.layer1, res.layer2, res.layer3, res.layer4)] == [3, 4, 6, 3]
    assert vgg.eval()(torch.rand(1, 3, 32, 32)).shape == res.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 1000)

    df = main(["--imagenet", "--models", "resnet50", "vgg16", "--size", "32", "--width", "0.0625",
                     "--batch", "2", "--repeats", "1", "--methods", "lrp_epsilon_plus", "smoothgrad", "--device",
                     "cpu", "--out", str(tmp_path)])
    assert set(imagenet.IMAGENET_COLUMNS) <= set(df.columns)
    assert list(df["model"].unique()) == ["resnet50", "vgg16"] and set(df["device"]) == {"cpu"}
    for _, rows in df.groupby("model"):
        rows = rows.set_index("method")
        assert list(rows.index) == ["<gradient pass>", "lrp_epsilon_plus", "smoothgrad"]
        base = rows.loc["<gradient pass>", "median_ms"]
        assert base > 0 and rows.loc["<gradient pass>", "ratio"] == 1.0
        assert rows.loc["smoothgrad", "gradient_passes"] == BENCH_UNITS
        for method in ("lrp_epsilon_plus", "smoothgrad"):
            r = rows.loc[method]
            assert r["ratio"] == pytest.approx(r["median_ms"] / base / r["gradient_passes"], rel=1e-12), method
            assert r["ms_per_image"] == pytest.approx(r["median_ms"] / 2, rel=1e-12)
            assert r["meets_target"] == (r["ratio"] <= r["target"])
            assert pd.isna(r["error"])
            if sys.platform.startswith("linux"):
                assert r["peak_mb"] > 0 and r["peak_mb"] >= r["extra_mb"], method
        assert rows.loc["lrp_epsilon_plus", "target"] == imagenet.LRP_TARGETS_224["lrp_epsilon_plus"] == 1.6
    csv = pd.read_csv(tmp_path / "bench_imagenet.csv")
    assert len(csv) == len(df)
    text = (tmp_path / "bench_imagenet.md").read_text()
    assert "device cpu" in text and "| lrp_epsilon_plus |" in text


def test_bench_imagenet_records_a_failing_method():
    """A method that fails on the model is a row with its error message and no timing, not a crash of the bench
    (CAM needs global average pooling before the last layer; VGG-16 has dense layers there)."""
    from evalxai.bench.imagenet import bench_imagenet

    df = bench_imagenet("vgg16", ["lrp_epsilon", "cam"], batch=1, repeats=1, device="cpu", size=32,
                              width=1 / 16).set_index("method")
    assert pd.isna(df.loc["lrp_epsilon", "error"]) and df.loc["lrp_epsilon", "ratio"] > 0
    assert isinstance(df.loc["cam", "error"], str) and df.loc["cam", "error"]
    assert pd.isna(df.loc["cam", "ratio"]) and pd.isna(df.loc["cam", "median_ms"])


def test_tune_allocator_is_the_public_opt_in():
    """``evalxai.tune_allocator`` is the allocator tuning the command line applies (same function, idempotent)."""
    import evalxai
    from evalxai.runs import allocator

    assert evalxai.tune_allocator is allocator.tune and "tune_allocator" in evalxai.__all__
    assert evalxai.tune_allocator() == evalxai.tune_allocator()


def test_bench_api_runs_both_cases_in_fresh_processes():
    """--api: one child process without the opt-in (glibc's default allocator) and one after tune_allocator()."""
    from evalxai.bench.methods import API_METHODS, bench_api

    df = bench_api(["lenet"], batch=4, repeats=1)
    assert list(df["tune_allocator"]) == [False, True]
    assert not df["tuned"].iloc[0]
    if sys.platform.startswith("linux"):
        assert bool(df["tuned"].iloc[1])
    assert (df[list(API_METHODS)] > 0).all().all() and (df["gradient_ms"] > 0).all()


def test_lrp_leaves_no_graph_behind():
    """Every composite frees its graph when the call returns: a rule state that held the layer's output as a plain
    ctx attribute made an uncollectable cycle, and each call leaked every layer output (about 1 GB per LRP-gamma
    call on VGG-16 at 224x224, batch 8: the 224 bench grew to 17 GB)."""
    import gc
    import warnings

    import evalxai
    from evalxai.bench.imagenet import ResNet50
    from evalxai.methods.lrp import COMPOSITES

    model = ResNet50(width=1 / 16).eval()
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    for name in COMPOSITES:  # a leak would keep every call's graph: one scan after all of them finds it
        evalxai.explain(model, x, t, method=name)
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated reduce_op object warns
        warnings.simplefilter("ignore", FutureWarning)
        alive = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    assert not alive, {type(o.grad_fn).__name__ for o in alive}


def test_bench_imagenet_under_a_budget_too_small_for_one_image():
    """Each explain call then fails with the budget's message (a row each); the plain gradient pass is still timed."""
    from evalxai.bench.imagenet import bench_imagenet

    df = bench_imagenet("resnet50", ["lrp_epsilon"], batch=1, repeats=1, device="cpu", size=32, width=1 / 16,
                              memory_budget=1024).set_index("method")
    assert df.loc["<gradient pass>", "ratio"] == 1.0 and df.loc["<gradient pass>", "budget_mb"] == 0
    assert "memory budget" in df.loc["lrp_epsilon", "error"] and pd.isna(df.loc["lrp_epsilon", "ratio"])


def test_metric_bench_counts_the_passes_each_metric_makes():
    """The metric bench's bare cost counts what a metric runs: pixel flipping forwards one batch per curve point and
    order and explains nothing; selectivity re-explains each perturbed input; a mask metric runs no pass; copies of
    the model (randomisation) are counted too; ratio = time / bare cost from the same table."""
    from evalxai.bench import metrics as metric_bench
    from evalxai.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28)).eval()
    x = torch.rand(6, 1, 28, 28)
    t = torch.randint(0, 10, (6,))
    pool = (torch.rand(40, 1, 28, 28), torch.arange(40) % 10)
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    df = metric_bench.bench_all_metrics(model, x, t, pool, ["pixel_flipping", "selectivity", "pointing_game",
                                                            "randomization", "focus"], repeats=1, method="gradient")
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    rows = df.set_index("metric")
    curve = evalxai.score(model, x, t, evalxai.explain(model, x, t, method="gradient"), metric="pixel_flipping",
                          **metric_bench.METRIC_PARAMS["pixel_flipping"])
    points = curve[curve["step"].notna()].groupby("sample").size().iloc[0]
    assert rows.loc["pixel_flipping", "forwards_per_image"] == points
    assert rows.loc["pixel_flipping", "explains_per_image"] == 0
    assert rows.loc["selectivity", "explains_per_image"] > 0 and rows.loc["selectivity", "forwards_per_image"] > 0
    assert rows.loc["pointing_game", ["forwards_per_image", "explains_per_image"]].tolist() == [0, 0]
    assert pd.isna(rows.loc["pointing_game", "ratio"])
    assert rows.loc["randomization", "explains_per_image"] >= 1
    assert rows.loc["focus", "explains_per_image"] == 1
    for name in ("pixel_flipping", "selectivity", "randomization"):
        r = rows.loc[name]
        assert r["ratio"] == pytest.approx(r["median_ms"] / r["bare_ms"], rel=1e-9)


def test_quantus_table_from_recorded_times():
    """``bench_quantus`` without a Quantus Python: one row per reference.json entry with the columns the issue names;
    Quantus times are the recorded ones (ms); speedup = quantus_ms / evalxai_ms for every comparable entry, none
    where Quantus failed or does different work (and the note says which). evalxai's time comes from the timer it is
    given (a stub here, except one real metric, so the test needs no Quantus and stays short)."""
    import json

    from evalxai.bench import quantus as quantus_bench

    reference = json.loads((quantus_bench.QUANTUS_FIXTURES / "reference.json").read_text())["metrics"]
    called = []

    def stub(f, repeats, budget):
        called.append(f)
        return [0.004, 0.002, 0.003], [0.001, 0.001, 0.001]

    df = quantus_bench.bench_quantus(repeats=3, timer=stub)
    assert list(df.columns[:6]) == ["metric", "quantus_class", "evalxai_ms", "quantus_ms", "speedup",
                                    "quantus_source"]
    assert list(df["metric"]) == list(reference) and (df["quantus_source"] == "recorded").all()
    rows = df.set_index("metric")
    comparable = [n for n, e in reference.items() if e["timing"] is None and e["error"] is None]
    assert len(comparable) >= 25 and len(called) == sum(e["timing"] is None for e in reference.values())
    for name in comparable:
        r = rows.loc[name]
        assert r["evalxai_ms"] == pytest.approx(3.0) and r["quantus_ms"] == pytest.approx(
            1e3 * reference[name]["seconds"])
        assert r["speedup"] == pytest.approx(r["quantus_ms"] / r["evalxai_ms"]) and pd.isna(r["note"])
    for name in set(reference) - set(comparable):
        assert pd.isna(rows.loc[name, "speedup"]) and rows.loc[name, "note"]
    assert rows.loc["InputInvariance", "note"].startswith("Quantus fails: TypeError")
    assert rows.loc["Infidelity", "note"].startswith("not comparable")
    text = quantus_bench.quantus_report(df, None, 3)
    assert "RECORDED" in text and "| PixelFlipping | PixelFlipping |" in text
    # a real evalxai timing of one entry: the matched call runs and is timed
    real = quantus_bench.bench_quantus(repeats=1, entries=["Selectivity"]).set_index("metric").loc["Selectivity"]
    assert real["calls"] == 1 and real["evalxai_ms"] > 0
    assert real["speedup"] == pytest.approx(real["quantus_ms"] / real["evalxai_ms"])


@pytest.mark.reference
def test_bench_imagenet_times_torchvision_models():
    """The issue-29 targets name torchvision's VGG-16 and ResNet-50: the 224 case builds them (random weights, 1000
    classes) where torchvision imports, and times the LRP composites against a gradient pass on them."""
    pytest.importorskip("torchvision")
    from evalxai.bench.imagenet import IMAGENET_MODELS, bench_imagenet

    model = IMAGENET_MODELS["torchvision_resnet50"]()
    assert type(model).__module__.startswith("torchvision") and model.fc.out_features == 1000
    df = bench_imagenet("torchvision_vgg16", ["lrp_epsilon_alpha2beta1"], batch=1, repeats=1, device="cpu",
                        size=32).set_index("method")
    assert pd.isna(df.loc["lrp_epsilon_alpha2beta1", "error"]) and df.loc["lrp_epsilon_alpha2beta1", "ratio"] > 0
    with pytest.raises(ValueError, match="no width"):
        IMAGENET_MODELS["torchvision_vgg16"](width=0.5)


def test_target_rows_read_each_bench_against_its_target():
    """``--targets``' summary: one row per target with the measured value and whether it is met, from the frames the
    benches return (here made by hand, so that every row's arithmetic is checked)."""
    from evalxai.bench.targets import target_rows

    flip = pd.DataFrame({"contestant": ["bare forwards", "evalxai", "quantus 0.6"], "ratio_to_bare": [1.0, 0.9, 1.2],
                         "evalxai_speedup": [1.11, 1.0, 1.33]})
    metrics = pd.DataFrame({"metric": ["a", "b", "c"], "ratio": [1.1, 1.3, float("nan")]})
    quantus = pd.DataFrame({"speedup": [2.5, 3.0, 1.5, float("nan")]})
    imagenet = pd.DataFrame({"model": ["m", "m", "m"], "method": ["<gradient pass>", "lrp_epsilon",
                                                                  "lrp_epsilon_alpha2beta1"], "ratio": [1.0, 1.2, 2.0]})
    vit = pd.DataFrame({"method": ["attnlrp", "lrp_epsilon"], "ratio": [1.4, 1.1]})
    rows = target_rows(flip, metrics, quantus, imagenet, vit).set_index("target")
    assert rows["met"].tolist() == [True, False, False, True, False, True, True]
    assert rows.loc["metrics / their counted passes (LeNet)", "measured"] == "1 of 2 within; over: b 1.30"
    assert rows.loc["Quantus 0.6 entries >= 2x faster (ResNet-18 shape)", "measured"] == "2 of 3"
    assert rows.loc["pixel flipping, speedup over Quantus 0.6", "measured"] == "1.33"
    assert list(target_rows().columns) == ["target", "measured", "wanted", "met"]
