"""Command line: ``python -m evalxai experiment=mnist_lrp`` (Hydra; ``-m`` for sweeps)."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from evalxai import allocator
    from evalxai.pipeline import run_experiment

    allocator.tune()  # reuse freed tensor memory: a fresh page per 4 KiB costs as much as the arithmetic
    container = OmegaConf.to_container(cfg, resolve=True)
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        path = run_experiment(container, out_dir, progress=bool(cfg.get("progress", True)))
    except Exception as err:  # noqa: BLE001 - one line for users, the traceback with verbose=true
        if cfg.get("verbose", False):
            raise
        print(f"evalxai: error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"evalxai: results in {path}")


if __name__ == "__main__":
    main()
