"""Command line: ``python -m evalxai experiment=mnist_lrp`` (Hydra; ``-m`` for sweeps)."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from evalxai.runs.cli import run_command
    from evalxai.runs.pipeline import run_experiment

    run_command(cfg, run_experiment, "evalxai")


if __name__ == "__main__":
    main()
