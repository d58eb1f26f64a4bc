"""Sweeps: joblib launcher, launcher configs, caches on re-runs, kill-and-resume, determinism."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from evalxai.runs.configs import CONF as CONFIGS
from tests.test_cli import ROOT, run_cli

pytestmark = pytest.mark.slow  # end to end: runs through the CLI or the pipeline (pytest -m 'not slow' skips)

SWEEP = ["experiment=mnist_smoke", "seed=0,1", "sample_seed=0,1", "n_samples=4", "methods=[gradient,lrp_epsilon_plus]",
         "progress=false"]


def runs(root: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in root.glob("*/run.json")}


@pytest.mark.parametrize("launcher,target,plugin", [
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", None),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "hydra_submitit_launcher"),
    # the plugins' own configs (extras `ray` and `slurm`): hydra/launcher=ray and hydra/launcher=submitit_local
    ("ray", "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher", "hydra_ray_launcher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
     "hydra_submitit_launcher"),
])
def test_launcher_configs_compose(launcher, target, plugin):
    if launcher in ("ray", "submitit_local"):  # these names exist only with the plugin installed
        pytest.importorskip(f"hydra_plugins.{plugin}")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["experiment=mnist_smoke", f"hydra/launcher={launcher}"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    if plugin is None or importlib.util.find_spec(f"hydra_plugins.{plugin}") is not None:
        from hydra.utils import get_class

        get_class(target)  # the class exists (hydra/launcher=ray once named one that did not)


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("joblib")
    res = run_cli(["-m", *SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={root}"],
                  cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def test_joblib_sweep_and_leaderboard(joblib_sweep):
    found = runs(joblib_sweep)
    assert len(found) == 4 and any(k.endswith("sample_seed=1,seed=0") for k in found)
    res = subprocess.run([sys.executable, "-m", "evalxai.report.leaderboard", str(joblib_sweep)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    board = pd.read_csv(joblib_sweep / "leaderboard.csv")
    assert {"method", "metric", "direction", "mean", "ci_low", "ci_high", "n", "rank"} <= set(board.columns)
    aopc = board[board["measure"] == "aopc_morf"]
    assert set(aopc["method"]) == {"gradient", "lrp_epsilon_plus"} and (aopc["runs"] == 4).all()
    for name in ("leaderboard.md", "leaderboard.png", "report.html"):
        assert (joblib_sweep / name).stat().st_size > 0


def test_rerun_recomputes_nothing(joblib_sweep, cache_dir, tmp_path):
    before = {k: (p / "run.json").stat().st_mtime_ns for k, p in runs(joblib_sweep).items()}
    res = run_cli(["-m", *SWEEP, f"hydra.sweep.dir={joblib_sweep}"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    logs = "".join(p.read_text() for p in joblib_sweep.glob("*/__main__.log"))  # Hydra's per-job logs
    assert logs.count("is complete (same config, data and checkpoint): nothing to do") == 4
    assert {k: (p / "run.json").stat().st_mtime_ns for k, p in runs(joblib_sweep).items()} == before
    # the same run in a new folder recomputes the metrics; the model and every map come from the caches
    res = run_cli(["experiment=mnist_smoke", "seed=1", "sample_seed=0", "n_samples=4", "progress=false",
                   "methods=[gradient,lrp_epsilon_plus]", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    cache = json.loads((tmp_path / "run.json").read_text())["cache"]
    assert cache == {"model_hit": True, "attribution_hits": 2, "attribution_misses": 0}


def test_kill_and_resume_gives_the_same_tables(joblib_sweep, cache_dir, tmp_path):
    root = tmp_path / "resume"
    # the same launcher as the reference sweep: thread counts change float32 reduction order in the last bits
    args = ["-m", *SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "attribution_cache=false",
            f"hydra.sweep.dir={root}"]
    cmd = [sys.executable, "-m", "evalxai", *args]
    env = {**os.environ, "EVALXAI_CACHE": str(cache_dir)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while len(runs(root)) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # part-way: at least one run done, the next one in progress
    proc.wait()
    assert 1 <= len(runs(root)) < 4
    for p in root.rglob("*"):  # nothing partial under a final name: every final table reads
        if p.name == "scores.parquet":
            pd.read_parquet(p)
    res = run_cli(args, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed, reference = runs(root), runs(joblib_sweep)
    assert resumed.keys() == reference.keys()
    for name in reference:
        pd.testing.assert_frame_equal(pd.read_parquet(resumed[name] / "scores.parquet"),
                                      pd.read_parquet(reference[name] / "scores.parquet"))


def test_same_config_same_table(tmp_path, cache_dir):
    from omegaconf import OmegaConf

    from evalxai.runs.pipeline import run_experiment

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["experiment=mnist_smoke", "n_samples=3", "attribution_cache=false",
                                           "methods=[smoothgrad,random,lrp_epsilon_plus]"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    a = run_experiment(cfg, tmp_path / "a", progress=False)
    b = run_experiment(cfg, tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(a / "scores.parquet"), pd.read_parquet(b / "scores.parquet"))
