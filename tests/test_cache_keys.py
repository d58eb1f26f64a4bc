"""Caches and the resume check follow the code that computes the numbers; result files honour the umask."""
import json
import os
import shutil
import stat
from types import SimpleNamespace

import pytest
import torch

import evalxai.core.files as io
from evalxai.core.files import atomic_path, code_fingerprint, current_umask, write_json
from evalxai.methods.cache import attribution_key
from evalxai.models.cache import model_key
from evalxai.runs.pipeline import config_key, run_experiment
from tests.test_errors import _smoke_cfg

TOY = SimpleNamespace(name="toy", meta={"source": "test"}, input_shape=(1, 4, 4), classes=["a", "b"], mean=None,
                      std=None)
REAL_ROOT = io.PACKAGE_ROOT


def package_copy(tmp_path, name: str, edit: str | None = None, src=REAL_ROOT):
    """A copy of the sources at ``src`` under ``tmp_path/name``; ``edit`` (a path in the package) gets a new line."""
    root = tmp_path / name / "evalxai"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if edit:
        with open(root / edit, "a") as f:
            f.write("\n# a rule was fixed here\n")
    return root


def keys(monkeypatch, root) -> dict[str, str]:
    """Model, attribution and config keys computed as if the package's code were the one under ``root``."""
    monkeypatch.setattr(io, "PACKAGE_ROOT", root)
    mk = model_key(TOY, {"name": "mlp"}, {"epochs": 1}, 0)
    return {"model": mk, "attribution": attribution_key(mk, "gradient", {}, [0, 1], torch.tensor([1, 2]),
                                                         torch.float32),
            "config": config_key({"name": "toy", "seed": 0, "progress": False}, "data", None)}


def test_keys_follow_the_code(tmp_path, monkeypatch):
    src = package_copy(tmp_path, "a")  # every variant derives from this snapshot of the sources
    base = keys(monkeypatch, src)
    assert keys(monkeypatch, package_copy(tmp_path, "b", src=src)) == base  # same sources elsewhere: same keys
    explain = keys(monkeypatch, package_copy(tmp_path, "explain", "methods/gradient.py", src))
    assert explain["model"] == base["model"]
    assert explain["attribution"] != base["attribution"] and explain["config"] != base["config"]
    for edit in ("models/train.py", "data/mnist.py"):  # the weights' code: every key changes
        changed = keys(monkeypatch, package_copy(tmp_path, edit.replace("/", "_"), edit, src))
        assert all(changed[k] != base[k] for k in base), edit
    for edit in ("api.py", "core/scoring.py", "core/baselines.py", "core/seeding.py", "methods/lrp/rules.py"):
        changed = keys(monkeypatch, package_copy(tmp_path, edit.replace("/", "_"), edit, src))
        assert changed["model"] == base["model"] and changed["attribution"] != base["attribution"], edit
    report = keys(monkeypatch, package_copy(tmp_path, "report", "report/stats.py", src))  # only the run's identity
    assert report["model"] == base["model"] and report["attribution"] == base["attribution"]
    assert report["config"] != base["config"]
    root = package_copy(tmp_path, "torch", src=src)
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    assert all(v != base[k] for k, v in keys(monkeypatch, root).items())  # numbers depend on torch too


def test_fingerprint_parts(tmp_path, monkeypatch):
    root = package_copy(tmp_path, "p")
    monkeypatch.setattr(io, "PACKAGE_ROOT", root)
    assert code_fingerprint("models") != code_fingerprint("data") != code_fingerprint()
    assert code_fingerprint("api.py", "core/scoring.py") == code_fingerprint("core/scoring.py", "api.py", "api.py")
    with pytest.warns(RuntimeWarning, match="'nope'.*will not notice code changes"):  # sources not readable
        fallback = code_fingerprint("nope")
    assert fallback not in (code_fingerprint("models"), code_fingerprint())


@pytest.mark.slow
def test_resume_with_changed_code_recomputes(tmp_path, monkeypatch, cache_dir):
    cfg, out = _smoke_cfg(), tmp_path / "run"
    run_experiment(cfg, out, progress=False)
    first = json.loads((out / "run.json").read_text())
    stamp = (out / "run.json").stat().st_mtime_ns
    run_experiment(cfg, out, progress=False)  # same config, same code: complete, nothing recomputed
    assert (out / "run.json").stat().st_mtime_ns == stamp
    monkeypatch.setattr(io, "PACKAGE_ROOT", package_copy(tmp_path, "fixed", "methods/gradient.py"))
    run_experiment(cfg, out, progress=False)
    second = json.loads((out / "run.json").read_text())
    assert (out / "run.json").stat().st_mtime_ns != stamp
    assert second["config_key"] != first["config_key"] and second["run_id"] != first["run_id"]
    assert second["code"]["explain"] != first["code"]["explain"]
    assert second["code"]["model"] == first["code"]["model"] and second["code"]["torch"] == torch.__version__
    # the model is reused (its code did not change), the map is recomputed by the new code
    assert second["cache"] == {"model_hit": True, "attribution_hits": 0, "attribution_misses": 1}


@pytest.fixture
def umask():
    """Set the process umask for one test; restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, monkeypatch, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "b.pt") as tmp:
        torch.save(torch.zeros(2), tmp)
    write_json(tmp_path / "a.json", {"x": 2})  # a replaced file too
    assert mode(tmp_path / "a.json") == expected and mode(tmp_path / "b.pt") == expected
    monkeypatch.setattr(io, "_PROC_STATUS", str(tmp_path / "no-proc"))  # the fallback without /proc
    assert current_umask() == mask
    write_json(tmp_path / "c.json", {})
    assert mode(tmp_path / "c.json") == expected


@pytest.mark.slow
def test_pipeline_files_honour_the_umask(tmp_path, umask, cache_dir):
    for mask, expected in ((0o022, 0o644), (0o077, 0o600)):
        umask(mask)
        out = run_experiment(_smoke_cfg(), tmp_path / f"{mask:o}", progress=False)
        files = [p for p in out.rglob("*") if p.is_file()]
        assert {"scores.csv", "scores.parquet", "summary.csv", "run.json"} <= {p.name for p in files}
        assert {p.name: oct(mode(p)) for p in files} == {p.name: oct(expected) for p in files}


def tiny_checkpoint(path, seed: int, **kwargs):
    """Weights of ``tests.custom_models.TinyNet(**kwargs)`` drawn with ``seed``, saved at ``path``."""
    from tests.custom_models import TinyNet

    torch.manual_seed(seed)
    torch.save(TinyNet(**kwargs).state_dict(), path)
    return path


def checkpoint_cfg(path, **over):
    """The smoke config with ``tests.custom_models.TinyNet`` from the checkpoint ``path``."""
    return _smoke_cfg(**{"model": "custom", "model._target_": "tests.custom_models.TinyNet",
                         "model.checkpoint": str(path), **over})


@pytest.mark.slow
def test_new_weights_at_the_same_checkpoint_path_recompute(tmp_path, cache_dir):
    cfg, out = checkpoint_cfg(tiny_checkpoint(tmp_path / "net.pt", 0)), tmp_path / "run"
    run_experiment(cfg, out, progress=False)
    first = json.loads((out / "run.json").read_text())
    tiny_checkpoint(tmp_path / "net.pt", 1)  # new weights, same path, same config
    run_experiment(cfg, out, progress=False)
    second = json.loads((out / "run.json").read_text())
    assert second["config_key"] != first["config_key"] and second["run_id"] != first["run_id"]
    sha = io.hashlib.sha256((tmp_path / "net.pt").read_bytes()).hexdigest()
    assert second["model"]["checkpoint_sha256"] == sha != first["model"]["checkpoint_sha256"]


@pytest.mark.slow
def test_changed_images_recompute(tmp_path, cache_dir):
    import numpy as np
    from PIL import Image

    from tests.test_own_model_e2e import write_folder

    write_folder(tmp_path / "images")
    cfg = checkpoint_cfg(tiny_checkpoint(tmp_path / "net.pt", 0, num_classes=3, in_channels=3), **{
        "dataset": "image_folder", "dataset.root": str(tmp_path / "images"), "dataset.image_size": 16,
        "+model.kwargs.num_classes": 3, "+model.kwargs.in_channels": 3})
    out = tmp_path / "run"
    run_experiment(cfg, out, progress=False)
    first = json.loads((out / "run.json").read_text())
    stamp = (out / "run.json").stat().st_mtime_ns
    run_experiment(cfg, out, progress=False)  # nothing changed: complete
    assert (out / "run.json").stat().st_mtime_ns == stamp
    for path in sorted((tmp_path / "images" / "test").rglob("*.png")):  # the same files with other pixels
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    run_experiment(cfg, out, progress=False)
    second = json.loads((out / "run.json").read_text())
    assert second["config_key"] != first["config_key"]
    assert second["dataset"]["fingerprint"] != first["dataset"]["fingerprint"]
