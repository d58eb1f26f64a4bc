"""Layer-wise Relevance Propagation: rules, composites and the single-backward-pass engine."""
from evalxai.methods.lrp.composites import COMPOSITES, Composite, make_composite
from evalxai.methods.lrp.engine import LRPError, Recorder, build_plan, merged_weights, run_lrp
from evalxai.methods.lrp.rules import RULES, make_rule

__all__ = ["COMPOSITES", "Composite", "LRPError", "RULES", "Recorder", "build_plan", "make_composite", "make_rule",
           "merged_weights", "run_lrp"]
