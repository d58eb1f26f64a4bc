"""Model zoo and the checkpoint cache: hit, miss, key changes, weights-only loading."""
import pickle

import pytest
import torch

from evalxai.data import load_dataset
from evalxai.models import MODELS, build_model, get_model, model_key
from evalxai.models.cache import STATS, load_checkpoint

TRAIN = {"epochs": 1, "batch_size": 128, "lr": 0.003}


@pytest.mark.parametrize("name", sorted(n for n in MODELS if getattr(MODELS[n], "modality", "image") == "image"))
def test_zoo_shapes(name):
    for shape in [(1, 28, 28), (1, 8, 8)]:
        arch = {"patch": 4} if name == "vit_tiny" and shape[-1] == 8 else {}  # its patch must divide the image
        model = build_model(name, shape, **arch).eval()
        assert model(torch.rand(2, *shape)).shape == (2, 10)


@pytest.mark.slow
def test_cache_miss_then_hit(tmp_path):
    d = load_dataset("digits", cache_dir=tmp_path)
    misses, hits = STATS["misses"], STATS["hits"]
    m1, info1 = get_model(d, {"name": "mlp"}, TRAIN, seed=0, cache_dir=tmp_path, progress=False)
    assert not info1["cache_hit"] and STATS["misses"] == misses + 1
    m2, info2 = get_model(d, {"name": "mlp"}, TRAIN, seed=0, cache_dir=tmp_path, progress=False)
    assert info2["cache_hit"] and STATS["hits"] == hits + 1
    assert info1["test_accuracy"] == info2["test_accuracy"] > 0.5
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_key_changes_with_config(tmp_path):
    d = load_dataset("digits", cache_dir=tmp_path)
    base = model_key(d, {"name": "mlp"}, TRAIN, 0)
    assert base == model_key(d, {"name": "mlp"}, dict(TRAIN), 0)
    assert base != model_key(d, {"name": "mlp"}, {**TRAIN, "epochs": 2}, 0)
    assert base != model_key(d, {"name": "mlp"}, TRAIN, 1)
    assert base != model_key(d, {"name": "lenet"}, TRAIN, 0)
    assert base != model_key(d, {"name": "mlp", "arch": {"hidden": [32]}}, TRAIN, 0)
    d2 = load_dataset("digits", cache_dir=tmp_path, split_seed=1)
    assert base != model_key(d2, {"name": "mlp"}, TRAIN, 0)


class Evil:
    def __reduce__(self):
        return (print, ("this code ran",))


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"weight": Evil()}, fh)
    with pytest.raises(RuntimeError, match="weights_only"):
        load_checkpoint(path, build_model("mlp", (1, 8, 8)))
    assert "this code ran" not in capsys.readouterr().out


def test_corrupt_checkpoint_is_refused(tmp_path):
    d = load_dataset("digits", cache_dir=tmp_path)
    _, info = get_model(d, {"name": "mlp"}, TRAIN, seed=3, cache_dir=tmp_path, progress=False)
    with open(info["path"], "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(RuntimeError, match="corrupt"):
        get_model(d, {"name": "mlp"}, TRAIN, seed=3, cache_dir=tmp_path, progress=False)
