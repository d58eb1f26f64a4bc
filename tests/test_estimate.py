"""Said up front (issue 27): every metric's declared cost equals the passes it makes (counted through the model), the
run's estimate counts what its calls then make, randomization's ``skip_layers`` gives the cascade's scalars from one
explain, and ``experiment=imagenet_lrp`` runs on a folder of your images and model, saying its cost first."""
import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import evalxai
from evalxai.bench.metrics import PassCounter
from evalxai.core.validate import check_logits
from evalxai.metrics import METRICS, get_metric
from evalxai.runs.estimate import LRP_PASSES, MAPS, MethodCost, Timing, estimate_run, method_cost
from tests.custom_models import TinyNet

N = 3


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = TinyNet(num_classes=5, in_channels=3).eval()
    x = torch.rand(N, 3, 16, 16)
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target, evalxai.explain(model, x, target, method="gradient")


# parameters besides the defaults whose counts the declarations must also get right
VARIANTS = {
    "pixel_flipping": [{"steps": 8, "order": "morf"}, {"patch_size": 4, "per_step": 3}, {"patch_size": 3, "steps": 5}],
    "region_perturbation": [{"patch_size": 2, "steps": 10}, {"patch_size": 4, "per_step": 2}],
    "insertion_deletion": [{"patch_size": 2, "steps": 7}],
    "selectivity": [{"steps": 4}, {"steps": 5, "recompute": False}, {"patch_size": 8, "steps": None}],
    "randomization": [{"skip_layers": True}],
    "smooth_mprt": [{"samples": 3}],
    "continuity": [{"shift": 4, "stride": 2}],
    "max_sensitivity": [{"nan_on_flip": True, "samples": 4}],
    "local_lipschitz_estimate": [{"nan_on_flip": True}],
    "conservation": [{"method": "integrated_gradients"}, {"method": "gradient", "reference": "none"}],
    "monotonicity": [{"patch_size": 4, "per_step": 3}],
    "sensitivity_n": [{"sizes": [1, 5, 5], "runs": 7}],
    "road": [{"order": "morf", "fractions": [0.2, 0.5]}],
    "faithfulness_estimate": [{"patch_size": 4}],
    "non_sensitivity": [{"patch_size": 4}],
}
CASES = [(name, {}) for name in METRICS if "float" in METRICS[name].inputs] + [  # token metrics: test_token_metrics
    (name, v) for name, vs in VARIANTS.items() for v in vs]


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_declared_cost_is_the_counted_passes(case, name, params):
    """Images forwarded outside explanations and images explained, counted through the model (a forward hook and a
    counting method, as the metric bench counts them), equal the registration's ``cost`` per image; a probing
    forward of one image (output size, memory per image) may come on top. A metric without a declared cost says so
    (unknown), never a wrong number."""
    model, x, target, r = case
    spec = get_metric(name)
    takes = inspect.signature(spec.fn).parameters
    counter = PassCounter("gradient")
    given = dict(params)
    if "method" in takes and "method" not in given:
        given["method"] = counter.explain
    data = {"masks": x[:, 0] > 0.5} if "masks" in takes else {}
    if "pool" in takes:
        data["pool"] = (torch.rand(12, 3, 16, 16), torch.arange(12) % 5)
    check_logits(model, x)  # remembered for this x: the check is not the metric's pass
    with counter.counting(model):
        evalxai.score(model, x, target, r, metric=name, **given, **data)
    declared = spec.passes(model, x, given)
    if spec.cost is None:
        assert declared.forwards is None, f"{name}: no declared cost, yet counted forwards"
        return
    assert declared.explains is not None and declared.forwards is not None
    assert counter.explained == N * declared.explains, (name, params, counter.explained / N, declared)
    assert 0 <= counter.forward - N * declared.forwards <= 3, (name, params, counter.forward / N, declared)


def test_every_metric_but_irof_declares_its_cost():
    """IROF's forwards are its superpixels, which SLIC finds in the image: not a function of the parameters."""
    assert [n for n, s in METRICS.items() if s.cost is None] == ["irof"]


def test_skip_layers_gives_the_cascades_scalars_from_one_explain(case):
    """Randomization with ``skip_layers`` (Quantus's MPRT option): the same ``spearman_full`` / ``spearman_abs_full``
    as the full cascade (its last state), no per-layer rows, one explain per image instead of one per layer."""
    model, x, target, r = case
    full = evalxai.score(model, x, target, r, metric="randomization", method="gradient", seed=3)
    counter = PassCounter("gradient")
    skip = evalxai.score(model, x, target, r, metric="randomization", method=counter.explain, seed=3,
                         skip_layers=True)
    assert counter.explained == N
    assert set(skip["measure"]) == {"spearman_full", "spearman_abs_full"}
    for measure in ("spearman_full", "spearman_abs_full"):
        a = full[full["measure"] == measure].sort_values("sample")["value"].to_numpy()
        b = skip[skip["measure"] == measure].sort_values("sample")["value"].to_numpy()
        np.testing.assert_array_equal(a, b)
    layers = full.loc[full["measure"] == "spearman", "layer"].nunique()
    assert layers == 2 and get_metric("randomization").passes(model, x, {}).explains == layers


def test_method_cost_reads_the_parameters():
    x = torch.zeros(1, 3, 16, 16)
    assert method_cost("gradient", {}, x) == MethodCost(0, 1)
    assert method_cost("integrated_gradients", {"steps": 8}, x) == MethodCost(0, 8)
    assert method_cost("smoothgrad", {}, x).gradient_passes == 32  # the registered default
    assert method_cost("lrp_epsilon_plus", {}, x).gradient_passes == LRP_PASSES == 2.0
    assert method_cost("random", {}, x) == MethodCost(0, 0)
    assert method_cost("occlusion", {"patch": 4, "stride": 4}, x) == MethodCost(17, 0)  # 4 x 4 windows + x
    assert method_cost({"_target_": "captum.attr.Saliency"}, {}, x) is None


class CountingNet(TinyNet):
    """TinyNet that counts the images of every call: with gradients (an explanation's pass) or without (a metric's
    forward). The counts are shared by the deep copies randomisation makes."""
    counts = {"grad": 0, "no_grad": 0}

    def forward(self, x):
        self.counts["grad" if torch.is_grad_enabled() else "no_grad"] += len(x)
        return super().forward(x)


def test_the_estimate_counts_what_the_run_makes(case):
    """A known config, estimated and then run call by call (evalxai.explain / evalxai.score with the parameters the
    pipeline binds): the forwards and gradient passes the estimate prints are those the model is called for."""
    from evalxai.core.validate import check_logits
    from evalxai.runs.pipeline import metric_call

    _, x, _, _ = case
    torch.manual_seed(0)
    model = CountingNet(num_classes=5, in_channels=3).eval()
    with torch.no_grad():
        target = model(x).argmax(1)
    metrics = [("pixel_flipping", {"steps": 6, "order": ["morf", "lerf"], "patch_size": 2}),
               ("randomization", {}), ("randomization", {"skip_layers": True}), ("selectivity", {"steps": 3}),
               ("sparseness", {})]
    methods = [("gradient", {}), ("integrated_gradients", {"steps": 4})]
    plan = [(m, m, p, [(k, metric_call(k, kp, m, p, {})) for k, kp in metrics]) for m, p in methods]
    est = estimate_run(model, x, plan, Timing(1e-3, 2e-3, 16), "countingnet")
    evalxai.explain(model, x, target, method="gradient")  # warm: output size, memory per image
    check_logits(model, x)  # and the finite-logits check scoring remembers for this x
    rows = iter(est.rows)
    for name, method, params, bound in plan:
        counts = model.counts
        counts.update(grad=0, no_grad=0)
        r = evalxai.explain(model, x, target, method=method, **params)
        row = next(rows)
        assert (row.metric, row.method) == (MAPS, name)
        assert counts["grad"] == row.gradient_passes and counts["no_grad"] == row.forwards == 0
        for metric, mp in bound:
            counts.update(grad=0, no_grad=0)
            evalxai.score(model, x, target, r, metric=metric, **mp)
            row = next(rows)
            assert row.metric == metric
            # one-image probes (memory per image of each new model copy) may come on top
            assert 0 <= counts["no_grad"] - row.forwards <= 2, (metric, name, counts, row)
            assert 0 <= counts["grad"] - row.gradient_passes <= 2, (metric, name, counts, row)
    text = est.describe()
    pf = sum(r.forwards for r in est.rows if r.metric == "pixel_flipping")
    assert pf == 2 * 2 * (6 + 1) * N and f" {pf:,.0f} " in text
    assert est.total("explains") == 2 * N * (1 + 2 + 1 + 2)  # maps, cascade over 2 layers, skip_layers, selectivity
    assert "total:" in text and "unknown:" not in text
    record = est.record()
    assert record["rough"] and record["forwards"] == est.total("forwards") and len(record["rows"]) == len(est.rows)


def test_unknown_costs_are_listed_and_left_out(case):
    model, x, _, _ = case
    from evalxai.runs.pipeline import metric_call

    foreign = {"_target_": "tests.custom_models.tiny_net"}
    plan = [("gradient", "gradient", {}, [("irof", metric_call("irof", {}, "gradient", {}, {}))]),
            ("mine", foreign, {}, [("selectivity", metric_call("selectivity", {"steps": 2}, foreign, {}, {}))])]
    est = estimate_run(model, x, plan, Timing(1e-3, 2e-3, 16))
    unknown = est.unknown()
    assert any(u.startswith("irof x gradient: forwards") for u in unknown)
    assert any(u.startswith("(maps) x mine") for u in unknown) and any(u.startswith("selectivity x mine") for u in
                                                                       unknown)
    assert est.seconds == pytest.approx(N * 2e-3)  # the gradient maps alone are known
    assert "+?" in est.describe()


# ---------------------------------------------------------------- the preset, end to end on a tiny folder

def write_images(root, size, per_class=3):
    """root/{train,test}/<class>/*.png: two colour classes of ``size`` x ``size`` RGB images."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, rgb in {"red": (200, 40, 40), "blue": (40, 40, 200)}.items():
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                img = np.clip(np.asarray(rgb) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{c}{i}.png")


class SmallCNN(nn.Module):
    """Two convolutions, global pooling and a linear head: any image size."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def preset_run(tmp_path, cache_dir, size, overrides=()):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from evalxai.runs.configs import CONF
    from evalxai.runs.pipeline import run_experiment

    write_images(tmp_path / "images", size)
    torch.manual_seed(0)
    torch.save(SmallCNN().state_dict(), tmp_path / "cnn.pt")
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["experiment=imagenet_lrp", f"dataset.root={tmp_path / 'images'}",
                                           "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]",
                                           "model._target_=tests.test_estimate.SmallCNN",
                                           f"model.checkpoint={tmp_path / 'cnn.pt'}", "progress=false",
                                           f"cache_dir={cache_dir}", *overrides])
    out = run_experiment(OmegaConf.to_container(cfg, resolve=True), tmp_path / "run", progress=False)
    return json.loads((out / "run.json").read_text()), out


def test_the_run_says_its_cost_before_the_work(tmp_path, cache_dir, caplog):
    """The preset on 16 x 16 images with two methods: the estimate is logged before the first map and written to
    run.json, every metric of the preset counted."""
    import logging

    with caplog.at_level(logging.INFO, logger="evalxai"):
        run, _ = preset_run(tmp_path, cache_dir, 16, ["methods=[lrp_epsilon_plus,gradient]"])
    est = run["estimate"]
    assert est["unknown"] == [] and est["seconds"] > 0 and est["images"] == 4 and est["shape"] == [3, 16, 16]
    assert {r["metric"] for r in est["rows"]} == {MAPS, "pixel_flipping", "selectivity", "randomization",
                                                  "conservation", "sparseness"}
    rand = [r for r in est["rows"] if r["metric"] == "randomization"]
    assert all(r["explains"] == 4 for r in rand)  # skip_layers: one explain per image
    text = caplog.text
    assert text.index("cost estimate (rough)") < text.index("explaining and scoring took")
    assert "explain_and_score_s" in run["timings"]


@pytest.mark.slow
def test_imagenet_preset_end_to_end(tmp_path, cache_dir):
    """experiment=imagenet_lrp as it ships (nine methods, five metrics) on a 64 x 64 folder and a small CNN."""
    run, out = preset_run(tmp_path, cache_dir, 64)
    est = run["estimate"]
    assert est["unknown"] == [] and len({r["method"] for r in est["rows"]}) == 9
    import pandas as pd

    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["metric"]) == {"pixel_flipping", "selectivity", "randomization", "conservation", "sparseness"}
    assert scores["method"].nunique() == 9
    curve = scores[(scores["measure"] == "curve_morf")]
    assert curve["step"].max() == 16  # bounded steps, whatever the resolution
