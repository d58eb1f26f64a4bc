"""One definition of every reference input, per-sample results whatever the batch, random tie breaking, and
conservation against the reference each method promises (issue 17, items 8, 11, 13)."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import evalxai
from evalxai.core.baselines import BASELINES, reference
from evalxai.metrics.faithfulness import feature_ranks, tie_order
from evalxai.runs.configs import CONF as CONFIGS


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64, 3)).double().eval()


def images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    x[:, :, :2] = 0  # exact zeros, as MNIST's background: ties in any input-multiplied map
    return x, torch.arange(n) % 3


@pytest.mark.parametrize("baseline", BASELINES)
def test_reference_of_a_sample_does_not_depend_on_its_batch(baseline):
    x, _ = images()
    full = reference(x, baseline, low=0.0, high=1.0, seed=3)
    parts = torch.cat([reference(x[i:i + 3], baseline, low=0.0, high=1.0, seed=3) for i in range(0, 8, 3)])
    torch.testing.assert_close(full, parts, rtol=0, atol=0)
    assert not torch.equal(full, reference(x, baseline, seed=4)) or baseline != "uniform"


def test_reference_definitions():
    x, _ = images()
    m = reference(x, "mean")
    torch.testing.assert_close(m, x.mean((2, 3), keepdim=True).expand_as(x))  # each sample's own channel mean
    given = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(reference(x, "mean", mean=given), given.expand_as(x))
    lo, hi = torch.tensor([[[-2.0]]], dtype=torch.float64), torch.tensor([[[3.0]]], dtype=torch.float64)
    u = reference(x, "uniform", low=lo, high=hi, seed=1)
    assert u.min() >= -2 and u.max() <= 3 and u.min() < -1.5 and u.max() > 2.5  # the bounds, not the batch's range
    torch.testing.assert_close(reference(x, 0.5), torch.full_like(x, 0.5))
    with pytest.raises(ValueError, match="unknown baseline 'purple'"):
        reference(x, "purple")


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("metric,params", [("pixel_flipping", {"patch_size": 2, "per_step": 3}),
                                           ("selectivity", {"patch_size": 2, "steps": 6, "method": "gradient"})])
def test_scores_do_not_depend_on_the_batch(baseline, metric, params):
    model, (x, t) = small_cnn(), images()
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    full = evalxai.score(model, x, t, r, metric=metric, baseline=baseline, **params)
    half = pd.concat([evalxai.score(model, x[i:i + 4], t[i:i + 4], r[i:i + 4], metric=metric, baseline=baseline,
                                    **params).assign(sample=lambda d, i=i: d["sample"] + i) for i in (0, 4)],
                     ignore_index=True)
    key = ["measure", "sample", "step"]
    a = full.sort_values(key)["value"].to_numpy()
    b = half.sort_values(key)["value"].to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift", "occlusion"])
@pytest.mark.parametrize("baseline", BASELINES)
def test_baseline_methods_do_not_depend_on_the_batch(method, baseline):
    model, (x, t) = small_cnn(), images()
    full = evalxai.explain(model, x, t, method=method, baseline=baseline)
    parts = torch.cat([evalxai.explain(model, x[i:i + 4], t[i:i + 4], method=method, baseline=baseline)
                       for i in (0, 4)])
    torch.testing.assert_close(full, parts, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("baseline", BASELINES)
def test_methods_and_metrics_share_one_reference(baseline):
    """DeepLIFT sums to f(x) - f(x') and pixel flipping ends at f(x') for the same x' of ``reference``."""
    model, (x, t) = small_cnn(), images()
    xr = reference(x, baseline, low=0.0, high=1.0, seed=0)
    with torch.no_grad():
        fx, fr = model(x)[range(8), t], model(xr)[range(8), t]
    r = evalxai.explain(model, x, t, method="deeplift", baseline=baseline)
    torch.testing.assert_close(r.sum((1, 2, 3)), fx - fr, rtol=1e-9, atol=1e-10)
    df = evalxai.score(model, x, t, r, metric="pixel_flipping", baseline=baseline, order="morf", patch_size=8)
    last = df[(df["measure"] == "curve_morf") & (df["step"] == 1)].sort_values("sample")["value"].to_numpy()
    np.testing.assert_allclose(last, fr.numpy(), rtol=1e-12)


def test_ties_are_broken_at_random_per_sample_and_recorded():
    x, _ = images(n=6)
    rel = torch.zeros(6, 64, dtype=torch.float64)
    rel[:, -4:] = 1.0  # 60 tied features
    lerf = feature_ranks(rel, "lerf", 0, x)
    first = lerf < 15  # the first quarter removed: 15 of the 60 zeros
    top_rows = first.view(6, 8, 8)[:, :2].sum((1, 2)).double() / 15  # share taken from the top quarter of the image
    assert top_rows.mean() < 0.6  # raster order takes all 15 from the top two rows (share 1.0)
    raster = feature_ranks(rel, "lerf", 0, x, ties="raster")
    assert ((raster < 15).view(6, 8, 8)[:, :2].sum((1, 2)) == 15).all()
    assert (lerf[:, -4:] >= 60).all() and (feature_ranks(rel, "morf", 0, x)[:, -4:] < 4).all()
    # seeded by the sample, not its position; another seed, another order
    torch.testing.assert_close(feature_ranks(rel[2:4], "lerf", 0, x[2:4]), lerf[2:4], rtol=0, atol=0)
    assert not torch.equal(feature_ranks(rel, "lerf", 1, x), lerf)
    assert not torch.equal(tie_order(x, 64, "random", 0)[0], tie_order(x, 64, "random", 0)[1])
    model, t = small_cnn(), torch.arange(6) % 3
    for metric in ("pixel_flipping", "road", "insertion_deletion"):
        df = evalxai.score(model, x, t, torch.zeros_like(x), metric=metric)
        assert set(df["ties"]) == {"random"}


def test_selectivity_breaks_ties_at_random():
    model, (x, t) = small_cnn(), images(n=6)
    flat = torch.zeros_like(x)  # every patch ties: the first removed patch must not always be the top-left one
    picks = []
    for ties in ("random", "raster"):
        df = evalxai.score(model, x, t, flat, metric="selectivity", patch_size=2, steps=1, recompute=False,
                           ties=ties)
        y1 = df[df["step"] == 1].sort_values("sample")["value"].to_numpy()
        picks.append(y1)
    with torch.no_grad():
        top_left = x.clone()
        top_left[:, :, :2, :2] = 0
        y_tl = model(top_left)[range(6), t].numpy()
    np.testing.assert_allclose(picks[1], y_tl, rtol=1e-12)  # raster: top-left first
    assert not np.allclose(picks[0], y_tl)


def test_conservation_charges_each_method_its_own_reference():
    model, (x, t) = small_cnn(), images()
    with torch.no_grad():
        model[-1].bias.copy_(torch.tensor([1.0, -2.0, 3.0]))
        f0 = model(torch.zeros_like(x))[range(8), t]
    assert f0.abs().min() > 0.5  # a model with f(0) != 0: charging f(0) to IG would be visible
    for method, params, expected in [("deeplift", {"baseline": "uniform"}, "uniform"),
                                     ("integrated_gradients", {"steps": 256}, "zero"),
                                     ("lrp_0", {}, "none")]:
        r = evalxai.explain(model, x, t, method=method, **params)
        df = evalxai.score(model, x, t, r, metric="conservation", method=method, method_params=params)
        assert set(df["reference"]) == {expected}
        residual = df[df["measure"] == "residual"].sort_values("sample")["value"].to_numpy()
        if method == "deeplift":
            np.testing.assert_allclose(residual, 0, atol=1e-10)  # summation to delta with its uniform reference
        elif method == "integrated_gradients":
            assert np.abs(residual).max() < 1e-2 * f0.abs().min().item()  # completeness, not the f(0) offset
            none = evalxai.score(model, x, t, r, metric="conservation", method=method, method_params=params,
                                 reference="none")
            res_none = none[none["measure"] == "residual"].sort_values("sample")["value"].to_numpy()
            np.testing.assert_allclose(res_none - residual, -f0.numpy(), rtol=1e-9)


@pytest.mark.slow
def test_pipeline_gives_methods_the_dataset_mean(tmp_path, cache_dir):
    """IG with baseline=mean starts from the training-set mean image, the reference its conservation row uses."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from evalxai.runs.pipeline import run_experiment

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["experiment=mnist_smoke", "n_samples=4", "progress=false",
                                           "methods=[integrated_gradients]", "metrics={conservation: {}}",
                                           "+method_params={integrated_gradients: {baseline: mean, steps: 128}}"])
    out = run_experiment(OmegaConf.to_container(cfg, resolve=True), tmp_path, progress=False)
    df = pd.read_parquet(out / "scores.parquet")
    rel = df[df["measure"] == "relative_residual"]
    assert set(rel["reference"]) == {"mean"}
    assert rel["value"].abs().max() < 1e-2  # completeness against f(x) - f(dataset mean image)


def test_max_sensitivity_keeps_noisy_inputs_inside_the_pixel_bounds():
    model, (x, t) = small_cnn(), images(n=4)
    r = evalxai.explain(model, x, t, method="dtd")
    with pytest.raises(ValueError, match="do not contain the inputs"):  # noise past [0, 1], nothing to clip to
        evalxai.score(model, x, t, r, metric="max_sensitivity", method="dtd", samples=2)
    df = evalxai.score(model, x, t, r, metric="max_sensitivity", method="dtd", samples=2, low=0.0, high=1.0)
    assert df["value"].notna().all()


def test_ties_and_per_channel_mean_are_checked():
    model, (x, t) = small_cnn(), images(n=4)
    for metric in ("pixel_flipping", "road"):
        with pytest.raises(ValueError, match="unknown ties 'bogus'"):
            evalxai.score(model, x, t, torch.zeros_like(x), metric=metric, order="random", ties="bogus")
    rgb = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    m = reference(rgb, "mean", mean=[0.1, 0.2, 0.3])
    assert torch.equal(m[:, 1], torch.full((2, 4, 5), 0.2, dtype=torch.float64))


def test_data_range_keeps_float64_bounds_exact():
    """Python-float bounds become tensors of the input's dtype directly, not through float32."""
    from evalxai.core.baselines import data_range

    low = (0 - 0.1307) / 0.3081
    lo, hi = data_range(low, None, torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    assert lo.item() == low and hi.item() == 1.0


def test_num_classes_runs_its_forward_in_eval_mode_and_leaves_the_model_as_it_was():
    from evalxai.core.scoring import num_classes

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 5)).train()
    stats = model[1].running_mean.clone()
    assert num_classes(model, torch.randn(2, 3)) == 5  # one sample through BatchNorm1d: fails in training mode
    assert model.training and torch.equal(model[1].running_mean, stats)
