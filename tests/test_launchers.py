"""Launchers that run: one 2-job sweep through basic, joblib, submitit's local executor and Ray gives the same tables.

The Ray and submitit tests need the extras (`pip install -c constraints.txt -e ".[dev,ray,slurm]"`, as CI does);
a plain install skips them.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from evalxai.runs.configs import CONF as CONFIGS
from tests.test_cli import ROOT

pytestmark = pytest.mark.slow  # end to end: runs through the CLI or the pipeline (pytest -m 'not slow' skips)

# Small and fast: 2 runs × 4 images × 2 methods, two cheap metrics (`~metrics` drops the experiment's map first:
# a dict override alone would merge into it). attribution_cache=false: every launcher computes its maps itself.
SWEEP = ["experiment=mnist_smoke", "seed=0,1", "n_samples=4", "methods=[gradient,lrp_epsilon_plus]", "progress=false",
         "attribution_cache=false", "~metrics", "+metrics={pixel_flipping: {patch_size: 7}, sparseness: {}}"]

# Every launcher gives torch its own thread count by default (basic and submitit: all cores; joblib: cores / n_jobs;
# Ray: the task's num_cpus), and a different thread count changes float32 reduction order in the last bits
# (measured: up to 1.4e-6 relative). One thread everywhere makes the tables bit-identical.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Ray on a small machine: no dashboard web UI, no usage-stats reporting, a local instance of at most 2 CPUs
# (1 per run, Ray's default per task), and a short session folder of our own (Unix socket paths must stay under
# 108 bytes) that also tells our processes apart.
RAY = ["hydra/launcher=ray", "+hydra.launcher.ray.init.include_dashboard=false",
       f"+hydra.launcher.ray.init.num_cpus={min(os.cpu_count() or 1, 2)}", "+hydra.launcher.ray.init._temp_dir={tmp}"]

LAUNCHERS = {  # name: (the plugin it needs, the overrides that select it)
    "joblib": (None, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", ["hydra/launcher=submitit_local"]),
    "ray": ("hydra_plugins.hydra_ray_launcher", RAY),
}


def sweep(root: Path, launcher_args, cache_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, **THREADS, "EVALXAI_CACHE": str(cache_dir), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "evalxai", "-m", *SWEEP, *launcher_args, f"hydra.sweep.dir={root}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def runs(root: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in root.glob("*/run.json")}


def ray_processes(ray_tmp: Path) -> set[str]:
    """Running processes of our Ray instance: the session folder is in the command lines of the GCS, the raylet and
    the monitors; workers and agents rename themselves `ray::...` (a zombie has no command line and holds nothing)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(ray_tmp) in cmd or cmd.startswith("ray::"):
                found.add(f"{proc.name}: {cmd[:160]}")
    return found


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory, cache_dir):
    """The reference: Hydra's basic launcher, runs one after another in this process' child."""
    root = tmp_path_factory.mktemp("basic")
    res = sweep(root, [], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(runs(root)) == 2
    return root


@pytest.fixture
def ray_tmp():
    path = Path(tempfile.mkdtemp(prefix="evxray", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_sweep_gives_the_same_tables_on_every_launcher(launcher, basic_sweep, cache_dir, tmp_path, ray_tmp):
    plugin, args = LAUNCHERS[launcher]
    if plugin:
        pytest.importorskip(plugin)
    args = [a.format(tmp=ray_tmp) for a in args]
    root = tmp_path / launcher
    before = ray_processes(ray_tmp)
    res = sweep(root, args, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    found, reference = runs(root), runs(basic_sweep)
    assert found.keys() == reference.keys() and len(found) == 2
    for name in reference:
        pd.testing.assert_frame_equal(pd.read_parquet(found[name] / "scores.parquet"),
                                      pd.read_parquet(reference[name] / "scores.parquet"), check_exact=True)
    if launcher == "ray":
        assert "Started a local Ray instance" in res.stderr
        # the local instance dies with the sweep's process: no raylet, GCS or worker of ours lingers
        deadline = time.time() + 30
        while ray_processes(ray_tmp) - before and time.time() < deadline:
            time.sleep(0.5)
        assert not ray_processes(ray_tmp) - before
        assert any(ray_tmp.glob("session_*/logs/raylet.out"))  # the instance was ours (the check looked at it)
    if launcher == "submitit_local":
        assert list((root / ".submitit").glob("*/*_result.pkl"))  # the jobs really went through submitit


def test_slurm_config_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """conf/hydra/launcher/slurm.yaml: every field is one submitit's Slurm executor accepts, as the plugin maps them;
    GPUs per job come from hydra.launcher.gpus_per_node."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here: pretend a cluster
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["experiment=mnist_smoke", "hydra/launcher=slurm",
                                           "hydra.launcher.gpus_per_node=1", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    launcher_cfg["submitit_folder"] = str(tmp_path / "%j")
    launcher_cfg["name"] = "evalxai"
    launcher = instantiate(OmegaConf.create(launcher_cfg))
    # the plugin's own mapping (BaseSubmititLauncher.launch): shared fields as they are, the rest prefixed slurm_
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m evalxai", "0")
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=8GB", "#SBATCH --time=60", "#SBATCH --signal=USR2@120"):
        assert line in script, (line, script)
