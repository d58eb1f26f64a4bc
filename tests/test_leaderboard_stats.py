"""Leaderboard intervals and tests when the seeds of a sweep score the same images (issue 17, item 12): the
interval is a cluster bootstrap over images, the Wilcoxon tests pair by image."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from evalxai.report.stats import rank_methods
from evalxai.report.tables import bootstrap_ci, cluster_bootstrap_ci


def table(values, metric="m", method="a"):
    """Tidy scalar rows of one method from an (images, seeds) array of values."""
    n_img, n_seed = values.shape
    img, seed = np.meshgrid(np.arange(n_img), np.arange(n_seed), indexing="ij")
    return pd.DataFrame({"dataset": "mnist", "model": "lenet", "metric": metric, "measure": "score",
                         "direction": "higher", "method": method, "seed": seed.ravel(), "dataset_index": img.ravel(),
                         "sample": img.ravel(), "step": np.nan, "value": values.ravel(), "run_id": seed.ravel()})


def test_cluster_interval_is_as_wide_as_the_per_image_interval():
    rng = np.random.default_rng(0)
    effect = rng.normal(0, 1, 20)  # 20 images, large image effect
    values = effect[:, None] + rng.normal(0, 0.01, (20, 5))  # x 5 seeds, tiny seed noise
    row = rank_methods(table(values)).iloc[0]
    assert row["n"] == 100 and row["n_images"] == 20
    assert row["ci_low"] <= row["mean"] <= row["ci_high"] and np.isclose(row["mean"], values.mean())
    width = row["ci_high"] - row["ci_low"]
    lo, hi = bootstrap_ci(values.mean(1), seed=0)  # the 20 per-image means: the honest interval
    naive = np.subtract(*bootstrap_ci(values.ravel(), seed=0)[::-1])  # the 100 rows as if independent
    assert 0.8 < width / (hi - lo) < 1.25
    assert 0.3 < naive / width < 0.6  # ~ 1 / sqrt(5)


@pytest.mark.slow
def test_cluster_interval_covers_the_true_mean():
    rng = np.random.default_rng(1)
    mu, n_sim, n_img, n_seed = 0.3, 200, 10, 4
    values = rng.normal(mu, 1, (n_sim, n_img, 1)) + rng.normal(0, 0.5, (n_sim, n_img, n_seed))
    # 200 small leaderboards in one call: one (metric) group each
    board = rank_methods(pd.concat([table(v, metric=f"m{i:03d}") for i, v in enumerate(values)], ignore_index=True))
    assert len(board) == n_sim and (board["n_images"] == n_img).all()
    cover = ((board["ci_low"] <= mu) & (mu <= board["ci_high"])).mean()
    naive = np.mean([lo <= mu <= hi for lo, hi in (bootstrap_ci(v.ravel(), seed=0) for v in values)])
    assert cover >= 0.88
    assert naive < 0.8  # the naive interval ignores that an image's seeds move together


def test_wilcoxon_pairs_by_image():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, (12, 3))
    b = a - 0.3 + rng.normal(0, 1, (12, 3))  # "a" is better; the seed noise is large
    board = rank_methods(pd.concat([table(a, method="a"), table(b, method="b")], ignore_index=True))
    row = board.set_index("method").loc["b"]
    assert board["best"].iloc[0] == "a"
    by_image = wilcoxon(b.mean(1) - a.mean(1)).pvalue
    by_row = wilcoxon(b.ravel() - a.ravel()).pvalue
    assert abs(by_image - by_row) > 0.01  # the two pairings do differ here
    assert np.isclose(row["p_vs_best"], by_image)


def test_one_observation_per_cluster_is_the_plain_bootstrap():
    rng = np.random.default_rng(3)
    v = rng.normal(2, 1, 57)
    v[[3, 20]] = np.nan
    clusters = rng.permutation(57) * 7  # any labels, in any order
    for seed in (0, 5):
        assert cluster_bootstrap_ci(v, clusters, seed=seed) == bootstrap_ci(v, seed=seed)
        assert cluster_bootstrap_ci(v, None, seed=seed) == bootstrap_ci(v, seed=seed)
    assert cluster_bootstrap_ci([np.nan, 1.5], [0, 1]) == (1.5, 1.5)
    assert np.isnan(cluster_bootstrap_ci([np.nan], [0])).all()
    lo, hi = cluster_bootstrap_ci([1.0, 1.0, 1.0, 9.0], [0, 0, 0, 1])  # weighted by cluster size
    assert lo == 1.0 and hi == 9.0  # all-ones or all-nines replicates; the mean 3 lies inside


@pytest.mark.slow
def test_two_checkpoints_of_one_class_are_two_rows_and_seeds_are_one(tmp_path, cache_dir):
    """Runs differing in the checkpoint's weights are two models (labelled apart); runs differing in seed are one."""
    import json

    from evalxai.report.leaderboard import write_leaderboard
    from evalxai.runs.pipeline import run_experiment
    from tests.test_cache_keys import checkpoint_cfg, tiny_checkpoint

    runs = {"a0": (0, 0), "a1": (0, 1), "b0": (1, 0)}  # run: (checkpoint seed, run seed)
    for name, (weights, seed) in runs.items():
        path = tiny_checkpoint(tmp_path / f"net{weights}.pt", weights)
        run_experiment(checkpoint_cfg(path, seed=seed), tmp_path / "runs" / name, progress=False)
    board = write_leaderboard(tmp_path / "runs")
    measure = board["measure"].iloc[0]
    board = board[board["measure"] == measure].set_index("model")
    assert len(board) == 2 and all(m.startswith("TinyNet@") for m in board.index)
    for name in ("a0", "b0"):
        run = tmp_path / "runs" / name
        identity = json.loads((run / "run.json").read_text())["model"]["identity"]
        row = board.loc[f"TinyNet@{identity[:8]}"]
        own = pd.concat([pd.read_parquet(tmp_path / "runs" / r / "scores.parquet") for r in runs if r[0] == name[0]])
        own = own[own["measure"] == measure]
        assert row["runs"] == len({r for r in runs if r[0] == name[0]}) and row["n"] == len(own)
        assert np.isclose(row["mean"], own["value"].mean())


def test_datasets_of_one_name_are_kept_apart(tmp_path):
    """Two image folders are two datasets (``image_folder@<fingerprint>``); one name with one identity stays plain."""
    import json

    from evalxai.report.leaderboard import write_leaderboard

    for name, fingerprint, value in (("x", "f" * 20, 1.0), ("y", "e" * 20, 3.0), ("z", "e" * 20, 5.0)):
        run = tmp_path / name
        run.mkdir()
        t = table(np.full((4, 1), value)).assign(dataset="image_folder", model="SmallNet", run_id=name)
        t.to_parquet(run / "scores.parquet")
        (run / "run.json").write_text(json.dumps({"run_id": name, "dataset": {"name": "image_folder",
                                                  "fingerprint": fingerprint}, "model": {"label": "SmallNet",
                                                                                         "identity": "1" * 20}}))
    board = write_leaderboard(tmp_path).set_index("dataset")
    assert board.loc["image_folder@ffffffff", "mean"] == 1.0 and board.loc["image_folder@eeeeeeee", "mean"] == 4.0
    assert set(board["model"]) == {"SmallNet"}


@pytest.mark.slow
def test_meta_runs_annotate_the_rows_of_their_own_checkpoint(tmp_path, cache_dir):
    """Two checkpoints of one class with a meta run each (``evalxai.meta``, tiny settings): each leaderboard row
    (``TinyNet@<identity>``) gets its own checkpoint's MC, not the average of both. A meta run without identities
    (made before meta.json recorded them) of a name with two identities matches no row."""
    import json
    import shutil

    from evalxai.meta.run import run_meta
    from evalxai.report.leaderboard import write_leaderboard
    from evalxai.runs.pipeline import run_experiment
    from tests.test_cache_keys import checkpoint_cfg, tiny_checkpoint

    root = tmp_path / "runs"
    for weights in (0, 1):
        cfg = checkpoint_cfg(tiny_checkpoint(tmp_path / f"net{weights}.pt", weights), n_samples=4,
                             methods="[gradient,random]")
        run_experiment(cfg, root / f"run{weights}", progress=False)
        run_meta({**cfg, "meta": {"iterations": 1, "perturbations": 1, "n_boot": 20}}, root / f"meta{weights}",
                 progress=False)
    own = {}
    for weights in (0, 1):
        run = json.loads((root / f"run{weights}" / "run.json").read_text())
        meta = json.loads((root / f"meta{weights}" / "meta.json").read_text())
        assert meta["model"]["identity"] == run["model"]["identity"]
        assert meta["dataset"]["fingerprint"] == run["dataset"]["fingerprint"]
        mc = pd.read_csv(root / f"meta{weights}" / "meta.csv").set_index("space")
        own[f"TinyNet@{run['model']['identity'][:8]}"] = mc.loc[mc["metric"] == "sparseness", "MC"]
    assert own[min(own)]["model"] != own[max(own)]["model"]  # otherwise an average would pass unnoticed
    old = root / "old_meta"  # an older meta run: no identities in meta.json, other MC values
    shutil.copytree(root / "meta0", old)
    meta = json.loads((old / "meta.json").read_text())
    meta["model"].pop("identity")
    meta.pop("dataset")
    (old / "meta.json").write_text(json.dumps(meta))
    pd.read_csv(old / "meta.csv").assign(MC=0.0).to_csv(old / "meta.csv", index=False)

    board = write_leaderboard(root)
    rows = board[(board["metric"] == "sparseness") & (board["method"] == "gradient")].set_index("model")
    assert set(rows.index) == set(own)
    for label, mc in own.items():
        assert rows.loc[label, "mc_model"] == pytest.approx(mc["model"])
        assert rows.loc[label, "mc_input"] == pytest.approx(mc["input"])
        assert rows.loc[label, "meta_runs"] == 1


def test_meta_runs_without_identities_match_a_name_of_one_identity(tmp_path):
    """An older meta run (no meta.json identities) matches by name where the score runs of that name have one
    identity; a meta run of another identity matches nothing (and labels the score runs apart)."""
    import json

    from evalxai.report.leaderboard import write_leaderboard

    run = tmp_path / "run"
    run.mkdir()
    table(np.arange(8.0).reshape(4, 2)).assign(run_id="r").to_parquet(run / "scores.parquet")
    (run / "run.json").write_text(json.dumps({"dataset": {"name": "mnist", "fingerprint": "d" * 20},
                                              "model": {"label": "lenet", "identity": "a" * 20}}))
    for name, mc, info in (("old", 0.7, None), ("other", 0.1, {"model": {"identity": "b" * 20},
                                                                 "dataset": {"fingerprint": "d" * 20}})):
        (tmp_path / name).mkdir()
        pd.DataFrame([{"dataset": "mnist", "model": "lenet", "metric": "m", "measure": "score", "space": space,
                       "MC": mc, "MC_std": 0.0} for space in ("model", "input")]
                     ).to_csv(tmp_path / name / "meta.csv", index=False)
        if info:
            (tmp_path / name / "meta.json").write_text(json.dumps(info))
    row = write_leaderboard(tmp_path).iloc[0]
    assert row["model"] == "lenet@aaaaaaaa" and row["dataset"] == "mnist"
    assert row["mc_model"] == 0.7 and row["mc_input"] == 0.7 and row["meta_runs"] == 1
