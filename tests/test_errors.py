"""Bad input ends in one clear error and nothing half-written; a property test over random ReLU nets."""
import errno

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import evalxai
from evalxai.runs.configs import CONF as CONFIGS
from tests.test_cli import run_cli


class NaNForSample(nn.Module):
    """A model whose logits are NaN for inputs with a negative first pixel."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        scale = torch.where(x.flatten(1)[:, :1] < 0, float("nan"), 1.0)
        return self.fc(x.flatten(1)) * scale


def test_nan_logits_name_the_samples():
    model = NaNForSample().eval()
    x = torch.rand(4, 1, 2, 2)
    x[2, 0, 0, 0] = -1.0
    with pytest.raises(ValueError, match=r"logits hold NaN or inf for samples \[2\]"):
        evalxai.score(model, x, torch.zeros(4, dtype=torch.long), torch.rand_like(x), metric="pixel_flipping")
    with pytest.raises(ValueError, match=r"attributions of 'gradient' hold NaN or inf for samples \[2\]"):
        evalxai.explain(model, x, torch.zeros(4, dtype=torch.long), method="gradient")


def test_logit_check_runs_once_per_batch_and_sees_changes():
    """score() remembers a finite-logits check for the same x and parameters, and repeats it after a change."""
    model = NaNForSample().eval()
    x, t = torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    checks = []  # forwards of the batch itself: the logit check (the metric forwards perturbed copies)
    handle = model.register_forward_hook(lambda m, inputs, out: checks.append(1) if inputs[0] is x else None)
    try:
        evalxai.score(model, x, t, torch.rand_like(x), metric="pixel_flipping")
        assert len(checks) == 1
        evalxai.score(model, x, t, torch.rand_like(x), metric="pixel_flipping")
        assert len(checks) == 1  # no second check for the same batch
        with torch.no_grad():
            model.fc.bias.fill_(float("nan"))  # an in-place parameter change invalidates the answer
        with pytest.raises(ValueError, match=r"logits hold NaN or inf for samples \[0, 1, 2, 3\]"):
            evalxai.score(model, x, t, torch.rand_like(x), metric="pixel_flipping")
        model.fc.bias.data.zero_()
        x2 = x.clone()
        x2[1, 0, 0, 0] = -1.0  # another batch: checked anew
        with pytest.raises(ValueError, match=r"samples \[1\]"):
            evalxai.score(model, x2, t, torch.rand_like(x), metric="pixel_flipping")
    finally:
        handle.remove()


def test_a_metric_of_the_maps_alone_never_runs_the_model():
    """Localisation and complexity metrics read the maps (and masks) alone: no logit check, no memory probe, no
    forward of the batch (only the output-size probe of one sample that checks the targets), so a model whose logits
    are NaN does not matter to them (its maps would be refused by explain)."""
    model = NaNForSample().eval()
    x, t = -torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)  # NaN logits for every sample
    calls = []
    handle = model.register_forward_hook(lambda m, inputs, out: calls.append(len(inputs[0])))
    try:
        rows = evalxai.score(model, x, t, torch.rand_like(x), metric="sparseness")
        rows = pd.concat([rows, evalxai.score(model, x, t, torch.rand_like(x), metric="relevance_mass_accuracy",
                                              masks=torch.eye(2, dtype=torch.bool).expand(4, 2, 2))])
    finally:
        handle.remove()
    assert calls in ([], [1]) and rows["value"].notna().all()


def test_target_shape_and_empty_inputs():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        evalxai.explain(model, x, torch.zeros(3, dtype=torch.long), method="gradient")
    with pytest.raises(ValueError, match="int tensor"):
        evalxai.explain(model, x, torch.zeros(2), method="gradient")
    with pytest.raises(ValueError, match="non-empty"):
        evalxai.explain(model, x[:0], torch.zeros(0, dtype=torch.long), method="gradient")


def _smoke_cfg(**over):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf


    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["experiment=mnist_smoke", "n_samples=2", "methods=[gradient]",
                                           "metrics={sparseness: {}}", *[f"{k}={v}" for k, v in over.items()]])
    return OmegaConf.to_container(cfg, resolve=True)


def test_results_directory_not_writable(tmp_path, cache_dir):
    from evalxai.runs.pipeline import run_experiment

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="is not writable.*hydra.run.dir"):
        run_experiment(_smoke_cfg(), blocker / "run", progress=False)


@pytest.mark.slow
def test_disk_full_keeps_the_previous_table(tmp_path, cache_dir, monkeypatch):
    from evalxai.runs.pipeline import run_experiment

    out = run_experiment(_smoke_cfg(), tmp_path, progress=False)
    before = (out / "scores.parquet").read_bytes()

    def full(self, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(OSError, match="No space left"):
        run_experiment(_smoke_cfg(n_samples=3), tmp_path, progress=False)
    assert (out / "scores.parquet").read_bytes() == before  # the previous file is intact
    assert not list(tmp_path.glob(".*.tmp"))  # and no temporary file is left behind
    assert not (out / "run.json").exists()  # the folder no longer claims a complete run


@pytest.mark.slow
def test_cli_unknown_experiment_and_verbose(tmp_path, cache_dir):
    res = run_cli(["experiment=nope", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert res.returncode != 0 and "mnist_lrp" in res.stderr and "Traceback" not in res.stderr
    res = run_cli(["experiment=mnist_smoke", "n_samples=0", f"hydra.run.dir={tmp_path}", "progress=false"],
                  cache_dir)
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0 and "n_samples=0" in res.stderr
    res = run_cli(["experiment=mnist_smoke", "n_samples=0", f"hydra.run.dir={tmp_path}", "progress=false",
                   "verbose=true"], cache_dir)
    assert res.returncode != 0 and "Traceback" in res.stderr
    assert not (tmp_path / "scores.parquet").exists()


def random_relu_net(seed, widths, conv, pool, bias):
    torch.manual_seed(seed)
    layers = []
    if conv:
        layers += [nn.Conv2d(1, widths[0], 3, padding=1, bias=bias), nn.ReLU(),
                   nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2), nn.Flatten()]
        d = widths[0] * 9
    else:
        layers += [nn.Flatten()]
        d = 36
    for w in widths[1:]:
        layers += [nn.Linear(d, w, bias=bias), nn.ReLU()]
        d = w
    layers.append(nn.Linear(d, 3, bias=bias))
    return nn.Sequential(*layers).double().eval()


@settings(max_examples=25, deadline=None)
@pytest.mark.slow
@given(seed=st.integers(0, 10_000), widths=st.lists(st.integers(1, 8), min_size=1, max_size=3),
       conv=st.booleans(), pool=st.sampled_from(["max", "avg"]), bias=st.booleans(), n=st.integers(1, 5),
       scale=st.floats(0.01, 10.0))
def test_random_relu_nets_never_crash_and_conserve(seed, widths, conv, pool, bias, n, scale):
    model = random_relu_net(seed, widths, conv, pool, bias)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64) * scale
    t = torch.randint(0, 3, (n,), generator=g)
    with torch.no_grad():
        logits = model(x)[torch.arange(n), t]
        delta = logits - model(torch.zeros_like(x))[torch.arange(n), t]
    for method in ("lrp_0", "lrp_epsilon_plus", "lrp_epsilon_gamma_box", "gradient", "deeplift",
                   "integrated_gradients"):
        box = {"low": float(x.min()), "high": float(x.max())} if method == "lrp_epsilon_gamma_box" else {}
        r = evalxai.explain(model, x, t, method=method, **box)  # (the box must contain Gaussian inputs)
        assert torch.isfinite(r).all()
        for metric in ("pixel_flipping", "conservation", "sparseness"):
            df = evalxai.score(model, x, t, r, metric=metric)
            assert len(df) > 0 and set(df["sample"]) == set(range(n))
        if method == "deeplift":  # summation to delta holds for every ReLU net (with biases too)
            np.testing.assert_allclose(r.sum((1, 2, 3)), delta, rtol=1e-7, atol=1e-9 * (1 + delta.abs().max()))
        if method == "lrp_0" and not bias:  # conservation is exact on bias-free ReLU nets
            np.testing.assert_allclose(r.sum((1, 2, 3)), logits, rtol=1e-6, atol=1e-9 * (1 + logits.abs().max()))


def test_unknown_names_list_the_valid_ones(cache_dir):
    from evalxai.data import load_dataset
    from evalxai.models.zoo import build_model

    with pytest.raises(KeyError, match=r"unknown model 'resnet999'.*lenet"):
        build_model("resnet999", (1, 8, 8))
    with pytest.raises(KeyError, match=r"unknown dataset 'cifar'.*mnist"):
        load_dataset("cifar")


def test_empty_dataset_is_refused(cache_dir):
    from evalxai.data import load_dataset

    with pytest.raises(ValueError, match=r"n_test=0 must lie between 1 and 1796"):
        load_dataset("digits", n_test=0)
