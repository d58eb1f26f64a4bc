"""experiment=ground_truth: the configs compose with registered names, and the report (which metrics agree with
ground truth) computes what it says, on known tables and on a reduced sweep through the pipeline."""

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from scipy.stats import spearmanr

from evalxai.methods import METHODS
from evalxai.metrics import METRICS
from evalxai.report import ground_truth as gt
from evalxai.runs.configs import CONF as CONFIGS
from evalxai.runs.pipeline import run_experiment

CONF = CONFIGS


@pytest.mark.parametrize("experiment", ["ground_truth", "ground_truth_decoy"])
def test_experiments_compose_with_registered_names(experiment):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.name == "ground_truth"
    assert cfg.dataset.name == ("xai_tris" if experiment == "ground_truth" else "decoy_mnist")
    assert {"random", "edge"} <= set(cfg.methods) and all(m in METHODS for m in cfg.methods)
    assert all(m in METRICS for m in cfg.metrics)
    assert gt.REFERENCE.split(":")[0] in cfg.metrics
    params = dict(cfg.hydra.sweeper.params)
    if experiment == "ground_truth":
        assert params == {"dataset.scenario": "linear,multiplicative,translations_rotations,xor",
                          "dataset.background": "white,correlated", "model": "mlp,lenet"}
    else:
        assert params == {"model": "mlp,lenet"}


def _means(rows):
    return pd.DataFrame(rows, columns=["run_id", "setting", "model", "family", "estimator", "method", "oriented"])


def test_agreement_known_answers():
    """Per run, rho across methods: a copy of the reference gives 1, its reverse -1; the mean, share and interval
    are over runs; a lower-is-better measure enters oriented (negated) by ``method_means``."""
    ref = {"r1": [0.9, 0.5, 0.2, 0.1], "r2": [0.3, 0.8, 0.6, 0.1]}
    noisy = {"r1": [1.0, 3.0, 2.0, 0.0], "r2": [0.0, 1.0, 3.0, 2.0]}
    rows = []
    for run in ("r1", "r2"):
        for k, method in enumerate("abcd"):
            rows += [[run, "s", "m", "localisation", gt.REFERENCE, method, ref[run][k]],
                     [run, "s", "m", "faithfulness", "copy:x", method, 2 * ref[run][k] + 1],
                     [run, "s", "m", "robustness", "reverse:x", method, -ref[run][k]],
                     [run, "s", "m", "complexity", "noisy:x", method, noisy[run][k]]]
    agree = gt.agreement(_means(rows)).set_index("estimator")
    assert agree.loc["copy:x", "rho_mean"] == pytest.approx(1) and agree.loc["copy:x", "share_positive"] == 1
    assert agree.loc["reverse:x", "rho_mean"] == pytest.approx(-1)
    want = [spearmanr(noisy[r], ref[r]).statistic for r in ("r1", "r2")]
    assert agree.loc["noisy:x", "rho_mean"] == pytest.approx(np.mean(want))
    assert agree.loc["noisy:x", "ci_low"] <= np.mean(want) <= agree.loc["noisy:x", "ci_high"]
    assert agree.loc["copy:x", "runs"] == 2 and agree.loc["copy:x", "rho_pooled"] == pytest.approx(1)
    # orientation: a measure whose lower values are better enters negated
    sc = pd.DataFrame({"run_id": "r", "setting": "s", "model": "m", "family": "robustness", "estimator": "e:x",
                       "method": ["a", "b"], "value": [1.0, 3.0], "sign": [-1.0, -1.0]})
    assert gt.method_means(sc)["oriented"].tolist() == [-1.0, -3.0]


def test_reduced_sweep_end_to_end(tmp_path, cache_dir):
    """A tiny run (XAI-TRIS linear, an MLP): the report's per-run rho equals scipy's on the run's per-method means
    read back from the scores, and the controls are compared."""
    base = {"name": "ground_truth", "seed": 0, "n_samples": 8, "cache_dir": str(cache_dir), "progress": False,
            "model": {"name": "mlp", "arch": {"hidden": [32]},
                      "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "weight_decay": 0.0, "augment_shift": 0}},
            "methods": ["gradient", "gradient_x_input", "random", "edge"],
            "metrics": {"relevance_mass_accuracy": {}, "pointing_game": {}, "sparseness": {},
                        "pixel_flipping": {"order": ["morf"], "steps": 8}}}
    cfg = {**base, "dataset": {"name": "xai_tris", "scenario": "linear", "n": 800, "n_test": 80}}
    run_experiment(cfg, tmp_path / "sweep" / "linear", progress=False)
    assert gt.main([str(tmp_path / "sweep"), "--min-accuracy", "1.01"]) == 1  # a near-chance model is left out
    assert gt.main([str(tmp_path / "sweep"), "--min-accuracy", "0"]) == 0
    out = tmp_path / "sweep"
    for name in ("ground_truth.md", "ground_truth.png", "ground_truth_methods.csv", "ground_truth_agreement.csv"):
        assert (out / name).exists()
    per_run = pd.read_csv(out / "ground_truth_per_run.csv")
    scores = pd.concat([pd.read_parquet(p) for p in sorted(out.rglob("scores.parquet"))])
    for run_id, g in scores.groupby("run_id"):
        m = g[g.step.isna()].groupby(["metric", "measure", "method"])["value"].mean()
        ref = m.loc[("relevance_mass_accuracy", "ratio")]
        gini = m.loc[("sparseness", "gini")]
        want = spearmanr(gini[ref.index], ref).statistic
        got = per_run[(per_run.run_id == run_id) & (per_run.estimator == "sparseness:gini")]["rho"].item()
        assert got == pytest.approx(want)
    methods = pd.read_csv(out / "ground_truth_methods.csv")
    assert set(methods.method) == set(base["methods"]) and (methods.runs == 1).all()
    by = methods.set_index("method")
    assert np.isnan(by.loc["random", "beats_random"]) and np.isnan(by.loc["edge", "beats_edge"])
    assert by["beats_random"].drop("random").isin([0, 1]).all() and by["beats_edge"].drop("edge").isin([0, 1]).all()
    assert "xai_tris/linear/white/8" in (out / "ground_truth.md").read_text()
