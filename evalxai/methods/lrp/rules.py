"""LRP rules for linear layers (Linear, Conv1d/2d/3d), in the gradient-trick form.

A rule sees a layer as z = W a + b and maps the output relevance R to the input relevance
R_in = a * (rho(W)^T s) with s = R / stab(z_rho) (Bach et al. 2015; Montavon et al. 2019, "Layer-wise
relevance propagation: an overview"). ``forward`` computes the modified outputs once, alongside the plain
output; ``backward`` makes the vector-Jacobian products with ``op.vjp`` — no re-run of the layer, no
Python loop over samples. Semantics and defaults follow zennit's rules of the same names.

For non-negative inputs (every hidden layer of a ReLU net, pixel inputs) the sign-split rules take an exact
fast path: a^- = 0, so their negative-input passes vanish.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evalxai.core.baselines import DATA_RANGE


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), with sign(+0) = +1 (zennit's stabilizer; two kernels via copysign).

    Only z = -0.0 differs from zennit (it gets -eps): that happens when every contribution is a signed zero,
    so the relevance it redistributes is multiplied by zero contributions either way.
    """
    return torch.copysign(z.new_tensor(eps), z).add_(z)


def divide(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """r / stab(z); with eps = 0 a safe division that gives 0 where z = 0.

    One buffer, filled in place: these tensors are as large as a layer's output, and on the CPU a fresh
    allocation plus a pass over memory costs as much as the arithmetic. For eps = 0 the non-finite quotients
    (z = 0, or an overflow beyond the float range) are set to 0 (``nan_to_num``, cheaper than a mask).
    """
    if eps == 0:
        return torch.div(r, z).nan_to_num_(0.0, 0.0, 0.0)
    den = stabilize(z, eps)
    return torch.div(r, den, out=den) if den.dtype == r.dtype and den.shape == r.shape else r / den


class LinearOp:
    """A Linear or ConvNd layer as z = W a + b: its forward and its input vector-Jacobian product.

    ``conv``: the geometry (``stride``, ``padding``, ``dilation``, ``groups``) of a functional convolution
    (``F.conv2d(x, w, b, ...)`` with a weight that does not depend on the input, as timm's weight-standardised
    ``StdConv2d`` computes it); ``module`` then only names the layer type. ``nonneg_in``: the input is known to be
    non-negative (a ReLU's output, ``graph.nonnegative_nodes``); ``relu_out``: only ReLUs read the output, so the
    relevance of an output z0 <= 0 is zero (the ReLU's gradient); ``relu_pass_out``: only ReLUs that pass relevance
    unchanged read it (``plan.relu_passes``), and they set ``relu_output`` = relu(z0) in the forward."""

    def __init__(self, module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, conv: dict | None = None,
                 nonneg_in: bool = False, relu_out: bool = False, relu_pass_out: bool = False):
        self.module, self.weight, self.bias = module, weight, bias
        self.nonneg_in, self.relu_out, self.relu_pass_out = nonneg_in, relu_out, relu_pass_out
        self.relu_output = None  # relu(z0), handed over by the ReLUs that read the layer (relu_pass_out)
        self.is_conv = conv is not None or isinstance(module, nn.modules.conv._ConvNd)
        if not self.is_conv:
            return
        if conv is None:
            if module.transposed:
                raise NotImplementedError(f"transposed convolution {type(module).__name__} has no LRP rule yet")
            if module.padding_mode != "zeros":
                raise NotImplementedError(
                    f"{type(module).__name__} with padding_mode='{module.padding_mode}' has no LRP rule: use 'zeros'")
            conv = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation,
                    "groups": module.groups}
        self.dim = weight.dim() - 2
        self._conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[self.dim]
        self.stride = _ntuple(conv.get("stride", 1), self.dim)
        self.dilation = _ntuple(conv.get("dilation", 1), self.dim)
        self.padding = _conv_padding(conv.get("padding", 0), weight.shape[2:], self.dilation)
        self.groups = conv.get("groups", 1)

    def fwd(self, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if not self.is_conv:
            return F.linear(a, w, b)
        return self._conv(a, w, b, self.stride, self.padding, self.dilation, self.groups)

    @property
    def channel_dim(self) -> int | None:
        """The output dimension along which weights may be stacked into one pass (a dense layer's features, a
        convolution's channels when groups = 1), or None."""
        return -1 if not self.is_conv else 1 if self.groups == 1 else None

    def sign_stack(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([W+; W-], [b+; b-] or None): the weights and biases split by sign, stacked along the output features /
        channels (written in place: one pass over the weights each)."""
        out = []
        for t in (self.weight, self.bias):
            if t is None:
                out.append(None)
                continue
            st = t.new_empty((2 * t.shape[0], *t.shape[1:]))
            torch.clamp(t, min=0, out=st[:t.shape[0]])
            torch.clamp(t, max=0, out=st[t.shape[0]:])
            out.append(st)
        return out[0], out[1]

    def vjp(self, s: torch.Tensor, w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(d z / d a)^T s for the layer with weights ``w`` (bias irrelevant), shaped like ``a``."""
        return self.vjp_sum(((s, w),), a)

    def vjp_sum(self, pairs, a: torch.Tensor) -> torch.Tensor:
        """sum_i (d z / d a)^T s_i for weights w_i, from ``pairs`` ((s_i, w_i), ...), accumulated in one buffer."""
        if not self.is_conv:
            (s, w), *rest = pairs
            out = s @ w
            for s, w in rest:
                if out.dim() == 2:
                    out.addmm_(s, w)
                else:
                    out.add_(s @ w)
            return out
        s, w = pairs[0]
        if self.dim == 2 and self.groups == 1 and w.shape[1] == 1 and s[:1].numel() * w[0].numel() <= _TAPS_MAX:
            return conv2d_input_vjp_by_taps(pairs, a.shape, self.stride, self.padding, self.dilation)
        out = None
        for s, w in pairs:
            c = torch.ops.aten.convolution_backward(
                s, a, w, None, list(self.stride), list(self.padding), list(self.dilation), False, [0] * self.dim,
                self.groups, [True, False, False])[0]
            out = c if out is None else out.add_(c)
        return out


def _ntuple(v, n: int) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _conv_padding(padding, kernel, dilation) -> tuple:
    """Integer padding per spatial dimension; ``"valid"`` is 0, ``"same"`` the symmetric padding d (k - 1) / 2
    (refused where it is odd: torch pads one side more there, which the input gradient kernel cannot express)."""
    if padding == "valid":
        return (0,) * len(kernel)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        if any(t % 2 for t in total):
            raise NotImplementedError("a convolution with padding='same' and an even kernel pads asymmetrically: "
                                      "it has no LRP rule; pad explicitly (F.pad) and use padding=0")
        return tuple(t // 2 for t in total)
    return _ntuple(padding, len(kernel))


_TAPS_MAX = 1 << 22  # per-sample elements of the tap buffer (output size x kernel taps): 16 MB in float32


def conv2d_input_vjp_by_taps(pairs, in_shape, stride, padding, dilation) -> torch.Tensor:
    """sum_i (d z / d a)^T s_i of 2-d convolutions (groups = 1) with weights w_i, by taps, shaped ``in_shape``.

    One matmul over the output channels gives every kernel tap's contribution at every output position (further
    pairs accumulate into the same buffer), then kh * kw strided adds put them back in place (col2im). For
    single-channel inputs (MNIST) this is 2-3x faster on the CPU than the library's input-gradient kernel, which
    parallelises over input channels; with more channels the library wins.
    """
    cols = None
    for s, w in pairs:
        n, cout, ho, wo = s.shape
        _, cin, kh, kw = w.shape
        wt = w.permute(1, 2, 3, 0).reshape(cin * kh * kw, cout)
        if cols is None:
            cols = torch.matmul(wt, s.reshape(n, cout, ho * wo))
        else:
            cols.baddbmm_(wt.expand(n, *wt.shape), s.reshape(n, cout, ho * wo))
    cols = cols.view(n, cin, kh, kw, ho, wo)
    hi, wi = in_shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    out = cols.new_zeros(n, cin, max((ho - 1) * sh + (kh - 1) * dh + 1, ph + hi),
                         max((wo - 1) * sw + (kw - 1) * dw + 1, pw + wi))
    for i in range(kh):
        for j in range(kw):
            out[:, :, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw] += cols[:, :, i, j]
    return out[:, :, ph:ph + hi, pw:pw + wi]


def _pos(t):
    return None if t is None else t.clamp(min=0)


def _neg(t):
    return None if t is None else t.clamp(max=0)


def _nonneg(op: LinearOp, a: torch.Tensor) -> bool:
    """Whether the layer input is non-negative: known from the graph, else checked."""
    return op.nonneg_in or bool(a.min() >= 0)


@dataclass
class Rule:
    """Base class: ``forward`` returns a state computed with the plain output z0; ``backward`` gives R_in."""

    name = "rule"
    # R_in = a * (...): zero wherever the input is zero (and the product is finite). Where every reader of a ReLU's
    # output has this property, the ReLU passes relevance unchanged (``plan.relu_passes``); False is always safe.
    scales_by_input = False

    def forward(self, op: LinearOp, a, z0):
        return None

    def output_and_state(self, op: LinearOp, a):
        """(the layer's output z0 = W a + b, the state for ``backward``); a rule that can make z0 in its own pass
        overrides it and skips the plain forward."""
        z0 = op.fwd(a, op.weight, op.bias)
        return z0, self.forward(op, a, z0)

    def backward(self, op: LinearOp, a, state, r):
        raise NotImplementedError

    def params(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Epsilon(Rule):
    """LRP-epsilon (Bach 2015): R_j = a_j sum_k w_jk R_k / (z_k + eps sign z_k); eps = 0 is LRP-0."""

    epsilon: float = 1e-6
    name = "epsilon"
    scales_by_input = True

    def __post_init__(self):
        if not self.epsilon >= 0:
            raise ValueError(f"epsilon={self.epsilon} is negative: LRP-epsilon needs epsilon >= 0")

    def backward(self, op, a, z0, r):
        if z0 is None:  # behind ReLUs that hand over y = relu(z0) (``op.relu_pass_out``): y = z0 wherever relevance
            # arrives (z0 > 0), where stab(z0) = y + eps; elsewhere R = 0 and y + eps > 0 keeps the quotient 0. y >= 0:
            # one pass less than divide's, and z0 is not kept
            return op.vjp(_divide_signed(r, op.relu_output, self.epsilon, 1.0), op.weight, a).mul_(a)
        return op.vjp(divide(r, z0, self.epsilon), op.weight, a).mul_(a)

    def forward(self, op, a, z0):
        return None if op.relu_pass_out else z0


@dataclass
class Zero(Epsilon):
    """LRP-0 (Bach 2015): the epsilon rule with epsilon = 0 (division by zero gives 0)."""

    epsilon: float = 0.0
    name = "zero"


@dataclass
class AlphaBeta(Rule):
    """LRP-alpha-beta (Bach 2015): alpha * positive minus beta * negative contributions, alpha - beta = 1.

    Contributions are split by the sign of a_j w_jk (inputs and weights), as zennit does:
    z+ = a+ W+ + a- W- + b+, z- = a+ W- + a- W+ + b-.
    """

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    name = "alphabeta"
    scales_by_input = True

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ValueError(f"alpha={self.alpha}, beta={self.beta}: LRP-alpha-beta needs alpha - beta = 1 "
                             "and alpha, beta >= 0 (for example alpha=2, beta=1)")

    def output_and_state(self, op, a):
        """On a non-negative input, with weights that stack (``op.channel_dim``): ``_stacked``, two convolutions'
        worth of forward instead of three (the plain one and the stack [W+; W-])."""
        if self.beta != 0 and op.channel_dim is not None and _nonneg(op, a):
            return self._stacked(op, a)
        return super().output_and_state(op, a)

    def _stacked(self, op, a):
        """(z0, ("stacked", D, [W+; W-])) with D = [stab(z+); stab(z-)] (N, 2C, ...), from one pass over stacked
        weights.
        a >= 0 makes z+ >= 0 and z- <= 0: stab(z+) = z+ + eps, stab(z-) = z- - eps (where z- = +0 zennit's sign is
        +eps: every contribution a_j w_jk is then 0, so the quotient there meets only zero products).

        - Behind a ReLU (``op.relu_out``): [z0; z- - eps] from [W; W-] with biases [b; b- - eps], so z0 is the plain
          forward's, whose rounding the ReLU's gate sees (z0 = z+ + z- there moves float32 maps by 4e-5 on
          tests/test_architectures.py's random ResNets, 2.5x the plain forward's error); stab(z+) = z0 - stab(z-),
          clamped at eps. Where relevance arrives (z0 > 0) z+ > |z-|, so the difference loses nothing; at z0 <= 0
          no relevance arrives and the clamp keeps the quotient finite.
        - Otherwise [z+; z-] from [W+; W-] (z- as z0 - z+ would carry z0's rounding error into a z- that may be tiny),
          z0 = z+ + z-: measured, the same float32 error as the plain forward's.
        """
        w, b, d, eps = op.weight, op.bias, op.channel_dim, self.stabilizer
        c = w.shape[0]
        if not op.relu_out:
            stack, bias = op.sign_stack()
            z = op.fwd(a, stack, bias)
            zp, zn = z.chunk(2, d)
            z0 = zp + zn
            zp.add_(eps)
            zn.sub_(eps)
            return z0, ("stacked", z, stack)
        stack = w.new_empty((2 * c, *w.shape[1:]))
        stack[:c] = w
        torch.clamp(w, max=0, out=stack[c:])
        b = w.new_zeros(c) if b is None else b
        z = op.fwd(a, stack, torch.cat([b, b.clamp(max=0) - eps]))
        zp, zn = z.chunk(2, d)
        z0 = zp.clone(memory_format=torch.contiguous_format)  # a copy also where the half is contiguous (N = 1)
        zp.sub_(zn).clamp_(min=eps)  # stab(z+) in place of z0
        torch.clamp(w, min=0, out=stack[:c])  # [W+; W-] for the backward
        return z0, ("stacked", z, stack)

    def forward(self, op, a, z0):
        w, b = op.weight, op.bias
        if _nonneg(op, a):  # a- = 0: z+ = a W+ + b+, z- = a W- + b-, each by its own weights
            zp = op.fwd(a, _pos(w), _pos(b))
            return True, zp, None if self.beta == 0 else op.fwd(a, _neg(w), _neg(b))
        ap, an = a.clamp(min=0), a.clamp(max=0)
        zp = op.fwd(ap, _pos(w), _pos(b)) + op.fwd(an, _neg(w))
        zn = None if self.beta == 0 else op.fwd(ap, _neg(w), _neg(b)) + op.fwd(an, _pos(w))
        return False, zp, zn

    def backward(self, op, a, state, r):
        if state[0] == "stacked":
            return self._stacked_backward(op, a, state[1], state[2], r)
        fast, zp, zn = state
        w = op.weight
        sp = _divide_signed(r, zp, self.stabilizer, 1.0) if fast else divide(r, zp, self.stabilizer)
        if self.alpha != 1:
            sp.mul_(self.alpha)
        if self.beta == 0:
            return op.vjp(sp, _pos(w), a).mul_(a) if fast else (
                a.clamp(min=0) * op.vjp(sp, _pos(w), a) + a.clamp(max=0) * op.vjp(sp, _neg(w), a))
        sn = _divide_signed(r, zn, self.stabilizer, -1.0) if fast else divide(r, zn, self.stabilizer)
        if self.beta != 1:
            sn.mul_(self.beta)
        if fast:  # a (W+^T sp - W-^T sn), each product on its own sign: where z- = 0, sn = R / stabilizer is huge,
            # and a form like W+^T (sp + sn) - W^T sn would cancel it catastrophically in float32
            return op.vjp_sum(((sp, _pos(w)), (sn, -_neg(w))), a).mul_(a)
        return (a.clamp(min=0) * op.vjp_sum(((sp, _pos(w)), (sn, -_neg(w))), a)
                + a.clamp(max=0) * op.vjp_sum(((sp, _neg(w)), (sn, -_pos(w))), a))

    def _stacked_backward(self, op, a, den, ws, r):
        """a ([W+; W-]^T [alpha R / stab(z+); -beta R / stab(z-)]) from ``den`` = [stab(z+); stab(z-)] (``_stacked``):
        one input-gradient pass over the stacked weights, each product still on its own sign. Per half with scalar
        operands (1.5x faster on the CPU than one addcdiv broadcasting per channel)."""
        for dh, k in zip(den.chunk(2, op.channel_dim), (self.alpha, -self.beta)):
            torch.div(r, dh, out=dh)
            if self.stabilizer == 0:
                dh.nan_to_num_(0.0, 0.0, 0.0)
            if k != 1:
                dh.mul_(k)
        return op.vjp(den, ws, a).mul_(a)


@dataclass
class ZPlus(AlphaBeta):
    """z+ (Montavon 2017, deep Taylor): alpha = 1, beta = 0 with inputs split by sign."""

    alpha: float = 1.0
    beta: float = 0.0
    name = "zplus"


@dataclass
class Gamma(Rule):
    """Generalised LRP-gamma (Montavon 2019; Andeol 2021; zennit's ``Gamma``), sign-aware.

    Positive outputs use z = a+ (W + g W+) + a- (W + g W-) + b + g b+; negative outputs
    z = a+ (W + g W-) + a- (W + g W+) + b + g b-; each output is normalised by its own branch.
    """

    gamma: float = 0.25
    stabilizer: float = 1e-6
    name = "gamma"
    scales_by_input = True

    def __post_init__(self):
        if not self.gamma >= 0:
            raise ValueError(f"gamma={self.gamma} is negative: LRP-gamma needs gamma >= 0")

    def forward(self, op, a, z0):
        g, w, b = self.gamma, op.weight, op.bias
        if _nonneg(op, a):  # one pass: stab(zp) = a (W + g W+) + b + g b+ + eps where z0 > 0 (zp >= z0 there)
            w_up = torch.add(w, _pos(w), alpha=g)
            bias = w.new_full((w.shape[0],), self.stabilizer) if b is None else torch.add(b, _pos(b), alpha=g).add_(
                self.stabilizer)
            return True, None if op.relu_out else z0, op.fwd(a, w_up, bias), w_up  # z0: for negative outputs
        ap, an = a.clamp(min=0), a.clamp(max=0)
        wp, wn = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        bp = None if b is None else b + g * b.clamp(min=0)
        bn = None if b is None else b + g * b.clamp(max=0)
        zp = op.fwd(ap, wp, bp) + op.fwd(an, wn)
        zn = op.fwd(ap, wn, bn) + op.fwd(an, wp)
        return False, zp, zn, z0

    def backward(self, op, a, state, r):
        g, w = self.gamma, op.weight
        if state[0]:  # a >= 0: R_in = a ((W + g W+)^T sp + (W + g W-)^T sn)
            _, z0, zs, w_up = state
            eps = self.stabilizer
            if op.relu_out:  # R = 0 wherever z0 <= 0, where zs may be <= 0: clamped, the quotient is 0 there
                s = torch.div(r, zs.clamp_(min=eps), out=zs)
                return op.vjp(s if eps else s.nan_to_num_(0.0, 0.0, 0.0), w_up, a).mul_(a)  # eps = 0: 0 / 0
            sp = _where_positive(torch.div(r, zs), z0)
            # at z0 < 0: zn = z0 + g (z0 - P) < 0, stab(zn) = zn - eps = (2 + g) z0 - zs; |zn| >= |z0|, g P, so the
            # difference does not cancel. sn is formed negated, -R / stab(zn), and meets -(W + g W-)
            neg = z0.neg()
            den = torch.add(zs, z0, alpha=-(2 + g))
            sn = _where_positive(torch.div(r, den, out=den), neg)
            if not bool(sn.any()):  # no relevance at negative outputs (a residual sum negative there too)
                return op.vjp(sp, w_up, a).mul_(a)
            return op.vjp_sum(((sp, w_up), (sn, torch.add(w, _neg(w), alpha=g).neg_())), a).mul_(a)
        _, zp, zn, z0 = state
        sp = _where_positive(divide(r, zp, self.stabilizer), z0)
        sn = _where_positive(divide(r, zn, self.stabilizer), -z0)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        wp, wn = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        return ap * op.vjp_sum(((sp, wp), (sn, wn)), a) + an * op.vjp_sum(((sp, wn), (sn, wp)), a)


def _divide_signed(r: torch.Tensor, z: torch.Tensor, eps: float, sign: float) -> torch.Tensor:
    """r / stab(z) for a z of known sign (z+ >= 0, z- <= 0 on a non-negative input): z + sign * eps, one pass less
    than ``divide``. At z = 0 the sign may differ from zennit's (+eps): every contribution a_j w_jk there is 0, so
    the quotient meets only zero products."""
    if eps == 0:
        return divide(r, z, eps)
    den = torch.add(z, sign * eps)
    return torch.div(r, den, out=den) if den.shape == r.shape else r / den


def _where_positive(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """s where z > 0, else 0 (a select, so non-finite s at z <= 0 vanish); the ReLU-backward kernel is ~10x faster
    on the CPU than ``torch.where`` with a boolean mask."""
    return torch.ops.aten.threshold_backward(s, z, 0)


def _bound(v, like: torch.Tensor) -> torch.Tensor:
    """Box bounds shaped like one input of the layer: a float, a tensor broadcastable to one input, or image bounds
    ((C, 1, 1) per channel, or (C, H, W)) met by the flattened image (N, C*H*W) of a dense first layer."""
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if like.dim() == 2 and t.dim() > 2:  # nn.Flatten of an (N, C, H, W) image: channel-major features
        if like.shape[1] % t.numel():
            raise ValueError(f"box bounds shaped {tuple(t.shape)} do not match the flattened input of {like.shape[1]} "
                             "features of the first dense layer: pass low/high per channel (C, 1, 1) or per pixel")
        t = t.reshape(-1).repeat_interleave(like.shape[1] // t.numel()).unsqueeze(0)
    if t.dim() == like.dim() - 1:  # one input without its batch dimension
        t = t.unsqueeze(0)
    return t.expand(1, *like.shape[1:])


def _check_inside(a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Raise unless every input lies in [lo, hi] (up to a rounding slack of 1e-5 of the box's width)."""
    slack = 1e-5 * (hi - lo).abs().clamp(min=1e-12)
    below, above = (a < lo - slack).any(), (a > hi + slack).any()
    if bool(below) or bool(above):
        lo_s = f"{float(lo.min()):.4g}" if lo.numel() == 1 or bool((lo == lo.flatten()[0]).all()) else "per-feature"
        hi_s = f"{float(hi.max()):.4g}" if hi.numel() == 1 or bool((hi == hi.flatten()[0]).all()) else "per-feature"
        raise ValueError(
            f"the box (zB) rule's bounds low={lo_s}, high={hi_s} do not contain the inputs (they range over "
            f"[{float(a.min()):.4g}, {float(a.max()):.4g}]): pass low= and high= as the smallest and largest value an "
            "input can take — for normalised images the per-channel tensors (0 - mean) / std and (1 - mean) / std, "
            "shaped (C, 1, 1)")


@dataclass
class ZBox(Rule):
    """zB / box rule (Montavon 2017) for inputs bounded in [low, high]: z = W a - W+ l - W- h.

    ``low`` / ``high`` are floats or tensors broadcastable to one input; the bias cancels (as in zennit).
    """

    low: float | torch.Tensor = DATA_RANGE[0]
    high: float | torch.Tensor = DATA_RANGE[1]
    stabilizer: float = 1e-6
    name = "box"

    def __post_init__(self):
        if bool((torch.as_tensor(self.low) > torch.as_tensor(self.high)).any()):
            raise ValueError(f"low={self.low} exceeds high={self.high}: the box rule needs low <= high")

    def forward(self, op, a, z0):
        w = op.weight
        lo, hi = _bound(self.low, a), _bound(self.high, a)
        _check_inside(a, lo, hi)
        zb = op.fwd(lo, _pos(w)) + op.fwd(hi, _neg(w))  # batch-independent: computed once, broadcast
        z = z0 - zb if op.bias is None else z0 - op.bias.view(-1, *[1] * (z0.dim() - 2)) - zb
        return lo, hi, z

    def backward(self, op, a, state, r):
        lo, hi, z = state
        s = divide(r, z, self.stabilizer)
        c0, cp = op.vjp(s, op.weight, a), op.vjp(s, _pos(op.weight), a)
        return (a - hi) * c0 + (hi - lo) * cp  # a c0 - l c+ - h (c0 - c+)


@dataclass
class Flat(Rule):
    """Flat rule (Lapuschkin 2019): all weights 1, no bias; relevance spread uniformly over the receptive field."""

    stabilizer: float = 1e-6
    name = "flat"

    def _weights(self, op):
        return torch.ones_like(op.weight)

    def forward(self, op, a, z0):
        w = self._weights(op)
        return w, op.fwd(torch.ones_like(a[:1]), w)

    def backward(self, op, a, state, r):
        w, z = state
        return op.vjp(divide(r, z, self.stabilizer), w, a)


@dataclass
class WSquare(Flat):
    """w^2 rule (Montavon 2017): relevance split by squared weights, input-independent (zennit keeps b^2)."""

    name = "wsquare"

    def _weights(self, op):
        return op.weight ** 2

    def forward(self, op, a, z0):
        w = self._weights(op)
        z = op.fwd(torch.ones_like(a[:1]), w, None if op.bias is None else op.bias ** 2)
        return w, z


@dataclass
class Pass(Rule):
    """Pass: the output relevance goes to the input unchanged (same shape only)."""

    name = "pass"

    def backward(self, op, a, state, r):
        if r.shape != a.shape:
            raise ValueError("the pass rule needs a layer whose input and output shapes are equal")
        return r


RULES: dict[str, type[Rule]] = {
    "zero": Zero, "epsilon": Epsilon, "gamma": Gamma, "alphabeta": AlphaBeta, "zplus": ZPlus,
    "box": ZBox, "zb": ZBox, "flat": Flat, "wsquare": WSquare, "pass": Pass,
}
RULE_PARAMS = {
    "zero": (), "epsilon": ("epsilon",), "gamma": ("gamma", "stabilizer"),
    "alphabeta": ("alpha", "beta", "stabilizer"), "zplus": ("stabilizer",), "box": ("low", "high", "stabilizer"),
    "zb": ("low", "high", "stabilizer"), "flat": ("stabilizer",), "wsquare": ("stabilizer",), "pass": (),
}


def make_rule(spec, shared: dict | None = None) -> Rule:
    """A rule from a name or ``{"rule": name, **params}``; missing params come from ``shared``."""
    shared = dict(shared or {})
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, str):
        spec = {"rule": spec}
    spec = dict(spec)
    name = spec.pop("rule", None)
    if name not in RULES:
        raise KeyError(f"unknown LRP rule '{name}': choose one of {sorted(RULES)}")
    kwargs = {k: shared[k] for k in RULE_PARAMS[name] if k in shared and shared[k] is not None}
    unknown = set(spec) - set(RULE_PARAMS[name])
    if unknown:
        raise KeyError(f"rule '{name}' has no parameter {sorted(unknown)}: it takes {list(RULE_PARAMS[name])}")
    kwargs.update(spec)
    return RULES[name](**kwargs)
