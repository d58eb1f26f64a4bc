"""End to end: the wall time of ``python -m evalxai experiment=...`` with an empty cache (cold: MNIST parse,
training) and again with the filled cache (warm), and the peak resident memory of those runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def bench_end_to_end(experiment: str = "mnist_lrp") -> pd.DataFrame:
    """Wall time of ``python -m evalxai experiment=...`` with an empty cache (cold: MNIST parse, training) and
    again with the filled cache (warm), and the peak resident memory of those runs."""
    # The child reports its own high-water RSS (VmHWM of its own address space; getrusage would also count the
    # pages it shared with this process between fork and exec).
    wrapper = ("import atexit, runpy, sys\n"
               "def peak():\n"
               "    try:\n"
               "        line = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
               "        print('PEAK_RSS_KB', line.split()[1], file=sys.stderr)\n"
               "    except OSError:\n"
               "        pass\n"
               "atexit.register(peak)\n"
               "sys.argv = ['evalxai', *sys.argv[1:]]\n"
               "runpy.run_module('evalxai', run_name='__main__')\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "EVALXAI_CACHE": str(Path(tmp) / "cache")}
        for kind in ("cold", "warm"):
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", wrapper, f"experiment={experiment}", "progress=false",
                                  f"hydra.run.dir={Path(tmp) / kind}"], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(f"{experiment} failed: {res.stderr.strip().splitlines()[-1:]}")
            found = re.findall(r"PEAK_RSS_KB (\d+)", res.stderr)
            rows.append({"experiment": experiment, "run": kind, "wall_s": round(wall, 1),
                         "peak_rss_mb": round(int(found[-1]) / 1024) if found else None,
                         "target_s": 120 if kind == "cold" else 30, "target_mb": 2048})
    return pd.DataFrame(rows)


