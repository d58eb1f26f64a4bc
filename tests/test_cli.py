"""End to end: the CLI writes every artifact of a run; errors exit non-zero with one line, no traceback."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, cache_dir, cwd=ROOT):
    env = {**os.environ, "EVALXAI_CACHE": str(cache_dir)}
    return subprocess.run([sys.executable, "-m", "evalxai", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("smoke")
    res = run_cli(["experiment=mnist_smoke", f"hydra.run.dir={out}", "progress=false"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_every_artifact_is_written(smoke_run):
    for name in ["scores.parquet", "scores.csv", "summary.csv", "run.json", "plots/heatmaps.png",
                 "plots/pixel_flipping.png", "plots/summary.png"]:
        path = smoke_run / name
        assert path.exists() and path.stat().st_size > 0, name
    assert not list(smoke_run.rglob("*.tmp"))


def test_tidy_table_and_run_json(smoke_run):
    df = pd.read_parquet(smoke_run / "scores.parquet")
    for col in ["method", "metric", "sample", "step", "value", "measure", "direction", "model_accuracy", "target"]:
        assert col in df.columns
    assert set(df["method"]) == {"lrp_epsilon_plus", "lrp_0", "gradient", "random"}
    assert set(df["metric"]) == {"pixel_flipping", "selectivity", "continuity", "conservation", "randomization",
                                 "sparseness"}
    assert df["sample"].nunique() == 8
    curve = df[df["measure"] == "curve_morf"]
    assert curve["step"].min() == 0 and curve["step"].notna().all()
    assert df[df["measure"] == "aopc_morf"]["step"].isna().all()
    run = json.loads((smoke_run / "run.json").read_text())
    assert 0.5 < run["model"]["test_accuracy"] <= 1.0
    assert run["config"]["name"] == "mnist_smoke" and "torch" in run["versions"]
    assert run["timings"]["total_s"] > 0
    summary = pd.read_csv(smoke_run / "summary.csv")
    assert {"method", "metric", "measure", "mean", "ci_low", "ci_high", "n"} <= set(summary.columns)
    assert (summary["ci_low"] <= summary["mean"] + 1e-12).all()
    assert (summary["mean"] <= summary["ci_high"] + 1e-12).all()


def test_lrp0_conserves_in_the_pipeline(smoke_run):
    df = pd.read_parquet(smoke_run / "scores.parquet")
    res = df[(df["method"] == "lrp_0") & (df["measure"] == "abs_relative_residual")]["value"]
    assert res.max() < 0.5  # biases absorb some relevance; the residual is reported, not hidden


def test_unknown_method_fails_with_one_line(tmp_path, cache_dir):
    res = run_cli(["experiment=mnist_smoke", f"hydra.run.dir={tmp_path}", "methods=[nonsense]", "progress=false"],
                  cache_dir)
    assert res.returncode != 0
    assert "unknown method 'nonsense'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "scores.parquet").exists()


def test_every_new_method_and_a_captum_class_through_the_cli(tmp_path, cache_dir):
    pytest.importorskip("captum")
    methods = ("[deeplift,occlusion,cam,grad_cam,grad_cam_pp,"
               "{name:captum_saliency,_target_:captum.attr.Saliency,abs:false}]")
    res = run_cli(["experiment=mnist_smoke", f"hydra.run.dir={tmp_path}", "progress=false", "model=resnet_small",
                   "model.train.epochs=1", "n_samples=4", f"methods={methods}"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "scores.parquet")
    assert set(df["method"]) == {"deeplift", "occlusion", "cam", "grad_cam", "grad_cam_pp", "captum_saliency"}
    assert df[df["metric"] == "pixel_flipping"]["value"].notna().all()  # (a constant map has no rank correlation)
