"""Reference numbers from Quantus 0.6.0 on fixed inputs, for tests/test_quantus_agreement.py and the benchmark.

Quantus is NOT a dependency of evalxai. Run this once, in a scratch environment outside the repository:

    python3 -m venv /tmp/qenv
    /tmp/qenv/bin/pip install -c constraints.txt torch==2.13.0 quantus==0.6.0
    /tmp/qenv/bin/python experiments/quantus_reference/make_reference.py

It writes
- ``tests/fixtures/quantus/inputs.pt``: a dict of tensors (weights-only loadable): the state dict of a small
  bias-free CNN (seeded), 8 inputs 1 x 16 x 16, their targets (the model's predictions), gradient x input maps
  and boolean masks;
- ``tests/fixtures/quantus/reference.json``: per Quantus metric, the per-sample values, the constructor and call
  parameters, the wall time of that one call on this machine, and the versions.

Parameters are chosen to compute evalxai's definition: no normalisation (Quantus's ``normalise_by_max`` divides by
the maximum over the whole batch), no absolute value unless the metric means it, the black baseline given as 0.0
(every input has minimum 0), logits unless the metric's paper uses probabilities. Metrics that draw random numbers
(noise, subsets, random weights) cannot give numbers evalxai must equal (different generators); they are run for
their wall time only (``"reference": false``).

NumPy 2.4 removed ``np.trapz`` and ``np.NaN``, which Quantus 0.6 still calls (AUC of PixelFlipping, IROF,
Continuity's NaN option): this script restores both names as aliases (``np.trapz = np.trapezoid``,
``np.NaN = np.nan``) before importing Quantus, and says so in the JSON.
"""
from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

np.trapz = np.trapezoid  # noqa: NPY201 (restored alias:) Quantus 0.6 on NumPy >= 2.4 (removed name)
np.NaN = np.nan  # noqa: NPY201 (restored alias:) Quantus 0.6 on NumPy >= 2.0 (removed name)

import quantus  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "quantus"
N, SIDE, CLASSES = 8, 16, 3


def build_model() -> nn.Sequential:
    """Conv(1->4, 3x3) ReLU AvgPool Conv(4->8, 3x3) ReLU AvgPool Linear(128->3), no biases (tests build the same)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, CLASSES, bias=False))


def make_inputs() -> dict[str, torch.Tensor]:
    """Seeded model, images (two Gaussian blobs on a faint noise floor, min exactly 0 per image), targets,
    gradient x input maps and masks (the disk of radius 3.5 around the first blob)."""
    g = torch.Generator().manual_seed(2024)
    torch.manual_seed(2024)
    model = build_model().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)  # livelier logits than the default init
    yy, xx = torch.meshgrid(torch.arange(SIDE, dtype=torch.float32), torch.arange(SIDE, dtype=torch.float32),
                            indexing="ij")
    centers = 3 + torch.rand(N, 2, 2, generator=g) * (SIDE - 6)
    x = 0.1 * torch.rand(N, 1, SIDE, SIDE, generator=g)
    for b in range(2):
        cy, cx = centers[:, b, 0].view(N, 1, 1), centers[:, b, 1].view(N, 1, 1)
        x[:, 0] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0 ** 2))
    x = x.clamp(0, 1)
    x[:, 0, 0, 0] = 0.0  # the minimum, so Quantus's "black" (per-sample min) is 0 as evalxai's zero baseline
    masks = ((yy - centers[:, 0, 0].view(N, 1, 1)) ** 2 + (xx - centers[:, 0, 1].view(N, 1, 1)) ** 2) <= 3.5 ** 2
    with torch.no_grad():
        target = model(x).argmax(1)
    xg = x.clone().requires_grad_(True)
    model(xg).gather(1, target.view(-1, 1)).sum().backward()
    attributions = (xg.grad * x).detach()
    return {**{f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}, "x": x, "target": target,
            "attributions": attributions, "masks": masks}


def load_model(data: dict) -> nn.Sequential:
    model = build_model()
    model.load_state_dict({k[len("model."):]: v for k, v in data.items() if k.startswith("model.")})
    return model.eval()


def gradient_x_input(model, inputs, targets, **kwargs) -> np.ndarray:
    """Quantus ``explain_func``: gradient x input of the target logit, for whichever model Quantus passes."""
    m = model if isinstance(model, nn.Module) else model.get_model()
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32).requires_grad_(True)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long).view(-1, 1)
    with torch.enable_grad():
        m(x).gather(1, t).sum().backward()
    return (x.grad * x).detach().numpy()


# Quantus class -> the evalxai metric that computes the same or the nearest quantity (the bench's "Quantus time")
EVALXAI_NAME = {
    "PointingGame": "pointing_game", "AttributionLocalisation": "attribution_localisation",
    "TopKIntersection": "top_k_intersection", "RelevanceMassAccuracy": "relevance_mass_accuracy",
    "RelevanceRankAccuracy": "relevance_rank_accuracy", "AUC": "localisation_auc", "Sparseness": "sparseness",
    "Complexity": "complexity", "EffectiveComplexity": "effective_complexity",
    "FaithfulnessEstimate": "faithfulness_estimate", "Monotonicity": "monotonicity", "PixelFlipping": "pixel_flipping",
    "RegionPerturbation": "region_perturbation", "Selectivity": "selectivity", "IROF": "irof",
    "NonSensitivity": "non_sensitivity", "Completeness": "conservation", "InputInvariance": "input_invariance",
    "Continuity": "continuity", "FaithfulnessCorrelation": "faithfulness_correlation",
    "MonotonicityCorrelation": "monotonicity_correlation", "SensitivityN": "sensitivity_n",
    "Infidelity": "infidelity", "ROAD": "road", "Sufficiency": "sufficiency",
    "LocalLipschitzEstimate": "local_lipschitz_estimate", "MaxSensitivity": "max_sensitivity",
    "AvgSensitivity": "avg_sensitivity", "Consistency": "consistency",
    "RelativeInputStability": "relative_input_stability", "RelativeOutputStability": "relative_output_stability",
    "RelativeRepresentationStability": "relative_representation_stability", "MPRT": "randomization",
    "SmoothMPRT": "smooth_mprt", "EfficientMPRT": "efficient_mprt", "RandomLogit": "random_logit",
}


def abs_gradient_x_input(model, inputs, targets, **kwargs) -> np.ndarray:
    """|gradient x input|: EfficientMPRT's entropy asserts non-negative maps and does not apply ``abs`` to the maps
    it re-explains (it also takes the entropy of the model's outputs, hence softmax=True)."""
    return np.abs(gradient_x_input(model, inputs, targets))


def per_sample_unit(a: np.ndarray) -> np.ndarray:
    """|a| / max |a| per sample: the scale on which evalxai's eps thresholds are measured."""
    a = np.abs(a)
    return a / a.reshape(len(a), -1).max(1).reshape(-1, *[1] * (a.ndim - 1))


def clean(v):
    """JSON-able per-sample values: floats (bools as 0/1, NaN as null), nested lists for curves."""
    arr = np.asarray(v, dtype=np.float64)
    out = arr.tolist()

    def fix(o):
        if isinstance(o, list):
            return [fix(e) for e in o]
        return None if o != o else float(o)
    return fix(out)


def main(only: list[str] | None = None) -> None:
    """Run every metric (``only``: just these entries, merged into the existing reference.json)."""
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    data = make_inputs()
    torch.save(data, OUT / "inputs.pt")
    data = torch.load(OUT / "inputs.pt", weights_only=True)  # what the test will see
    model = load_model(data)
    x = data["x"].numpy()
    y = data["target"].numpy()
    a = data["attributions"].numpy()
    s = data["masks"].unsqueeze(1).numpy()
    a_pos = np.clip(a, 0, None)
    a_unit = per_sample_unit(a)
    raw = dict(abs=False, normalise=False, disable_warnings=True)
    black = dict(perturb_baseline=0.0)
    gxi = dict(explain_func=gradient_x_input)
    n_el = x[0].size

    # name: (class, init kwargs, call kwargs, a_batch label, reference?)
    specs = {
        # localisation
        "PointingGame": ("PointingGame", raw, {}, "attributions", True),
        "AttributionLocalisation": ("AttributionLocalisation", {**raw, "positive_attributions": True}, {},
                                    "attributions", True),
        "TopKIntersection": ("TopKIntersection", {**raw, "k": 20}, {}, "attributions", True),
        "RelevanceMassAccuracy": ("RelevanceMassAccuracy", raw, {}, "positive_part", True),
        "RelevanceMassAccuracy_signed": ("RelevanceMassAccuracy", raw, {}, "attributions", True),
        "RelevanceRankAccuracy": ("RelevanceRankAccuracy", raw, {}, "attributions", True),
        "AUC": ("AUC", raw, {}, "attributions", True),
        # complexity
        "Sparseness": ("Sparseness", {**raw, "abs": True}, {}, "attributions", True),
        "Complexity": ("Complexity", {**raw, "abs": True}, {}, "attributions", True),
        "EffectiveComplexity": ("EffectiveComplexity", {**raw, "abs": True, "eps": 1e-2}, {}, "per_sample_unit",
                                True),
        # faithfulness
        "FaithfulnessEstimate": ("FaithfulnessEstimate", {**raw, **black, "features_in_step": 1},
                                 {"softmax": True}, "attributions", True),
        "Monotonicity": ("Monotonicity", {**raw, **black, "features_in_step": 1}, {"softmax": True},
                         "attributions", True),
        "PixelFlipping": ("PixelFlipping", {**raw, **black, "features_in_step": 1}, {"softmax": False},
                          "attributions", True),
        "PixelFlipping_auc": ("PixelFlipping", {**raw, **black, "features_in_step": 1,
                                                "return_auc_per_sample": True}, {"softmax": False}, "attributions",
                              True),
        "RegionPerturbation": ("RegionPerturbation", {**raw, **black, "patch_size": 2, "order": "morf",
                                                      "regions_evaluation": 64}, {"softmax": False},
                               "attributions", True),
        "RegionPerturbation_lerf": ("RegionPerturbation", {**raw, **black, "patch_size": 2, "order": "lerf",
                                                           "regions_evaluation": 64}, {"softmax": False},
                                    "attributions", True),
        "Selectivity": ("Selectivity", {**raw, **black, "patch_size": 4}, {"softmax": False}, "attributions", True),
        "IROF": ("IROF", {**raw, "segmentation_method": "slic", "perturb_baseline": "mean",
                          "return_aggregate": False}, {"softmax": True},
                 "attributions", True),
        # axiomatic
        "NonSensitivity": ("NonSensitivity", {**raw, **black, "abs": True, "eps": 1e-3, "features_in_step": 1},
                           {"softmax": False}, "per_sample_unit", True),
        "Completeness": ("Completeness", {**raw, **black}, {"softmax": False}, "attributions", True),
        "InputInvariance": ("InputInvariance", {**raw, "input_shift": -1}, gxi, "attributions", True),
        # robustness (deterministic: translations)
        "Continuity": ("Continuity", {**raw, "nr_steps": 31}, {**gxi, "softmax": False}, "attributions", True),
        # random draws: wall time only
        "FaithfulnessCorrelation": ("FaithfulnessCorrelation", {**raw, **black, "nr_runs": 100, "subset_size": 64,
                                                               "return_aggregate": False},
                                    {"softmax": False}, "attributions", False),
        "MonotonicityCorrelation": ("MonotonicityCorrelation", {**raw, "nr_samples": 10, "features_in_step": 1},
                                    {"softmax": True}, "attributions", False),
        "SensitivityN": ("SensitivityN", {**raw, **black, "features_in_step": 8, "n_max_percentage": 0.8,
                                          "return_aggregate": False},
                         {"softmax": False}, "attributions", False),
        "Infidelity": ("Infidelity", {**raw, "n_perturb_samples": 50, "perturb_patch_sizes": [4]},
                       {"softmax": False}, "attributions", False),
        "ROAD": ("ROAD", {**raw, "percentages": list(range(10, 100, 10)), "noise": 0.01}, {"softmax": True},
                 "attributions", False),
        "Sufficiency": ("Sufficiency", {**raw, "threshold": 0.5}, {"softmax": False}, "attributions", False),
        "LocalLipschitzEstimate": ("LocalLipschitzEstimate", {**raw, "nr_samples": 10, "perturb_std": 0.1},
                                   {**gxi, "softmax": False}, "attributions", False),
        "MaxSensitivity": ("MaxSensitivity", {**raw, "nr_samples": 10, "lower_bound": 0.02},
                           {**gxi, "softmax": False}, "attributions", False),
        "AvgSensitivity": ("AvgSensitivity", {**raw, "nr_samples": 10, "lower_bound": 0.02},
                           {**gxi, "softmax": False}, "attributions", False),
        "Consistency": ("Consistency", raw, {**gxi, "softmax": False}, "attributions", False),
        "RelativeInputStability": ("RelativeInputStability", {**raw, "nr_samples": 10}, {**gxi, "softmax": False},
                                   "attributions", False),
        "RelativeOutputStability": ("RelativeOutputStability", {**raw, "nr_samples": 10},
                                    {**gxi, "softmax": False}, "attributions", False),
        "RelativeRepresentationStability": ("RelativeRepresentationStability", {**raw, "nr_samples": 10},
                                            {**gxi, "softmax": False}, "attributions", False),
        "MPRT": ("MPRT", raw, {**gxi, "softmax": False}, "attributions", False),
        "SmoothMPRT": ("SmoothMPRT", {**raw, "nr_samples": 10}, {**gxi, "softmax": False}, "attributions", False),
        "EfficientMPRT": ("EfficientMPRT", {**raw, "abs": True}, {"explain_func": abs_gradient_x_input,
                                                                  "softmax": True}, "attributions", False),
        "RandomLogit": ("RandomLogit", {**raw, "num_classes": CLASSES}, {**gxi, "softmax": False}, "attributions",
                        False),
    }
    batches = {"attributions": a, "positive_part": a_pos, "per_sample_unit": a_unit}
    results = {}
    for name, (cls, init, call, a_label, reference) in specs.items():
        if only and name not in only:
            continue
        np.random.seed(0)  # noqa: NPY002 (Quantus draws from NumPy's global generator)
        entry = {"quantus_class": cls, "evalxai_metric": EVALXAI_NAME[cls],
                 "init": {k: v for k, v in init.items() if k != "disable_warnings"},
                 "call": {k: (v.__name__ if callable(v) else v) for k, v in call.items()}, "a_batch": a_label,
                 "reference": reference, "values": None, "seconds": None, "cpu_seconds": None, "error": None}
        try:
            metric = getattr(quantus, cls)(**init)
            kwargs = dict(model=model, x_batch=x, y_batch=y, a_batch=batches[a_label], device="cpu",
                          batch_size=N, **call)
            if cls in ("PointingGame", "AttributionLocalisation", "TopKIntersection", "RelevanceMassAccuracy",
                       "RelevanceRankAccuracy", "AUC"):
                kwargs["s_batch"] = s
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0, c0 = time.perf_counter(), time.process_time()
                values = metric(**kwargs)
                entry["seconds"] = time.perf_counter() - t0
                entry["cpu_seconds"] = time.process_time() - c0
            if isinstance(values, dict):  # ROAD: {percentage: accuracy over the batch}
                entry["values"] = {str(k): clean(v) for k, v in values.items()}
            else:
                entry["values"] = clean(values)
        except Exception as err:  # recorded, not hidden: the test reads it
            entry["error"] = f"{type(err).__name__}: {err}"[:400]
        results[name] = entry
        status = entry["error"] or f"{entry['seconds']:.3f} s"
        print(f"{name:34s} {status} (cpu {entry['cpu_seconds']})", flush=True)

    out = {
        "quantus_version": quantus.__version__ if hasattr(quantus, "__version__") else "0.6.0",
        "numpy_version": np.__version__, "torch_version": torch.__version__, "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch_threads": 2,
        "timing": "one call per metric on the batch of 8 (batch_size=8), wall seconds and process CPU seconds; the "
                  "machine was shared with other jobs, so wall times are upper bounds",
        "batch": {"n": N, "shape": list(x.shape[1:]), "classes": CLASSES, "elements": n_el},
        "patches": ["np.trapz = np.trapezoid", "np.NaN = np.nan"],
        "a_batch": {"attributions": "gradient x input of the target logit (inputs.pt 'attributions')",
                    "positive_part": "max(attributions, 0)",
                    "per_sample_unit": "|attributions| / max |attributions| per sample"},
        "created_by": "experiments/quantus_reference/make_reference.py",
        "metrics": results,
    }
    if only:  # merge into the full run
        previous = json.loads((OUT / "reference.json").read_text())
        previous["metrics"].update(results)
        out["metrics"] = previous["metrics"]
    (OUT / "reference.json").write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", OUT / "inputs.pt", (OUT / "inputs.pt").stat().st_size, "bytes and reference.json")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="rerun just these entries (names as in reference.json)")
    main(parser.parse_args().only)
