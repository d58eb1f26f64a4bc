"""evalxai against numbers computed once with Quantus 0.6.0 on the same inputs.

Source of the numbers: ``tests/fixtures/quantus/reference.json``, written by
``experiments/quantus_reference/make_reference.py`` (Quantus 0.6.0, NumPy 2.4 with ``np.trapz`` / ``np.NaN``
restored as aliases, torch 2.13 CPU) from ``tests/fixtures/quantus/inputs.pt``: a seeded bias-free CNN, 8 inputs
1 x 16 x 16 with minimum 0, gradient x input maps, disk masks. Quantus is not needed to run these tests.

Where evalxai computes the same quantity, the per-sample values must agree within the stated tolerance (float32
forwards on both sides). Where evalxai deliberately differs (a Quantus fault or a different definition), the test
asserts the documented difference with the numbers. A metric that is not registered is skipped.
"""
import inspect
import json

import numpy as np
import pytest
import torch

import evalxai
from evalxai.bench.quantus import QUANTUS_FIXTURES as FIXTURES
from evalxai.bench.quantus import quantus_fixture
from evalxai.metrics import METRICS

REFERENCE = json.loads((FIXTURES / "reference.json").read_text())


@pytest.fixture(scope="module")
def case():
    """(model, x, target, attributions, masks) of inputs.pt: the bias-free CNN of make_reference.py."""
    return quantus_fixture()[0]


def matched(name: str) -> tuple[str, str, dict]:
    """(evalxai metric, measure, parameters) that match Quantus entry ``name``: data in reference.json (written by
    make_reference.py, read by the bench too), not repeated here."""
    entry = REFERENCE["metrics"][name]
    return entry["evalxai_metric"], entry["evalxai_measure"], dict(entry["evalxai_params"])


def quantus(name: str) -> np.ndarray:
    entry = REFERENCE["metrics"][name]
    assert entry["error"] is None, entry["error"]
    return np.array(entry["values"], dtype=np.float64)  # None (Quantus NaN) -> nan


_SCORED: dict = {}


def score(case, metric: str, measure: str, **params) -> np.ndarray:
    """evalxai's values of one measure: (N,) for scalars, (N, K + 1) for curves (step 0 first). Each (metric,
    parameters) is scored once per session."""
    if metric not in METRICS:
        pytest.skip(f"metric '{metric}' is not registered yet")
    model, x, t, a, masks = case
    if "masks" in inspect.signature(METRICS[metric].fn).parameters:
        params = {**params, "masks": masks}
    key = (metric, repr(sorted((k, "masks" if k == "masks" else v) for k, v in params.items())))
    if key not in _SCORED:
        _SCORED[key] = evalxai.score(model, x, t, a, metric=metric, **params)
    df = _SCORED[key]
    df = df[df.measure == measure]
    if df["step"].notna().any():
        return df.pivot(index="sample", columns="step", values="value").sort_index().to_numpy(dtype=np.float64)
    return df.sort_values("sample").value.to_numpy(dtype=np.float64)


def score_matched(case, name: str) -> np.ndarray:
    """evalxai's values of the measure that matches Quantus entry ``name``, with the matched parameters."""
    metric, measure, params = matched(name)
    return score(case, metric, measure, **params)


def test_reference_records_versions_and_inputs():
    assert REFERENCE["quantus_version"] == "0.6.0"
    assert REFERENCE["patches"] == ["np.trapz = np.trapezoid", "np.NaN = np.nan"]
    data = torch.load(FIXTURES / "inputs.pt", weights_only=True)
    assert data["x"].shape == (8, 1, 16, 16) and (data["x"].flatten(1).min(1).values == 0).all()
    assert (FIXTURES / "inputs.pt").stat().st_size < 200_000
    for name, entry in REFERENCE["metrics"].items():  # the bench reads the time of every metric that ran
        assert entry["error"] is not None or entry["seconds"] > 0, name


# (Quantus entry, absolute tolerance): the evalxai metric, measure and parameters are the entry's in reference.json.
# Maps as given; Quantus was fed max(R, 0) for RelevanceMassAccuracy and |R| / max |R| for EffectiveComplexity and
# NonSensitivity (eps on that scale); Complexity: Quantus is float32 with log(p + 1e-12).
AGREE = [("PointingGame", 0.0), ("AttributionLocalisation", 1e-6), ("TopKIntersection", 0.0),
         ("RelevanceMassAccuracy", 1e-6), ("RelevanceRankAccuracy", 0.0), ("AUC", 1e-12), ("Complexity", 2e-6),
         ("EffectiveComplexity", 0.0), ("FaithfulnessEstimate", 1e-5), ("NonSensitivity", 0.0)]


def test_every_entry_names_its_evalxai_match():
    """The mapping is complete data: a registered metric, a measure, YAML/JSON-able parameters, and either
    comparable timing (null) or the reason it is not."""
    for name, entry in REFERENCE["metrics"].items():
        assert isinstance(entry["evalxai_params"], dict) and isinstance(entry["evalxai_measure"], str), name
        assert entry["timing"] is None or len(entry["timing"]) > 20, name
        assert entry["evalxai_metric"] in METRICS, name
        spec = METRICS[entry["evalxai_metric"]]
        unknown = set(entry["evalxai_params"]) - set(inspect.signature(spec.fn).parameters) - set(spec.defaults)
        assert not unknown, (name, unknown)


@pytest.mark.parametrize("name,atol", AGREE, ids=[a[0] for a in AGREE])
def test_scalar_agrees_with_quantus(case, name, atol):
    ref = quantus(name)
    got = score_matched(case, name)
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)


def test_sparseness_agrees_up_to_quantus_offset(case):
    """Quantus adds 1e-7 to every |R_i| before the Gini index; evalxai does not. With that offset the two agree to
    float rounding, without it they differ by (far) less than 1e-3 on these maps."""
    from evalxai.metrics.complexity import gini

    ref = quantus("Sparseness")
    got = score_matched(case, "Sparseness")
    a = case[3].reshape(len(ref), -1).abs().double()
    np.testing.assert_allclose(gini(a + 1e-7).numpy(), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)


def test_pixel_flipping_curve_agrees(case):
    """Quantus's PixelFlipping curve is y_1..y_K (no unperturbed point); evalxai's is y_0..y_K."""
    ref = quantus("PixelFlipping")
    got = score_matched(case, "PixelFlipping")
    assert got.shape == (8, ref.shape[1] + 1)
    np.testing.assert_allclose(got[:, 1:], ref, rtol=0, atol=1e-6)


def test_pixel_flipping_auc_is_a_different_aggregate(case):
    """Quantus's AUC (return_auc_per_sample, np.trapz, removed in NumPy 2.4) is the trapezoid over steps 1..K with
    dx = 1: unnormalised, without y_0. evalxai reports AOPC and a normalised AUC instead; the same curve gives
    Quantus's number."""
    ref = quantus("PixelFlipping_auc")
    metric, measure, params = matched("PixelFlipping_auc")
    curve = score(case, metric, "curve_morf", **params)
    np.testing.assert_allclose(np.trapezoid(curve[:, 1:], dx=1.0, axis=1), ref, rtol=1e-5, atol=1e-4)
    auc = score(case, metric, measure, **params)
    assert np.abs(auc - ref).max() > 1.0  # a different scale: not comparable across step counts


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_drop_curve_agrees(case, order):
    """Quantus returns the drop y_0 - y_k for k = 1..L; evalxai returns y_0..y_L (and AOPC over k = 0..L)."""
    name = "RegionPerturbation" if order == "morf" else "RegionPerturbation_lerf"
    ref = quantus(name)
    metric, measure, params = matched(name)
    assert params["order"] == order and measure == f"curve_{order}"
    got = score(case, metric, measure, **params)
    np.testing.assert_allclose(got[:, :1] - got[:, 1:], ref, rtol=0, atol=1e-6)


def test_selectivity_without_recomputation_agrees(case):
    """Quantus's Selectivity never recomputes the map; evalxai's recompute=False is that variant (the default,
    recompute=True, follows Montavon et al. 2018)."""
    ref = quantus("Selectivity")
    metric, measure, params = matched("Selectivity")
    assert params["recompute"] is False
    got = score(case, metric, measure, **params)
    np.testing.assert_allclose(got[:, 1:], ref, rtol=0, atol=1e-6)


def test_continuity_agrees_with_unaligned_reference_estimator(case):
    """Quantus's Continuity (normalise=False, so per sample) is evalxai's continuity_ref without alignment: the
    max over translations t = -15..15 of ||R(x_t) - R(x)||_1 / ||x_t - x||_2, zero fill."""
    ref = quantus("Continuity")
    metric, measure, params = matched("Continuity")
    assert (params["shift"], params["stride"], params["align"]) == (15, 1, False)
    got = score(case, metric, measure, **params)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)


def test_monotonicity_quantus_never_inserts_the_input(case):
    """Quantus 0.6's Monotonicity writes the baseline into the all-baseline image at every step (it never puts the
    input's values back), so its curve is flat and every sample scores True. evalxai inserts x: its curve ends at
    f(x), and its verdicts depend on the map."""
    ref = quantus("Monotonicity")
    assert (ref == 1).all()
    metric, measure, params = matched("Monotonicity")
    curve = score(case, metric, "curve_insertion", **params)
    model, x, t = case[:3]
    with torch.no_grad():
        fx = model(x).softmax(1).gather(1, t.view(-1, 1)).squeeze(1).double().numpy()
    np.testing.assert_allclose(curve[:, -1], fx, rtol=1e-5)
    assert (np.ptp(curve, axis=1) > 1e-3).all()  # the curve moves
    got = score(case, metric, measure, **params)
    assert (got < 1).any()


def test_completeness_quantus_needs_exact_float_equality(case):
    """Gradient x input of a bias-free ReLU network with average pooling is complete: sum R = f(x) - f(0). evalxai's
    conservation residual is at float32 rounding for every sample; Quantus's Completeness compares with ==, so it
    passes only some of them."""
    ref = quantus("Completeness")
    rel = score_matched(case, "Completeness")
    assert (rel < 1e-5).all()
    assert 0 < ref.sum() < len(ref)


def test_irof_quantus_scale_grows_with_the_segment_count(case):
    """Quantus's IROF is K - trapezoid(y_k / y_0, k = 1..K, dx = 1) over the K superpixels (np.trapz), with a 'mean'
    baseline recomputed on the already-perturbed image; evalxai's is the area over the normalised curve on [0, 1]
    with the clean image's mean (Rieger & Hansen 2020). Quantus's numbers (2.8 .. 13.5 here, K about 64) are on a
    scale that grows with the segment count; evalxai's stay within [-1, 1]."""
    ref = quantus("IROF")
    got = score_matched(case, "IROF")
    assert np.all((got > -1) & (got < 1))
    assert (ref > 1).all()


def test_input_invariance_quantus_fails_without_first_layer_bias(case):
    """Quantus 0.6's InputInvariance writes the shift into ``bias[i]`` of the first module and fails on a bias-free
    first layer (and reads the shift's effect from the smallest output value, which zero padding makes wrong at
    the border). evalxai creates the bias and pads with the shift: gradient x input is, correctly, not invariant."""
    assert REFERENCE["metrics"]["InputInvariance"]["error"].startswith("TypeError")
    share = score_matched(case, "InputInvariance")
    assert (share < 0.5).all()
    grad = evalxai.explain(*case[:3], method="gradient")
    model, x, t = case[:3]
    df = evalxai.score(model, x, t, grad, metric="input_invariance", method="gradient")
    assert (df[df.measure == "unchanged_share"].value == 1).all()
