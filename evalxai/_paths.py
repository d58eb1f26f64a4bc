"""Where the package's data folders are: the Hydra config tree and the paper reproductions (a leaf module)."""
from pathlib import Path

CONF = Path(__file__).resolve().parent / "conf"  # the Hydra config tree, shipped inside the package
EXPERIMENTS = Path(__file__).resolve().parent / "experiments"  # paper reproductions: config.yaml + claims.yaml
