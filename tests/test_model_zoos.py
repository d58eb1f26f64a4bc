"""model=torchvision, model=timm and model=huggingface (issue 27): each config builds for the dataset's images,
trains once and is cached when it has no weights, takes checkpoints in the common layouts (the same logits), changes
its head with model.num_classes, uses pretrained weights as is (warning when the dataset's normalisation is not
theirs), and names the pip command when its library is missing; one run end to end on an image folder.

The libraries are not evalxai's dependencies: these tests need the reference environment (tools/reference_env.sh)
and skip elsewhere, except the missing-library errors, which hold everywhere."""
import json
import sys
import warnings

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from evalxai.data.base import ArrayDataset
from evalxai.models import LogitsOnly, build_library_model, get_model
from evalxai.runs.configs import CONF as CONFIGS

pytestmark = pytest.mark.reference

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
MODULE = {"torchvision": "torchvision", "timm": "timm", "huggingface": "transformers"}
TRAIN = {"epochs": 1, "batch_size": 4, "lr": 0.001}
SIZE = 32


def need(library: str):
    return pytest.importorskip(MODULE[library])


def toy(num_classes=3, n=6, mean=IMAGENET[0], std=IMAGENET[1]) -> ArrayDataset:
    """n train and n test RGB images of SIZE x SIZE, seeded, with ImageNet normalisation (the zoo configs' default)."""
    g = torch.Generator().manual_seed(num_classes)
    x, y = torch.rand(2 * n, 3, SIZE, SIZE, generator=g), torch.arange(2 * n) % num_classes
    return ArrayDataset("toy", x[:n], y[:n], x[n:], y[n:], classes=[f"c{i}" for i in range(num_classes)],
                        meta={"source": "toy", "n": n, "classes": num_classes}, mean=mean, std=std)


def hydra_value(v) -> str:
    """``v`` in Hydra's override grammar (maps with bare keys, strings quoted)."""
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{hydra_value(u)}" for k, u in v.items()) + "}"
    return json.dumps(v)


def model_cfg(library: str, name: str, **overrides) -> dict:
    """conf/model/<library>.yaml composed with model.name and ``overrides`` (model.X=value), as a plain dict."""
    args = [f"model={library}", f"model.name={name}"]
    args += [f"{'+' if k.startswith('kwargs.') else ''}model.{k}={hydra_value(v)}" for k, v in overrides.items()]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=args)
    return OmegaConf.to_container(cfg, resolve=True)["model"]


def fetch(data, cfg, tmp_path, train=None, **kw):
    cfg = dict(cfg)
    cfg.pop("train")
    return get_model(data, cfg, train or TRAIN, cache_dir=tmp_path, progress=False, **kw)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random-init ViTForImageClassification (3 labels, 32 px, patch 8) written by save_pretrained."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=SIZE, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3)
    folder = tmp_path_factory.mktemp("hf") / "tiny_vit"
    transformers.ViTForImageClassification(config).eval().save_pretrained(folder)
    return folder


# library, name, kwargs: the cases every test runs; "HF" stands for the saved folder
CASES = [("torchvision", "resnet18", {}), ("timm", "resnet18", {}), ("timm", "vit_tiny_patch16_224", {"depth": 2}),
         ("huggingface", "HF", {})]
IDS = ["torchvision-resnet18", "timm-resnet18", "timm-vit_tiny", "huggingface-vit"]


def case_cfg(library, name, kwargs, hf_dir, **fields):
    return model_cfg(library, str(hf_dir) if name == "HF" else name,
                     **{f"kwargs.{k}": v for k, v in kwargs.items()}, **fields)


@pytest.fixture
def hf(request):
    """The saved folder when the case needs it (transformers then imported), else None."""
    return request.getfixturevalue("hf_dir") if "huggingface" in request.node.name else None


@pytest.mark.parametrize("library,name,kwargs", CASES[:3], ids=IDS[:3])
def test_config_builds_for_the_dataset_trains_once_and_is_cached(library, name, kwargs, tmp_path):
    """No weights: built for the dataset's channels, size and classes, trained with model.train, then a cache hit."""
    need(library)
    data, cfg = toy(), model_cfg(library, name, **{f"kwargs.{k}": v for k, v in kwargs.items()})
    assert (cfg["mean"], cfg["std"]) == IMAGENET
    model, info = fetch(data, cfg, tmp_path)
    assert info["kind"] == library and info["label"] == name and info["trained"] and not info["cache_hit"]
    assert info["library_version"] == sys.modules[MODULE[library]].__version__ and info["num_classes"] == 3
    x, _ = data.test_items(torch.arange(2).numpy())
    assert model(x).shape == (2, 3) and not model.training
    again, info2 = fetch(data, cfg, tmp_path)
    assert info2["cache_hit"] and info2["key"] == info["key"] and info2["identity"] == info["identity"]
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    if name.startswith("vit"):
        assert info["img_size"] == [SIZE, SIZE]  # a fixed-size timm model takes the dataset's image size


def test_huggingface_folder_is_used_as_is_and_returns_logits(hf_dir, tmp_path):
    transformers = need("huggingface")
    data = toy(mean=None, std=None)
    cfg = model_cfg("huggingface", str(hf_dir))
    assert cfg["mean"] is None and cfg["std"] is None
    model, info = fetch(data, cfg, tmp_path)
    assert isinstance(model, LogitsOnly) and isinstance(model.model, transformers.ViTForImageClassification)
    assert info["kind"] == "huggingface" and info["label"] == "tiny_vit" and not info["trained"]
    assert set(info["weights_sha256"]) >= {"config.json", "model.safetensors"}
    saved = transformers.AutoModelForImageClassification.from_pretrained(hf_dir).eval()
    x, _ = data.test_items(torch.arange(4).numpy())
    logits = model(x)
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, saved(x).logits, rtol=0, atol=0)
    assert not (tmp_path / "models").exists()  # complete weights: nothing trained, nothing cached


LAYOUTS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 3},
    "model": lambda s: {"model": s, "optimizer": {"lr": 0.1}},
    "model_state_dict": lambda s: {"model_state_dict": s, "epoch": 3},
    "module.": lambda s: {f"module.{k}": v for k, v in s.items()},  # DataParallel
    "model.": lambda s: {f"model.{k}": v for k, v in s.items()},  # a Lightning module, LogitsOnly
    "module.model. under state_dict": lambda s: {"state_dict": {f"module.model.{k}": v for k, v in s.items()}},
}


# every layout on the two quick models; the two resnet18 with a plain and the most wrapped layout
LAYOUT_CASES = [pytest.param(*CASES[i], layout, id=f"{IDS[i]}-{layout}") for i in (2, 3) for layout in LAYOUTS]
LAYOUT_CASES += [pytest.param(*CASES[i], layout, id=f"{IDS[i]}-{layout}") for i in (0, 1)
                 for layout in ("plain", "module.model. under state_dict")]


@pytest.mark.parametrize("library,name,kwargs,layout", LAYOUT_CASES)
def test_checkpoint_layouts_load_and_give_the_same_logits(library, name, kwargs, layout, hf, tmp_path):
    """A state dict of the library's model, saved in each layout: loaded as is (no training, nothing downloaded),
    the logits of the model that was saved."""
    need(library)
    data = toy()
    cfg = case_cfg(library, name, kwargs, hf)
    torch.manual_seed(7)
    saved = build_library_model(cfg, data.input_shape, data.num_classes, use_pretrained=False)
    path = tmp_path / "weights.pt"
    torch.save(LAYOUTS[layout](saved.inner.state_dict()), path)
    model, info = fetch(data, {**cfg, "checkpoint": str(path)}, tmp_path)
    assert not info["trained"] and info["checkpoint"] == str(path.resolve()) and len(info["checkpoint_sha256"]) == 64
    x, _ = data.test_items(torch.arange(3).numpy())
    with torch.no_grad():
        torch.testing.assert_close(model(x), saved.model.eval()(x), rtol=0, atol=0)
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("library,name,kwargs", CASES, ids=IDS)
def test_num_classes_changes_the_head(library, name, kwargs, hf, tmp_path):
    need(library)
    cfg = case_cfg(library, name, kwargs, hf, num_classes=5)
    built = build_library_model(cfg, (3, SIZE, SIZE), 3, use_pretrained=library == "huggingface")
    with torch.no_grad():
        assert built.model.eval()(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 5)
    if library == "huggingface":  # the saved body, a new head: incomplete weights, trained before use
        import transformers

        saved = transformers.AutoModelForImageClassification.from_pretrained(hf)
        assert built.inner.classifier.out_features == 5 and built.pretrained and not built.complete
        assert torch.equal(built.inner.vit.embeddings.patch_embeddings.projection.weight,
                           saved.vit.embeddings.patch_embeddings.projection.weight)
    with pytest.raises(ValueError, match=r"gives 5 outputs but the dataset has 3 classes: set model.num_classes=3"):
        fetch(toy(), cfg, tmp_path)
    if library == "huggingface":
        _, info = fetch(toy(5), cfg, tmp_path)  # the dataset's 5 classes: the new head trained with model.train
        assert info["num_classes"] == 5 and info["trained"] and info["pretrained"]


def test_timm_pretrained_weights_are_used_as_is_and_their_normalisation_checked(tmp_path):
    """pretrained=true (the file given through timm's pretrained_cfg_overlay, as a download would be): used as is on
    a dataset of its 1000 classes; a ViT's own normalisation (0.5, 0.5) is not the ImageNet default, and a warning
    names the fix; with model.num_classes, a new head on the pretrained body is trained."""
    timm = need("timm")
    data = toy()
    thousand = ArrayDataset("toy", data.x_train, data.y_train, data.x_test, data.y_test,
                            classes=[str(i) for i in range(1000)], meta={"source": "toy1000"}, mean=IMAGENET[0],
                            std=IMAGENET[1])
    torch.manual_seed(3)
    vit = timm.create_model("vit_tiny_patch16_224", depth=2, img_size=SIZE).eval()
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    cfg = model_cfg("timm", "vit_tiny_patch16_224", pretrained=True, **{
        "kwargs.depth": 2, "kwargs.pretrained_cfg_overlay": {"file": str(tmp_path / "vit.pth")}})
    with pytest.warns(UserWarning, match=r"expect normalisation mean \[0.5,0.5,0.5\].*set model.mean=\[0.5,0.5,0.5\] "
                                         r"model.std=\[0.5,0.5,0.5\]"):
        model, info = fetch(thousand, cfg, tmp_path)
    assert info["pretrained"] and not info["trained"] and info["checkpoint"] is None
    x, _ = data.test_items(torch.arange(2).numpy())
    torch.testing.assert_close(model(x), vit(x), rtol=0, atol=0)
    halves = ArrayDataset("toy", data.x_train, data.y_train, data.x_test, data.y_test, classes=thousand.classes,
                          meta={"source": "toy1000"}, mean=[0.5] * 3, std=[0.5] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own normalisation: no warning
        fetch(halves, cfg, tmp_path)
    with pytest.raises(ValueError, match=r"gives 1000 outputs but the dataset has 3 classes: set model.num_classes=3 "
                                         r"\(a new head, trained with model.train\)"):
        fetch(data, cfg, tmp_path)
    with pytest.warns(UserWarning, match="expect normalisation mean"):  # the body's normalisation still counts
        head, info = fetch(data, {**cfg, "num_classes": 3}, tmp_path)
    assert info["trained"] and info["pretrained"] and head.get_classifier().out_features == 3


def test_huggingface_preprocessor_normalisation_is_checked(hf_dir, tmp_path):
    need("huggingface")
    import shutil

    folder = tmp_path / "with_processor"
    shutil.copytree(hf_dir, folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    cfg = model_cfg("huggingface", str(folder))
    with pytest.warns(UserWarning, match=r"model=huggingface .* mean None std None: set model.mean=\[0.5,0.5,0.5\]"):
        fetch(toy(mean=None, std=None), cfg, tmp_path)


@pytest.mark.parametrize("library", list(MODULE))
def test_missing_library_is_one_line_naming_the_pip_command(library, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, MODULE[library], None)  # as if not installed
    with pytest.raises(ImportError) as err:
        fetch(toy(), model_cfg(library, "resnet18"), tmp_path)
    msg = str(err.value)
    assert f"model={library} needs {MODULE[library]}, which is not installed: pip install {MODULE[library]}" in msg
    assert "\n" not in msg


def test_errors_name_the_value_and_the_fix(tmp_path, hf_dir):
    need("torchvision")
    need("timm")
    data = toy()
    with pytest.raises(ValueError, match=r"model.name=resnet1B is not a torchvision classification model: did you "
                                         r"mean \[.*'resnet18'"):
        fetch(data, model_cfg("torchvision", "resnet1B"), tmp_path)
    with pytest.raises(ValueError, match=r"model.name=resnet1B is not a timm model: did you mean"):
        fetch(data, model_cfg("timm", "resnet1B"), tmp_path)
    with pytest.raises(ValueError, match=r"model.weights=NOPE is not a weights name of torchvision's resnet18: "
                                         r"choose DEFAULT or one of \['IMAGENET1K_V1'\]"):
        fetch(data, model_cfg("torchvision", "resnet18", weights="NOPE"), tmp_path)
    with pytest.raises(ValueError, match=r"model=timm needs model.name=NAME"):
        fetch(data, {**model_cfg("timm", "x"), "name": None}, tmp_path)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['arch'\] in the model config of model=timm"):
        fetch(data, {**model_cfg("timm", "resnet18"), "arch": {}}, tmp_path)
    with pytest.raises(ValueError, match=r"model=torchvision takes no _target_"):
        fetch(data, {**model_cfg("torchvision", "resnet18"), "_target_": "x.Y"}, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model.name=./no_such_dir is not a folder"):
        fetch(data, model_cfg("huggingface", "./no_such_dir"), tmp_path)
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ValueError) as err:
        fetch(data, model_cfg("torchvision", "resnet18", checkpoint=str(tmp_path / "linear.pt")), tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "linear.pt") in msg and "does not fit the model ResNet" in msg and "\n" not in msg
    assert msg.endswith("build the model as it was when saved (model=torchvision model.name=resnet18, "
                        "model.num_classes, model.kwargs)")


@pytest.mark.slow
def test_run_on_an_image_folder_with_a_torchvision_checkpoint(tmp_path, cache_dir):
    """The pipeline on images written here, model=torchvision model.name=resnet18 model.checkpoint=..., three methods
    (LRP included) and one metric: the tables are written, with the ImageNet normalisation of the config."""
    torchvision = pytest.importorskip("torchvision")
    import pandas as pd

    from evalxai.runs.pipeline import run_experiment
    from tests.test_own_model_e2e import write_folder

    write_folder(tmp_path / "images")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "resnet18.pt")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=[
            "experiment=mnist_smoke", "dataset=image_folder", f"dataset.root={tmp_path / 'images'}",
            f"dataset.image_size={SIZE}", "model=torchvision", "model.name=resnet18",
            f"model.checkpoint={tmp_path / 'resnet18.pt'}", "n_samples=4",
            "methods=[gradient,gradient_x_input,lrp_epsilon_plus]", "~metrics", "+metrics={sparseness: {}}",
            "progress=false"])
    out = run_experiment(OmegaConf.to_container(cfg, resolve=True), tmp_path / "run", progress=False)
    for name in ("scores.parquet", "scores.csv", "summary.csv", "run.json"):
        assert (out / name).stat().st_size > 0, name
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["method"]) == {"gradient", "gradient_x_input", "lrp_epsilon_plus"}
    assert set(scores["metric"]) == {"sparseness"} and scores["sample"].nunique() == 4
    assert set(scores["model"]) == {"resnet18"} and scores["value"].notna().all()
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["kind"] == "torchvision" and run["model"]["trained"] is False
    assert run["dataset"]["normalization"] == {"mean": IMAGENET[0], "std": IMAGENET[1]}


@pytest.mark.slow
@pytest.mark.parametrize("library", ["timm", "huggingface"])
def test_rule_comparison_on_an_image_folder_with_timm_and_huggingface(tmp_path, cache_dir, hf_dir, library):
    """The mnist_lrp-style comparison (LRP composites against gradients, pixel flipping and sparseness) on images
    written here, with a saved timm checkpoint (resnet18) or a Hugging Face folder (a tiny ViT, also AttnLRP)."""
    import pandas as pd

    from evalxai.runs.pipeline import run_experiment
    from tests.test_own_model_e2e import write_folder

    write_folder(tmp_path / "images")
    if library == "timm":
        timm = pytest.importorskip("timm")
        torch.manual_seed(0)
        torch.save({"state_dict": timm.create_model("resnet18", num_classes=3).state_dict()}, tmp_path / "r18.pt")
        model = ["model=timm", "model.name=resnet18", f"model.checkpoint={tmp_path / 'r18.pt'}"]
        methods = ["gradient", "lrp_epsilon_plus", "lrp_epsilon_gamma_box"]
    else:
        model = ["model=huggingface", f"model.name={hf_dir}"]
        methods = ["gradient", "lrp_epsilon_plus", "attnlrp"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=[
            "experiment=mnist_smoke", "dataset=image_folder", f"dataset.root={tmp_path / 'images'}",
            f"dataset.image_size={SIZE}", *model, "n_samples=4", f"methods=[{','.join(methods)}]", "~metrics",
            "+metrics={sparseness: {}, pixel_flipping: {patch_size: 8}}", "progress=false"])
    out = run_experiment(OmegaConf.to_container(cfg, resolve=True), tmp_path / "run", progress=False)
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["method"]) == set(methods)
    assert {"sparseness", "pixel_flipping"} <= set(scores["metric"])
    assert scores.groupby(["method", "metric"])["sample"].nunique().min() == 4
    assert json.loads((out / "run.json").read_text())["model"]["kind"] == library
