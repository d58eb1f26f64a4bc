"""evalxai: explanation-quality evaluation for PyTorch models.

Public API: ``explain`` (attributions by method name) and ``score`` (tidy metric rows by metric name).
"""
__version__ = "0.1.0"

from evalxai.api import explain, score  # noqa: E402

__all__ = ["explain", "score", "__version__"]
