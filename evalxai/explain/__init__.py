"""Attribution methods: LRP composites, the gradient family and controls, all in one registry."""
from evalxai.explain import gradient, lrp_methods  # noqa: F401  (registration)
from evalxai.explain.registry import METHODS, MethodSpec, get_method, register_method

__all__ = ["METHODS", "MethodSpec", "get_method", "register_method"]
