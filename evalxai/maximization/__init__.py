"""Activation maximization (Montavon, Samek & Mueller 2018): class prototypes in input and code space.

``prototypes`` holds the algorithm (``maximize``), ``naturalness`` scores how natural a prototype is, ``experiment``
makes and scores the prototypes of one config (``make_prototypes``), ``claims`` checks the paper's claims on them, and
``cli`` writes a run folder: ``python -m evalxai.maximization experiment=NAME`` (``evalxai maximize ...``).
"""
from evalxai.maximization.prototypes import DEFAULTS, SPACES, maximize, target_log_prob

__all__ = ["DEFAULTS", "SPACES", "maximize", "target_log_prob"]
