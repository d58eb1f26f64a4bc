"""Command line: ``python -m evalxai.maximization experiment=NAME [generator=NAME] [prototypes.input.lam=...]``."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from evalxai.maximization.cli import run_prototypes
from evalxai.runs.cli import run_command


@hydra.main(version_base=None, config_path="../conf", config_name="maximize")
def main(cfg: DictConfig) -> None:
    run_command(cfg, run_prototypes, "evalxai.maximization", done="prototypes in", tune=False)


if __name__ == "__main__":
    main()
