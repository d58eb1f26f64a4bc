"""Registries equal config names: every conf/method and conf/metric file mirrors its registry entry."""

import pytest
import yaml
from hydra import compose, initialize_config_dir

from evalxai.configs import CONF as CONFIGS
from evalxai.methods import METHODS
from evalxai.metrics import METRICS

CONF = CONFIGS


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


@pytest.mark.parametrize("group,registry", [("method", METHODS), ("metric", METRICS)])
def test_config_files_mirror_registry(group, registry):
    files = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF / group).glob("*.yaml")}
    assert set(files) == set(registry)
    for name, cfg in files.items():
        assert cfg.pop("name") == name
        expected = {k: _norm(v) for k, v in registry[name].defaults.items()}
        assert cfg == expected, f"{name}: run python -m evalxai.configs"


@pytest.mark.parametrize("experiment", ["mnist_lrp", "mnist_smoke"])
def test_experiments_compose(experiment):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"experiment={experiment}"])
    assert cfg.name == experiment
    assert all(m in METHODS for m in cfg.methods)
    assert all(m in METRICS for m in cfg.metrics)
