"""evalxai as an installed library: configs inside the package, one ``evalxai`` command, a user's own experiment in
their own folder, results under the working directory (issue 25). CI also builds the wheel, installs it
non-editable and runs ``evalxai experiment=mnist_smoke`` from an empty folder (.ci/run)."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

import evalxai
from evalxai.runs.cli import SUBCOMMANDS, main
from evalxai.runs.configs import CONF, EXPERIMENTS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(evalxai.__file__).resolve().parent


def test_configs_and_reproductions_live_in_the_package_and_the_wheel_takes_every_one():
    assert CONF.parent == PACKAGE and (CONF / "config.yaml").is_file() and (CONF / "__init__.py").is_file()
    assert EXPERIMENTS.parent == PACKAGE and any(EXPERIMENTS.glob("*/claims.yaml"))
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["evalxai"]
    shipped = {p for pattern in patterns for p in PACKAGE.glob(pattern)}
    wanted = set(CONF.rglob("*.yaml")) | set(EXPERIMENTS.glob("*/*.yaml"))
    assert wanted and wanted <= shipped, sorted(str(p.relative_to(PACKAGE)) for p in wanted - shipped)
    # the checkout's top-level folders are links to the one copy, not a second copy that could drift
    for name, target in (("conf", CONF), ("experiments", EXPERIMENTS)):
        assert (ROOT / name).resolve() == target, f"{name} must link to {target}"


def test_distribution_name_is_not_the_taken_one_and_the_console_script_is_evalxai():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "evalxai"  # on the package index, "evalxai" is another project (EvalxNLP)
    assert project["scripts"] == {"evalxai": "evalxai.runs.cli:main"}
    assert not any(d.replace(" ", "").startswith("torch==") for d in project["dependencies"])  # users bring torch


def test_evalxai_lists_its_subcommands_and_dispatches_to_them(capsys):
    main(["commands"])
    listed = capsys.readouterr().out
    assert all(f"evalxai {name}" in listed for name in SUBCOMMANDS)
    with pytest.raises(SystemExit) as stop:
        main(["reproduce", "no_such_paper"])
    assert stop.value.code == 1
    assert "unknown reproduction 'no_such_paper'" in capsys.readouterr().err


@pytest.mark.slow
def test_own_experiment_in_own_folder_extends_a_shipped_one_and_writes_under_the_working_directory(tmp_path,
                                                                                                  cache_dir):
    mine = tmp_path / "myconf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - mnist_smoke\n  - _self_\n"
                                    "name: mine\nn_samples: 3\nmethods: [gradient, random]\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "EVALXAI_CACHE": str(cache_dir)}
    args = ["--config-dir", str(tmp_path / "myconf"), "experiment=mine", "progress=false", "~metrics",
            "+metrics={sparseness: {}}"]
    res = subprocess.run([sys.executable, "-m", "evalxai", *args], cwd=work, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((work / "results" / "mine").glob("*/scores.parquet"))
    assert len(runs) == 1, list(work.rglob("*"))
    scores = pd.read_parquet(runs[0])
    assert sorted(scores.method.unique()) == ["gradient", "random"] and scores["sample"].nunique() == 3
    assert set(scores.metric) == {"sparseness"} and set(scores.model) == {"lenet"}  # mnist_smoke's model
    assert not list(PACKAGE.rglob("scores.parquet"))  # nothing written inside the package
