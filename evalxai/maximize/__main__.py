"""Command line: ``python -m evalxai.maximize experiment=NAME [generator=NAME] [prototypes.input.lam=...]``."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base=None, config_path="../../conf", config_name="maximize")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from evalxai.maximize.cli import run_prototypes

    container = OmegaConf.to_container(cfg, resolve=True)
    try:
        path = run_prototypes(container, HydraConfig.get().runtime.output_dir, progress=bool(cfg.get("progress")))
    except Exception as err:  # noqa: BLE001 - one line for users, the traceback with verbose=true
        if cfg.get("verbose", False):
            raise
        print(f"evalxai.maximize: error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"evalxai.maximize: prototypes in {path}")


if __name__ == "__main__":
    main()
