"""Your model, your data (issue 15), end to end: a module file, a checkpoint and an RGB image folder with
normalisation, run by the command of the README; the accuracy, the pixel-space definitions and what is read."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import evalxai
from evalxai.data import load_dataset
from evalxai.runs.configs import CONF as CONFIGS
from tests.test_cli import ROOT, run_cli

pytestmark = pytest.mark.slow  # end to end: runs through the CLI or the pipeline (pytest -m 'not slow' skips)

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
MODULE = '''
import torch
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, num_classes=3, width=6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))
'''


def write_folder(root, n_per_class=(5, 3), size_of=lambda i: (20 + 3 * (i % 4), 18 + 2 * (i % 3))):
    """root/{train,test}/<class>/*.png|jpg: three colour classes, mixed sizes and formats."""
    rng = np.random.default_rng(0)
    colours = {"cat": (200, 60, 40), "dog": (40, 180, 60), "owl": (50, 60, 210)}
    for split, n in zip(("train", "test"), n_per_class):
        for c, rgb in colours.items():
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                w, h = size_of(i)
                img = np.clip(np.asarray(rgb) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(img).save(root / split / c / f"{c}{i}.{ext}")


@pytest.fixture(scope="module")
def own_run(tmp_path_factory, cache_dir):
    """The README's example: module file, checkpoint (trained briefly here), image folder, one command."""
    tmp = tmp_path_factory.mktemp("own")
    write_folder(tmp / "images")
    (tmp / "nets").mkdir()
    (tmp / "nets" / "mynets.py").write_text(MODULE)
    sys.path.insert(0, str(tmp / "nets"))
    try:
        from mynets import SmallNet
    finally:
        sys.path.remove(str(tmp / "nets"))
    torch.manual_seed(0)
    model = SmallNet(num_classes=3)
    data = load_dataset("image_folder", root=str(tmp / "images"), image_size=16, mean=MEAN, std=STD)
    x, y = data.train_tensors()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    torch.save(model.state_dict(), tmp / "smallnet.pt")
    out = tmp / "run"
    res = run_cli(["experiment=mnist_smoke", "dataset=image_folder", f"dataset.root={tmp / 'images'}",
                   "dataset.image_size=16", f"dataset.mean={MEAN}", f"dataset.std={STD}", "model=custom",
                   "model._target_=mynets.SmallNet", f"model.path={tmp / 'nets'}", "+model.kwargs.num_classes=3",
                   f"model.checkpoint={tmp / 'smallnet.pt'}", "n_samples=6", "save_attributions=true",
                   "methods=[lrp_epsilon_gamma_box,integrated_gradients,gradient]",
                   "metrics={pixel_flipping: {patch_size: 4}, conservation: {}}",
                   f"hydra.run.dir={out}", "progress=false"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, out, model.eval(), data


def test_accuracy_is_that_of_the_checkpoint_on_the_test_split(own_run):
    tmp, out, model, data = own_run
    run = json.loads((out / "run.json").read_text())
    x, y = data.test_items(np.arange(len(data)))
    with torch.no_grad():
        direct = (model(x).argmax(1) == y).double().mean().item()
    assert run["model"]["test_accuracy"] == pytest.approx(direct, abs=1e-12) and direct > 0.5
    assert run["model"]["target"] == "mynets.SmallNet" and run["model"]["checkpoint_sha256"]
    assert run["dataset"]["classes"] == ["cat", "dog", "owl"]
    assert run["dataset"]["normalization"] == {"mean": MEAN, "std": STD}


def test_pixel_space_definitions(own_run):
    """Box bounds are the per-channel (0 - mean)/std and (1 - mean)/std, the zero baseline is a black image."""
    tmp, out, model, data = own_run
    saved = np.load(out / "attributions.npz")
    x, t = torch.from_numpy(saved["x"]), torch.from_numpy(saved["target"])
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    torch.testing.assert_close(data.low, low)
    torch.testing.assert_close(data.high, high)
    box = evalxai.explain(model, x, t, method="lrp_epsilon_gamma_box", low=low, high=high)
    torch.testing.assert_close(torch.from_numpy(saved["lrp_epsilon_gamma_box"]), box)
    black = low.expand_as(x)
    ig = evalxai.explain(model, x, t, method="integrated_gradients", baseline=black)
    torch.testing.assert_close(torch.from_numpy(saved["integrated_gradients"]), ig)
    df = pd.read_parquet(out / "scores.parquet")
    assert set(df.loc[df["metric"] == "conservation", "reference"].dropna()) <= {"zero", "none"}
    curve = df[(df["measure"] == "curve_morf") & (df["method"] == "gradient")]
    last = curve[curve["step"] == curve["step"].max()].sort_values("sample")["value"].to_numpy()
    with torch.no_grad():
        f_black = model(black)[range(len(t)), t].numpy()
    np.testing.assert_allclose(last, f_black, rtol=1e-5)  # everything removed = a black image
    assert set(df.loc[df["metric"] == "pixel_flipping", "baseline"]) == {"zero"}  # recorded in the table


def test_report_heatmaps_and_leaderboard(own_run):
    tmp, out, model, data = own_run
    for name in ("report.html", "plots/heatmaps.png", "summary.csv"):
        assert (out / name).stat().st_size > 0
    res = subprocess.run([sys.executable, "-m", "evalxai.report.leaderboard", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["model"]) == {"SmallNet"} and set(board["dataset"]) == {"image_folder"}


def test_only_the_explained_images_are_read(tmp_path, monkeypatch, cache_dir):
    """16 of a 2 000-image test folder: the run decodes those 16 plus the test split once, in streamed batches
    (accuracy), and never the train split (the model comes from a checkpoint)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import evalxai.data.image_folder as folder
    from evalxai.runs.pipeline import run_experiment

    root = tmp_path / "big"
    write_folder(root, n_per_class=(40, 667), size_of=lambda i: (8, 8))  # 120 train, 2 001 test images
    sys.path.insert(0, str(tmp_path))
    (tmp_path / "mynets_big.py").write_text(MODULE)
    from mynets_big import SmallNet

    sys.path.remove(str(tmp_path))
    torch.save(SmallNet(num_classes=3).state_dict(), tmp_path / "w.pt")
    opened, batch = [], []
    real_read = folder.ImageFolderDataset._read

    def counting_read(self, files):
        batch.append(len(files))
        opened.extend(str(f) for f in files)
        return real_read(self, files)

    monkeypatch.setattr(folder.ImageFolderDataset, "_read", counting_read)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=[
            "experiment=mnist_smoke", "dataset=image_folder", f"dataset.root={root}", "model=custom",
            "model._target_=mynets_big.SmallNet", f"model.path={tmp_path}", "+model.kwargs.num_classes=3",
            f"model.checkpoint={tmp_path / 'w.pt'}", "n_samples=16", "methods=[gradient]",
            "metrics={sparseness: {}}", "progress=false"])
    run_experiment(OmegaConf.to_container(cfg, resolve=True), tmp_path / "run", progress=False)
    assert not any("/train/" in f for f in opened)
    assert len(opened) == 2001 + 16 and max(batch) <= 256


class AnyNet(torch.nn.Module):
    """Global-average-pooled conv net for any channels and size."""

    def __init__(self, channels=3, num_classes=10):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def cifar10_root(tmp):
    from tests.test_local_datasets import _cifar, _py2_pickle

    folder = tmp / "cifar-10-batches-py"
    _cifar(folder, [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], 10, "labels",
           np.random.default_rng(0), n=40)
    (folder / "batches.meta").write_bytes(_py2_pickle({"label_names": [f"c{i}" for i in range(10)]}))
    return {"root": str(tmp), "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}


def tensors_file(tmp):
    rng = np.random.default_rng(1)
    np.savez(tmp / "t.npz", x_test=rng.integers(0, 256, (50, 12, 12, 3), dtype=np.uint8), y_test=np.arange(50) % 10)
    return {"path": str(tmp / "t.npz")}


def flat_folder(tmp):
    write_folder(tmp / "written", n_per_class=(0, 10))
    (tmp / "written" / "test").rename(tmp / "flat")  # class folders only: a stratified split
    return {"root": str(tmp / "flat"), "resize": 20, "crop": 16, "n_test": 0.5}


@pytest.mark.parametrize("kind,make", [("cifar10", cifar10_root), ("tensors", tensors_file),
                                       ("image_folder", flat_folder)])
def test_run_accuracy_equals_the_direct_accuracy_for_every_dataset_kind(kind, make, tmp_path, cache_dir):
    """The accuracy get_model reports (streamed) equals the accuracy of the same weights on the same split and
    transform, computed here in one batch."""
    from evalxai.models import get_model

    data = load_dataset(kind, **make(tmp_path))
    torch.manual_seed(0)
    net = AnyNet(num_classes=data.num_classes)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    model, info = get_model(data, {"name": "custom", "_target_": "tests.test_own_model_e2e.AnyNet",
                                   "kwargs": {"num_classes": data.num_classes},
                                   "checkpoint": str(tmp_path / "w.pt")}, {}, progress=False)
    x, y = data.test_items(np.arange(len(data)))
    with torch.no_grad():
        direct = (net(x).argmax(1) == y).double().mean().item()
    assert info["test_accuracy"] == pytest.approx(direct, abs=1e-12) and len(data) >= 15


def test_dropped_targets_and_unknown_keys_are_errors(tmp_path, cache_dir):
    """The issue's first try: a _target_ on the zoo model and on the built-in dataset used to be dropped silently
    (LeNet on MNIST reported as ResNet-18 on CIFAR-10)."""
    res = run_cli(["experiment=mnist_smoke", "+model._target_=torchvision.models.resnet18",
                   "+dataset._target_=torchvision.datasets.CIFAR10", f"hydra.run.dir={tmp_path}", "progress=false"],
                  cache_dir)
    assert res.returncode == 1 and "takes no _target_" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "scores.parquet").exists()
    with pytest.raises(TypeError, match=r"'digits' has no field \['colour'\]: it takes \['n_test', 'split_seed'\]"):
        load_dataset("digits", colour=3)
    res = run_cli(["experiment=mnist_smoke", "+model._target_=torchvision.models.resnet18", "progress=false",
                   f"hydra.run.dir={tmp_path}"], cache_dir)
    assert res.returncode == 1 and "_target_" in res.stderr and "lenet" in res.stderr
    from evalxai.runs.pipeline import check_run

    with pytest.raises(TypeError, match=r"metric 'sparseness' has no parameter \['patch_size'\]"):
        check_run({"methods": ["gradient"], "metrics": {"sparseness": {"patch_size": 2}}})


def test_more_samples_than_test_images_warns_and_records_both(tmp_path, cache_dir):
    """n_samples=100 on a 9-image test split runs on 9, says so, and run.json keeps both numbers."""
    from evalxai.runs.pipeline import run_experiment
    from tests.test_cache_keys import checkpoint_cfg, tiny_checkpoint

    write_folder(tmp_path / "images")
    cfg = checkpoint_cfg(tiny_checkpoint(tmp_path / "net.pt", 0, num_classes=3, in_channels=3), **{
        "dataset": "image_folder", "dataset.root": str(tmp_path / "images"), "dataset.image_size": 16,
        "+model.kwargs.num_classes": 3, "+model.kwargs.in_channels": 3, "n_samples": 100})
    with pytest.warns(UserWarning, match=r"n_samples=100 .* 9 images"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["n_samples"] == 9 and run["n_samples_requested"] == 100
    assert pd.read_parquet(tmp_path / "run" / "scores.parquet")["sample"].nunique() == 9
