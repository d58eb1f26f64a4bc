"""What every command line of evalxai shares: run a config, print one line on error (the traceback with
``verbose=true``), print where the results are."""
from __future__ import annotations

import sys
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf


def run_command(cfg: DictConfig, run: Callable, prog: str, done: str = "results in", tune: bool = True) -> None:
    """Call ``run(config_dict, hydra_output_dir, progress=...)`` for ``python -m <prog>``; exit 1 with one line."""
    from hydra.core.hydra_config import HydraConfig

    from evalxai import allocator

    if tune:
        allocator.tune()  # reuse freed tensor memory: a fresh page per 4 KiB costs as much as the arithmetic
    container = OmegaConf.to_container(cfg, resolve=True)
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        path = run(container, out_dir, progress=bool(cfg.get("progress", True)))
    except Exception as err:  # noqa: BLE001 - one line for users, the traceback with verbose=true
        if cfg.get("verbose", False):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"{prog}: {done} {path}")
