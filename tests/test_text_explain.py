"""Text (issue 30, first slice): ``evalxai.explain`` on token ids, and the engine's rules for the parts of language
models (library RMSNorm classes, rotary embeddings, gated MLPs, ``torch.addmm``) against explicit float64 formulas.

The reference tests (marked, skipped without transformers and lxt) compare attnlrp and cp_lrp with LXT 2.1 on tiny
Hugging Face BERT, GPT-2 and Llama sequence classifiers.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evalxai
from evalxai.methods.graph import LRPError
from evalxai.models import EmbeddingsInput
from tests.lxt_reference import lxt_patches
from tests.text_batches import padded_batch

METHODS = ["attnlrp", "cp_lrp", "gradient_x_input", "integrated_gradients", "random"]


class TinyTextClassifier(nn.Module):
    """Word and position embeddings, one pre-norm transformer encoder layer, mean over the tokens, a linear head; the
    Hugging Face interface: ``get_input_embeddings``, ``forward(input_ids=, inputs_embeds=, attention_mask=)``."""

    def __init__(self, vocab=30, d=16, t=12, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, t, d) * 0.1)
        self.layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(d, classes)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        e = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        t = e.shape[1]
        keep = torch.ones(e.shape[:2], dtype=e.dtype) if attention_mask is None else attention_mask.to(e.dtype)
        h = self.layer(e + self.pos[:, :t], src_key_padding_mask=keep == 0)
        pooled = (h * keep.unsqueeze(-1)).sum(1) * (1.0 / keep.sum(1, keepdim=True))
        return self.head(pooled)


def _text_model():
    torch.manual_seed(0)
    return TinyTextClassifier().double().eval()


def _batch():
    return padded_batch()


@pytest.mark.parametrize("method", METHODS)
def test_token_maps_shapes_and_padding(method):
    """(N, T) per token, (N, T, D) with per_token=False, their sum over D equal; padding positions exactly 0."""
    model = _text_model()
    ids, mask, target = _batch()
    r = evalxai.explain(model, ids, target, method=method, attention_mask=mask)
    full = evalxai.explain(model, ids, target, method=method, attention_mask=mask, per_token=False)
    assert r.shape == ids.shape and full.shape == (*ids.shape, 16)
    assert r.dtype == torch.float64 and torch.isfinite(r).all()
    assert torch.allclose(full.sum(-1), r, atol=1e-12)
    assert (r[mask == 0] == 0).all() and (r[mask == 1] != 0).any()


@pytest.mark.parametrize("method", ["attnlrp", "cp_lrp", "gradient_x_input", "integrated_gradients"])
def test_padded_batch_equals_each_sequence_alone(method):
    """A right-padded batch with its attention mask gives each sequence the map it has alone (float64, ≤ 1e-10 of
    max |R|)."""
    model = _text_model()
    ids, mask, target = _batch()
    both = evalxai.explain(model, ids, target, method=method, attention_mask=mask)
    for i in range(len(ids)):
        t = int(mask[i].sum())
        alone = evalxai.explain(model, ids[i:i + 1, :t], target[i:i + 1], method=method)
        err = float((both[i, :t] - alone[0]).abs().max() / alone.abs().max())
        assert err <= 1e-10, f"{method} sample {i}: {err:.3g}"


def test_gradient_x_input_is_embeddings_times_gradient():
    """gradient_x_input per token = sum over D of e * d logit / d e, e the word embeddings (explicit)."""
    model = _text_model()
    ids, mask, target = _batch()
    e = model.embed(ids).detach().requires_grad_(True)
    out = model(inputs_embeds=e, attention_mask=mask)
    out[torch.arange(3), target].sum().backward()
    want = (e * e.grad).sum(-1) * mask
    got = evalxai.explain(model, ids, target, method="gradient_x_input", attention_mask=mask)
    assert torch.allclose(got, want, atol=1e-12)


def test_model_left_as_it_was():
    model = _text_model().train()
    before = copy.deepcopy(model.state_dict())
    ids, mask, target = _batch()
    with pytest.warns(UserWarning, match="training mode"):
        evalxai.explain(model, ids, target, method="attnlrp", attention_mask=mask)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model, "_tensor_constant0")


def test_token_input_errors_name_the_fix():
    model = _text_model()
    ids, mask, target = _batch()
    with pytest.raises(ValueError, match="outside \\[0, 29\\]"):
        evalxai.explain(model, ids + 100, target, method="gradient")
    with pytest.raises(ValueError, match="attention_mask must be a 0/1 tensor"):
        evalxai.explain(model, ids, target, method="gradient", attention_mask=mask[:, :4])
    with pytest.raises(ValueError, match="has no token"):
        evalxai.explain(model, ids, target, method="gradient", attention_mask=mask * 0)
    with pytest.raises(ValueError, match="shape \\(N, T\\)"):
        evalxai.explain(model, ids[0], 0, method="gradient")
    with pytest.raises(ValueError, match="outside \\[0, 2\\]"):
        evalxai.explain(model, ids, 5, method="gradient")
    with pytest.raises(TypeError, match="get_input_embeddings"):
        evalxai.explain(nn.Sequential(nn.Linear(8, 2)), ids, 0, method="gradient")
    with pytest.raises(ValueError, match="attention_mask is for token ids"):
        evalxai.explain(nn.Sequential(nn.Linear(8, 2)).double(), torch.rand(2, 8, dtype=torch.float64), 0,
                        method="gradient", attention_mask=mask)


def test_embeddings_input_is_the_model_of_its_embeddings():
    model = _text_model()
    ids, mask, _ = _batch()
    wrapped = EmbeddingsInput(model, mask)
    assert wrapped.model is model and wrapped.pooling == "model"
    assert torch.equal(wrapped(wrapped.embed(ids)), model(input_ids=ids, attention_mask=mask))


# --- the engine's rules for language-model parts, against explicit formulas (no transformers needed) -------------

class ToyRMSNorm(nn.Module):
    """Llama's RMSNorm as a library writes it (a class of its own, normalising in float32)."""

    def __init__(self, d, eps=1e-6, gemma=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d) * 0.3 + 1)
        self.variance_epsilon = eps
        self.gemma = gemma

    def forward(self, x):
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        w = (1 + self.weight) if self.gemma else self.weight
        return w * h.to(x.dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class ToyBlock(nn.Module):
    """RMSNorm, a rotary-embedded query-key attention (causal), a SwiGLU MLP, residuals: Llama's parts."""

    def __init__(self, d=8, t=5, gemma=False):
        super().__init__()
        self.norm = ToyRMSNorm(d, gemma=gemma)
        self.q, self.k, self.v = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.gate, self.up, self.down = nn.Linear(d, 16, bias=False), nn.Linear(d, 16, bias=False), nn.Linear(16, d)
        self.act = nn.SiLU()
        ang = torch.arange(t)[:, None] * torch.linspace(0.1, 1.0, d // 2)[None]
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1))
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1))
        self.head = nn.Linear(d, 3)

    def forward(self, x, stop=None):
        stop = stop or {}
        h = self.norm(x)
        q = self.q(h) * self.cos + rotate_half(self.q(h)) * self.sin
        k = self.k(h) * self.cos + rotate_half(self.k(h)) * self.sin
        q, k, v = stop.get("q", lambda t: t)(q), stop.get("k", lambda t: t)(k), stop.get("v", lambda t: t)(self.v(h))
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        scores = scores + torch.zeros_like(scores).masked_fill(~causal, torch.finfo(x.dtype).min)
        x = x + torch.softmax(scores, -1) @ v
        h = self.norm(x)
        g = self.act(self.gate(h))
        x = x + self.down(stop.get("mlp", lambda a, b: a * b)(g, self.up(h)))
        return self.head(x[:, -1])


class _Half(torch.autograd.Function):  # identity forward, gradient / factor: the uniform rule in gradient x input
    @staticmethod
    def forward(ctx, t, factor):
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        return g / ctx.factor, None


class _Identity(torch.autograd.Function):  # f(x) forward, relevance unchanged: gradient f(x) / x
    @staticmethod
    def forward(ctx, x, fn):
        y = fn(x)
        ctx.save_for_backward(y / x)
        return y

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved_tensors[0], None


class IdentitySiLU(nn.Module):
    def forward(self, t):
        return _Identity.apply(t, F.silu)


def _formula(model, x, target, method):
    """AttnLRP / CP-LRP written out as gradient x input with modified gradients (epsilon 0): the RMS normaliser held
    constant, SiLU by the identity rule, q and k gradients / 4 and v / 2 (AttnLRP; CP-LRP: q and k constant), the
    gate product split evenly (AttnLRP) or the gate constant (CP-LRP)."""
    norm_forward = ToyRMSNorm.forward

    def const_norm(self, t):
        return self.weight * t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + self.variance_epsilon).detach()

    act = model.act
    if method == "attnlrp":
        stop = {"q": lambda t: _Half.apply(t, 4), "k": lambda t: _Half.apply(t, 4), "v": lambda t: _Half.apply(t, 2),
                "mlp": lambda a, b: _Half.apply(a * b, 2)}
        model.act = IdentitySiLU()
    else:
        stop = {"q": torch.detach, "k": torch.detach, "mlp": lambda a, b: a.detach() * b}
    ToyRMSNorm.forward = const_norm
    try:
        xg = x.clone().requires_grad_(True)
        out = model(xg, stop)
        out[torch.arange(len(x)), target].sum().backward()
        return (xg * xg.grad).detach()
    finally:
        ToyRMSNorm.forward = norm_forward
        model.act = act


@pytest.mark.parametrize("method", ["attnlrp", "cp_lrp"])
def test_rmsnorm_rotary_gated_mlp_against_formula(method):
    """A library-style RMSNorm class (a leaf with the normaliser constant), rotary embeddings (linear: x cos +
    rotate_half(x) sin), a causal additive mask and a SwiGLU MLP (AttnLRP: uniform split of the gate product with the
    identity rule on SiLU; CP-LRP: the SiLU gate held constant, as LXT's cp_gated_mlp_forward) equal the explicit
    formula (epsilon 0, float64; RMSNorm in float32 as Llama's: ≤ 1e-6 of max |R|)."""
    torch.manual_seed(0)
    model = ToyBlock().double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    ours = evalxai.explain(model, x, target, method=method, epsilon=0.0)
    want = _formula(model, x, target, method)
    err = float((ours - want).abs().max() / want.abs().max())
    assert err <= 1e-6, f"{method}: {err:.3g}"
    other = _formula(model, x, target, "cp_lrp" if method == "attnlrp" else "attnlrp")
    assert float((ours - other).abs().max() / want.abs().max()) > 1e-3  # the comparison can fail


def test_rmsnorm_of_another_formula_is_refused():
    torch.manual_seed(0)
    model = ToyBlock(gemma=True).double().eval()
    with pytest.raises(LRPError, match="does not compute weight \\* x / rms"):
        evalxai.explain(model, torch.randn(2, 5, 8, dtype=torch.float64), 0, method="attnlrp")


class ToyConv1D(nn.Module):
    """GPT-2's Conv1D: bias + x @ W with W (in, out), by torch.addmm."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out))
        self.bias = nn.Parameter(torch.randn(d_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


def test_addmm_is_a_linear_layer():
    """``torch.addmm(b, x, W)`` is explained as ``F.linear(x, W^T, b)`` by every composite (here LRP-epsilon and
    LRP-0 = gradient x input on a ReLU network)."""
    torch.manual_seed(0)
    conv = nn.Sequential(ToyConv1D(6, 5), nn.ReLU(), ToyConv1D(5, 3)).double().eval()
    lin = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    with torch.no_grad():
        for a, b in ((conv[0], lin[0]), (conv[2], lin[2])):
            b.weight.copy_(a.weight.t())
            b.bias.copy_(a.bias)
    x = torch.randn(4, 6, dtype=torch.float64)
    for method in ("lrp_epsilon", "lrp_0", "lrp_epsilon_plus"):
        assert torch.allclose(evalxai.explain(conv, x, 1, method=method), evalxai.explain(lin, x, 1, method=method),
                              atol=1e-12), method
    assert torch.allclose(evalxai.explain(conv, x, 1, method="lrp_0"),
                          evalxai.explain(conv, x, 1, method="gradient_x_input"), atol=1e-12)


# --- reference: Hugging Face models against LXT 2.1 ---------------------------------------------------------------

def _hf_model(name):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = {"vocab_size": 50, "num_labels": 3, "attn_implementation": "eager"}
    if name == "bert":
        cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=32, **common)
        model = transformers.BertForSequenceClassification(cfg)
    elif name == "gpt2":
        cfg = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=32, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=1, **common)
        model = transformers.GPT2ForSequenceClassification(cfg)
    else:
        cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                       pad_token_id=0, bos_token_id=1, eos_token_id=1, **common)
        model = transformers.LlamaForSequenceClassification(cfg)
    return model.double().eval()


def _lxt_map(monkeypatch, name, model, method, ids, mask, target):
    """LXT 2.1's map (relevance = embeddings x gradient, summed over D) with its patch functions applied as its
    model files apply them (models/bert.py, gpt2.py, llama.py): the eager attention wrapped (wrap_attention_forward
    for AttnLRP, cp_wrap_attention_forward for CP-LRP), LayerNorm / RMSNorm with the normaliser constant, the identity
    rule on the activations (BERT also on its pooler's tanh, as LXT's bert.py), Llama's MLP by gated_mlp_forward /
    cp_gated_mlp_forward. BERT has no CP-LRP in LXT: AttnLRP's BERT with CP's attention."""
    patches = lxt_patches(monkeypatch)
    from transformers.models.bert import modeling_bert
    from transformers.models.gpt2 import modeling_gpt2
    from transformers.models.llama import modeling_llama

    module = {"bert": modeling_bert, "gpt2": modeling_gpt2, "llama": modeling_llama}[name]
    wrap = patches.wrap_attention_forward if method == "attnlrp" else patches.cp_wrap_attention_forward
    monkeypatch.setattr(module, "eager_attention_forward", wrap(module.eager_attention_forward))
    if name == "llama":
        monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", patches.rms_norm_forward)
        mlp = patches.gated_mlp_forward if method == "attnlrp" else patches.cp_gated_mlp_forward
        monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", mlp)
    else:
        monkeypatch.setattr(nn.LayerNorm, "forward", patches.layer_norm_forward)
        acts = [type(model.transformer.h[0].mlp.act)] if name == "gpt2" else \
            [type(model.bert.encoder.layer[0].intermediate.intermediate_act_fn), nn.Tanh]
        for cls in acts:
            monkeypatch.setattr(cls, "original_forward", cls.forward, raising=False)
            monkeypatch.setattr(cls, "forward", patches.non_linear_forward)
    wrapped = EmbeddingsInput(model, mask)
    e = wrapped.embed(ids).requires_grad_(True)
    out = wrapped(e)
    out[torch.arange(len(ids)), target].sum().backward()
    return (e * e.grad).detach().sum(-1)


def _tokens():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 50, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    ids[mask == 0] = 0  # right padding with the pad token 0
    return ids, mask, torch.tensor([0, 1, 2])


@pytest.mark.reference
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("method", ["attnlrp", "cp_lrp"])
def test_equal_to_lxt_on_huggingface_text_models(monkeypatch, name, method):
    """attnlrp and cp_lrp (epsilon 0) on tiny BertForSequenceClassification, GPT2ForSequenceClassification and
    LlamaForSequenceClassification (eager attention, a right-padded batch) equal LXT 2.1's maps, ≤ 1e-6 of max |R|
    in float64 (measured 4e-9 to 1e-7: Llama normalises in float32, LXT's identity rule divides by x + 1e-10); the
    other method's LXT map differs (the comparison can fail)."""
    model = _hf_model(name)
    ids, mask, target = _tokens()
    ours = evalxai.explain(model, ids, target, method=method, attention_mask=mask, epsilon=0.0)
    theirs = _lxt_map(monkeypatch, name, model, method, ids, mask, target)
    err = float((ours - theirs).abs().max() / theirs.abs().max())
    assert err <= 1e-6, f"{name} {method}: max |evalxai - LXT| / max |R| = {err:.3g}"
    monkeypatch.undo()
    other = _lxt_map(monkeypatch, name, model, "cp_lrp" if method == "attnlrp" else "attnlrp", ids, mask, target)
    assert float((ours - other).abs().max() / theirs.abs().max()) > 1e-3


@pytest.mark.reference
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_huggingface_padded_batch_equals_alone(name):
    """The wrapper's logits are the model's own (GPT-2 / Llama: at the last non-pad token, as Hugging Face finds it
    from input_ids), and a right-padded batch gives each sequence its map alone (attnlrp, gradient_x_input:
    ≤ 1e-8 of max |R|); padding gets 0."""
    model = _hf_model(name)
    ids, mask, target = _tokens()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        got = EmbeddingsInput(model, mask)(EmbeddingsInput(model).embed(ids))
    assert torch.allclose(got, want, atol=1e-12)
    for method in ("attnlrp", "gradient_x_input"):
        both = evalxai.explain(model, ids, target, method=method, attention_mask=mask)
        assert (both[mask == 0] == 0).all()
        for i in range(len(ids)):
            t = int(mask[i].sum())
            alone = evalxai.explain(model, ids[i:i + 1, :t], target[i:i + 1], method=method)
            err = float((both[i, :t] - alone[0]).abs().max() / alone.abs().max())
            assert err <= 1e-8, f"{name} {method} sample {i}: {err:.3g}"
