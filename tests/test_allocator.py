"""The allocator tuning: applied once on glibc, skipped when asked."""
import subprocess
import sys

import pytest

CODE = "from evalxai import allocator; print(allocator.tune(), allocator.tune())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_applies_once_and_can_be_turned_off():
    on = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split()
    assert on == ["True", "True"]
    off = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True,
                         env={"EVALXAI_MALLOC": "default", "PATH": ""}).stdout.split()
    assert off == ["False", "False"]
