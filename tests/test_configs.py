"""Registries equal config names: every conf/method, conf/metric, conf/dataset and conf/model file mirrors its
registry entry (methods.METHODS, metrics.METRICS, data.DATASETS, models.MODELS)."""
import inspect

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from evalxai.data import DATASETS
from evalxai.methods import METHODS
from evalxai.metrics import METRICS
from evalxai.models import MODELS
from evalxai.runs.configs import CONF as CONFIGS
from evalxai.runs.configs import write_all

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
        assert cfg == expected, f"{name}: run python -m evalxai.runs.configs"


@pytest.mark.parametrize("experiment", ["mnist_lrp", "mnist_smoke"])
def test_experiments_compose(experiment):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"experiment={experiment}"])
    assert cfg.name == experiment
    assert all(m in METHODS for m in cfg.methods)
    assert all(m in METRICS for m in cfg.metrics)


# ---------------------------------------------------------------- datasets and models: registry == conf/

# conf/model files that name no zoo class, with the reason
MODEL_EXCEPTIONS = {"custom": "the user's own class, built from its _target_ by evalxai.models.custom, not a zoo model",
                    **{lib: f"a {lib} model by name, built by evalxai.models.libraries, not a zoo model"
                       for lib in ("torchvision", "timm", "huggingface")}}


def _plain_default(v):
    return list(v) if isinstance(v, tuple) else v


def test_every_dataset_config_is_a_registered_loader_with_its_fields_and_defaults():
    """conf/dataset/<name>.yaml <-> evalxai.data.DATASETS[name]: the same names both ways (no exceptions), and each
    file lists exactly the loader's fields (less cache_dir) with the loader's defaults (interpolations such as
    ``mean: ${oc.select:model.mean,null}`` resolved without a model)."""
    files = {p.stem: OmegaConf.to_container(OmegaConf.create({"d": yaml.safe_load(p.read_text())}), resolve=True)["d"]
             for p in (CONF / "dataset").glob("*.yaml")}
    assert set(files) == set(DATASETS)
    for name, cfg in files.items():
        assert cfg.pop("name") == name
        fields = {k: _plain_default(p.default) for k, p in inspect.signature(DATASETS[name]).parameters.items()
                  if k != "cache_dir"}
        assert cfg == fields, f"conf/dataset/{name}.yaml and the loader's signature differ"


def test_every_model_config_is_a_zoo_class_and_its_arch_fields_are_the_class_defaults():
    """conf/model/<name>.yaml <-> evalxai.models.MODELS[name], less MODEL_EXCEPTIONS; an ``arch`` field is a
    parameter of the class with the class's default (the class may take more: +model.arch.<field>=...)."""
    files = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF / "model").glob("*.yaml")}
    assert set(MODEL_EXCEPTIONS) <= set(files) and not set(MODEL_EXCEPTIONS) & set(MODELS)
    assert set(files) - set(MODEL_EXCEPTIONS) == set(MODELS)
    for name in MODELS:
        cfg = files[name]
        assert cfg["name"] == name
        params = dict(list(inspect.signature(MODELS[name]).parameters.items())[2:])  # after input_shape, num_classes
        for field, value in (cfg.get("arch") or {}).items():
            assert field in params, f"conf/model/{name}.yaml: arch.{field} is not a parameter of {MODELS[name]}"
            assert value == _plain_default(params[field].default), f"conf/model/{name}.yaml: arch.{field}"


def test_the_configs_written_from_the_registries_are_the_committed_ones(tmp_path):
    """python -m evalxai.runs.configs into an empty tree writes every conf/method and conf/metric file, equal (as YAML)
    to the committed one: nothing in those files is kept by hand."""
    written = write_all(tmp_path)
    assert len(written) == len(METHODS) + len(METRICS)
    for group in ("method", "metric"):
        for path in (tmp_path / group).glob("*.yaml"):
            assert yaml.safe_load(path.read_text()) == yaml.safe_load((CONF / group / path.name).read_text()), path


def test_every_library_model_config_lists_exactly_its_fields():
    """conf/model/{torchvision,timm,huggingface}.yaml hold the fields evalxai.models.libraries accepts, and the
    datasets' mean / std default to the model's (ImageNet's for torchvision and timm, none for Hugging Face)."""
    from evalxai.models import LIBRARY_FIELDS

    for library, fields in LIBRARY_FIELDS.items():
        cfg = yaml.safe_load((CONF / "model" / f"{library}.yaml").read_text())
        assert list(cfg) == list(fields) and cfg["library"] == library and cfg["name"] is None
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    for model, expected in (("torchvision", imagenet), ("timm", imagenet), ("huggingface", (None, None)),
                            ("lenet", (None, None))):
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose("config", overrides=["dataset=image_folder", f"model={model}"])
        resolved = OmegaConf.to_container(cfg, resolve=True)["dataset"]
        assert (resolved["mean"], resolved["std"]) == expected, model
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["dataset=cifar10", "model=timm", "dataset.mean=[0.5,0.5,0.5]"])
    assert OmegaConf.to_container(cfg, resolve=True)["dataset"]["mean"] == [0.5, 0.5, 0.5]
