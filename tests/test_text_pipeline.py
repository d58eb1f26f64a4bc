"""Text through the whole run: experiment=text_lrp composes with registered names; a reduced text run writes the tidy
table, token heatmaps (HTML, PNG), token-flipping curves and run.json; the meta-evaluation runs on it; a metric that
does not score token ids fails before a model is trained."""
import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from evalxai.meta.run import run_meta
from evalxai.methods import METHODS
from evalxai.metrics import get_metric
from evalxai.runs.configs import CONF
from evalxai.runs.pipeline import metric_list, run_experiment


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return OmegaConf.to_container(compose("config", overrides=["experiment=text_lrp", *overrides]), resolve=True)


def test_text_lrp_composes_with_token_metrics_only():
    cfg = _cfg()
    assert cfg["dataset"]["name"] == "text_synthetic" and cfg["model"]["name"] == "text_transformer"
    assert all(m in METHODS for m in cfg["methods"]) and {"attnlrp", "random"} <= set(cfg["methods"])
    names = [m for m, _ in metric_list(cfg)]
    assert "pixel_flipping" not in names and "conservation" not in names  # dropped with null
    assert {"token_flipping", "comprehensiveness", "eraser_sufficiency", "relevance_mass_accuracy"} <= set(names)
    assert all("tokens" in get_metric(m).inputs for m in names)


def _small(tmp_path, *extra):
    return _cfg("dataset.n_train=160", "dataset.n_test=40", "model.train.epochs=1", "n_samples=6",
                "methods=[attnlrp,occlusion,random]", f"cache_dir={tmp_path / 'cache'}", "progress=false",
                "~metrics.eraser_sufficiency", "~metrics.pointing_game", "~metrics.token_f1", "~metrics.sparseness",
                *extra)


@pytest.mark.slow
def test_reduced_text_run_writes_tables_heatmaps_and_meta(tmp_path):
    cfg = _small(tmp_path)
    out = run_experiment(cfg, tmp_path / "run", progress=False)
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["method"]) == {"attnlrp", "occlusion", "random"}
    assert {"token_flipping", "comprehensiveness", "relevance_mass_accuracy"} <= set(scores["metric"])
    assert scores["sample"].nunique() == 6 and scores["value"].notna().all()
    html = (out / "tokens.html").read_text()
    assert html.count("<h3>") == 6 and "[CLS]" in html and "class='t g'" in html  # rationale underlined
    for plot in ("token_heatmaps", "token_flipping", "summary"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    record = json.loads((out / "run.json").read_text())
    assert record["ground_truth"]["masks"] and record["n_samples"] == 6
    summary = pd.read_csv(out / "summary.csv")
    assert {"abpc", "comprehensiveness", "ratio"} <= set(summary["measure"])

    meta_cfg = {**cfg, "meta": {"iterations": 1, "perturbations": 2, "n_boot": 50},
                "metrics": {"token_flipping": {"order": ["morf"]}, "relevance_mass_accuracy": {}}}
    mout = run_meta(meta_cfg, tmp_path / "meta", progress=False)
    meta = pd.read_csv(mout / "meta.csv")
    assert set(meta["space"]) == {"model", "input"}
    assert {"token_flipping", "relevance_mass_accuracy"} <= set(meta["metric"])
    assert "ordinary token replaced by a random one" in (mout / "meta.md").read_text()


def test_image_metric_on_text_fails_before_training(tmp_path):
    cfg = _small(tmp_path, "+metrics.continuity={}")
    with pytest.raises(ValueError, match=r"metrics \['continuity'\] do not score the token ids"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))
