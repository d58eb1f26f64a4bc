"""evalxai: explanation-quality evaluation for PyTorch models.

Public API: ``explain`` (attributions by method name), ``score`` (tidy metric rows by metric name) and
``memory_budget`` (how much memory they may use: a setter and a context manager),
``maximize`` (activation-maximization prototypes of classes, in input or code space).
``tune_allocator()`` (opt-in, once per process): let glibc keep freed tensor memory for reuse, as the command line
does: on the CPU, LRP and gradients then run 1.1-1.35x faster (``evalxai.runs.allocator``).
"""
from evalxai._version import __version__
from evalxai.api import explain, score
from evalxai.core.memory import memory_budget
from evalxai.maximization.prototypes import maximize
from evalxai.runs.allocator import tune as tune_allocator

__all__ = ["explain", "score", "maximize", "memory_budget", "tune_allocator", "__version__"]
