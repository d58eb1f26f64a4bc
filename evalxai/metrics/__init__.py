"""Metrics, one registry. Every module of this package that registers a metric is imported here, so adding a
metric family is one new module (plus its ``conf/metric/<name>.yaml`` files), with no list to keep in step."""
import importlib
import pkgutil

from evalxai.metrics.registry import METRICS, get_metric, register_metric

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_") and _info.name not in ("registry", "common"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METRICS", "get_metric", "register_metric"]
