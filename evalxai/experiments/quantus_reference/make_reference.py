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

import contextlib
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

np.trapz = np.trapezoid  # noqa: NPY201 (restored alias:) Quantus 0.6 on NumPy >= 2.4 (removed name)
np.NaN = np.nan  # noqa: NPY201 (restored alias:) Quantus 0.6 on NumPy >= 2.0 (removed name)

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


# Reference entry -> the evalxai metric, the measure compared, and the evalxai parameters that compute the same
# quantity as the Quantus call (or, for entries with random draws, the same work: the same number of draws / steps).
# Written into reference.json (``evalxai_metric``, ``evalxai_measure``, ``evalxai_params``, ``timing``) and read
# from there by tests/test_quantus_agreement.py and ``python -m evalxai.bench --quantus``: the one place of the
# mapping. Masks are not parameters here: the readers pass the fixture's masks to metrics that take ``masks``.
# ``timing``: null when the two calls do comparable work, else why the times are not comparable.
FLIP = {"patch_size": 1, "per_step": 1, "baseline": "zero", "score_space": "logit"}
REGION = {"patch_size": 2, "per_step": 1, "steps": 64, "baseline": "zero", "score_space": "logit"}
GXI = {"method": "gradient_x_input"}
EVALXAI = {
    "PointingGame": ("pointing_game", "hit", {"tolerance": 0}),
    "AttributionLocalisation": ("attribution_localisation", "ratio", {}),
    "TopKIntersection": ("top_k_intersection", "ratio", {"k": 20}),
    "RelevanceMassAccuracy": ("relevance_mass_accuracy", "ratio", {}),
    "RelevanceMassAccuracy_signed": ("relevance_mass_accuracy", "ratio", {}),
    "RelevanceRankAccuracy": ("relevance_rank_accuracy", "ratio", {}),
    "AUC": ("localisation_auc", "auc", {}),
    "Sparseness": ("sparseness", "gini", {}),
    "Complexity": ("complexity", "entropy", {}),
    "EffectiveComplexity": ("effective_complexity", "effective_complexity", {"eps": 1e-2}),
    "FaithfulnessEstimate": ("faithfulness_estimate", "faithfulness_estimate",
                             {"patch_size": 1, "baseline": "zero", "score_space": "softmax"}),
    "Monotonicity": ("monotonicity", "monotonicity", {"patch_size": 1, "per_step": 1, "baseline": "zero",
                                                      "score_space": "softmax", "tolerance": 0.0}),
    "PixelFlipping": ("pixel_flipping", "curve_morf", {**FLIP, "order": "morf"}),
    "PixelFlipping_auc": ("pixel_flipping", "auc_morf", {**FLIP, "order": "morf"}),
    "RegionPerturbation": ("region_perturbation", "curve_morf", {**REGION, "order": "morf"}),
    "RegionPerturbation_lerf": ("region_perturbation", "curve_lerf", {**REGION, "order": "lerf"}),
    "Selectivity": ("selectivity", "curve", {"patch_size": 4, "steps": 16, "recompute": False, "baseline": "zero",
                                             "score_space": "logit"}),
    "IROF": ("irof", "irof", {}),
    "NonSensitivity": ("non_sensitivity", "non_sensitivity", {"eps": 1e-3, "tolerance": 1e-3, "patch_size": 1,
                                                              "baseline": "zero", "score_space": "logit"}),
    "Completeness": ("conservation", "abs_relative_residual", {"reference": "zero"}),
    "InputInvariance": ("input_invariance", "unchanged_share", GXI),
    "Continuity": ("continuity", "continuity_ref", {"shift": 15, "stride": 1, "align": False, **GXI}),
    "FaithfulnessCorrelation": ("faithfulness_correlation", "faithfulness_correlation",
                                {"runs": 100, "subset_size": 64, "patch_size": 1, "baseline": "zero",
                                 "score_space": "logit"}),
    "MonotonicityCorrelation": ("monotonicity_correlation", "monotonicity_correlation",
                                {"samples": 10, "patch_size": 1, "score_space": "softmax"}),
    "SensitivityN": ("sensitivity_n", "sensitivity_n", {}, "Quantus 0.6 removes the features cumulatively in "
                     "attribution order (one 32-step curve per sample, no random subsets); evalxai draws 100 random "
                     "subsets per size (Ancona et al. 2018): different estimators and work"),
    "Infidelity": ("infidelity", "infidelity", {"perturbation": "square", "samples": 50, "square_size": 4},
                   "Quantus 0.6 sets every 4 x 4 block to the baseline in turn for each of its 50 draws (800 forwards "
                   "per image); evalxai makes one forward per draw (50)"),
    "ROAD": ("road", "auc_morf", {"order": "morf", "noise": 0.01, "score_space": "softmax"}),
    "Sufficiency": ("sufficiency", "sufficiency", GXI, "Quantus 0.6 compares the given maps across the batch (one "
                    "forward); evalxai re-explains noisy copies (Dasgupta et al. 2022 as evalxai reads it)"),
    "LocalLipschitzEstimate": ("local_lipschitz_estimate", "local_lipschitz_estimate",
                               {"samples": 10, "noise": 0.1, **GXI}),
    "MaxSensitivity": ("max_sensitivity", "max_sensitivity", {"samples": 10, "radius": 0.02, **GXI}),
    "AvgSensitivity": ("avg_sensitivity", "avg_sensitivity", {"samples": 10, "radius": 0.02, **GXI}),
    "Consistency": ("consistency", "consistency", GXI, "Quantus 0.6 compares the given maps across the batch (one "
                    "forward); evalxai re-explains noisy copies"),
    "RelativeInputStability": ("relative_input_stability", "relative_input_stability", {"samples": 10, **GXI}),
    "RelativeOutputStability": ("relative_output_stability", "relative_output_stability", {"samples": 10, **GXI}),
    "RelativeRepresentationStability": ("relative_representation_stability", "relative_representation_stability",
                                        {"samples": 10, **GXI}),
    "MPRT": ("randomization", "spearman", GXI),
    "SmoothMPRT": ("smooth_mprt", "spearman", {"samples": 10, **GXI}),
    "EfficientMPRT": ("efficient_mprt", "efficient_mprt", GXI),
    "RandomLogit": ("random_logit", "random_logit", GXI),
}


def evalxai_fields(name: str) -> dict:
    """The reference.json fields that say how evalxai computes entry ``name``."""
    metric, measure, params, *why = EVALXAI[name]
    return {"evalxai_metric": metric, "evalxai_measure": measure, "evalxai_params": params,
            "timing": why[0] if why else None}


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


LOCALISATION = ("PointingGame", "AttributionLocalisation", "TopKIntersection", "RelevanceMassAccuracy",
                "RelevanceRankAccuracy", "AUC")


def quantus_specs() -> dict:
    """Entry name -> (Quantus class, init kwargs, call kwargs, a_batch label, reference?)."""
    raw = dict(abs=False, normalise=False, disable_warnings=True)
    black = dict(perturb_baseline=0.0)
    gxi = dict(explain_func=gradient_x_input)

    # name: (class, init kwargs, call kwargs, a_batch label, reference?)
    return {
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


def quantus_call(quantus, name: str, data: dict):
    """The Quantus metric object of entry ``name`` and a function that makes its call on the fixture batch."""
    cls, init, call, a_label, _ = quantus_specs()[name]
    model = load_model(data)
    x, y, a = data["x"].numpy(), data["target"].numpy(), data["attributions"].numpy()
    batches = {"attributions": a, "positive_part": np.clip(a, 0, None), "per_sample_unit": per_sample_unit(a)}
    kwargs = dict(model=model, x_batch=x, y_batch=y, a_batch=batches[a_label], device="cpu", batch_size=N, **call)
    if cls in LOCALISATION:
        kwargs["s_batch"] = data["masks"].unsqueeze(1).numpy()
    metric = getattr(quantus, cls)(**init)

    def run():
        np.random.seed(0)  # noqa: NPY002 (Quantus draws from NumPy's global generator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(**kwargs)
    return run


def time_entries(names: list[str], repeats: int, budget: float, threads: int) -> None:
    """Timing only (for ``python -m evalxai.bench --quantus``): per entry, one JSON line {name, seconds (list of wall
    seconds, up to ``repeats`` calls, fewer once ``budget`` seconds are spent), cpu_seconds, error}. ``names`` ["-"]:
    read one name per line from stdin (one process serves the whole bench)."""
    import quantus

    torch.set_num_threads(threads)
    data = torch.load(OUT / "inputs.pt", weights_only=True)
    if names == ["-"]:
        print(json.dumps({"ready": True}), flush=True)  # imports done: the caller's timings no longer compete with them
    for name in (line.strip() for line in sys.stdin) if names == ["-"] else names:
        if not name:
            continue
        row = {"name": name, "seconds": [], "cpu_seconds": [], "error": None, "threads": torch.get_num_threads()}
        try:
            run = quantus_call(quantus, name, data)
            spent = 0.0
            while len(row["seconds"]) < repeats and (not row["seconds"] or spent < budget):
                t0, c0 = time.perf_counter(), time.process_time()
                with contextlib.redirect_stdout(sys.stderr):  # Quantus prints notes: stdout carries only the JSON
                    run()
                row["seconds"].append(time.perf_counter() - t0)
                row["cpu_seconds"].append(time.process_time() - c0)
                spent += row["seconds"][-1]
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"[:400]
        print(json.dumps(row), flush=True)


def refresh_evalxai_fields() -> None:
    """Rewrite only the evalxai fields of reference.json from ``EVALXAI`` (no Quantus needed)."""
    path = OUT / "reference.json"
    ref = json.loads(path.read_text())
    for name, entry in ref["metrics"].items():
        entry.update(evalxai_fields(name))
    path.write_text(json.dumps(ref, indent=1) + "\n")
    print("updated the evalxai fields of", path)


def main(only: list[str] | None = None) -> None:
    """Run every metric (``only``: just these entries, merged into the existing reference.json)."""
    import quantus

    torch.set_num_threads(2)
    load_start = [round(v, 2) for v in os.getloadavg()]
    OUT.mkdir(parents=True, exist_ok=True)
    data = make_inputs()
    torch.save(data, OUT / "inputs.pt")
    data = torch.load(OUT / "inputs.pt", weights_only=True)  # what the test will see
    x = data["x"].numpy()
    n_el = x[0].size
    results = {}
    for name, (cls, init, call, a_label, reference) in quantus_specs().items():
        if only and name not in only:
            continue
        entry = {"quantus_class": cls, **evalxai_fields(name),
                 "init": {k: v for k, v in init.items() if k != "disable_warnings"},
                 "call": {k: (v.__name__ if callable(v) else v) for k, v in call.items()}, "a_batch": a_label,
                 "reference": reference, "values": None, "seconds": None, "cpu_seconds": None, "error": None}
        try:
            run = quantus_call(quantus, name, data)
            t0, c0 = time.perf_counter(), time.process_time()
            values = run()
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
                  "machine may be shared with other jobs (load_average: 1, 5, 15 min, at the start and the end), so "
                  "wall times are upper bounds; python -m evalxai.bench --quantus --quantus-python re-times them",
        "load_average": [load_start, [round(v, 2) for v in os.getloadavg()]],
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
    parser.add_argument("--evalxai-only", action="store_true",
                        help="rewrite only the evalxai fields of reference.json (metric, measure, parameters)")
    parser.add_argument("--time", nargs="+", metavar="NAME",
                        help="timing only: time these entries (- : names from stdin), one JSON line each")
    parser.add_argument("--repeats", type=int, default=3, help="with --time: calls per entry (default 3)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="with --time: no further call of an entry once this many seconds are spent on it")
    parser.add_argument("--threads", type=int, default=2, help="with --time: torch threads (default 2)")
    args = parser.parse_args()
    if args.time:
        time_entries(args.time, args.repeats, args.budget, args.threads)
    elif args.evalxai_only:
        refresh_evalxai_fields()
    else:
        main(args.only)
