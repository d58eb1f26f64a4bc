"""Speed plumbing: the benchmark command, and the allocator tuning (applied once on glibc, skipped when asked)."""
import subprocess
import sys

import pandas as pd
import pytest

CODE = "from evalxai import allocator; print(allocator.tune(), allocator.tune())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_applies_once_and_can_be_turned_off():
    on = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split()
    assert on == ["True", "True"]
    off = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True,
                         env={"EVALXAI_MALLOC": "default", "PATH": ""}).stdout.split()
    assert off == ["False", "False"]


def test_bench_methods_table(tmp_path):
    """The benchmark command runs (methods only, tiny batch) and writes its CSV and Markdown table; each ratio is
    the method's median time over k bare gradient passes, from the same table's medians (speed is not asserted)."""
    from evalxai import bench

    df = bench.main(["--models", "lenet", "--batch", "4", "--repeats", "1", "--methods", "lrp_0", "smoothgrad",
                     "cam", "--metrics", "--no-e2e", "--out", str(tmp_path)])
    rows = df.set_index("method")
    base = rows.loc["<gradient pass>", "median_ms"]
    assert base > 0 and rows.loc["<gradient pass>", "ratio"] == 1.0
    # LRP is one modified backward pass: its bare cost is one gradient pass. SmoothGrad's is its samples.
    assert rows.loc["lrp_0", "gradient_passes"] == bench.units("lrp_0") == 1
    assert rows.loc["smoothgrad", "gradient_passes"] == bench.units("smoothgrad") == bench.BENCH_UNITS
    for method in ("lrp_0", "smoothgrad"):
        expected = rows.loc[method, "median_ms"] / base / rows.loc[method, "gradient_passes"]
        assert rows.loc[method, "ratio"] == pytest.approx(expected, rel=1e-12), method
        assert rows.loc[method, "target"] == bench.TARGETS[method]
        assert rows.loc[method, "meets_target"] == (rows.loc[method, "ratio"] <= bench.TARGETS[method])
    assert pd.isna(rows.loc["cam", "ratio"]) and pd.isna(rows.loc["cam", "median_ms"])  # lenet has no GAP: no CAM
    csv = pd.read_csv(tmp_path / "bench.csv").set_index("method")
    assert csv.loc["lrp_0", "ratio"] == pytest.approx(rows.loc["lrp_0", "ratio"], rel=1e-9)
    text = (tmp_path / "bench.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("| lrp_0 |"))
    assert float(line.split("|")[2]) == pytest.approx(round(rows.loc["lrp_0", "ratio"], 2), abs=1e-9)
