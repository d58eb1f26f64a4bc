"""The ``evalxai`` command and what every command line of evalxai shares: run a config, print one line on error
(the traceback with ``verbose=true``), print where the results are.

``evalxai OVERRIDES...`` is ``python -m evalxai OVERRIDES...`` (a Hydra run; ``-m`` for sweeps). ``evalxai COMMAND
ARGS...`` runs one of ``SUBCOMMANDS`` (``evalxai leaderboard results/``, ``evalxai meta experiment=mnist_smoke``),
the same as ``python -m evalxai.COMMAND ARGS...``.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from evalxai.runs import allocator

SUBCOMMANDS = {
    "leaderboard": ("evalxai.report.leaderboard", "rank methods over every run below a folder"),
    "reproduce": ("evalxai.runs.reproduce", "run a paper reproduction and check its claims"),
    "meta": ("evalxai.meta.__main__", "meta-evaluation: which metrics to trust (Hydra overrides)"),
    "maximize": ("evalxai.maximization.__main__", "activation maximization: class prototypes (Hydra overrides)"),
    "bench": ("evalxai.bench.__main__", "time methods and metrics against their bare cost"),
    "configs": ("evalxai.runs.configs", "rewrite conf/method and conf/metric from the registries"),
}


def main(argv: list[str] | None = None) -> None:
    """The ``evalxai`` console script: a subcommand of ``SUBCOMMANDS``, else a Hydra run of the arguments."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("commands", "--commands"):
        width = max(map(len, SUBCOMMANDS))
        print("evalxai OVERRIDES...    a run (Hydra: evalxai --help; -m for sweeps)")
        for name, (_, text) in SUBCOMMANDS.items():
            print(f"evalxai {name:<{width}} ...  {text}")
        return
    name = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    module = importlib.import_module(SUBCOMMANDS[name][0] if name else "evalxai.__main__")
    sys.argv = [f"evalxai {name}" if name else "evalxai", *argv[1 if name else 0:]]
    code = module.main() if name in ("meta", "maximize", None) else module.main(sys.argv[1:])
    if isinstance(code, int):
        sys.exit(code)


def run_command(cfg: DictConfig, run: Callable, prog: str, done: str = "results in", tune: bool = True) -> None:
    """Call ``run(config_dict, hydra_output_dir, progress=...)`` for ``python -m <prog>``; exit 1 with one line."""
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
