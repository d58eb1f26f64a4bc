"""Wrong maps without an error (issue 26, items 1-4): shapes carrying relevance, learned attention queries, a traced
function that is not the model's, and padding under the box rule. Each test failed on the engine before the fix,
except the references that hold by construction (``plain``, CP-LRP with a learned query, the closed form)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evalxai
from evalxai.methods.lrp import LRPError


def explain(model, x, t, method, **kw):
    return evalxai.explain(model, x, t, method=method, **kw)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over samples of max |a - b| / max |b|."""
    return ((a - b).abs().flatten(1).amax(1) / b.abs().flatten(1).amax(1).clamp(min=1e-300)).max().item()


# --- 1. a constant sized by the batch is not an input --------------------------------------------------------------

SCALINGS = {
    "plain": lambda h, w, x: h * w,
    "expand_shape": lambda h, w, x: h * w.expand(x.shape[0], -1),
    "expand_size": lambda h, w, x: h * w.expand(x.size(0), -1),
    "repeat": lambda h, w, x: h * w.repeat(x.size(0), 1),
    "expand_as": lambda h, w, x: h * w.expand_as(h),
    "zeros_plus": lambda h, w, x: h * (x.new_zeros(x.size(0), 8) + w),
    "ones_like_times": lambda h, w, x: h * (torch.ones_like(h) * w),
}


class Scaled(nn.Module):
    """ReLU MLP whose hidden layer is multiplied by a learned per-unit scale, written in several ways."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.w = nn.Parameter(torch.randn(1, 8))

    def forward(self, x):
        return self.fc2(SCALINGS[self.how](torch.relu(self.fc1(x)), self.w, x))


def scaled(how):
    torch.manual_seed(0)
    return Scaled(how).double().eval()


@pytest.mark.parametrize("how", list(SCALINGS))
def test_a_constant_sized_by_the_batch_carries_no_relevance(how):
    model, x = scaled(how), torch.randn(5, 6, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 0, 1])
    plain = scaled("plain")
    gxi = explain(model, x, t, "gradient_x_input")
    assert rel_err(explain(model, x, t, "lrp_0"), gxi) < 1e-10  # lrp_0 = gradient x input on a ReLU net
    for method, kw in (("lrp_epsilon", {}), ("attnlrp", {}), ("attnlrp", {"epsilon": 0.0})):
        assert rel_err(explain(model, x, t, method, **kw), explain(plain, x, t, method, **kw)) < 1e-12, (method, how)


# --- 2. attention with a learned query -----------------------------------------------------------------------------

class QueryPool(nn.Module):
    """Tokens (N, T, D) embedded, pooled by one learned query's attention, classified: attention pooling as in
    class-attention / Perceiver / DETR heads. ``how``: nn.MultiheadAttention, F.scaled_dot_product_attention, by hand
    with the query expanded to the batch, or by hand with the query broadcast (no graph edge from x: the reference)."""

    def __init__(self, how: str, d=6, classes=3):
        super().__init__()
        self.how = how
        self.embed = nn.Linear(d, d)
        self.q0 = nn.Parameter(torch.randn(1, 1, d))
        self.mha = nn.MultiheadAttention(d, 1, batch_first=True, bias=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = torch.relu(self.embed(x))
        if self.how == "mha":
            o = self.mha(self.q0.expand(x.shape[0], -1, -1), h, h, need_weights=False)[0]
            return self.head(o[:, 0])
        w = self.mha.in_proj_weight
        d = w.shape[1]
        q = F.linear(self.q0 if self.how == "broadcast" else self.q0.expand(x.size(0), -1, -1), w[:d])
        k, v = F.linear(h, w[d:2 * d]), F.linear(h, w[2 * d:])
        if self.how == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * d ** -0.5, dim=-1)
            o = torch.matmul(a, v)
        return self.head(self.mha.out_proj(o)[:, 0])


@pytest.mark.parametrize("method", ["attnlrp", "cp_lrp"])
def test_attention_with_a_learned_query_splits_nothing_into_the_query(method):
    torch.manual_seed(1)
    ref_model = QueryPool("broadcast").double().eval()
    x, t = torch.randn(4, 5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    ref = explain(ref_model, x, t, method, epsilon=0.0)
    for how in ("expand", "sdpa", "mha"):
        model = QueryPool(how).double().eval()
        model.load_state_dict(ref_model.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref_model(x), rtol=1e-12, atol=1e-12)
        assert rel_err(explain(model, x, t, method, epsilon=0.0), ref) < 1e-10, how


def test_attention_query_constant_keys_get_the_epsilon_rule_in_closed_form():
    """The reference itself: with q constant, q k^T is linear in k (epsilon rule, all of R to k) and A v splits
    half/half (AttnLRP's uniform rule); the softmax takes R_in = s (R - A sum R)."""
    torch.manual_seed(2)
    model = QueryPool("broadcast").double().eval()
    x, t = torch.randn(3, 5, 6, dtype=torch.float64), torch.tensor([2, 0, 1])
    got = explain(model, x, t, "attnlrp", epsilon=0.0)
    w, d = model.mha.in_proj_weight.detach(), 6
    with torch.no_grad():
        e = x @ model.embed.weight.T + model.embed.bias
        h = e.relu()
        q, k, v = model.q0 @ w[:d].T, h @ w[d:2 * d].T, h @ w[2 * d:].T
        s = (q @ k.transpose(-2, -1)) * d ** -0.5
        a = s.softmax(-1)
        o = a @ v
        p = o @ model.mha.out_proj.weight.T  # bias=False
        y = p[:, 0] @ model.head.weight.T + model.head.bias
        r_y = torch.zeros_like(y)
        r_y[range(3), t] = y[range(3), t]
        r_p0 = p[:, 0] * ((r_y / y) @ model.head.weight)
        r_p = torch.zeros_like(p)
        r_p[:, 0] = r_p0
        r_o = o * ((r_p / p) @ model.mha.out_proj.weight)
        r_a = 0.5 * a * ((r_o / o) @ v.transpose(-2, -1))
        r_v = 0.5 * v * (a.transpose(-2, -1) @ (r_o / o))
        r_s = s * (r_a - a * r_a.sum(-1, keepdim=True))
        r_k = k * ((r_s / s).transpose(-2, -1) @ (q * d ** -0.5))
        r_h = h * ((r_k / k) @ w[d:2 * d] + (r_v / v) @ w[2 * d:])
        r_x = x * ((r_h / e * (e > 0)) @ model.embed.weight)
    torch.testing.assert_close(got, r_x, rtol=1e-9, atol=1e-12)


# --- 3. the traced function must be the model's function -----------------------------------------------------------

class GradDependent(nn.Module):
    """A forward whose traced graph differs from what it computes without gradients."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) + (1.0 if torch.is_grad_enabled() else 0.0)


@pytest.mark.parametrize("method", ["lrp_epsilon", "attnlrp", "guided_backprop", "deeplift"])
def test_explain_refuses_when_the_traced_logits_are_not_the_models(method):
    model, x = GradDependent().double().eval(), torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(LRPError, match=r"model\(x\)"):
        explain(model, x, torch.tensor([0, 1, 2]), method)


class PaddedEncoder(nn.Module):
    """Token classifier with nn.TransformerEncoder and a key-padding mask read off the input (all-zero tokens are
    padding, at the end of each sequence): in eval mode without gradients torch takes its nested-tensor fast path,
    whose outputs at padded positions are 0, and the mean over tokens includes them (times ``scale``)."""

    def __init__(self, d=8, final_norm=True, scale=1.0):
        super().__init__()
        self.scale = scale
        self.embed = nn.Linear(d, d)
        layer = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(d) if final_norm else None)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        pad = x.abs().sum(-1) == 0
        h = self.encoder(self.embed(x), src_key_padding_mask=pad)
        return self.head(h.mean(1) * self.scale)


def padded_tokens(n=4, t=6, d=8, dtype=torch.float64):
    torch.manual_seed(4)
    x = torch.randn(n, t, d, dtype=dtype)
    for i, keep in enumerate([6, 4, 3, 5][:n]):
        x[i, keep:] = 0
    return x


@pytest.mark.parametrize("final_norm", [True, False])
def test_transformer_encoder_with_padding_is_explained_as_it_computes(final_norm):
    """A padded sequence's map equals the map of the sequence alone (no padding: the ordinary path) through the same
    model whose mean over 3 tokens is scaled by 3/6, which is what the padded model computes on it."""
    torch.manual_seed(5)
    model = PaddedEncoder(final_norm=final_norm).double().eval()
    alone = PaddedEncoder(final_norm=final_norm, scale=3 / 6).double().eval()
    alone.load_state_dict(model.state_dict())
    x, t = padded_tokens(), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        torch.testing.assert_close(model(x)[2:3], alone(x[2:3, :3]), rtol=1e-12, atol=1e-12)
    for method in ("attnlrp", "cp_lrp", "lrp_epsilon"):
        kw = {"epsilon": 0.0} if method != "lrp_epsilon" else {}  # epsilon = 0: the mean's z differs (6 vs 3 tokens)
        r = explain(model, x, t, method, **kw)
        assert torch.isfinite(r).all() and r.abs().sum() > 0
        assert (r[1, 4:] == 0).all() and (r[2, 3:] == 0).all()  # padding takes no relevance
        torch.testing.assert_close(r[2:3, :3], explain(alone, x[2:3, :3], t[2:3], method, **kw),
                                   rtol=1e-9 if kw else 1e-3, atol=1e-12)


# --- 4. explicit zero padding is not an input under the box rule ---------------------------------------------------

class PadConv(nn.Module):
    def __init__(self, explicit: bool):
        super().__init__()
        self.pad = nn.ZeroPad2d(1) if explicit else nn.Identity()
        self.conv = nn.Conv2d(1, 4, 3, padding=0 if explicit else 1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(self.pad(x))).flatten(1))


@pytest.mark.parametrize("method", ["lrp_epsilon_gamma_box", "dtd"])
def test_explicit_zero_padding_gives_the_map_of_implicit_padding(method):
    torch.manual_seed(6)
    implicit, explicit = PadConv(False).double().eval(), PadConv(True).double().eval()
    explicit.load_state_dict(implicit.state_dict())
    x, t = torch.rand(3, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2])
    torch.testing.assert_close(explain(explicit, x, t, method), explain(implicit, x, t, method), rtol=1e-10,
                               atol=1e-13)


def test_box_rule_is_input_invariant():
    """Kindermans et al.'s shift, absorbed by the first layer (zero padding becomes padding with the shift): the box
    rule with bounds that move with the data gives the same map."""
    torch.manual_seed(7)
    model = PadConv(False).double().eval()
    x, t = torch.rand(3, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2])
    r = explain(model, x, t, "lrp_epsilon_gamma_box")
    df = evalxai.score(model, x, t, r, metric="input_invariance", method="lrp_epsilon_gamma_box",
                       method_params={"low": 0.0, "high": 1.0})
    worst = df[df.measure == "max_relative_difference"].value.max() if "measure" in df else \
        df[df.metric.str.contains("max_relative")].value.max()
    assert worst < 1e-8
