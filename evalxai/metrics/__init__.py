"""Metrics: faithfulness (pixel flipping, insertion/deletion, selectivity, ROAD), robustness (continuity,
max-sensitivity), axiomatic (conservation), randomization, complexity (sparseness)."""
from evalxai.metrics import (  # noqa: F401  (registration)
    axiomatic,
    complexity,
    faithfulness,
    randomization,
    road,
    robustness,
    selectivity,
)
from evalxai.metrics.registry import METRICS, get_metric, register_metric

__all__ = ["METRICS", "get_metric", "register_metric"]
