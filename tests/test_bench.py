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
    """The benchmark command runs (methods only, tiny batch) and writes its CSV and Markdown table."""
    from evalxai import bench

    df = bench.main(["--models", "lenet", "--batch", "4", "--repeats", "1", "--methods", "lrp_0", "smoothgrad",
                     "cam", "--metrics", "--no-e2e", "--out", str(tmp_path)])
    rows = df.set_index("method")
    assert rows.loc["<gradient pass>", "ratio"] == 1.0
    assert rows.loc["smoothgrad", "gradient_passes"] == bench.BENCH_UNITS
    assert rows.loc["lrp_0", "ratio"] > 0 and pd.isna(rows.loc["cam", "ratio"])  # lenet has no GAP: no CAM
    text = (tmp_path / "bench.md").read_text()
    assert "| lrp_0 |" in text and (tmp_path / "bench.csv").exists()
