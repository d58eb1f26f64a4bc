"""Attribution methods: LRP composites, the gradient family, DeepLIFT, occlusion, CAMs and controls, one registry."""
from evalxai.methods import attention, cam, deeplift, gradient, lrp_methods, occlusion  # noqa: F401  (registration)
from evalxai.methods.registry import METHODS, MethodSpec, get_method, register_method

__all__ = ["METHODS", "MethodSpec", "get_method", "register_method"]
