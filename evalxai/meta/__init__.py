"""Meta-evaluation of the metrics themselves (MetaQuantus, Hedström et al., TMLR 2023):
``python -m evalxai.meta experiment=NAME``, or ``meta_evaluate(model, x, target, methods, metrics)``."""
from evalxai.meta.consistency import iac, iec_adversary, iec_resilience, meta_consistency, sanity_scores
from evalxai.meta.evaluate import MetaResult, consistency_table, meta_evaluate
from evalxai.meta.perturbation import PerturbationTest, default_tests

__all__ = ["MetaResult", "PerturbationTest", "consistency_table", "default_tests", "iac", "iec_adversary",
           "iec_resilience", "meta_consistency", "meta_evaluate", "sanity_scores"]
