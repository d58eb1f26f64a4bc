"""Metrics: faithfulness (pixel flipping), axiomatic (conservation), complexity (sparseness)."""
from evalxai.metrics import axiomatic, complexity, faithfulness  # noqa: F401  (registration)
from evalxai.metrics.registry import METRICS, get_metric, register_metric

__all__ = ["METRICS", "get_metric", "register_metric"]
