"""Declared once (issue 28): a metric's family, directions, needs and defaults live in its registration, a method's
defaults in its signature; everything else (rows' directions, YAML, catalogue, ground-truth families) reads them; and
one binding layer (evalxai.binding.bind) decides what every call receives."""
import inspect

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

import evalxai
from evalxai import docs
from evalxai.binding import bind
from evalxai.core.validate import DATA_NEEDS
from evalxai.methods import METHODS, get_method, register_method
from evalxai.methods.registry import signature_defaults
from evalxai.metrics import METRICS, get_metric, register_metric
from evalxai.metrics.common import curve_rows, scalar_rows
from evalxai.metrics.registry import DIRECTIONS, FAMILIES, NEEDS, TOKEN_PARAMS, families
from evalxai.report.ground_truth import scalar_table
from evalxai.runs.configs import CONF, render, write_all
from evalxai.runs.pipeline import check_run, metric_call


@pytest.fixture
def cleanup():
    """Names registered by a test, removed again afterwards."""
    added = []
    yield added
    for registry, name in added:
        registry.pop(name, None)


# ---------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_declares_family_directions_needs_and_takes_its_defaults_from_its_signature(name):
    spec = get_metric(name)
    assert spec.family in FAMILIES
    assert spec.directions and set(spec.directions.values()) <= set(DIRECTIONS)
    assert any(d != "none" for d in spec.directions.values()), "a metric with no scored measure ranks nothing"
    assert set(spec.needs) <= set(NEEDS)
    params = inspect.signature(spec.fn).parameters
    data = (*DATA_NEEDS, *(TOKEN_PARAMS if "tokens" in spec.inputs else ()))  # attention_mask: data of token ids
    assert spec.defaults == {k: p.default for k, p in list(params.items())[4:] if k not in data}
    for need in DATA_NEEDS:
        assert (need in spec.needs) == (need in params)
    assert ("method" in spec.needs) == ("method" in spec.defaults) == ("method_params" in spec.defaults)


def test_families_are_read_from_the_registry():
    by_family = families()
    assert list(by_family) == list(FAMILIES) and all(by_family.values())
    assert sorted(m for ms in by_family.values() for m in ms) == sorted(METRICS)
    scores = pd.DataFrame({"metric": sorted(METRICS), "measure": "m", "step": pd.NA, "direction": "higher",
                           "value": 1.0, "run_id": "r", "dataset": "d"})
    table = scalar_table(scores, [{"run_id": "r", "dataset": {"name": "d"}}])
    assert dict(zip(table["metric"], table["family"])) == {n: s.family for n, s in METRICS.items()}


def test_rows_carry_the_declared_directions(cleanup):
    @register_metric("_test_dirs", family="complexity", directions={"score": "higher", "curve_*": "none"})
    def _dirs(model, x, target, attributions, k=1):
        """Test metric."""
        y = torch.zeros(3, len(x))
        return pd.concat([curve_rows(y, [0.0, 0.5, 1.0], "curve_a"), scalar_rows(torch.ones(len(x)), "score")])

    cleanup.append((METRICS, "_test_dirs"))
    df = _dirs(None, torch.zeros(2, 1, 4, 4), None, None)
    assert dict(zip(df["measure"], df["direction"])) == {"curve_a": "none", "score": "higher"}
    assert get_metric("_test_dirs").direction("curve_b") == "none"

    @register_metric("_test_undeclared", family="complexity", directions={"score": "higher"})
    def _undeclared(model, x, target, attributions):
        return pd.DataFrame({"sample": [0], "measure": ["other"], "value": [1.0]})

    cleanup.append((METRICS, "_test_undeclared"))
    with pytest.raises(KeyError, match="metric '_test_undeclared' wrote measure 'other'.*directions="):
        _undeclared(None, torch.zeros(1, 4), None, None)
    with pytest.raises(KeyError, match="metric '_test_undeclared' wrote measure 'other'.*directions="):
        evalxai.score(nn.Linear(4, 2), torch.zeros(1, 4), 0, torch.zeros(1, 4), metric="_test_undeclared")


def test_score_fills_directions_as_the_registered_function_does(cleanup):
    """evalxai.score calls the function as written (``MetricSpec.rows``) and fills the directions while it builds
    its table: the same directions, in the same column place, as the registered function's rows; a metric that
    writes no direction column gets it after ``value``, and one with neither gets it last."""
    @register_metric("_test_tidy", family="complexity", directions={"score": "higher", "curve_*": "none"})
    def _tidy_rows(model, x, target, attributions, with_value=True):
        n = len(x)
        rows = {"sample": np.tile(np.arange(n), 2), "measure": ["curve_a"] * n + ["score"] * n}
        if with_value:
            rows.update(value=np.arange(2.0 * n), extra=np.ones(2 * n))
        return rows

    cleanup.append((METRICS, "_test_tidy"))
    x = torch.zeros(3, 4)
    for with_value in (True, False):
        own = _tidy_rows(None, x, None, None, with_value=with_value)
        table = evalxai.score(nn.Linear(4, 2), x, 0, x, metric="_test_tidy", with_value=with_value)
        assert list(table.columns) == ["metric", *own.columns, "step"]
        assert table["direction"].tolist() == own["direction"].tolist() == ["none"] * 3 + ["higher"] * 3
        assert list(own.columns).index("direction") == (3 if with_value else 2)


def _fn(model, x, target, attributions, k=1):
    return scalar_rows(torch.ones(len(x)), "s")


def _with_masks(model, x, target, attributions, masks=None):
    return scalar_rows(torch.ones(len(x)), "s")


def _no_default(model, x, target, attributions, k):
    return scalar_rows(torch.ones(len(x)), "s")


def _kwargs(model, x, target, attributions, **params):
    return scalar_rows(torch.ones(len(x)), "s")


@pytest.mark.parametrize("fn,kwargs,error", [
    (_fn, {"family": "faithfullness", "directions": {"s": "higher"}}, "family 'faithfullness' is not one of"),
    (_fn, {"family": "complexity", "directions": {"s": "up"}}, "directions must map every measure"),
    (_fn, {"family": "complexity", "directions": {}}, "directions must map every measure"),
    (_fn, {"family": "complexity", "directions": {"s": "higher"}, "needs": ("masks",)}, "declare needs="),
    (_fn, {"family": "complexity", "directions": {"s": "higher"}, "needs": ("labels",)}, "are not among"),
    (_with_masks, {"family": "localisation", "directions": {"s": "higher"}}, "declare needs="),
    (_no_default, {"family": "complexity", "directions": {"s": "higher"}}, "parameter 'k' needs a default"),
    (_kwargs, {"family": "complexity", "directions": {"s": "higher"}}, r"\*\*kwargs cannot be config fields"),
])
def test_a_registration_that_contradicts_itself_is_refused(fn, kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        register_metric("_test_refused", **kwargs)(fn)
    assert "_test_refused" not in METRICS


def test_method_defaults_come_from_the_signature(cleanup):
    def ramp(model, x, target, scale=2.0, offset=0):
        """Test method: scale * x + offset."""
        return scale * x + offset

    register_method("_test_ramp")(ramp)
    cleanup.append((METHODS, "_test_ramp"))
    assert get_method("_test_ramp").defaults == {"scale": 2.0, "offset": 0}
    with pytest.raises(TypeError):  # defaults are declared once, in the signature: the decorator takes none
        register_method("_test_ramp", scale=3.0)(ramp)
    for name in ("gradient", "integrated_gradients", "occlusion", "grad_cam"):  # registered by decorator
        assert get_method(name).defaults == signature_defaults(get_method(name).fn, 3)


# ---------------------------------------------------------------- the binding layer


DATA = {"low": -1.0, "high": 2.0, "mean": "the mean image"}


def test_bind_fills_what_the_callee_takes_and_the_config_leaves_unset():
    pf = get_metric("pixel_flipping")  # takes low, high, mean; needs nothing
    out = bind(pf, {"low": 0.5, "mean": None, "steps": 3}, data=DATA, scored=("gradient", {}))
    assert out == {"low": 0.5, "mean": "the mean image", "high": 2.0, "steps": 3}  # no method: it needs none
    cont = get_metric("continuity")  # takes low only, needs the method
    assert bind(cont, {}, data=DATA, scored=("gradient", {"x": 1})) == {"low": -1.0, "method": "gradient",
                                                                       "method_params": {"x": 1}}
    own = bind(cont, {"method": "sensitivity"}, data=DATA, scored=("gradient", {"x": 1}))
    assert own["method"] == "sensitivity" and own.get("method_params") is None  # its own method, not the scored one's
    ig = get_method("integrated_gradients")
    assert bind(ig, {"steps": 4}, data=DATA) == {"steps": 4, **DATA}
    assert bind(get_method("gradient"), {}, data=DATA) == {}


def test_bind_gives_masks_and_pool_to_the_metrics_that_need_them_and_refuses_the_rest():
    ground = {"masks": "M", "pool": "P"}
    assert bind(get_metric("pointing_game"), {}, ground=ground) == {"masks": "M"}
    assert bind(get_metric("pointing_game"), {"masks": "mine"}, ground=ground) == {"masks": "mine"}
    assert "masks" not in bind(get_metric("sparseness"), {}, ground=ground)  # the run's data: only where needed
    with pytest.raises(ValueError, match="metric 'sparseness' takes no masks"):
        bind(get_metric("sparseness"), {"masks": "given by the caller"})
    with pytest.raises(ValueError, match="metric 'pointing_game' needs ground-truth masks: pass masks="):
        bind(get_metric("pointing_game"), {})
    with pytest.raises(ValueError, match="metric 'focus' needs a pool of images: pass pool="):
        bind(get_metric("focus"), {}, ground={"masks": "M"})
    with pytest.raises(TypeError, match=r"metric 'sparseness' has no parameter \['k'\]: it takes \[\]"):
        bind(get_metric("sparseness"), {"k": 1})
    with pytest.raises(TypeError, match=r"method 'gradient' has no parameter \['steps'\]"):
        bind(get_method("gradient"), {"steps": 3})
    with pytest.raises(ValueError, match=r"metric 'pointing_game': \['masks'\] come from the dataset, not the config"):
        check_run({"methods": ["gradient"], "metrics": {"pointing_game": {"masks": "from a config"}}})


def test_the_pipeline_and_score_bind_the_same_way():
    """metric_call's parameters, scored by evalxai.score, equal score given the same values by hand."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    t = torch.zeros(4, dtype=torch.long)
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    data = {"low": 0.0, "high": 1.0, "mean": None}
    mp = metric_call("max_sensitivity", {"samples": 3}, "gradient_x_input", {}, data)
    by_pipeline = evalxai.score(model, x, t, r, metric="max_sensitivity", **mp)
    by_hand = evalxai.score(model, x, t, r, metric="max_sensitivity", samples=3, method="gradient_x_input",
                            method_params={}, low=0.0, high=1.0)
    pd.testing.assert_frame_equal(by_pipeline, by_hand)


# ---------------------------------------------------------------- the recipe: one function + its registration


def test_adding_a_metric_is_one_function_and_its_registration(cleanup, tmp_path):
    """docs/extending.md's recipe: the YAML, the catalogue row, the rows' directions and the ground-truth family
    all follow from the one declaration."""
    @register_metric("_test_top_share", family="complexity", directions={"top_share": "higher"})
    def top_share(model, x, target, attributions, k=2):
        """Share of |R| on the k largest elements (a test metric)."""
        a = attributions.reshape(len(x), -1).abs()
        return scalar_rows(a.topk(k, 1).values.sum(1) / a.sum(1), "top_share", k=k)

    cleanup.append((METRICS, "_test_top_share"))
    written = write_all(tmp_path)
    assert tmp_path / "metric" / "_test_top_share.yaml" in written
    assert yaml.safe_load((tmp_path / "metric" / "_test_top_share.yaml").read_text()) == {"name": "_test_top_share",
                                                                                           "k": 2}
    assert render("_test_top_share", top_share, {"k": 2}).startswith("# Share of |R|")
    row = [line for line in docs.render_metrics().splitlines() if line.startswith("| `_test_top_share` |")]
    assert row == ["| `_test_top_share` | complexity | float | – | `k=2` | `top_share` ↑ | Share of \\|R\\| on the k "
                   "largest elements (a test metric). |"]
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).double().eval()
    x = torch.rand(3, 4, dtype=torch.float64)
    df = evalxai.score(model, x, torch.zeros(3, dtype=torch.long), x, metric="_test_top_share", k=1)
    assert list(df["direction"]) == ["higher"] * 3 and (df["k"] == 1).all()
    assert "_test_top_share" in families()["complexity"]
    assert not (CONF / "metric" / "_test_top_share.yaml").exists()  # the committed tree is untouched
