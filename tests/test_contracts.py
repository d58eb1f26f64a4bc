"""Contracts every registered method and metric keeps (issue 28, "the house"), parametrized from the registries:
a method or metric registered tomorrow is checked here without editing this file.

Methods (``evalxai.methods.METHODS``), on every model of ``SETUPS`` that the method supports (``REFUSED`` lists, with
the error, the pairs a method refuses; every method runs on one at least):

- batch independence: explaining the batch equals explaining each sample alone (``BATCH_RTOL``);
- memory-budget independence: the same maps under a budget of a few images as under the default one;
- the model untouched: parameters (values, dtype, requires_grad, grad), buffers, every module's training flag,
  attributes and children, and every hook dictionary (the modules' and torch's global ones) are as before, and so
  are the inputs (x, target, data range, masks, pool; for metrics the maps scored);
- the maps: shaped like x, finite, of x's dtype, in float32 and float64; float32 agrees with float64 within
  ``F32_TOL[family]`` of the sample's largest |R| for the deterministic methods (those whose maps do not move with
  ``seed``); the same call twice gives the same maps, and a method that draws (its maps move with ``seed``) draws
  per sample (``evalxai.core.seeding``), so the batch contract holds for it as it stands.

Metrics (``evalxai.metrics.METRICS``), each at its defaults (and at the ``VARIANTS`` below, parameter settings whose
code paths the defaults leave out), scoring the maps of ``SCORED[model]`` rounded to 17 levels per sample (so every
ranking meets ties, which must be broken per sample too):

- batch independence and memory-budget independence, as for methods (``METRIC_RTOL``); the same call twice gives
  the same table;
- the model untouched;
- finite rows: NaN only where ``NAN`` names the metric, measure and the documented reason;
- the rows and the declaration agree: every row's ``direction`` is the registered one of its measure, at least one
  scored (higher / lower) measure, one row per sample for a scored measure, and curve points (rows with a
  ``step``) are never scored.

Every call receives what the pipeline would give it (``evalxai.binding.bind``): the data range and mean image
(``low`` / ``high`` / ``mean``; the ViT's inputs are normalised, so those are per-channel model-space values), the
method being scored for metrics that need ``method``, ground-truth masks and a pool of images for those that need
``masks`` / ``pool``.

Models: ``text``, a tiny transformer text classifier (``tests.test_text_explain.TinyTextClassifier``) on token ids
(N, T) with right padding and an attention mask, for the metrics that score token maps (``MetricSpec.inputs``;
methods on token ids are tested in tests/test_text_explain.py); every other metric must refuse it, and the token-only
metrics must refuse images. ``cnn``, LeNet-like (two conv-ReLU stages, the first with BatchNorm and max pooling, then
global average pooling and one Linear layer, so that CAM applies), 1 x 12 x 12 pixels; ``vit``,
``evalxai.models.vit.ViT`` (two blocks, 4 x 4 patches) on 3 x 12 x 12 normalised inputs, for the methods that need
attention. All are float64,
handed over in eval mode with one submodule in training mode, one frozen parameter and a forward hook, a forward
pre-hook and a full backward hook that change nothing. The module runs single-threaded: on inputs this small two
threads only wait for each other (20 ms per convolution on a busy 2-core machine instead of 0.1 ms).

A case that fails for a reason outside this file (a bug being fixed elsewhere) is listed in ``KNOWN`` with the
exact error: a strict expected failure. The last section shows that the contracts catch wrong code: toy methods and
metrics that break each of them, and one of each that keeps them all.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import evalxai
from evalxai.binding import bind
from evalxai.core import memory
from evalxai.methods import METHODS, get_method, register_method
from evalxai.metrics import METRICS, get_metric, register_metric
from evalxai.metrics.common import curve_rows, scalar_rows
from evalxai.models.text import EmbeddingsInput
from evalxai.models.vit import ViT
from tests.test_text_explain import TinyTextClassifier

N = 3  # samples per batch
CLASSES = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)


# ---------------------------------------------------------------- models and data


def cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, CLASSES))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
    return model


def vit() -> nn.Module:
    torch.manual_seed(0)
    return ViT((3, 12, 12), num_classes=CLASSES, patch=4, dim=8, depth=2, heads=2, mlp=16)


MEAN, STD = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.25, 0.3, 0.2]).view(3, 1, 1)


@dataclass
class Setup:
    build: object
    x: torch.Tensor          # model-space inputs (N, C, H, W), float64
    target: torch.Tensor
    data: dict               # low / high / mean, as the pipeline passes a dataset's
    masks: torch.Tensor      # (N, H, W) bool; token ids: (N, T), the rationale
    pool: tuple | None       # (images, labels)
    attention_mask: torch.Tensor | None = None  # token ids only: (N, T), 1 = token

    @property
    def inputs(self) -> str:
        """What the setup's x are, as ``MetricSpec.inputs`` names it: ``float`` or ``tokens``."""
        return "float" if self.x.is_floating_point() else "tokens"

    def __post_init__(self):
        self.pristine = copy.deepcopy(self.given())

    def given(self) -> dict:
        """What every call is given besides the model: it must come back unchanged."""
        return {"x": self.x, "target": self.target, "data": self.data, "masks": self.masks, "pool": self.pool,
                "attention_mask": self.attention_mask}

    def model(self, dtype=torch.float64) -> nn.Module:
        """A fresh model as a user hands it over: eval mode but for one submodule, a frozen parameter, hooks."""
        model = self.build().to(dtype).eval()
        first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None)
        first.bias.requires_grad_(False)
        norm = next(m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)))
        norm.train()  # only what runs outside evalxai's eval mode would see it
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        first.register_forward_hook(lambda m, i, o: None)
        model.register_forward_pre_hook(lambda m, i: None)
        last.register_full_backward_hook(lambda m, gi, go: None)
        return model


def _masks(g: torch.Generator, h: int, w: int) -> torch.Tensor:
    """One blob per sample and a few stray pixels: never empty, never the whole image."""
    m = torch.zeros(N, h, w, dtype=torch.bool)
    for i in range(N):
        y, x = torch.randint(0, h - 4, (2,), generator=g).tolist()
        m[i, y:y + 2 + i, x:x + 3] = True
        m[i] ^= torch.rand(h, w, generator=g) > 0.93
        m[i, 0, 0], m[i, -1, -1] = True, False
    return m


def _setup(build, channels: int, normalised: bool) -> Setup:
    g = torch.Generator().manual_seed(channels)
    pixels = torch.rand(N + 12, channels, 12, 12, generator=g, dtype=torch.float64)
    pixels[:N, :, :2] = 0.0  # a black band, as MNIST's background
    if normalised:
        mean, std = MEAN.double(), STD.double()
        space = (pixels - mean) / std
        low, high = (0 - mean) / std, (1 - mean) / std
    else:
        space, low, high = pixels, 0.0, 1.0
    x, images = space[:N], space[N:]
    data = {"low": low, "high": high, "mean": images.mean(0, keepdim=True)}
    return Setup(build, x, torch.arange(N) % CLASSES, data, _masks(g, 12, 12), (images, torch.arange(12) % CLASSES))


def text() -> nn.Module:
    torch.manual_seed(0)
    return TinyTextClassifier(vocab=30, d=16, t=12, classes=CLASSES)


def _text_setup() -> Setup:
    """Token ids (N, 8), right-padded to 8, 5 and 3 tokens with id 0; the rationale: tokens 1 and 2 (and a padding
    position, which must not count); pad / mask / unk ids as a dataset's ``token_ids``."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 30, (N, 8), generator=g)
    mask = torch.ones(N, 8, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    rationale = torch.zeros(N, 8, dtype=torch.bool)
    rationale[:, 1:3] = True
    rationale[2, 6] = True
    return Setup(text, ids, torch.arange(N) % CLASSES, {"pad_id": 0, "mask_id": 1, "unk_id": 2}, rationale, None,
                 mask)


SETUPS = {"cnn": functools.partial(_setup, cnn, 1, False), "vit": functools.partial(_setup, vit, 3, True),
          "text": _text_setup}



@functools.cache
def setup(kind: str) -> Setup:
    return SETUPS[kind]()


# ---------------------------------------------------------------- which method runs on which model

# (method, model) -> the error the method refuses the model with (a regular expression of its message)
REFUSED = {
    ("attention_rollout", "cnn"): "no patch embedding",
    ("cam", "vit"): "cam needs a model whose forward ends in global average pooling",
    ("deeplift", "vit"): "LayerNorm has no DeepLIFT rule",
}

# cases that fail for a reason outside this file's reach, every contract of them: (kind, name, model) -> (the
# exception, reason); they are expected failures (strict: one that passes fails the suite, then drop it here)
KNOWN: dict = {}


def _cases(kind: str, names) -> list:
    """(name, model) test cases of every registered name on every model it supports."""
    out = []
    for name in names:
        for model in SETUPS:
            if kind == "method" and ((name, model) in REFUSED or model == "text"):
                continue
            if kind == "metric" and setup(model).inputs not in get_metric(name).inputs:
                continue
            error, reason = KNOWN.get((kind, name, model), (None, None))
            marks = [pytest.mark.xfail(strict=True, raises=error, reason=reason)] if reason else []
            if kind == "metric" and model == "vit":  # the second model of every metric: the full suite, not the quick
                marks.append(pytest.mark.slow)     # check (pytest -m "not slow" stays under 90 s)
            out.append(pytest.param(name, model, marks=marks, id=f"{name}-{model}"))
    return out


# ---------------------------------------------------------------- checks shared by methods and metrics

HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
              "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
              "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_hooks_always_called", "_global_forward_pre_hooks",
                "_global_backward_hooks", "_global_backward_pre_hooks", "_global_buffer_registration_hooks",
                "_global_module_registration_hooks", "_global_parameter_registration_hooks")


def snapshot(model: nn.Module) -> dict:
    """Everything of ``model`` a method or metric could leave changed, in comparable form."""
    state = {"global": {name: dict(getattr(nn.modules.module, name, {})) for name in GLOBAL_HOOKS}}
    for name, p in model.named_parameters():
        state[f"parameter {name}"] = (p.detach().clone(), p.dtype, p.requires_grad,
                                      None if p.grad is None else p.grad.clone(), id(p))
    for name, b in model.named_buffers():
        state[f"buffer {name}"] = (b.clone(), id(b))
    for name, m in model.named_modules():
        state[f"module '{name}'"] = (type(m), m.training, sorted(vars(m)), {k: id(c) for k, c in m._modules.items()},
                                     {d: dict(getattr(m, d)) for d in HOOK_DICTS if hasattr(m, d)})
    return state


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def assert_untouched(before: dict, after: dict, s: Setup | None = None) -> None:
    """The model's ``snapshot`` before and after a call are the same; so are the inputs of setup ``s``."""
    changed = sorted(k for k in before.keys() | after.keys() if not _same(before.get(k), after.get(k)))
    assert not changed, f"the call changed the model: {changed}"
    if s is not None:
        given = s.given()
        changed = [k for k in given if not _same(given[k], s.pristine[k])]
        assert not changed, f"the call changed its inputs: {changed}"


def assert_close_per_sample(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str) -> None:
    """|got - want| <= rtol * max |want| of each sample (plus 1e-300: all-zero maps compare exactly)."""
    scale = want.detach().flatten(1).abs().amax(1).double()
    err = (got.double() - want.double()).flatten(1).abs().amax(1)
    bad = torch.nonzero(err > rtol * scale + 1e-300).flatten().tolist()
    assert not bad, (f"{what}: samples {bad} differ by {[f'{float(e):.3g}' for e in err[bad]]} "
                     f"(largest |R| {[f'{float(s):.3g}' for s in scale[bad]]}, rtol {rtol:g})")


@functools.cache
def tiny_budget(kind: str) -> int:
    """Room for about one LRP pass over one image: every chunk holds one or two images. Measured on a model of
    its own: ``image_cost`` runs a forward, which the handed-over model (one submodule in training mode) must only
    see through evalxai."""
    s = setup(kind)
    model = s.build().double().eval()
    if s.attention_mask is not None:  # token ids: the cost of one sequence's word embeddings
        wrapped = EmbeddingsInput(model, s.attention_mask[:1])
        return int(3.5 * memory.image_cost(wrapped, wrapped.embed(s.x[:1])))
    return int(3.5 * memory.image_cost(model, s.x))


# ---------------------------------------------------------------- methods

# Batch and budget independence: float64 maps, per-sample max |difference| / max |R|, the same for every family
# (stochastic methods draw per sample, so theirs too). Chunks only change the order of float64 reductions (the
# kernels picked by batch size): at most 6e-15 here (occlusion on the CNN).
BATCH_RTOL = 1e-12
# float32 vs float64, per-sample max |difference| / max |R|, by family, 5 to 10 times the largest seen on these models:
# gradient 2.2e-5 (occlusion: differences of logits; Grad-CAM++ cubes gradients: 1.1e-5), lrp 6.2e-6
# (alpha2beta1 on the ViT: its stabilised denominators amplify float32's rounding of small z), attention 1.2e-7,
# control 1.1e-7. A stochastic method is not compared: its draws are seeded by the sample's bytes, and a float32
# sample is other bytes.
F32_TOL = {"gradient": 1e-4, "lrp": 3e-5, "attention": 1e-6, "control": 1e-6}
F32_TOL_DEFAULT = 1e-4  # a family this table does not know


def explain(name: str, kind: str, x: torch.Tensor | None = None, target: torch.Tensor | None = None,
            model: nn.Module | None = None, **overrides) -> torch.Tensor:
    """``evalxai.explain`` with what the pipeline binds (the data range and mean image) on ``kind``'s data."""
    s = setup(kind)
    x = s.x if x is None else x
    model = s.model(x.dtype if x.is_floating_point() else torch.float64) if model is None else model
    params = bind(get_method(name), overrides, data=s.data)
    if s.attention_mask is not None:  # the whole batch of token ids (methods are not run on them sample by sample)
        params["attention_mask"] = s.attention_mask
    return evalxai.explain(model, x, s.target if target is None else target, method=name, **params)


@functools.cache
def maps(name: str, kind: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The method's maps of the whole batch (computed once per module)."""
    x = setup(kind).x
    return explain(name, kind, x.to(dtype) if x.is_floating_point() else x)


@functools.cache
def draws(name: str, kind: str) -> bool:
    """Whether the method draws random numbers at its defaults: its maps move with ``seed``."""
    if "seed" not in get_method(name).defaults:
        return False
    return not torch.equal(explain(name, kind, seed=get_method(name).defaults["seed"] + 1), maps(name, kind))


def check_method_batch_independent(name: str, kind: str) -> None:
    s = setup(kind)
    full = maps(name, kind)
    alone = torch.cat([explain(name, kind, s.x[i:i + 1], s.target[i:i + 1]) for i in range(N)])
    assert_close_per_sample(alone, full, BATCH_RTOL, f"{name} on {kind}: each sample alone vs the batch")


def check_method_budget_independent(name: str, kind: str) -> None:
    s = setup(kind)
    model = s.model()
    with evalxai.memory_budget(tiny_budget(kind)):
        small = explain(name, kind, model=model)
    assert_close_per_sample(small, maps(name, kind), BATCH_RTOL, f"{name} on {kind}: a tiny memory budget vs the "
                                                                 "default")


def check_method_leaves_model_untouched(name: str, kind: str) -> None:
    s = setup(kind)
    model = s.model()
    before = snapshot(model)
    explain(name, kind, model=model)
    with evalxai.memory_budget(tiny_budget(kind)):  # the chunked paths too
        explain(name, kind, model=model)
    assert_untouched(before, snapshot(model), s)


def check_method_maps(name: str, kind: str) -> None:
    s = setup(kind)
    for dtype in (torch.float64, torch.float32):
        r = maps(name, kind, dtype)
        assert isinstance(r, torch.Tensor) and r.shape == s.x.shape, f"{name}: shape {tuple(r.shape)}"
        assert r.dtype == dtype, f"{name}: {r.dtype} maps for {dtype} inputs"
        assert torch.isfinite(r).all(), f"{name}: non-finite maps for {dtype} inputs"
        assert not r.requires_grad and r.grad_fn is None, f"{name}: maps still attached to a graph"
    assert torch.equal(explain(name, kind), maps(name, kind)), f"{name}: a second call gives other maps"
    if draws(name, kind):
        return  # its draws are seeded per sample from the sample's bytes: float32 inputs are other bytes
    tol = F32_TOL.get(get_method(name).family, F32_TOL_DEFAULT)
    assert_close_per_sample(maps(name, kind, torch.float32), maps(name, kind), tol, f"{name} on {kind}: float32 vs "
                                                                                  "float64")


@pytest.mark.parametrize("name,kind", _cases("method", METHODS))
def test_method_batch_independent(name, kind):
    check_method_batch_independent(name, kind)


@pytest.mark.parametrize("name,kind", _cases("method", METHODS))
def test_method_budget_independent(name, kind):
    check_method_budget_independent(name, kind)


@pytest.mark.parametrize("name,kind", _cases("method", METHODS))
def test_method_leaves_model_untouched(name, kind):
    check_method_leaves_model_untouched(name, kind)


@pytest.mark.parametrize("name,kind", _cases("method", METHODS))
def test_method_maps_shaped_finite_typed_and_float32_agrees(name, kind):
    check_method_maps(name, kind)


@pytest.mark.parametrize("name,kind", sorted(REFUSED))
def test_a_refused_model_is_a_clear_error(name, kind):
    """The pairs left out above are refused with an error that says why, not a crash deep inside."""
    with pytest.raises((ValueError, TypeError), match=REFUSED[(name, kind)]):
        explain(name, kind)


def test_every_method_runs_on_some_model():
    runs = {name for name in METHODS for kind in SETUPS if (name, kind) not in REFUSED}
    assert runs == set(METHODS)
    assert {name for name, _ in REFUSED} <= set(METHODS) and {kind for _, kind in REFUSED} <= set(SETUPS)


# ---------------------------------------------------------------- metrics

# the method whose maps are scored (and re-explained)
SCORED = {"cnn": "lrp_epsilon_plus", "vit": "attnlrp", "text": "attnlrp"}
# batch and budget independence of the tables, by family: relative per value (absolute 1e-12 for scores near 0).
# The largest relative difference seen is 4e-12 (ROAD's AUCs, from scores of imputed images); complexity and
# localisation are functions of each sample's map (and mask) alone: bit for bit.
METRIC_RTOL = {"complexity": 0.0, "localisation": 0.0}
METRIC_RTOL_DEFAULT = 1e-10
# parameter settings whose code paths a metric's defaults leave out (random baselines and orders, other
# perturbations and segmentations, the flip policy)
VARIANTS = {
    "pixel_flipping": [{"baseline": "uniform", "patch_size": 2, "per_step": 3},
                       {"order": "random", "score_space": "softmax", "patch_size": 2}],
    "conservation": [{"reference": "zero"}],
    "infidelity": [{"perturbation": "gaussian", "multiply_by_inputs": False}],
    "irof": [{"segmentation": "grid", "n_segments": 16}],
    "avg_sensitivity": [{"nan_on_flip": True}],
    "consistency": [{"noise": 0.01}],
    "selectivity": [{"recompute": False}],
    "sufficiency": [{"applies": "threshold"}],
    "token_flipping": [{"order": "random", "per_step": 0.3, "score_space": "softmax", "baseline": "pad"}],
    "comprehensiveness": [{"removal": "delete", "baseline": "mask"}],
    "eraser_sufficiency": [{"removal": "delete", "bins": [0.3, 1.0]}],
    "token_f1": [{"k": 2}],
}
# parameters that only say how many random draws or perturbation steps a metric takes, where it has them: fewer keep
# the module fast (the contracts do not depend on how many; 3 draws leave consistency without a match, NaN)
COST = {"samples": 4, "runs": 8, "steps": 8}
# (metric or variant label, measure) -> the documented reason (docs/metrics.md) its rows may be NaN on these inputs
NAN = {
    ("sufficiency[applies=threshold]", "sufficiency"): "NaN when no neighbour is close enough",
    ("sufficiency[applies=threshold]", "sufficiency_gain"): "NaN when no neighbour is close enough",
}


def label(name: str, variant: int) -> str:
    """``name``, or ``name[k=v,...]`` for a variant (test ids, ``NAN`` keys)."""
    params = ([{}, *VARIANTS.get(name, [])])[variant]
    return name if not params else f"{name}[{','.join(f'{k}={v}' for k, v in params.items())}]"


def _metric_cases() -> list:
    """(name, model, variant) test cases: every registered metric at its defaults and its ``VARIANTS``."""
    return [pytest.param(name, p.values[1], i, marks=p.marks, id=f"{label(name, i)}-{p.values[1]}")
            for name in METRICS for i in range(1 + len(VARIANTS.get(name, []))) for p in _cases("metric", [name])]


def levels(r: torch.Tensor, n: int = 8) -> torch.Tensor:
    """The map rounded to 2n + 1 levels per sample: ties for every metric that ranks."""
    scale = r.flatten(1).abs().amax(1).clamp_min(1e-300).view(-1, *[1] * (r.dim() - 1))
    return torch.round(n * r / scale)


def score(name: str, kind: str, variant: int = 0, rows: slice = slice(None), model: nn.Module | None = None,
          attributions: torch.Tensor | None = None) -> pd.DataFrame:
    """``evalxai.score`` of samples ``rows`` of ``SCORED[kind]``'s maps (``levels``) with what the pipeline binds:
    data range and mean image, the scored method, masks and pool."""
    s = setup(kind)
    spec = get_metric(name)
    params = {**{k: v for k, v in COST.items() if k in spec.defaults}, **([{}, *VARIANTS.get(name, [])])[variant]}
    r = levels(maps(SCORED[kind], kind)) if attributions is None else attributions
    bound = bind(spec, params, data=s.data, scored=(SCORED[kind], {}),
                 ground={"masks": s.masks[rows], "pool": s.pool})
    if s.attention_mask is not None:
        bound["attention_mask"] = s.attention_mask[rows]
    return evalxai.score(s.model() if model is None else model, s.x[rows], s.target[rows], r[rows], metric=name,
                         **bound)


@functools.cache
def table(name: str, kind: str, variant: int = 0) -> pd.DataFrame:
    """The metric's table of the whole batch (computed once per module)."""
    return score(name, kind, variant)


def assert_same_table(name: str, got: pd.DataFrame, want: pd.DataFrame, what: str) -> None:
    rtol = METRIC_RTOL.get(get_metric(name).family, METRIC_RTOL_DEFAULT)
    got, want = got.reset_index(drop=True), want.reset_index(drop=True)
    if rtol:
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=rtol, atol=1e-12, obj=what)
    else:
        pd.testing.assert_frame_equal(got, want, check_exact=True, obj=what)


def check_metric_batch_independent(name: str, kind: str, variant: int = 0) -> None:
    full = table(name, kind, variant)
    for i in range(N):
        alone = score(name, kind, variant, slice(i, i + 1)).assign(sample=i)
        assert_same_table(name, alone, full[full["sample"] == i], f"{name} on {kind}: sample {i} alone vs in the batch")


def check_metric_budget_independent(name: str, kind: str, variant: int = 0) -> None:
    with evalxai.memory_budget(tiny_budget(kind)):
        small = score(name, kind, variant)
    assert_same_table(name, small, table(name, kind, variant), f"{name} on {kind}: a tiny memory budget vs the default")


def check_metric_leaves_model_untouched(name: str, kind: str, variant: int = 0) -> None:
    """... and the same call twice (here on another model object, equal to the first) gives the same table."""
    s = setup(kind)
    model, r = s.model(), levels(maps(SCORED[kind], kind))
    before, r0 = snapshot(model), r.clone()
    again = score(name, kind, variant, model=model, attributions=r)
    assert_untouched(before, snapshot(model), s)
    assert torch.equal(r, r0), f"{name} changed the attributions it scored"
    pd.testing.assert_frame_equal(again, table(name, kind, variant), check_exact=True,
                                  obj=f"{name} on {kind}: the same call twice")


def check_metric_rows(name: str, kind: str, variant: int = 0) -> None:
    spec, df = get_metric(name), table(name, kind, variant)
    assert {"metric", "sample", "measure", "value", "direction", "step"} <= set(df.columns), list(df.columns)
    assert sorted(df["sample"].unique()) == list(range(N)), f"{name}: samples {sorted(df['sample'].unique())}"
    bad = df[~np.isfinite(df["value"].to_numpy(dtype=float))]
    undocumented = sorted({m for m in bad["measure"] if (label(name, variant), m) not in NAN})
    assert not undocumented, (f"{label(name, variant)} on {kind}: non-finite {undocumented} for samples "
                              f"{sorted(set(bad['sample']))}")
    wrong = {m: d for m, d in zip(df["measure"], df["direction"]) if d != spec.direction(m)}
    assert not wrong, f"{name}: rows' directions {wrong} are not the registered ones"
    ranked = df[df["direction"] != "none"]
    assert len(ranked) or variant, f"{name} on {kind}: no row of a scored (higher / lower) measure at its defaults"
    curves = sorted(set(ranked[ranked["step"].notna()]["measure"]))
    assert not curves, f"{name}: curve points (rows with a step) of {curves} are declared higher / lower"
    per = ranked.groupby(["measure", "sample"]).size()
    assert (per == 1).all() and len(per) == N * ranked["measure"].nunique(), \
        f"{name}: a scored measure needs one row per sample, got {per[per != 1].to_dict()}"


@pytest.mark.parametrize("name,kind,variant", _metric_cases())
def test_metric_batch_independent(name, kind, variant):
    check_metric_batch_independent(name, kind, variant)


@pytest.mark.parametrize("name,kind,variant", _metric_cases())
def test_metric_budget_independent(name, kind, variant):
    check_metric_budget_independent(name, kind, variant)


@pytest.mark.parametrize("name,kind,variant", _metric_cases())
def test_metric_leaves_model_untouched_and_repeats(name, kind, variant):
    check_metric_leaves_model_untouched(name, kind, variant)


@pytest.mark.parametrize("name,kind,variant", _metric_cases())
def test_metric_rows_finite_and_as_declared(name, kind, variant):
    check_metric_rows(name, kind, variant)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_a_metric_refuses_the_inputs_it_does_not_take(name):
    """A metric that does not score token ids refuses them in one line with the reason and the text metrics to use;
    a token-only metric refuses float inputs."""
    spec = get_metric(name)
    for kind, error in (("text", f"metric '{name}' does not score token ids: .+; for text use token_flipping"),
                        ("cnn", f"metric '{name}' takes token ids")):
        s = setup(kind)
        if s.inputs not in spec.inputs:
            with pytest.raises(ValueError, match=error):  # before anything else is asked of the call
                evalxai.score(s.model(), s.x, s.target, levels(maps(SCORED[kind], kind)), metric=name,
                              attention_mask=s.attention_mask)


def test_variants_and_exceptions_name_registered_things():
    assert set(VARIANTS) <= set(METRICS)
    assert {m for m, _ in NAN} <= {label(n, i) for n in METRICS for i in range(1 + len(VARIANTS.get(n, [])))}
    for name, params in VARIANTS.items():
        for p in params:
            assert set(p) <= set(get_metric(name).defaults), (name, p)
    assert set(SCORED) == set(SETUPS) and set(SCORED.values()) <= set(METHODS)


# ---------------------------------------------------------------- the contracts catch wrong code


@pytest.fixture
def toys():
    """Names registered by a test, removed again afterwards."""
    added = []
    yield added
    for registry, name in added:
        registry.pop(name, None)


def batch_max(model, x, target):
    """Normalised by the largest |x| of the batch: another batch, another map."""
    return x / x.abs().amax()


def batch_seeded(model, x, target, seed: int = 0):
    """Noise drawn for the whole batch from one generator: a sample's draws depend on its position."""
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def budget_scaled(model, x, target):
    """Scaled by the number of images per chunk: another budget, another map."""
    return x * memory.images_per_chunk(model, x, "gradient")


def hook_left(model, x, target):
    model.register_forward_hook(lambda m, i, o: None)
    return x.clone()


def statistics_updated(model, x, target):
    """A forward in training mode (evalxai restores the mode, not the BatchNorm statistics it moved)."""
    model.train()
    model(x)
    return x.clone()


def parameter_nudged(model, x, target):
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    return x.clone()


def input_overwritten(model, x, target):
    x[:, :, 0, 0] = 0.5  # (the test puts the setup's inputs back)
    return x.clone()


def float32_maps(model, x, target):
    return x.float()


def float32_differs(model, x, target):
    return x if x.dtype == torch.float64 else x + 1e-3


def well_behaved(model, x, target, seed: int = 0):
    """x times its own per-sample noise (the seeding every stochastic method uses): keeps every contract."""
    from evalxai.core.seeding import per_sample_noise

    return x * per_sample_noise(x, seed, 1)[0]


METHOD_CHECKS = {"batch": check_method_batch_independent, "budget": check_method_budget_independent,
                 "untouched": check_method_leaves_model_untouched, "maps": check_method_maps}


@pytest.mark.parametrize("toy,contract,error", [
    (batch_max, "batch", "each sample alone vs the batch"),
    (batch_seeded, "batch", "each sample alone vs the batch"),
    (budget_scaled, "budget", "a tiny memory budget vs the default"),
    (hook_left, "untouched", r"changed the model: \[\"module ''\"\]"),
    (statistics_updated, "untouched", r"changed the model: \['buffer 1.num_batches_tracked', 'buffer 1.running_mean'"),
    (parameter_nudged, "untouched", r"changed the model: \['parameter 0.weight'\]"),
    (input_overwritten, "untouched", r"changed its inputs: \['x'\]"),
    (float32_maps, "maps", "torch.float32 maps for torch.float64 inputs"),
    (float32_differs, "maps", "float32 vs float64"),
])
def test_a_method_that_breaks_a_contract_is_caught(toys, toy, contract, error):
    name = f"_toy_{toy.__name__}"
    register_method(name, family="control")(toy)
    toys.append((METHODS, name))
    try:
        with pytest.raises(AssertionError, match=error):
            METHOD_CHECKS[contract](name, "cnn")
    finally:
        setup("cnn").x.copy_(setup("cnn").pristine["x"])


def test_a_well_behaved_method_keeps_every_contract(toys):
    register_method("_toy_well_behaved", family="control")(well_behaved)
    toys.append((METHODS, "_toy_well_behaved"))
    for check in METHOD_CHECKS.values():
        check("_toy_well_behaved", "cnn")
    assert draws("_toy_well_behaved", "cnn")


def share_of_batch(model, x, target, attributions):
    """|R| of the sample over |R| of the batch."""
    a = attributions.flatten(1).abs().sum(1)
    return scalar_rows(a / a.sum(), "share")


def chunk_count(model, x, target, attributions):
    return scalar_rows(torch.full((len(x),), float(memory.images_per_chunk(model, x, "gradient"))), "share")


def nan_share(model, x, target, attributions):
    return scalar_rows(torch.full((len(x),), float("nan")), "share")


def ranked_curve(model, x, target, attributions):
    """A curve whose points are declared higher-is-better (``share``: every measure here is ``share``)."""
    return curve_rows(torch.zeros(3, len(x)), [0.0, 0.5, 1.0], "share")


def twice(model, x, target, attributions):
    return pd.concat([scalar_rows(torch.ones(len(x)), "share"), scalar_rows(torch.zeros(len(x)), "share")])


def metric_hook_left(model, x, target, attributions):
    model.register_forward_pre_hook(lambda m, i: None)
    return scalar_rows(torch.ones(len(x)), "share")


def well_behaved_metric(model, x, target, attributions):
    """Share of |R| on the positive elements, one row per sample."""
    a = attributions.flatten(1)
    return scalar_rows(a.clamp(min=0).sum(1) / a.abs().sum(1).clamp_min(1e-12), "share")


METRIC_CHECKS = {"batch": check_metric_batch_independent, "budget": check_metric_budget_independent,
                 "untouched": check_metric_leaves_model_untouched, "rows": check_metric_rows}


@pytest.mark.parametrize("toy,contract,error", [
    (share_of_batch, "batch", "sample 0 alone vs in the batch"),
    (chunk_count, "budget", "a tiny memory budget vs the default"),
    (metric_hook_left, "untouched", r"changed the model: \[\"module ''\"\]"),
    (nan_share, "rows", r"non-finite \['share'\]"),
    (ranked_curve, "rows", r"curve points \(rows with a step\) of \['share'\]"),
    (twice, "rows", "one row per sample"),
])
def test_a_metric_that_breaks_a_contract_is_caught(toys, toy, contract, error):
    name = f"_toy_{toy.__name__}"
    register_metric(name, family="complexity", directions={"share": "higher"})(toy)
    toys.append((METRICS, name))
    with pytest.raises(AssertionError, match=error):
        METRIC_CHECKS[contract](name, "cnn")


def test_a_well_behaved_metric_keeps_every_contract(toys):
    register_metric("_toy_well_behaved_metric", family="complexity", directions={"share": "higher"})(
        well_behaved_metric)
    toys.append((METRICS, "_toy_well_behaved_metric"))
    for check in METRIC_CHECKS.values():
        check("_toy_well_behaved_metric", "cnn")
