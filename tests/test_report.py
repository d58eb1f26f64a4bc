"""Summaries, leaderboard statistics (ranking, Wilcoxon + Holm), reports and plots."""
import numpy as np
import pandas as pd
import pytest

from evalxai.report import bootstrap_ci
from evalxai.report.stats import holm, rank_methods


def test_holm_known_values():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, np.nan, 0.9]), [1.0, np.nan, 1.0])  # capped at 1, NaN kept
    np.testing.assert_allclose(holm([0.001, 0.2]), [0.002, 0.2])


def test_bootstrap_interval_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (10, 100, 1000):
        v = rng.normal(2.0, 1.0, n)
        lo, hi = bootstrap_ci(v)
        assert lo <= v.mean() <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def synthetic(direction="higher"):
    """Four methods on the same 3 seeds x 30 samples: a clear winner, a clearly worse method, an exact null twin
    of the winner (paired differences symmetric around 0) and the random control."""
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 90)
    sign = 1 if direction == "higher" else -1
    d = np.abs(rng.normal(0, 0.05, 45))
    twin_noise = np.empty(90)
    twin_noise[0::2], twin_noise[1::2] = d, -d
    values = {"winner": base + sign * 1.0, "twin": base + sign * 1.0 + twin_noise, "worse": base,
              "random": base - sign * 2.0 + rng.normal(0, 0.1, 90)}
    rows = []
    for method, v in values.items():
        for i, val in enumerate(v):
            rows.append({"dataset": "mnist", "model": "lenet", "metric": "m", "measure": "score",
                         "direction": direction, "method": method, "seed": i // 30, "dataset_index": i % 30,
                         "sample": i % 30, "step": pd.NA, "value": val, "run_id": f"r{i // 30}",
                         "model_accuracy": 0.98})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("direction", ["higher", "lower"])
def test_leaderboard_ranks_and_flags_differences(direction):
    board = rank_methods(synthetic(direction)).set_index("method")
    assert {"method", "metric", "direction", "mean", "ci_low", "ci_high", "n", "rank"} <= set(board.reset_index())
    assert set(board.index[board["rank"] <= 2]) == {"winner", "twin"}  # equal means: either may rank first
    assert board.loc["worse", "rank"] == 3 and board.loc["random", "rank"] == 4
    assert board.loc["worse", "worse_than_best"]  # a constructed difference is found
    second = "winner" if board["best"].iloc[0] == "twin" else "twin"
    assert not board.loc[second, "worse_than_best"]  # a constructed null is not
    assert board.loc[second, "p_vs_best_holm"] > 0.5
    assert board.loc["winner", "beats_random"] and board.loc["worse", "beats_random"]
    assert (board["n"] == 90).all() and (board["ci_low"] <= board["mean"]).all()


def test_leaderboard_files_and_report(tmp_path):
    from evalxai.report.leaderboard import write_leaderboard

    for seed in (0, 1):
        run = tmp_path / f"sweep/{seed}"
        run.mkdir(parents=True)
        df = synthetic()
        df = df[df["seed"] == seed].assign(metric="pixel_flipping", measure="aopc_morf")
        df.to_parquet(run / "scores.parquet")
    board = write_leaderboard(tmp_path)
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png", "report.md", "report.html"):
        assert (tmp_path / name).stat().st_size > 0, name
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    assert len(csv) == len(board) == 4
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html
    assert "winner" in (tmp_path / "leaderboard.md").read_text()


def test_leaderboard_cli_errors(tmp_path):
    from evalxai.report.leaderboard import main

    assert main([str(tmp_path / "missing")]) == 1
    assert main([str(tmp_path)]) == 1  # no runs below


def test_every_plot_is_written(tmp_path):
    from evalxai.report import plots, summarize

    rng = np.random.default_rng(0)
    rows = []
    for method in ("a", "b"):
        for s in range(4):
            for k in range(3):
                rows.append({"metric": "pixel_flipping", "measure": "curve_morf", "method": method, "sample": s,
                             "step": k, "fraction": k / 2, "value": rng.normal(), "score_space": "logit",
                             "direction": "none"})
                for q in ("quadrant_1", "quadrant_2", "quadrant_3", "quadrant_4", "score"):
                    rows.append({"metric": "continuity", "measure": q, "method": method, "sample": s,
                                 "step": k - 1, "value": rng.normal(), "direction": "none"})
            rows.append({"metric": "pixel_flipping", "measure": "aopc_morf", "method": method, "sample": s,
                         "step": pd.NA, "value": rng.normal(), "direction": "higher"})
    scores = pd.DataFrame(rows)
    paths = [plots.flipping_curves(scores, tmp_path / "f.png"), plots.continuity_curves(scores, tmp_path / "c.png"),
             plots.summary_bars(summarize(scores), tmp_path / "s.png"),
             plots.heatmap_grid(rng.random((3, 1, 8, 8)), {"a": rng.normal(size=(3, 1, 8, 8))}, tmp_path / "h.png")]
    for p in paths:
        assert p is not None and p.stat().st_size > 1000
