"""Command line: ``python -m evalxai.meta experiment=mnist_lrp [meta.iterations=2 meta.perturbations=3 ...]``."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base=None, config_path="../../conf", config_name="meta")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from evalxai import allocator
    from evalxai.meta.run import run_meta

    allocator.tune()
    container = OmegaConf.to_container(cfg, resolve=True)
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        path = run_meta(container, out_dir, progress=bool(cfg.get("progress", True)))
    except Exception as err:  # noqa: BLE001 - one line for users, the traceback with verbose=true
        if cfg.get("verbose", False):
            raise
        print(f"evalxai.meta: error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"evalxai.meta: results in {path}")


if __name__ == "__main__":
    main()
