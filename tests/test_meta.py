"""Meta-evaluation (MetaQuantus): IAC / IEC / MC on known answers, the framework's sanity checks, the perturbation
tests, a reduced run end to end, metric agreement (Kendall tau) and the leaderboard's MC annotation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import kendalltau
from torch import nn

from evalxai.meta import (
    consistency_table,
    default_tests,
    iac,
    iec_adversary,
    iec_resilience,
    meta_consistency,
    meta_evaluate,
    sanity_scores,
)
from evalxai.meta.consistency import iac_methods
from evalxai.meta.perturbation import ModelNoise, PerturbationTest, perturb_input
from evalxai.metrics import METRICS
from evalxai.metrics.common import scalar_rows
from evalxai.metrics.registry import register_metric
from evalxai.report.agreement import disagreements, heatmap, metric_agreement, tau_matrix

# ---------------------------------------------------------------- IAC / IEC / MC on known answers


def test_iac_is_the_wilcoxon_p_value_or_its_complement():
    q = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    shifted = q + np.array([0.5, 0.1, 0.2, 0.3, 0.4])  # 5 differences of one sign: exact two-sided p = 2 / 2**5
    assert iac(q, shifted, np.ones(5, bool), "resilience") == pytest.approx(2 / 32)
    assert iac(q, shifted, np.ones(5, bool), "adversary") == pytest.approx(1 - 2 / 32)
    # unchanged scores: p = 1
    assert iac(q, q, np.ones(5, bool), "resilience") == 1.0
    assert iac(q, q, np.ones(5, bool), "adversary") == 0.0
    # only the kept, finite samples count: 3 kept positive differences -> p = 2 / 8
    kept = np.array([True, True, True, False, False])
    assert iac(q, shifted, kept, "resilience") == pytest.approx(2 / 8)
    bad = shifted.copy()
    bad[0] = np.nan
    assert iac(q, bad, kept, "resilience") == pytest.approx(2 / 4)
    assert np.isnan(iac(q, shifted, np.zeros(5, bool), "resilience"))
    with pytest.raises(ValueError, match="kind"):
        iac(q, q, kept, "robustness")


def test_iac_of_all_methods_at_once_equals_one_by_one():
    rng = np.random.default_rng(0)
    for trial in range(6):
        k, n = 5, (6 if trial == 0 else int(rng.integers(20, 30)))  # ties at n <= 13: scipy's permutation test
        Q = rng.normal(size=(k, n))
        Qh = Q + rng.normal(size=(k, n)) * rng.choice([0, 1e-3, 1], size=(k, 1))
        Qh[1, : n // 2] = Q[1, : n // 2]  # zero differences
        Q[2], Qh[2] = Q[2].round(1), Qh[2].round(1)  # ties
        if trial % 3 == 0:
            Q[3, 0] = np.nan
        kept = rng.random(n) < 0.8
        for kind in ("resilience", "adversary"):
            expected = [iac(Q[m], Qh[m], kept, kind) for m in range(k)]
            np.testing.assert_allclose(iac_methods(Q, Qh, kept, kind), expected, equal_nan=True)


def test_iec_resilience_on_a_hand_built_ranking():
    # 3 methods x 3 samples. Rankings (argsort over methods) per sample before: [0,1,2], [1,0,2], [2,0,1] (ties
    # stable); after: [0,1,2] everywhere. Positions kept: 3 of 3, 1 of 3, 0 of 3; whole rankings kept: 1 of 3.
    Q = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0], [3.0, 3.0, 1.0]])
    Q_hat = np.array([[10.0, 1.0, 1.0], [20.0, 2.0, 2.0], [30.0, 3.0, 3.0]])
    everyone = np.ones(3, bool)
    assert iec_resilience(Q, Q_hat, everyone) == pytest.approx(4 / 9)
    assert iec_resilience(Q, Q_hat, everyone, per="sample") == pytest.approx(1 / 3)
    first_two = np.array([True, True, False])
    assert iec_resilience(Q, Q_hat, first_two) == pytest.approx(4 / 6)
    assert iec_resilience(Q, Q_hat, first_two, per="sample") == pytest.approx(1 / 2)
    assert iec_resilience(Q, Q, everyone) == 1.0
    assert np.isnan(iec_resilience(Q, Q_hat, np.zeros(3, bool)))


def test_iec_adversary_counts_scores_that_got_worse_in_the_metrics_direction():
    Q = np.array([[1.0, 2.0], [3.0, 4.0]])
    Q_hat = np.array([[0.0, 3.0], [3.0, 5.0]])  # changes: -1, +1, 0, +1
    everyone = np.ones(2, bool)
    assert iec_adversary(Q, Q_hat, everyone, "higher") == pytest.approx(1 / 4)  # one score fell
    assert iec_adversary(Q, Q_hat, everyone, "lower") == pytest.approx(2 / 4)  # two rose
    first = np.array([True, False])
    assert iec_adversary(Q, Q_hat, first, "higher") == pytest.approx(1 / 2)
    assert iec_adversary(Q, Q_hat, first, "lower") == 0.0
    Q_nan = Q_hat.copy()
    Q_nan[0, 0] = np.nan
    assert iec_adversary(Q, Q_nan, everyone, "lower") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="direction"):
        iec_adversary(Q, Q_hat, everyone, "none")


def test_meta_consistency_averages_as_metaquantus():
    # K=2 methods, I=2 iterations, P=1 perturbation
    iac_nr = np.array([[[0.2], [0.4]], [[0.6], [np.nan]]])  # iteration means: 0.4, 0.4
    iac_ar = np.array([[[1.0], [0.0]], [[1.0], [0.5]]])  # 1.0, 0.25
    iec_nr = np.array([[0.5], [1.0]])
    iec_ar = np.array([[0.1], [0.3]])
    mc = meta_consistency(iac_nr, iac_ar, iec_nr, iec_ar)
    per_iter = np.array([[0.4, 0.4], [1.0, 0.25], [0.5, 1.0], [0.1, 0.3]])
    assert mc["IAC_NR"] == pytest.approx(0.4) and mc["IAC_AR"] == pytest.approx(0.625)
    assert mc["IAC_AR_std"] == pytest.approx(0.375)
    assert mc["MC"] == pytest.approx(per_iter.mean())
    assert mc["MC_std"] == pytest.approx(per_iter.mean(0).std())


# ---------------------------------------------------------------- MetaQuantus's sanity checks


def _four_tests(Q, Q_hat, kept, direction):
    tests = default_tests()
    table, detail = consistency_table({("fake", "score"): Q}, {t.name: {("fake", "score"): Q_hat} for t in tests},
                                      {t.name: kept for t in tests}, {("fake", "score"): direction}, tests,
                                      [f"m{i}" for i in range(len(Q))])
    return table.set_index("space"), detail


@pytest.mark.parametrize("direction", ["higher", "lower"])
def test_sanity_check_scores_from_a_different_distribution(direction):
    Q, Q_hat, kept = sanity_scores("different", k=4, n=12, iterations=2, perturbations=3, seed=1)
    table, detail = _four_tests(Q, Q_hat, kept, direction)
    iac_values = detail[detail["criterion"] == "IAC"]
    # 12 differences of one sign: exact p = 2 / 2**12
    assert np.allclose(iac_values[iac_values["kind"] == "resilience"]["value"], 2 / 4096)
    assert np.allclose(iac_values[iac_values["kind"] == "adversary"]["value"], 1 - 2 / 4096)
    for space in ("model", "input"):
        row = table.loc[space]
        assert row["IAC_NR"] < 0.001 and row["IAC_AR"] > 0.999
        # perturbed scores (about 0) are far above the unperturbed ones (about -500): better if higher is better
        assert row["IEC_AR"] == (0.0 if direction == "higher" else 1.0)
        assert row["kept_resilience"] == 1.0


def test_sanity_check_identical_scores():
    Q, Q_hat, kept = sanity_scores("same", k=4, n=12, iterations=2, perturbations=3, seed=1)
    table, _ = _four_tests(Q, Q_hat, kept, "higher")
    for space in ("model", "input"):
        row = table.loc[space]
        assert (row["IAC_NR"], row["IAC_AR"], row["IEC_NR"], row["IEC_AR"]) == (1.0, 0.0, 1.0, 0.0)
        assert row["MC"] == 0.5 and row["MC_std"] == 0.0
    with pytest.raises(ValueError, match="sanity_check"):
        sanity_scores("other", 2, 2, 1, 1)


# ---------------------------------------------------------------- perturbations


def test_input_perturbation_is_bounded_clipped_seeded_and_batch_independent():
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = perturb_input(x, 0.25, seed=3, low=0.0, high=1.0)
    assert (y >= 0).all() and (y <= 1).all()
    inside = (x > 0.25) & (x < 0.75)
    assert ((y - x)[inside].abs() <= 0.25).all() and (y - x)[inside].abs().max() > 0.2
    torch.testing.assert_close(perturb_input(x[2:4], 0.25, seed=3), y[2:4])
    assert not torch.equal(perturb_input(x, 0.25, seed=4), y)
    # pixel units: the model-space noise is divided by the dataset's std
    z = perturb_input(x, 0.001, seed=3, low=-10.0, high=10.0, std=0.5)
    assert (z - x).abs().max() <= 0.002 + 1e-12 and (z - x).abs().max() > 0.0015
    with pytest.raises(ValueError, match="noise"):
        PerturbationTest("input", "resilience", 0.0)


def test_model_noise_works_on_a_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 3)).eval()
    before = [p.detach().clone() for p in model.parameters()]
    noisy = ModelNoise(model)
    a = [p.detach().clone() for p in noisy(0.1, seed=7).parameters()]
    b = [p.detach().clone() for p in noisy(0.1, seed=7).parameters()]
    c = [p.detach().clone() for p in noisy(0.1, seed=8).parameters()]
    for p, p0, pa, pb, pc in zip(model.parameters(), before, a, b, c):
        assert torch.equal(p, p0)  # the user's model is untouched
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    ratio = torch.cat([(pa / p0).flatten() for pa, p0 in zip(a, before)])  # every parameter x N(1, 0.1)
    assert abs(float(ratio.std()) - 0.1) < 0.01 and abs(float(ratio.mean()) - 1) < 0.01


# ---------------------------------------------------------------- a reduced run end to end


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture
def constant_metric():
    """A metric whose scores depend on nothing that any perturbation changes."""
    @register_metric("_meta_constant", family="complexity", directions={"constant": "higher"})
    def _constant(model, x, target, attributions):
        """Test metric: the target class index plus 1 (never changes)."""
        return scalar_rows(target.double() + 1.0, "constant")

    yield "_meta_constant"
    METRICS.pop("_meta_constant")


@pytest.mark.slow
def test_reduced_run(constant_metric):
    torch.manual_seed(0)
    model = TinyNet().double().eval()
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64)
    target = model(x).argmax(1)
    before = [p.detach().clone() for p in model.parameters()]
    methods = [("gradient", {}), ("gradient_x_input", {}), ("random", {})]
    metrics = [("sparseness", {}), ("pixel_flipping", {"patch_size": 2, "per_step": 4, "order": ["morf"]}),
               (constant_metric, {})]
    tests = default_tests(model_adversary=2.0, input_adversary=5.0)
    res = meta_evaluate(model, x, target, methods, metrics, tests=tests, iterations=2, perturbations=1, seed=0,
                        low=0.0, high=1.0)
    for p, p0 in zip(model.parameters(), before):
        assert torch.equal(p, p0)
    table = res.summary.set_index(["metric", "measure", "space"])
    estimators = set(zip(res.summary["metric"], res.summary["measure"]))
    assert {("sparseness", "gini"), ("pixel_flipping", "aopc_morf"), ("pixel_flipping", "auc_morf"),
            (constant_metric, "constant")} <= estimators
    assert not any(m.startswith("curve") for _, m in estimators)  # curves have no direction
    for space in ("model", "input"):
        row = table.loc[(constant_metric, "constant", space)]
        assert (row["IAC_NR"], row["IEC_NR"], row["IEC_AR"]) == (1.0, 1.0, 0.0)
        assert row["IAC_AR"] == 0.0 and row["MC"] == 0.5
    assert table["MC"].between(0, 1).all()
    # the random map does not depend on the model: its sparseness is unchanged under model noise (p = 1)
    d = res.detail
    rand = d[(d["metric"] == "sparseness") & (d["method"] == "random") & (d["test"] == "model_resilience")]
    assert len(rand) == 2 and (rand["value"] == 1.0).all()
    # kept samples: every test kept some; the perturbed rows are exactly the kept ones
    assert (table["kept_resilience"] > 0).all() and (table["kept_adversary"] > 0).all()
    sc = res.scores
    assert set(sc["test"]) == {"none", *(t.name for t in tests)}
    # the unperturbed scores equal a plain evalxai.score call
    import evalxai

    R = evalxai.explain(model, x, target, method="gradient")
    expect = evalxai.score(model, x, target, R, metric="sparseness")["value"].to_numpy()
    got = sc[(sc["test"] == "none") & (sc["method"] == "gradient") & (sc["metric"] == "sparseness")]
    np.testing.assert_allclose(got.sort_values("sample")["value"], expect)
    # cost: explained samples far fewer than MetaQuantus's loop; timings recorded
    t = res.timings
    assert t["explained_samples"] < t["metaquantus_explained_samples"] and t["ratio"] >= 1.0
    # one explain per method unperturbed, then per draw that kept a sample: the control (random) is re-explained
    # only on perturbed inputs; its map stays valid on a perturbed model
    draws = sc[sc["test"] != "none"][["test", "iteration", "perturbation"]].drop_duplicates()
    assert t["explain_calls"] == 3 + sum(2 if test.startswith("model") else 3 for test in draws["test"])
    # seeded: the same run twice gives the same table
    again = meta_evaluate(model, x, target, methods, metrics[:1], tests=tests, iterations=2, perturbations=1,
                          seed=0, low=0.0, high=1.0)
    pd.testing.assert_frame_equal(again.summary.reset_index(drop=True),
                                  res.summary[res.summary["metric"] == "sparseness"].reset_index(drop=True))


# ---------------------------------------------------------------- agreement between metrics


def _table(values: dict[tuple[str, str, str], np.ndarray], methods):
    rows = []
    for (metric, measure, direction), v in values.items():
        for m, method in enumerate(methods):
            for i, val in enumerate(v[:, m]):
                rows.append({"metric": metric, "measure": measure, "direction": direction, "method": method,
                             "sample": i, "dataset_index": i, "step": pd.NA, "value": val, "dataset": "d",
                             "model": "m", "seed": 0})
    return pd.DataFrame(rows)


def test_agreement_known_taus_and_per_sample_values():
    rng = np.random.default_rng(0)
    methods = ["a", "b", "c", "d"]
    base = rng.normal(size=(30, 4)) + np.array([0.0, 1.0, 2.0, 3.0])
    other = rng.normal(size=(30, 4))
    scores = _table({("m1", "x", "higher"): base, ("m2", "y", "lower"): -2 * base + 1,  # same ranking, oriented
                     ("m3", "z", "higher"): -base, ("m4", "w", "higher"): other}, methods)
    table = metric_agreement(scores, n_boot=200)
    get = table.set_index(["a", "b"])
    assert get.loc[("m1:x", "m2:y"), "tau"] == pytest.approx(1.0)
    assert get.loc[("m1:x", "m2:y"), "tau_sample"] == pytest.approx(1.0)
    assert get.loc[("m1:x", "m3:z"), "tau"] == pytest.approx(-1.0)
    assert get.loc[("m1:x", "m3:z"), "tau_high"] == pytest.approx(-1.0)
    per = [kendalltau(base[i], other[i]).statistic for i in range(30)]
    assert get.loc[("m1:x", "m4:w"), "tau_sample"] == pytest.approx(np.mean(per))
    assert get.loc[("m1:x", "m4:w"), "tau"] == pytest.approx(kendalltau(base.mean(0), other.mean(0)).statistic)
    row = get.loc[("m1:x", "m4:w")]
    assert row["tau_sample_low"] <= row["tau_sample"] <= row["tau_sample_high"]
    assert get.loc[("m4:w", "m1:x"), "tau"] == row["tau"]  # symmetric
    dis = disagreements(table)
    assert set(zip(dis["a"], dis["b"])) >= {("m1:x", "m3:z"), ("m2:y", "m3:z")}
    assert dis["interval_below_0"].iloc[0]
    mat = tau_matrix(table)
    assert mat.shape == (4, 4) and (np.diag(mat) == 1).all()


def test_agreement_heatmap(tmp_path):
    methods = ["a", "b", "c"]
    v = np.arange(12, dtype=float).reshape(4, 3)
    scores = _table({("m1", "m1", "higher"): v, ("m2", "m2", "lower"): v}, methods)
    table = metric_agreement(scores, n_boot=50)
    assert table["tau"].tolist() == [-1.0, -1.0]
    path = heatmap(table, tmp_path / "agreement.png")
    assert path.exists() and path.stat().st_size > 1000


# ---------------------------------------------------------------- the leaderboard's MC annotation


def test_leaderboard_annotates_mc_and_lists_disagreeing_metrics(tmp_path):
    from evalxai.report.leaderboard import write_leaderboard

    methods = ["lrp", "gradient", "random"]
    v = np.array([[3.0, 2.0, 1.0]] * 6) + np.random.default_rng(0).normal(0, 0.1, (6, 3))
    scores = _table({("pixel_flipping", "aopc_morf", "higher"): v, ("sparseness", "gini", "lower"): v,
                     ("selectivity", "auc", "lower"): -v}, methods).assign(run_id="r0", model_accuracy=0.9)
    (tmp_path / "run").mkdir()
    scores.to_parquet(tmp_path / "run" / "scores.parquet")
    (tmp_path / "meta").mkdir()
    pd.DataFrame([{"dataset": "d", "model": "m", "metric": "pixel_flipping", "measure": "aopc_morf", "space": space,
                   "MC": mc, "MC_std": 0.01} for space, mc in (("model", 0.7), ("input", 0.6))]
                 ).to_csv(tmp_path / "meta" / "meta.csv", index=False)
    board = write_leaderboard(tmp_path).set_index(["metric", "measure"])
    assert (board.loc[("pixel_flipping", "aopc_morf"), "mc_model"] == 0.7).all()
    assert (board.loc[("pixel_flipping", "aopc_morf"), "mc_input"] == 0.6).all()
    assert board.loc[("sparseness", "gini"), "mc_model"].isna().all()  # no meta run for it
    md = (tmp_path / "leaderboard.md").read_text()
    assert "mc_model" in md and "| 0.7 |" in md
    # sparseness (lower is better) ranks the methods against pixel flipping and selectivity: tau = -1 twice
    assert "2 of 3 pairs disagree" in md and "sparseness:gini" in md
    agree = pd.read_csv(tmp_path / "agreement.csv")
    assert len(agree) == 6 and (tmp_path / "agreement.png").exists()


@pytest.mark.slow
def test_cli_run_writes_every_file_and_feeds_the_leaderboard(tmp_path, cache_dir):
    """The config path (Hydra compose of conf/meta.yaml -> run_meta) on a tiny model, then a pipeline run and the
    leaderboard over both folders: the metric's MC is the meta run's."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from evalxai.meta.run import run_meta
    from evalxai.report.leaderboard import write_leaderboard
    from evalxai.runs.pipeline import run_experiment

    from .test_configs import CONF

    overrides = ["dataset=digits", "model=mlp", "model.arch.hidden=[16]", "model.train.epochs=1", "n_samples=6",
                 "methods=[gradient,random]", "~metrics", "+metrics={sparseness:{},pixel_flipping:{patch_size:2}}",
                 "name=meta_cli", f"cache_dir={cache_dir}"]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("meta", overrides=[*overrides, "meta.iterations=1", "meta.perturbations=1", "meta.n_boot=50"])
        plain = compose("config", overrides=overrides)
    cfg = OmegaConf.to_container(cfg, resolve=True)
    assert cfg["meta"]["iterations"] == 1 and cfg["meta"]["input_adversary"] == 5.0
    out = run_meta(cfg, tmp_path / "sweep" / "meta", progress=False)
    for name in ("meta.csv", "meta_detail.csv", "meta_scores.parquet", "agreement.csv", "meta.md", "report.html",
                 "plots/meta_mc.png", "plots/agreement.png", "meta.json"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "scores.parquet").exists()  # a leaderboard must not count meta runs as runs
    meta = pd.read_csv(out / "meta.csv")
    assert set(meta["space"]) == {"model", "input"} and meta["MC"].between(0, 1).all()
    assert "sparseness:gini" in (out / "meta.md").read_text()
    run_experiment(OmegaConf.to_container(plain, resolve=True), tmp_path / "sweep" / "run", progress=False)
    board = write_leaderboard(tmp_path / "sweep")
    row = board[(board["metric"] == "sparseness")].iloc[0]
    expect = meta[(meta["metric"] == "sparseness") & (meta["space"] == "model")]["MC"].iloc[0]
    assert row["mc_model"] == pytest.approx(expect)
    with pytest.raises(ValueError, match="meta has no setting"):
        run_meta({**cfg, "meta": {"iteration": 2}}, tmp_path / "bad", progress=False)
