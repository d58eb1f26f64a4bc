"""Reproductions in reduced form: the claims machinery, the verdict each reduced claim must get, and the measured
quantities behind those verdicts (recomputed here from the run's own scores table)."""
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import wilcoxon

from evalxai.runs import reproduce

pytestmark = pytest.mark.slow  # end to end: runs through the CLI or the pipeline (pytest -m 'not slow' skips)

FAST = ["n_samples=4", "model.train.epochs=1"]
N_FAST = 4
# With n paired images the smallest two-sided exact Wilcoxon signed-rank p is 2 / 2**n (all differences of one
# sign): 0.125 at n = 4, above alpha = 0.05 before any Holm correction. So every `compare` claim of a reduced run
# is inconclusive by construction (documented in experiments/README.md); `threshold` and `check` claims are not.
P_MIN_FAST = 2 / 2**N_FAST

# The verdict of every claim of the reduced runs. Conservation on a bias-free ReLU net is exact whatever the
# training (LRP-0, z+), epsilon = 0.25 absorbs about 45 % of f_c(x) on the 1-epoch net, and the max(x1, x2) toy
# is analytic: those hold even when reduced.
EXPECTED = {
    "bach2015_conservation": {"lrp0_conserves": "holds", "zplus_conserves": "holds", "epsilon_absorbs": "holds"},
    "montavon2018_continuity": {"max_toy": "holds", "lrp_more_continuous_than_sensitivity": "inconclusive",
                                "dtd_more_continuous_than_sensitivity": "inconclusive",
                                "dtd_more_continuous_than_simple_taylor": "inconclusive"},
    "kohlbrenner2020_composites": {"gamma_box_beats_epsilon": "inconclusive", "gamma_box_beats_lrp0": "inconclusive",
                                   "epsilon_plus_beats_epsilon": "inconclusive"},
}


@pytest.fixture(scope="module")
def reduced(tmp_path_factory, cache_dir):
    """Each reduced reproduction runs once per module: name -> (claims table, output folder)."""
    out = tmp_path_factory.mktemp("reproduce")
    done = {}

    def run(name):
        if name not in done:
            done[name] = reproduce.reproduce(name, out, FAST)
        return done[name], out / name

    return run


def _claims(name):
    return {c["id"]: c for c in yaml.safe_load((reproduce.EXPERIMENTS / name / "claims.yaml").read_text())["claims"]}


def _per_image(scores, method, metric, measure):
    sub = scores[(scores["method"] == method) & (scores["metric"] == metric) & (scores["measure"] == measure)
                 & scores["step"].isna()]
    return sub.groupby(["seed", "dataset_index"])["value"].mean()


def _holm(p):
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    adj = np.minimum(np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]), 1.0)
    out = np.empty_like(p)
    out[order] = adj
    return out


def test_every_folder_is_complete():
    names = reproduce.available()
    assert len(names) >= 7
    for name in names:
        folder = reproduce.EXPERIMENTS / name
        assert (folder / "README.md").exists() and (folder / "config.yaml").exists()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reduced_reproduction_verdicts(name, reduced):
    table, folder = reduced(name)
    for f in ("claims.csv", "report.md", "report.html"):
        assert (folder / f).stat().st_size > 0
    assert "Reproduction" in (folder / "report.md").read_text()
    csv = pd.read_csv(folder / "claims.csv")
    assert {"paper", "claim", "statement", "source", "expected", "measured", "verdict"} <= set(csv.columns)
    assert dict(zip(csv["claim"], csv["verdict"])) == EXPECTED[name]
    assert dict(zip(table["claim"], table["verdict"])) == EXPECTED[name]

    # The compare claims: the p-value is the paired Wilcoxon test of the run's own per-image values, Holm-corrected
    # over the paper's comparisons, and the measured means are those of the scores table.
    claims = _claims(name)
    compared = [c for c in claims.values() if "compare" in c]
    if not compared:
        return
    scores = pd.read_parquet(folder / "run" / "scores.parquet")
    rows = table.set_index("claim")
    ps = []
    for c in compared:
        a = _per_image(scores, c["compare"]["better"], c["metric"], c["measure"])
        b = _per_image(scores, c["compare"]["than"], c["metric"], c["measure"])
        joined = pd.concat([a, b], axis=1, join="inner").to_numpy()
        assert len(joined) == N_FAST
        p = wilcoxon(joined[:, 0] - joined[:, 1], zero_method="wilcox").pvalue
        assert rows.loc[c["id"], "p"] == pytest.approx(p, abs=1e-12)
        assert p >= P_MIN_FAST - 1e-12
        measured = rows.loc[c["id"], "measured"]
        assert f"{c['compare']['better']} {joined[:, 0].mean():.4g} [" in measured
        assert f"{c['compare']['than']} {joined[:, 1].mean():.4g} [" in measured and f"n={N_FAST}" in measured
        ps.append(p)
    p_holm = rows.loc[[c["id"] for c in compared], "p_holm"].to_numpy()
    np.testing.assert_allclose(p_holm, _holm(ps), atol=1e-12)
    assert (p_holm >= reproduce.ALPHA).all()


def test_reduced_conservation_numbers(reduced):
    """The numbers behind bach2015's verdicts, from the scores table (1-epoch bias-free LeNet, 4 images)."""
    _, folder = reduced("bach2015_conservation")
    scores = pd.read_parquet(folder / "run" / "scores.parquet")

    def values(method, measure):
        return _per_image(scores, method, "conservation", measure).to_numpy()

    # Exact up to float32 rounding (measured max 5e-8 for LRP-0, 3e-6 for z+, which sums positive parts only);
    # gradient x input equals LRP-0 on a bias-free ReLU net (Euler: f is positively homogeneous), so it conserves.
    for method in ("lrp_0", "lrp_zplus", "gradient_x_input"):
        v = values(method, "abs_relative_residual")
        assert len(v) == N_FAST and v.max() <= 1e-5, method
    # epsilon absorbs (sum R < f_c(x)), a part and not all of it, on every image (measured -0.41 to -0.49).
    rel = values("lrp_epsilon", "relative_residual")
    assert len(rel) == N_FAST and (rel <= -0.02).all() and (rel > -1).all()
    assert rel.mean() <= _claims("bach2015_conservation")["epsilon_absorbs"]["threshold"]["value"]


def test_dotted_overrides_reach_the_run(reduced):
    import json

    _, folder = reduced("bach2015_conservation")
    cfg = json.loads((folder / "run" / "run.json").read_text())["config"]
    assert cfg["model"]["train"]["epochs"] == 1 and cfg["model"]["arch"]["bias"] is False and cfg["n_samples"] == 4


def test_max_toy_check():
    res = reproduce.max_toy({}, pd.DataFrame())
    assert res["verdict"] == "holds" and "lrp_zplus 1.41 -> 1.41" in res["measured"]


def test_road_mask_leakage_reduced(cache_dir):
    """Gradient maps of a 1-epoch LeNet are dominated by the target class's template, so the top-20 % masks alone
    identify the class almost perfectly (measured 1.000 in every fold, chance 0.13 on these 200 images)."""
    res = reproduce.road_mask_leakage({"params": {"method": "gradient", "fraction": 0.2, "n": 200},
                                       "overrides": ["model.train.epochs=1"]}, pd.DataFrame())
    acc, low = map(float, re.search(r"5-fold accuracy ([0-9.]+) \(fold range ([0-9.]+)-", res["measured"]).groups())
    chance = float(re.search(r"chance ([0-9.]+)", res["expected"]).group(1))
    assert 0.05 < chance < 0.2  # the most frequent of 10 digit classes among 200 test images
    assert res["verdict"] == "holds" and acc >= 0.9 and low >= 0.8


def test_unknown_reproduction_lists_names(tmp_path):
    assert reproduce.main(["nope", "--out", str(tmp_path)]) == 1
