"""Reproductions in reduced form: the claims machinery and the report structure."""
import pandas as pd
import pytest

from evalxai import reproduce

FAST = ["n_samples=4", "model.train.epochs=1"]


def test_every_folder_is_complete():
    names = reproduce.available()
    assert len(names) >= 7
    for name in names:
        folder = reproduce.EXPERIMENTS / name
        assert (folder / "README.md").exists() and (folder / "config.yaml").exists()


@pytest.mark.parametrize("name", ["bach2015_conservation", "montavon2018_continuity", "kohlbrenner2020_composites"])
def test_reduced_reproduction_writes_its_report(name, tmp_path, cache_dir):
    table = reproduce.reproduce(name, tmp_path, FAST)
    for f in ("claims.csv", "report.md", "report.html"):
        assert (tmp_path / name / f).stat().st_size > 0
    csv = pd.read_csv(tmp_path / name / "claims.csv")
    assert {"paper", "claim", "statement", "source", "expected", "measured", "verdict"} <= set(csv.columns)
    assert set(csv["verdict"]) <= {"holds", "does not hold", "inconclusive"}
    assert len(csv) == len(table) and csv["measured"].str.len().min() > 0
    assert "Reproduction" in (tmp_path / name / "report.md").read_text()


def test_conservation_claims_hold_even_when_reduced(tmp_path, cache_dir):
    table = reproduce.reproduce("bach2015_conservation", tmp_path, FAST).set_index("claim")
    assert table.loc["lrp0_conserves", "verdict"] == "holds"  # exact on any bias-free ReLU net


def test_max_toy_check():
    res = reproduce.max_toy({}, pd.DataFrame())
    assert res["verdict"] == "holds" and "lrp_zplus 1.41 -> 1.41" in res["measured"]


def test_road_mask_leakage_reduced(cache_dir):
    res = reproduce.road_mask_leakage({"params": {"method": "gradient", "fraction": 0.2, "n": 200},
                                       "overrides": ["model.train.epochs=1"]}, pd.DataFrame())
    assert res["verdict"] in {"holds", "does not hold", "inconclusive"} and "5-fold accuracy" in res["measured"]


def test_unknown_reproduction_lists_names(tmp_path):
    assert reproduce.main(["nope", "--out", str(tmp_path)]) == 1


def test_dotted_overrides_reach_the_run(tmp_path, cache_dir):
    import json

    reproduce.reproduce("bach2015_conservation", tmp_path, FAST)
    cfg = json.loads((tmp_path / "bach2015_conservation" / "run" / "run.json").read_text())["config"]
    assert cfg["model"]["train"]["epochs"] == 1 and cfg["model"]["arch"]["bias"] is False and cfg["n_samples"] == 4
