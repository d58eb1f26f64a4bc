"""docs/extending.md's recipes, run as written: every block of the page that starts with ``# file: PATH`` is written
to PATH in a temporary folder (the ``mine.py`` blocks joined into one module, the YAML into ``myconf/``), ``mine``
is imported (registering a method, a metric, a dataset and a model) and the four are used through the public verbs,
the registries and one pipeline run. The registries are restored afterwards; nothing is written into the package."""
import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import evalxai
from evalxai.data import DATASETS, load_dataset
from evalxai.methods import METHODS
from evalxai.metrics import METRICS
from evalxai.models import MODELS, build_model, get_model
from evalxai.runs.configs import CONF, write_all

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BLOCK = re.compile(r"^```(?:python|yaml)\n# file: (\S+)\n(.*?)^```$", re.S | re.M)
ADDED = ((METHODS, "gradient_sign"), (METRICS, "top_share"), (DATASETS, "stripes"), (MODELS, "tiny_cnn"))


def recipe_files() -> dict[str, str]:
    """PATH -> text of the page's ``# file: PATH`` blocks, blocks of the same file joined in page order."""
    files: dict[str, str] = {}
    for path, body in BLOCK.findall(PAGE.read_text(encoding="utf-8")):
        files[path] = files.get(path, "") + body + "\n"
    return files


@pytest.fixture(scope="module")
def mine(tmp_path_factory):
    """The recipes' folder on disk and ``mine`` imported; afterwards the registries are as before."""
    root = tmp_path_factory.mktemp("extending")
    for path, text in recipe_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    assert not any(name in registry for registry, name in ADDED)
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("mine")
        yield root, module
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("mine", None)
        for registry, name in ADDED:
            registry.pop(name, None)


def test_the_page_holds_the_four_recipes_and_their_yaml():
    files = recipe_files()
    assert set(files) == {"mine.py", "run.py", "myconf/dataset/stripes.yaml", "myconf/model/tiny_cnn.yaml",
                          "myconf/experiment/mine.yaml"}
    assert [m for m in ("register_method", "register_metric", "register(", "MODELS[") if m in files["mine.py"]] == \
        ["register_method", "register_metric", "register(", "MODELS["]


def test_the_method_explains_a_batch_and_its_yaml_is_generated(mine, tmp_path):
    root, module = mine
    assert METHODS["gradient_sign"].defaults == {"scale": 1.0} and METHODS["gradient_sign"].family == "gradient"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
    x, target = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])
    maps = evalxai.explain(model, x, target, method="gradient_sign", scale=2.0)
    assert maps.shape == x.shape and set(maps.abs().unique().tolist()) <= {0.0, 2.0}
    write_all(tmp_path)  # python -m evalxai.runs.configs, into a folder of its own
    assert yaml.safe_load((tmp_path / "method" / "gradient_sign.yaml").read_text()) == {"name": "gradient_sign",
                                                                                         "scale": 1.0}
    assert not (CONF / "method" / "gradient_sign.yaml").exists()


def test_the_metric_scores_the_maps_with_its_declared_direction(mine, tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
    x, target = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])
    maps = evalxai.explain(model, x, target, method="gradient_sign")
    df = evalxai.score(model, x, target, maps, metric="top_share", k=2)
    assert len(df) == 3 and set(df["measure"]) == {"top_share"} and set(df["direction"]) == {"higher"}
    assert ((df["value"] > 0) & (df["value"] <= 1)).all() and (df["k"] == 2).all()
    write_all(tmp_path)
    assert yaml.safe_load((tmp_path / "metric" / "top_share.yaml").read_text()) == {"name": "top_share", "k": 4}
    assert "top_share" in evalxai.metrics.registry.families()["complexity"]


def test_the_dataset_loads_by_name_and_its_yaml_lists_the_loaders_fields(mine):
    root, _ = mine
    data = load_dataset("stripes", n=16)
    assert len(data) == 16 and data.input_shape == (1, 8, 8) and data.classes == ["vertical", "horizontal"]
    x, y = data.test_items([0, 1, 2])
    assert x.shape == (3, 1, 8, 8) and y.dtype == torch.int64
    cfg = yaml.safe_load((root / "myconf" / "dataset" / "stripes.yaml").read_text())
    assert cfg.pop("name") == "stripes"
    fields = {k: p.default for k, p in inspect.signature(DATASETS["stripes"]).parameters.items() if k != "cache_dir"}
    assert cfg == fields  # what tests/test_configs.py asks of conf/dataset


def test_the_model_builds_by_name_and_trains_through_get_model(mine, tmp_path):
    root, module = mine
    cfg = yaml.safe_load((root / "myconf" / "model" / "tiny_cnn.yaml").read_text())
    params = inspect.signature(MODELS["tiny_cnn"]).parameters
    assert cfg["name"] == "tiny_cnn" and all(params[k].default == v for k, v in cfg["arch"].items())
    assert build_model("tiny_cnn", (1, 8, 8), num_classes=2)(torch.zeros(5, 1, 8, 8)).shape == (5, 2)
    model, info = get_model(load_dataset("stripes"), {"name": "tiny_cnn", "arch": cfg["arch"]}, cfg["train"],
                            cache_dir=tmp_path, progress=False)
    assert isinstance(model, module.TinyCNN) and info["kind"] == "zoo" and info["label"] == "tiny_cnn"


def test_one_run_uses_the_four_through_the_experiment_in_the_extra_config_folder(mine, tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from evalxai.runs.pipeline import run_experiment

    root, _ = mine
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["experiment=mine", f"hydra.searchpath=[file://{root / 'myconf'}]",
                                           "progress=false", f"cache_dir={tmp_path / 'cache'}"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    assert cfg["dataset"]["name"] == "stripes" and cfg["model"]["name"] == "tiny_cnn"
    out = run_experiment(cfg, tmp_path / "run", progress=False)
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["method"]) == {"gradient_sign", "gradient"} and scores["sample"].nunique() == 8
    assert set(scores["metric"]) == {"top_share", "pixel_flipping", "conservation", "sparseness"}  # merged map
    assert set(scores["model"]) == {"tiny_cnn"}
    assert set(scores.loc[scores["metric"] == "top_share", "direction"]) == {"higher"}


@pytest.mark.slow
def test_the_command_line_of_the_page_runs_the_experiment(mine, tmp_path):
    """The page's second command line, ``python run.py --config-dir myconf experiment=mine ...``, in the recipes'
    folder (run.py imports mine, then starts evalxai's command)."""
    root, _ = mine
    page = PAGE.read_text(encoding="utf-8")
    line = re.search(r"^    (python run\.py .*? methods=.*?\\\n.*?)$", page, re.M).group(1)
    args = shlex.split(line.replace("\\\n", " "))[2:]
    env = {**os.environ, "EVALXAI_CACHE": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "run.py", *args, "progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    assert set(scores["metric"]) == {"top_share"} and set(scores["model"]) == {"tiny_cnn"}
    assert set(scores["method"]) == {"gradient_sign"} and (scores["k"] == 2).all()
