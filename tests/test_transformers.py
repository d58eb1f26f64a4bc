"""LRP through attention (AttnLRP, CP-LRP), attention rollout and vit_tiny: explicit float64 propagation, exact
conservation, the softmax rule's closed form, equal maps for equal attention written three ways, batch-size
independence, float32 vs float64."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evalxai
from evalxai.methods.lrp import LRPError
from evalxai.models.vit import ViT
from evalxai.models.zoo import build_model
from tests.conftest import no_hooks

SHAPE = (1, 8, 8)  # patch 4: 4 patch tokens (+ class token)


def vit(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    arch = {"patch": 4, "dim": 8, "depth": 1, "heads": 2, "mlp": 16, **kw}
    model = ViT(SHAPE, 3, **arch).to(dtype).eval()
    with torch.no_grad():  # non-trivial biases, positional embedding, class token and LayerNorm affine parts
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name in ("cls_token", "pos_embed"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def images(n=4, seed=1, dtype=torch.float64):
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)).to(dtype)


def explain(model, x, t, method, **kw):
    return evalxai.explain(model, x, t, method=method, **kw)


# ---------------------------------------------------------------- explicit propagation, written from the formulas

def lin(a, w, z, r):
    """epsilon = 0 rule of z = a W^T + b: R_a = a * ((R / z) W)."""
    return a * ((r / z) @ w)


def layer_norm(a, m):
    """(LayerNorm output, its epsilon = 0 rule): the standard deviation held constant, the rest linear."""
    mu, sd = a.mean(-1, keepdim=True), (a.var(-1, unbiased=False, keepdim=True) + m.eps).sqrt()
    y = (a - mu) / sd * m.weight + m.bias

    def rule(r):
        g = (r / y) * m.weight / sd
        return a * (g - g.mean(-1, keepdim=True))  # J^T = (I - 11^T / D) diag(w / sd)
    return y, rule


def cp_lrp_by_hand(model, x, t):
    """CP-LRP, epsilon = 0, of a one-block ViT (class token, positional embedding, biases everywhere)."""
    p, d = model.patch, model.head.in_features
    blk, mha = model.blocks[0], model.blocks[0].attn
    h = mha.num_heads
    n = len(x)
    patches = F.unfold(x, p, stride=p).transpose(1, 2)                    # (N, 4, 16)
    wpe = model.patch_embed.weight.reshape(d, -1)
    e = patches @ wpe.T + model.patch_embed.bias
    tok = torch.cat([model.cls_token.expand(n, -1, -1), e], 1)
    z0 = tok + model.pos_embed
    h1, ln1 = layer_norm(z0, blk.norm1)
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    heads = [lambda u: u.reshape(n, 5, h, d // h).transpose(1, 2)][0]
    q, k, v = heads(h1 @ wq.T + bq), heads(h1 @ wk.T + bk), h1 @ wv.T + bv
    att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), -1)
    o = att @ heads(v)
    om = o.transpose(1, 2).reshape(n, 5, d)
    a = om @ mha.out_proj.weight.T + mha.out_proj.bias
    z1 = z0 + a
    h2, ln2 = layer_norm(z1, blk.norm2)
    fc1, fc2 = blk.mlp[0], blk.mlp[3]
    m1 = h2 @ fc1.weight.T + fc1.bias
    g = F.gelu(m1)
    m2 = g @ fc2.weight.T + fc2.bias
    z2 = z1 + m2
    hn, lnf = layer_norm(z2, model.norm)
    y = hn[:, 0] @ model.head.weight.T + model.head.bias
    r_y = torch.zeros_like(y)
    r_y[range(n), t] = y[range(n), t]
    r_hn = torch.zeros_like(hn)
    r_hn[:, 0] = lin(hn[:, 0], model.head.weight, y, r_y)
    r_z2 = lnf(r_hn)
    r_m2 = m2 * r_z2 / z2                                                  # residual: proportional split
    r_h2 = lin(h2, fc1.weight, m1, lin(g, fc2.weight, m2, r_m2))            # GELU: identity rule
    r_z1 = z1 * r_z2 / z2 + ln2(r_h2)
    r_a = a * r_z1 / z1
    r_o = lin(om, mha.out_proj.weight, a, r_a).reshape(n, 5, h, d // h).transpose(1, 2)
    r_v = heads(v) * (att.transpose(-2, -1) @ (r_o / o))                   # CP-LRP: attention weights constant
    r_h1 = lin(h1, wv, v, r_v.transpose(1, 2).reshape(n, 5, d))
    r_z0 = z0 * r_z1 / z1 + ln1(r_h1)
    r_e = (tok * r_z0 / z0)[:, 1:]                                         # positional embedding absorbs its share
    r_patches = lin(patches, wpe, e, r_e)
    return F.fold(r_patches.transpose(1, 2), SHAPE[1:], p, stride=p)


def test_cp_lrp_epsilon_0_equals_explicit_propagation():
    model, x = vit(), images()
    t = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        expected = cp_lrp_by_hand(model, x, t)
    torch.testing.assert_close(explain(model, x, t, "cp_lrp", epsilon=0.0), expected, rtol=1e-10, atol=1e-13)


def test_cp_lrp_conserves_on_a_bias_free_vit_and_attnlrp_does_not():
    model = vit(bias=False, pos_embed=False, pool="mean", depth=2)
    x, t = images(), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        f = model(x)[range(4), t]
    r = explain(model, x, t, "cp_lrp", epsilon=0.0)
    torch.testing.assert_close(r.sum((1, 2, 3)), f, rtol=1e-10, atol=1e-12)
    # AttnLRP's softmax rule is a linearisation whose bias term absorbs relevance: not conservative in general
    ra = explain(model, x, t, "attnlrp", epsilon=0.0)
    assert (ra.sum((1, 2, 3)) - f).abs().max() > 1e-6


class LoneAttention(nn.Module):
    """Input (N, 1, T, T + D): scores = x[..., :T], values = x[..., T:]; logits = linear(softmax(scores) @ values)."""

    def __init__(self, t=3, d=2):
        super().__init__()
        self.t = t
        self.fc = nn.Linear(t * d, 2, bias=False)

    def forward(self, x):
        a = torch.softmax(x[:, 0, :, :self.t], dim=-1)
        return self.fc(torch.matmul(a, x[:, 0, :, self.t:]).flatten(1))


def test_attnlrp_softmax_rule_equals_its_closed_form():
    torch.manual_seed(3)
    model = LoneAttention().double().eval()
    x = torch.randn(2, 1, 3, 5, dtype=torch.float64)
    t = torch.tensor([0, 1])
    r = explain(model, x, t, "attnlrp", epsilon=0.0)
    with torch.no_grad():
        s, v = x[:, 0, :, :3], x[:, 0, :, 3:]
        a = torch.softmax(s, -1)
        o = a @ v
        y = o.flatten(1) @ model.fc.weight.T
        r_y = torch.zeros_like(y)
        r_y[range(2), t] = y[range(2), t]
        r_o = lin(o.flatten(1), model.fc.weight, y, r_y).view_as(o)
        r_a = 0.5 * a * ((r_o / o) @ v.transpose(-2, -1))                 # uniform rule: half to the weights
        r_v = 0.5 * v * (a.transpose(-2, -1) @ (r_o / o))                  # and half to the values
        # the softmax's first-order Taylor expansion at s (bias absorbing): R_i = sum_j s_i J_ji R_j / a_j
        r_s = torch.zeros_like(s)
        for n in range(2):
            for row in range(3):
                jac = torch.autograd.functional.jacobian(lambda u: torch.softmax(u, -1), s[n, row])  # J[j, i]
                r_s[n, row] = s[n, row] * (jac.T @ (r_a[n, row] / a[n, row]))
    torch.testing.assert_close(r[:, 0, :, :3], r_s, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(r[:, 0, :, 3:], r_v, rtol=1e-10, atol=1e-13)
    # the closed form R_in = s (R - a sum R) is the same thing
    torch.testing.assert_close(r_s, s * (r_a - a * r_a.sum(-1, keepdim=True)), rtol=1e-10, atol=1e-13)


class EinsumAttention(nn.Module):
    """The hand-written attention with einsum and `*` scaling (parameter names as nn.MultiheadAttention)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).reshape(n, t, 3, self.heads, -1).unbind(2)
        a = (torch.einsum("nqhc,nkhc->nhqk", q * (d // self.heads) ** -0.5, k)).softmax(-1)
        return self.out_proj(torch.einsum("nhqk,nkhc->nqhc", a, v).reshape(n, t, d))


class SeqFirst(nn.Module):
    """nn.MultiheadAttention with batch_first=False inside a ViT block (tokens transposed around it)."""

    def __init__(self, mha):
        super().__init__()
        self.mha = nn.MultiheadAttention(mha.embed_dim, mha.num_heads, dtype=mha.in_proj_weight.dtype)
        self.mha.load_state_dict(mha.state_dict())

    def forward(self, x):
        y = x.transpose(0, 1)
        return self.mha(y, y, y, need_weights=False)[0].transpose(0, 1)


@pytest.mark.parametrize("method", ["attnlrp", "cp_lrp"])
def test_multihead_attention_equals_the_same_attention_written_by_hand(method):
    ref_model = vit(depth=2)
    x, t = images(), torch.tensor([2, 0, 1, 1])
    ref = explain(ref_model, x, t, method, epsilon=0.0)
    assert ref.abs().sum() > 0
    variants = {att: vit(depth=2, attention=att) for att in ("matmul", "sdpa")}
    for model in variants.values():
        model.load_state_dict(ref_model.state_dict())
    for kind, wrap in (("einsum", lambda m: EinsumAttention(8, 2)), ("seq_first", SeqFirst)):
        model = vit(depth=2)
        model.load_state_dict(ref_model.state_dict())
        for blk, ref_blk in zip(model.blocks, ref_model.blocks):
            new = wrap(ref_blk.attn).double()
            if kind == "einsum":
                new.load_state_dict(ref_blk.attn.state_dict())
            blk.attn, blk.module_attention = new, False
        variants[kind] = model
    for kind, model in variants.items():
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref_model(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(explain(model, x, t, method, epsilon=0.0), ref, rtol=1e-9, atol=1e-12,
                                   msg=lambda m, kind=kind: f"{kind}: {m}")


@pytest.mark.parametrize("method", ["attnlrp", "cp_lrp", "attention_rollout"])
def test_batch_size_independence_and_float32_against_float64(method):
    m64, m32 = vit(depth=2), vit(depth=2, dtype=torch.float32)
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    x, t = images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    r = explain(m64, x, t, method)
    one = torch.cat([explain(m64, x[i:i + 1], t[i:i + 1], method) for i in range(6)])
    torch.testing.assert_close(one, r, rtol=1e-12, atol=1e-14)
    r32 = explain(m32, x.float(), t, method)
    rel = (r32.double() - r).abs().amax((1, 2, 3)) / r.abs().amax((1, 2, 3))
    assert rel.max() < 1e-4, rel


def test_rollout_of_uniform_attention_is_its_closed_form_and_model_is_untouched():
    model = vit(depth=3)
    with torch.no_grad():  # q = k = 0: every attention row is uniform over the 5 tokens
        for blk in model.blocks:
            blk.attn.in_proj_weight[:16] = 0
            blk.attn.in_proj_bias[:16] = 0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = images()
    r = explain(model, x, torch.zeros(4, dtype=torch.long), "attention_rollout")
    # (I/2 + U/2)^3 = I/8 + 7/8 U (U = 11^T / 5 is idempotent): 7/40 per patch, spread over its 16 pixels
    torch.testing.assert_close(r, torch.full_like(r, 7 / 40 / 16), rtol=1e-12, atol=1e-14)
    for method in ("attnlrp", "cp_lrp"):
        explain(model, x, torch.zeros(4, dtype=torch.long), method)
    assert no_hooks(model) and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


class GatedNorm(nn.Module):
    """RMSNorm and a gated product fc1(x) * fc2(x) (the uniform rule), bias-free."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5, bias=False), nn.Linear(6, 5, bias=False)
        self.norm, self.out = nn.RMSNorm(5), nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.out(self.norm(self.fc1(x) * self.fc2(x)))


def test_rmsnorm_and_gated_product_conserve_and_split_equally():
    torch.manual_seed(4)
    model = GatedNorm().double().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
    x, t = torch.randn(3, 6, dtype=torch.float64), torch.tensor([0, 1, 2])
    r = explain(model, x, t, "cp_lrp", epsilon=0.0)
    with torch.no_grad():
        f = model(x)[range(3), t]
        a1, a2 = model.fc1(x), model.fc2(x)
        g = a1 * a2
        y = model.norm(g)
        z = y @ model.out.weight.T
        r_z = torch.zeros_like(z)
        r_z[range(3), t] = z[range(3), t]
        r_g = lin(y, model.out.weight, z, r_z)          # RMSNorm without bias: relevance passes unchanged
        expected = lin(x, model.fc1.weight, a1, r_g / 2) + lin(x, model.fc2.weight, a2, r_g / 2)
    torch.testing.assert_close(r.sum(1), f, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r, expected, rtol=1e-10, atol=1e-12)


class SoftmaxInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.softmax(self.fc1(x), dim=1))


def test_softmax_outside_attention_is_an_error_and_output_softmax_still_passes():
    x, t = torch.rand(2, 4), torch.tensor([0, 1])
    with pytest.raises(LRPError, match="softmax .* neither the model's output nor attention"):
        explain(SoftmaxInside().eval(), x, t, "attnlrp")
    out_softmax = nn.Sequential(nn.Linear(4, 2), nn.Softmax(dim=1)).eval()
    with pytest.warns(UserWarning, match="passes relevance unchanged"):
        explain(out_softmax, x, t, "lrp_epsilon")


def test_vit_tiny_in_the_zoo_traces_and_explains():
    model = build_model("vit_tiny", (1, 28, 28), 10).eval()
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    for method in ("attnlrp", "cp_lrp", "attention_rollout", "lrp_epsilon"):
        r = explain(model, x, torch.tensor([3, 4]), method)
        assert r.shape == x.shape and torch.isfinite(r).all() and r.abs().sum() > 0


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder_layer_equals_the_block_written_out(norm_first):
    """nn.TransformerEncoder(Layer) (GELU, no dropout) against the same block written with the ViT's parts."""
    ref = vit(depth=2)
    model = vit(depth=2)
    model.load_state_dict(ref.state_dict())
    layers = []
    for blk in ref.blocks:
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True, dtype=torch.float64).eval()
        for mine, theirs in (("norm1", blk.norm1), ("self_attn", blk.attn), ("norm2", blk.norm2),
                             ("linear1", blk.mlp[0]), ("linear2", blk.mlp[3])):
            getattr(layer, mine).load_state_dict(theirs.state_dict())
        layers.append(layer)
    model.blocks = nn.TransformerEncoder(layers[0], 2, enable_nested_tensor=False).eval()
    for i, layer in enumerate(layers):
        model.blocks.layers[i] = layer
    x, t = images(), torch.tensor([1, 0, 2, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-12, atol=1e-12)
    for method in ("attnlrp", "cp_lrp"):
        torch.testing.assert_close(explain(model, x, t, method, epsilon=0.0), explain(ref, x, t, method, epsilon=0.0),
                                   rtol=1e-9, atol=1e-12)
    if not norm_first:  # post-norm layers (norm after the residual add) explain too
        for layer in model.blocks.layers:
            layer.norm_first = False
        r = explain(model, x, t, "cp_lrp", epsilon=0.0)
        assert r.shape == x.shape and torch.isfinite(r).all()
