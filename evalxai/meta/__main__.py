"""Command line: ``python -m evalxai.meta experiment=mnist_lrp [meta.iterations=2 meta.perturbations=3 ...]``."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="../conf", config_name="meta")
def main(cfg: DictConfig) -> None:
    from evalxai.meta.run import run_meta
    from evalxai.runs.cli import run_command

    run_command(cfg, run_meta, "evalxai.meta")


if __name__ == "__main__":
    main()
