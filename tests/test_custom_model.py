"""model=custom: a user's module by _target_ (or model.path), a checkpoint used as is, or trained and cached;
errors for checkpoints that do not fit, corrupt files, unknown keys, a _target_ on a zoo model, a wrong width."""
import textwrap

import pytest
import torch
import yaml

import evalxai.models.cache as cache_mod
from evalxai.data import load_dataset
from evalxai.models import get_model
from evalxai.models.cache import STATS
from evalxai.models.custom import CUSTOM_FIELDS, file_sha256
from evalxai.models.train import evaluate, train_model
from evalxai.runs.configs import CONF as CONFIGS
from tests.custom_models import TinyNet

TRAIN = {"epochs": 3, "batch_size": 64, "lr": 0.01}
TARGET = "tests.custom_models.TinyNet"
CONF = CONFIGS / "model" / "custom.yaml"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", cache_dir=tmp_path_factory.mktemp("data"))


def cfg(**fields):
    return {"name": "custom", "_target_": TARGET, "kwargs": {"num_classes": 10, "width": 4}, **fields}


def trained_state(digits, tmp_path, name="net.pt", wrap=None):
    """A TinyNet trained outside evalxai's cache and saved as a user would save it."""
    torch.manual_seed(1)
    net = TinyNet(num_classes=10, width=4)
    x, y = digits.train_tensors()
    train_model(net, x, y, seed=1, progress=False, **TRAIN)
    state = net.state_dict()
    path = tmp_path / name
    torch.save(state if wrap is None else {wrap: state, "epoch": 1}, path)
    return net, path


def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model with a checkpoint must not be trained")
    monkeypatch.setattr(cache_mod, "train_model", refuse)


def test_config_file_lists_the_accepted_fields():
    conf = yaml.safe_load(CONF.read_text())
    assert set(conf) == set(CUSTOM_FIELDS) and conf["name"] == "custom" and conf["_target_"] is None


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_checkpoint_used_as_is(digits, tmp_path, monkeypatch, wrap):
    net, path = trained_state(digits, tmp_path, wrap=wrap)
    no_training(monkeypatch)
    misses = STATS["misses"]
    model, info = get_model(digits, cfg(checkpoint=str(path)), TRAIN, seed=0, cache_dir=tmp_path, progress=False)
    assert not model.training and STATS["misses"] == misses
    for a, b in zip(model.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    x, y = map(torch.cat, zip(*digits.test_batches()))
    assert len(y) == len(digits)
    assert info["test_accuracy"] == evaluate(net, x, y) > 0.3
    assert info["trained"] is False and info["checkpoint"] == str(path.resolve())
    assert info["checkpoint_sha256"] == file_sha256(path) and len(info["checkpoint_sha256"]) == 64
    assert info["target"] == TARGET and info["kwargs"] == {"num_classes": 10, "width": 4}
    assert info["label"] == "TinyNet" and info["class"] == "tests.custom_models.TinyNet"
    assert not (tmp_path / "models").exists()  # the checkpoint is the source: nothing written to the cache
    _, again = get_model(digits, cfg(checkpoint=str(path)), TRAIN, seed=5, cache_dir=tmp_path, progress=False)
    assert again["key"] == info["key"]  # the seed does not matter for given weights
    _, named = get_model(digits, cfg(checkpoint=str(path), name="my_tiny"), {}, cache_dir=tmp_path, progress=False)
    assert named["label"] == "my_tiny"


def test_factory_and_colon_target(digits, tmp_path, monkeypatch):
    _, path = trained_state(digits, tmp_path)
    no_training(monkeypatch)
    for target in ("tests.custom_models.tiny_net", "tests.custom_models:tiny_net"):
        _, info = get_model(digits, cfg(_target_=target, checkpoint=str(path)), {}, cache_dir=tmp_path,
                            progress=False)
        assert info["label"] == "TinyNet" and info["target"] == target


def test_module_from_model_path(digits, tmp_path):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "evalxai_test_user_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        class FlatNet(nn.Sequential):
            def __init__(self, num_classes, hidden=16):
                super().__init__(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    """))
    spec = {"name": "custom", "_target_": "evalxai_test_user_nets.FlatNet", "kwargs": {"num_classes": 10}}
    with pytest.raises(ImportError, match="evalxai_test_user_nets.*model.path"):
        get_model(digits, spec, TRAIN, cache_dir=tmp_path, progress=False)
    model, info = get_model(digits, {**spec, "path": str(folder)}, TRAIN, cache_dir=tmp_path, progress=False)
    assert info["label"] == "FlatNet" and info["trained"] and not info["cache_hit"]
    assert info["source"]["file_sha256"] == file_sha256(folder / "evalxai_test_user_nets.py")
    assert str(folder) not in __import__("sys").path


def test_trained_then_cache_hit(digits, tmp_path):
    misses, hits = STATS["misses"], STATS["hits"]
    m1, info1 = get_model(digits, cfg(), TRAIN, seed=0, cache_dir=tmp_path, progress=False)
    assert not info1["cache_hit"] and info1["trained"] and STATS["misses"] == misses + 1
    assert info1["test_accuracy"] > 0.3 and info1["checkpoint"] is None and info1["path"].endswith(".pt")
    m2, info2 = get_model(digits, cfg(), TRAIN, seed=0, cache_dir=tmp_path, progress=False)
    assert info2["cache_hit"] and STATS["hits"] == hits + 1 and info2["key"] == info1["key"]
    assert info2["test_accuracy"] == info1["test_accuracy"] and info2["label"] == "TinyNet"
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # the key holds the target, its kwargs and the seed (a readable name does not change the weights)
    _, other_seed = get_model(digits, cfg(), TRAIN, seed=1, cache_dir=tmp_path, progress=False)
    _, wider = get_model(digits, cfg(kwargs={"num_classes": 10, "width": 5}), TRAIN, cache_dir=tmp_path,
                         progress=False)
    _, named = get_model(digits, cfg(name="tiny"), TRAIN, seed=0, cache_dir=tmp_path, progress=False)
    assert len({info1["key"], other_seed["key"], wider["key"]}) == 3
    assert named["cache_hit"] and named["key"] == info1["key"] and named["label"] == "tiny"


def test_checkpoint_with_wrong_keys(digits, tmp_path):
    path = tmp_path / "wrong.pt"
    state = TinyNet(num_classes=10, width=4).state_dict()
    state["head.weight"] = state.pop("classifier.1.weight")
    state["features.0.bias"] = torch.zeros(7)
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        get_model(digits, cfg(checkpoint=str(path)), {}, cache_dir=tmp_path, progress=False)
    msg = str(err.value)
    assert str(path) in msg and "missing keys ['classifier.1.weight']" in msg
    assert "unexpected keys ['head.weight']" in msg and "features.0.bias: checkpoint (7,) vs model (4,)" in msg


def test_corrupt_or_foreign_checkpoint(digits, tmp_path):
    _, good = trained_state(digits, tmp_path)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:200])
    pickled = tmp_path / "whole_model.pt"
    torch.save(TinyNet(), pickled)  # a pickled module, not a state dict: weights_only refuses it
    for bad in (corrupt, pickled):
        with pytest.raises(RuntimeError, match=f"{bad}.*weights_only"):
            get_model(digits, cfg(checkpoint=str(bad)), {}, cache_dir=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        get_model(digits, cfg(checkpoint=str(tmp_path / "missing.pt")), {}, cache_dir=tmp_path, progress=False)
    numbers = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, numbers)
    with pytest.raises(ValueError, match="no state dict.*epoch"):
        get_model(digits, cfg(checkpoint=str(numbers)), {}, cache_dir=tmp_path, progress=False)


def test_config_errors(digits, tmp_path):
    def run(spec):
        return get_model(digits, spec, TRAIN, cache_dir=tmp_path, progress=False)

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['weights'\].*accepted are \['name', '_target_'"):
        run(cfg(weights="x.pt"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['kwargs'\].*zoo model 'lenet'.*\['name', 'arch'"):
        run({"name": "lenet", "kwargs": {}})
    with pytest.raises(ValueError, match="'lenet' is a zoo model and takes no _target_.*model=custom"):
        run({"name": "lenet", "_target_": TARGET})
    with pytest.raises(ValueError, match="model=custom needs model._target_"):
        run({"name": "custom", "_target_": None})
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*model=custom"):
        run({"name": "resnet50"})
    with pytest.raises(ImportError, match="tests.custom_models.*no attribute 'Nope'.*model.path"):
        run(cfg(_target_="tests.custom_models.Nope"))
    with pytest.raises(ImportError, match="no module 'no_such_pkg_xyz'.*model.path=DIR"):
        run(cfg(_target_="no_such_pkg_xyz.models.Net"))
    with pytest.raises(TypeError, match="returned a dict, not a torch.nn.Module"):
        run(cfg(_target_="tests.custom_models.not_a_module"))
    with pytest.raises(RuntimeError, match=r"TinyNet\(\*\*\{.*'depth': 3\}\) failed: TypeError"):
        run(cfg(kwargs={"depth": 3}))


def test_wrong_output_width(digits, tmp_path):
    with pytest.raises(ValueError, match=r"gives 3 outputs but the dataset has 10 classes.*num_classes=10"):
        get_model(digits, cfg(kwargs={"num_classes": 3}), TRAIN, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"gives 3 outputs.*num_classes=10"):  # before any checkpoint is read
        get_model(digits, cfg(kwargs={"num_classes": 3}, checkpoint=str(tmp_path / "absent.pt")), {},
                  cache_dir=tmp_path, progress=False)
    with pytest.raises(RuntimeError, match=r"cannot take one input of the dataset's shape \(1, 1, 8, 8\)"):
        get_model(digits, cfg(kwargs={"num_classes": 10, "in_channels": 3}), TRAIN, cache_dir=tmp_path,
                  progress=False)


def test_dataparallel_prefix_is_stripped(digits, tmp_path):
    net, path = trained_state(digits, tmp_path)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    model, _ = get_model(digits, cfg(checkpoint=str(path)), {}, cache_dir=tmp_path, progress=False)
    assert torch.equal(model.classifier[1].weight, net.classifier[1].weight)
