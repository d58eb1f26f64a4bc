"""Activation maximization (Montavon, Samek & Mueller 2018): class prototypes in input and code space.

``prototypes`` holds the algorithm (``maximize``), ``naturalness`` scores how natural a prototype is, ``claims`` checks
the paper's claims, and ``python -m evalxai.maximization experiment=NAME`` (``evalxai maximize ...``) runs it all.
"""
from evalxai.maximization.prototypes import DEFAULTS, SPACES, maximize, target_log_prob

__all__ = ["DEFAULTS", "SPACES", "maximize", "target_log_prob"]
