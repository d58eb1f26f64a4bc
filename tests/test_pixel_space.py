"""Pixel space vs model space (DESIGN §7): what has a meaning in pixel space (black, the data range, the mean, uniform
noise, blur, superpixels) gives the same scores whether the model takes normalised inputs (model space) or has its
normalisation as a first layer and takes pixels in [0, 1]; and the dataset's low / high / mean reach every method and
metric that takes them, however the config leaves them unset."""

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import evalxai
import evalxai.core.seeding
from evalxai.methods import get_method
from evalxai.metrics import METRICS, get_metric
from evalxai.runs.configs import CONF as CONFIGS
from evalxai.runs.pipeline import method_calls, metric_call

CONF = CONFIGS
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(3, 1, 1)
STD = torch.tensor([0.229, 0.124, 0.325], dtype=torch.float64).view(3, 1, 1)
SIDE, N = 10, 3


class Normalise(nn.Module):
    """(x - mean) / std per channel: the dataset's normalisation as the model's first layer (buffers, no parameters,
    so both models have the same parametrised layers under the same names)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, x):
        return (x - self.mean) / self.std


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * (SIDE // 2) ** 2, 5)).double()


def pixel_grad_x_input(mean, std):
    """Gradient x input in pixel space, for a model that takes (p - mean) / std: dF/dp * p, the same map in both
    setups (mean 0, std 1 for the model that takes pixels)."""
    def method(model, x, target):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(model(x).gather(1, target.view(-1, 1)).sum(), x)
        return g / std * (x.detach() * std + mean)

    return method


def _affine_invariant_seeds(x, seed):
    """Per-sample seeds from each channel's standardised content. evalxai seeds draws by the sample's bytes, which
    differ between the two encodings of one image (a statistical, not a systematic, difference); this key is the same
    for both, so the comparison sees the same draws."""
    flat = x.detach().double().cpu().reshape(len(x), x.shape[1], -1) if x.dim() > 2 else x.detach().double()[:, None]
    z = (flat - flat.mean(-1, keepdim=True)) / flat.std(-1, keepdim=True).clamp(min=1e-9)
    weights = torch.arange(1, z[0].numel() + 1, dtype=torch.float64).sin().view_as(z[0])
    keys = ((z * weights).sum((1, 2)) * 1e3).round().long().tolist()
    return [(seed * 1_000_003 + k) % (2**63 - 1) for k in keys]


@pytest.fixture(scope="module")
def setups():
    """(model-space setup, pixel-space setup): model, inputs, method, params low/high/mean, pool; and the targets,
    the attributions (the same tensor for both) and masks."""
    g = torch.Generator().manual_seed(1)
    pixels = torch.nn.functional.avg_pool2d(torch.rand(N, 3, SIDE + 2, SIDE + 2, generator=g, dtype=torch.float64),
                                            3, 1)  # some spatial structure, for SLIC
    pool_pixels = torch.rand(12, 3, SIDE, SIDE, generator=g, dtype=torch.float64)
    mean_image = torch.rand(1, 3, SIDE, SIDE, generator=g, dtype=torch.float64) * 0.5 + 0.25
    body = net()
    model_space = nn.Sequential(nn.Identity(), body).eval()
    pixel_space = nn.Sequential(Normalise(MEAN, STD), body).eval()
    with torch.no_grad():
        target = pixel_space(pixels).argmax(1)
        pool_labels = torch.arange(12) % 5
    attributions = pixel_grad_x_input(0.0, 1.0)(pixel_space, pixels, target)
    masks = torch.zeros(N, SIDE, SIDE, dtype=torch.bool)
    masks[:, 2:6, 3:8] = True

    def norm(p):
        return (p - MEAN) / STD

    ms = dict(model=model_space, x=norm(pixels), method=pixel_grad_x_input(MEAN, STD), pool=(norm(pool_pixels),
              pool_labels), data={"low": norm(torch.zeros(3, 1, 1, dtype=torch.float64)),
                                  "high": norm(torch.ones(3, 1, 1, dtype=torch.float64)), "mean": norm(mean_image)})
    px = dict(model=pixel_space, x=pixels, method=pixel_grad_x_input(0.0, 1.0), pool=(pool_pixels, pool_labels),
              data={"low": 0.0, "high": 1.0, "mean": mean_image})
    return ms, px, target, attributions, masks


# Metrics whose values legitimately differ between the two spaces: their perturbation or their denominator is a
# distance in the units the model receives, which is std-scaled per channel in model space.
NO_PIXEL_MEANING = {
    # uniform noise of radius 0.02 in model units (captum's convention): another noise in pixel space per channel
    "max_sensitivity": "noise radius in model units",
    "avg_sensitivity": "noise radius in model units",
    # Gaussian neighbours of sigma 0.1 in model units, and ||x - x_s||_2 (model units) as the denominator
    "local_lipschitz_estimate": "noise sigma and ||x - x_s|| in model units",
    # Gaussian neighbours of sigma 0.1 in model units
    "consistency": "noise sigma in model units",
    # Gaussian neighbours of sigma 0.05 in model units; RIS also divides by ||(x - x_s) / x||, x in model units
    "relative_input_stability": "noise sigma (and x itself in the denominator) in model units",
    "relative_output_stability": "noise sigma in model units",
    "relative_representation_stability": "noise sigma in model units",
    # the constant shift c (-1) is in model units, and it edits the first Linear/Conv, which in the pixel-space model
    # does not receive the input (the normalisation does)
    "input_invariance": "shift in model units; edits the first layer, behind the normalisation here",
}
# Measures of an otherwise compared metric that are distances in model units (their rows are left out).
MODEL_UNIT_MEASURES = {
    # ||x_t - x_t'||_2 in the denominators; the score and quadrant rows along the path are compared
    "continuity": ("continuity_path", "continuity_ref", "continuity_path_aligned", "continuity_ref_aligned"),
}
# Settings that make a metric comparable (noise in model units switched off) or fast; comments say which.
SETTINGS = {
    "road": {"noise": 0.0},  # its imputation noise std is in model units; the (affine-equivariant) imputation is not
    "smooth_mprt": {"noise": 0.0, "samples": 2},  # sigma = noise x the sample's model-space value range (all channels)
    "faithfulness_correlation": {"runs": 12},
    "sensitivity_n": {"runs": 12, "sizes": [5, 20]},
    "infidelity": {"samples": 8},
    "sufficiency": {"samples": 6},
    "monotonicity_correlation": {"samples": 3},
    "region_perturbation": {"steps": 20},
    "selectivity": {"steps": 6},
    "irof": {"n_segments": 10},  # about 10 superpixels of 10 px: SLIC's boundaries then follow the colours
}
VARIANTS = [(name, {}) for name in sorted(METRICS)
            if name not in NO_PIXEL_MEANING and "float" in METRICS[name].inputs] + [  # token metrics: no pixels
    ("pixel_flipping", {"baseline": "mean"}), ("pixel_flipping", {"baseline": "uniform"}),
    ("pixel_flipping", {"baseline": "blur"}), ("conservation", {"reference": "zero"}),
    ("infidelity", {"perturbation": "gaussian"}), ("irof", {"segmentation": "grid"}),
]


def test_exclusions_name_registered_metrics():
    assert set(NO_PIXEL_MEANING) | set(MODEL_UNIT_MEASURES) | set(SETTINGS) <= set(METRICS)
    assert not set(NO_PIXEL_MEANING) & set(MODEL_UNIT_MEASURES)


def _score(setup, metric, params, target, attributions, masks):
    spec = get_metric(metric)
    kw = {**SETTINGS.get(metric, {}), **params}
    kw.update({k: v for k, v in setup["data"].items() if k in spec.defaults})
    if "method" in spec.defaults:
        kw["method"] = setup["method"]
    if "masks" in spec.needs:
        kw["masks"] = masks
    if "pool" in spec.needs:
        kw["pool"] = setup["pool"]
    return evalxai.score(setup["model"], setup["x"], target, attributions, metric=metric, **kw)


@pytest.mark.parametrize("metric,params", VARIANTS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={w}" for k, w in v.items()) or "defaults")
def test_scores_are_the_same_in_model_space_and_pixel_space(setups, metric, params, monkeypatch):
    """Every registered metric (less NO_PIXEL_MEANING), per sample, row by row: the normalised model given the
    model-space low / high / mean, and the model with its normalisation as a first layer given 0, 1 and the pixel
    mean, with the same attributions, method (pixel gradient x input) and draws."""
    monkeypatch.setattr(evalxai.core.seeding, "_sample_seeds", _affine_invariant_seeds)
    ms, px, target, attributions, masks = setups
    a, b = (_score(s, metric, params, target, attributions, masks) for s in (ms, px))
    assert list(a["measure"]) == list(b["measure"]) and list(a["sample"]) == list(b["sample"])
    keep = ~a["measure"].isin(MODEL_UNIT_MEASURES.get(metric, ())).to_numpy()
    assert keep.any()
    np.testing.assert_allclose(a["value"].to_numpy(float)[keep], b["value"].to_numpy(float)[keep], rtol=1e-6,
                               atol=1e-9, err_msg=f"{metric} {params}")


DATA_PARAMS = ("low", "high", "mean")
FROM_DATA = {"low": torch.tensor([-2.1, -3.7, -1.2]).view(3, 1, 1), "high": torch.tensor([2.2, 4.4, 1.8]).view(3, 1, 1),
             "mean": torch.zeros(1, 3, 4, 4)}


def _config(group: str, name: str, how: str, takes) -> dict:
    """A config of conf/<group>/<name>.yaml as the pipeline gets it: as written (``metric=NAME``: YAML nulls), with
    the dataset's parameters absent (a ``metrics:`` map of an experiment) or set to null by an override."""
    cfg = yaml.safe_load((CONF / group / f"{name}.yaml").read_text()) or {}
    cfg.pop("name", None)
    if how == "absent":
        return {k: v for k, v in cfg.items() if k not in (*DATA_PARAMS, "method", "method_params")}
    if how == "null":
        return {**cfg, **{k: None for k in (*DATA_PARAMS, "method", "method_params") if k in takes}}
    return cfg


@pytest.mark.parametrize("how", ["yaml", "absent", "null"])
def test_dataset_values_reach_every_metric_and_method_that_takes_them(how):
    """The one rule (evalxai.binding.bind, through pipeline.metric_call / method_calls, also the meta-evaluation's
    path): a parameter the dataset defines (low, high, mean) that the config leaves unset, absent or null, is the
    dataset's value; so is the method a re-explaining metric calls; the run's masks and pool reach exactly the
    metrics that need them."""
    method_params = {"baseline": "zero", "low": FROM_DATA["low"]}
    ground = {"masks": object(), "pool": object()}
    for name in sorted(METRICS):
        spec = get_metric(name)
        takes = spec.defaults
        mp = metric_call(name, _config("metric", name, how, takes), "integrated_gradients", method_params, FROM_DATA,
                         ground)
        for k in DATA_PARAMS:
            assert k not in takes or mp[k] is FROM_DATA[k], (name, k, mp.get(k))
        if "method" in takes:
            assert mp["method"] == "integrated_gradients" and mp["method_params"] is method_params, name
        assert {k for k in ground if mp.get(k) is ground[k]} == set(spec.needs) & set(ground), name
    names = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
    calls = method_calls([(n, _config("method", n, how, get_method(n).defaults)) for n in names], FROM_DATA)
    for n, _, params in calls:
        for k in DATA_PARAMS:
            assert k not in get_method(n).defaults or params[k] is FROM_DATA[k], (n, k, params.get(k))


def test_a_value_the_config_sets_is_kept():
    mp = metric_call("pixel_flipping", {"low": -5.0, "mean": None}, None, {}, FROM_DATA)
    assert mp["low"] == -5.0 and mp["high"] is FROM_DATA["high"] and mp["mean"] is FROM_DATA["mean"]
    (_, _, params), = method_calls([("deeplift", {"high": 7.0, "low": None})], FROM_DATA)
    assert params["high"] == 7.0 and params["low"] is FROM_DATA["low"]
    own = metric_call("continuity", {"method": "gradient", "method_params": None}, "deeplift", params, FROM_DATA)
    assert own["method"] == "gradient" and own["method_params"] is None  # not the scored method's parameters


def test_zero_baseline_of_the_single_metric_path_is_black(setups):
    """``metric=pixel_flipping metric.baseline=zero`` on normalised data: the last MoRF point, every pixel removed,
    is the score of a black image (model-space low), not of the normalised 0 (the mean colour)."""
    ms, *_ = setups
    target, x = torch.zeros(N, dtype=torch.long), ms["x"]
    mp = metric_call("pixel_flipping", _config("metric", "pixel_flipping", "yaml", {}), None, {}, ms["data"])
    df = evalxai.score(ms["model"], x, target, torch.rand_like(x), metric="pixel_flipping", **mp)
    last = df[df["measure"] == "curve_morf"].groupby("sample")["value"].last().to_numpy()
    with torch.no_grad():
        black = ms["model"](ms["data"]["low"].expand_as(x))[:, 0].numpy()
    np.testing.assert_allclose(last, black, rtol=1e-10)
