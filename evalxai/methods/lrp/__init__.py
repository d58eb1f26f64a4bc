"""Layer-wise Relevance Propagation: one backward pass over the traced model.

Modules: ``rules`` (one rule per class), ``composites`` (which layer gets which rule), ``plan`` (every traced
node's kind and rule, BatchNorm canonization), ``functions`` (the autograd Functions that carry the rules),
``transformer`` (attention, LayerNorm and product rules: AttnLRP, CP-LRP) and ``engine`` (``run_lrp``). The
torch.fx tracing, node classification and executor they stand on are ``evalxai.methods.graph``.
"""
from evalxai.methods.graph import LRPError
from evalxai.methods.lrp.composites import COMPOSITES, Composite, make_composite
from evalxai.methods.lrp.engine import Recorder, run_lrp
from evalxai.methods.lrp.plan import build_plan, merged_weights
from evalxai.methods.lrp.rules import RULES, make_rule

__all__ = ["COMPOSITES", "Composite", "LRPError", "RULES", "Recorder", "build_plan", "make_composite", "make_rule",
           "merged_weights", "run_lrp"]
