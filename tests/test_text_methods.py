"""Methods on token ids beyond LRP (issue 30): occlusion one token at a time, attention rollout, integrated gradients
and gradient x input from the pad / [MASK] token's embedding, the random control, SmoothGrad's noise scale, and one
traced graph for every attention mask of a shape. Each against an explicit float64 loop or formula; padding 0, the
model untouched, a sequence alone and in a padded batch giving the same map.

The reference tests (marked, skipped without transformers) run attention rollout on tiny Hugging Face BERT, GPT-2
and Llama classifiers against the rollout of the attention weights the models return themselves.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import evalxai
from evalxai.methods import graph
from evalxai.models import EmbeddingsInput
from tests.text_batches import padded_batch

pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    """Pre-norm encoder block with ``nn.MultiheadAttention`` and the padding as ``key_padding_mask``."""

    def __init__(self, d, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x, padding, weights=None):
        h = self.norm1(x)
        out, w = self.attn(h, h, h, key_padding_mask=padding, need_weights=weights is not None,
                           average_attn_weights=False)
        if weights is not None:
            weights.append(w)
        x = x + out
        return x + self.mlp(self.norm2(x))


class MHAText(nn.Module):
    """The shape of ``text_transformer``: embeddings, learned positions, ``nn.MultiheadAttention`` blocks, the head
    on position 0 ([CLS]); ``forward(input_ids=None, attention_mask=None, inputs_embeds=None)``."""

    def __init__(self, vocab=30, d=16, t=12, classes=3, depth=2, pad_id=0):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, t, d) * 0.1)
        self.blocks = nn.ModuleList([Block(d, 2) for _ in range(depth)])
        self.head = nn.Linear(d, classes)
        self.pad_id = pad_id

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, weights=None):
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        padding = attention_mask == 0
        x = x + self.pos[:, :x.shape[1]]
        for block in self.blocks:
            x = block(x, padding, weights)
        return self.head(x[:, 0])


def _model(**kw):
    torch.manual_seed(0)
    return MHAText(**kw).double().eval()


def _batch():
    return padded_batch()


def _logit(model, e, mask, target):
    with torch.no_grad():
        return model(inputs_embeds=e, attention_mask=mask)[torch.arange(len(e)), target]


def _alone(model, ids, mask, target, method, **kw):
    """Each sequence's map explained alone, unpadded."""
    out = []
    for i in range(len(ids)):
        t = int(mask[i].sum())
        out.append(evalxai.explain(model, ids[i:i + 1, :t], target[i:i + 1], method=method, **kw)[0])
    return out


METHODS = [("occlusion", {}), ("occlusion", {"baseline": "pad"}), ("attention_rollout", {}),
           ("integrated_gradients", {"baseline": "mask", "mask_id": 3}), ("gradient_x_input", {"baseline": "pad"})]


@pytest.mark.parametrize("method,kw", METHODS)
def test_padding_zero_batch_independent_model_untouched(method, kw):
    """Padding gets 0; a right-padded batch gives each sequence the map it has alone (≤ 1e-10 of max |R|); per_token
    False sums over D to the per-token map; the model keeps its parameters, flags and mode."""
    model = _model()
    before = copy.deepcopy(model.state_dict())
    ids, mask, target = _batch()
    r = evalxai.explain(model, ids, target, method=method, attention_mask=mask, **kw)
    full = evalxai.explain(model, ids, target, method=method, attention_mask=mask, per_token=False, **kw)
    assert (r[mask == 0] == 0).all() and (r[mask == 1] != 0).all()
    assert torch.allclose(full.sum(-1), r, atol=1e-12)
    for i, alone in enumerate(_alone(model, ids, mask, target, method, **kw)):
        t = int(mask[i].sum())
        assert float((r[i, :t] - alone).abs().max() / alone.abs().max()) <= 1e-10, f"{method} {kw} sample {i}"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.requires_grad for p in model.parameters())


# --- occlusion -------------------------------------------------------------------------------------------------

def _occlusion_loop(model, ids, mask, target, fill):
    """R[n, t] = f(e)[target] - f(e with row t replaced by fill)[target], one sample and one token at a time."""
    e = model.embed(ids).detach()
    r = torch.zeros(ids.shape, dtype=torch.float64)
    for n in range(len(ids)):
        s0 = _logit(model, e[n:n + 1], mask[n:n + 1], target[n:n + 1])
        for t in range(ids.shape[1]):
            if mask[n, t]:
                x = e[n:n + 1].clone()
                x[0, t] = fill
                r[n, t] = s0 - _logit(model, x, mask[n:n + 1], target[n:n + 1])
    return r


@pytest.mark.parametrize("baseline", ["zero", "pad", "mask", "unk"])
def test_occlusion_is_leave_one_token_out(baseline):
    """Each real token's relevance is the target logit's drop when its embedding is replaced by the baseline's (zero,
    or the pad / [MASK] / UNK token's), against a loop in float64 (≤ 1e-12); the (N, T, D) map spreads it evenly."""
    model = _model()
    ids, mask, target = _batch()
    token = {"zero": None, "pad": 0, "mask": 5, "unk": 7}[baseline]
    fill = torch.zeros(16, dtype=torch.float64) if token is None else model.embed.weight[token].detach()
    kw = {"mask_id": 5, "unk_id": 7} if baseline in ("mask", "unk") else {}
    got = evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask, baseline=baseline, **kw)
    want = _occlusion_loop(model, ids, mask, target, fill)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    full = evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask, baseline=baseline,
                           per_token=False, **kw)
    assert torch.allclose(full, (want / 16).unsqueeze(-1).expand_as(full), atol=1e-12)
    other = _occlusion_loop(model, ids, mask, target, fill + 1)
    assert float((got - other).abs().max()) > 1e-3  # the comparison can fail


def test_occlusion_chunks_do_not_change_the_map():
    """batch_size=1 (one occluded copy per forward) gives the map of the default chunks."""
    model = _model()
    ids, mask, target = _batch()
    a = evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask)
    b = evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask, batch_size=1)
    assert torch.allclose(a, b, atol=1e-13)


def test_token_baseline_ids_and_errors():
    """The pad id comes from the caller, the model's ``pad_id`` / Hugging Face ``config.pad_token_id``; a missing
    or outside id is an error that names the parameter."""
    model = _model(pad_id=4)
    ids, mask, target = _batch()
    by_attr = evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask, baseline="pad")
    by_arg = evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask, baseline="pad", pad_id=4)
    other = evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask, baseline="pad", pad_id=0)
    assert torch.equal(by_attr, by_arg) and not torch.equal(by_arg, other)
    assert torch.equal(by_arg, evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask,
                                               baseline="pad", pad_id=torch.tensor(4)))
    with pytest.raises(ValueError, match="pad_id='4' is not a token id"):
        evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask, baseline="pad", pad_id="4")
    with pytest.raises(ValueError, match="pass mask_id="):
        evalxai.explain(model, ids, target, method="integrated_gradients", attention_mask=mask, baseline="mask")
    with pytest.raises(ValueError, match="unk_id=99 is outside the vocabulary \\[0, 29\\]"):
        evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask, baseline="unk", unk_id=99)
    with pytest.raises(ValueError, match="baseline='blur' is not one of"):
        evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask, baseline="blur")
    with pytest.raises(ValueError, match="baseline='pad' is for token ids"):
        evalxai.explain(nn.Linear(4, 2).double().eval(), torch.rand(2, 4, dtype=torch.float64), 0,
                        method="gradient_x_input", baseline="pad")


# --- integrated gradients and gradient x input from a token's embedding -----------------------------------------

@pytest.mark.parametrize("baseline", ["zero", "pad", "mask"])
def test_integrated_gradients_completeness(baseline):
    """sum over tokens of R = f(e) - f(e'), e' the baseline's embeddings at the real tokens, as steps grow (midpoint
    rule: the error falls ~ 1 / steps^2)."""
    model = _model()
    ids, mask, target = _batch()
    fill = {"zero": torch.zeros(16, dtype=torch.float64), "pad": model.embed.weight[0].detach(),
            "mask": model.embed.weight[5].detach()}[baseline]
    e = model.embed(ids).detach()
    ref = torch.where(mask.bool().unsqueeze(-1), fill, e)
    delta = _logit(model, e, mask, target) - _logit(model, ref, mask, target)
    errs = []
    for steps in (8, 256):
        r = evalxai.explain(model, ids, target, method="integrated_gradients", attention_mask=mask,
                            baseline=baseline, steps=steps, mask_id=5)
        errs.append(float((r.sum(1) - delta).abs().max() / delta.abs().max()))
    assert errs[1] <= 1e-3 and errs[1] < errs[0] / 20, errs


def test_gradient_x_input_from_a_token_embedding():
    """gradient_x_input with baseline pad = sum over D of (e - e_pad) * d logit / d e at the real tokens; zero is
    e * d logit / d e."""
    model = _model()
    ids, mask, target = _batch()
    e = model.embed(ids).detach().requires_grad_(True)
    model(inputs_embeds=e, attention_mask=mask)[torch.arange(3), target].sum().backward()
    for baseline, fill in (("pad", model.embed.weight[0].detach()), ("zero", 0.0)):
        want = ((e - fill) * e.grad).sum(-1).detach() * mask
        got = evalxai.explain(model, ids, target, method="gradient_x_input", attention_mask=mask, baseline=baseline)
        assert torch.allclose(got, want, atol=1e-12), baseline


# --- attention rollout ------------------------------------------------------------------------------------------

def _rollout_formula(weights, residual=0.5):
    joint = None
    for w in weights:
        a = residual * torch.eye(w.shape[-1], dtype=torch.float64) + (1 - residual) * w.double().mean(1)
        a = a / a.sum(-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint


def test_attention_rollout_on_multihead_attention():
    """Rollout from position 0 ([CLS]) of nn.MultiheadAttention's own weights (need_weights=True, per head): equal to
    the explicit product (float64, ≤ 1e-12); the weights on padding columns are 0 after the key padding mask, so a
    real row sums to 1 over the real tokens; the map does not depend on the target."""
    model = _model()
    ids, mask, target = _batch()
    weights = []
    with torch.no_grad():
        model(ids, mask, weights=weights)
    assert all(float(w.masked_select(mask[:, None, None, :] == 0).abs().max()) == 0 for w in weights)
    want = _rollout_formula(weights)[:, 0] * mask
    got = evalxai.explain(model, ids, target, method="attention_rollout", attention_mask=mask)
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(got.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.equal(got, evalxai.explain(model, ids, 0, method="attention_rollout", attention_mask=mask))
    mean = evalxai.explain(model, ids, target, method="attention_rollout", attention_mask=mask, position="mean")
    rows = _rollout_formula(weights) * mask[:, :, None]
    assert torch.allclose(mean, rows.sum(1) / mask.sum(1, keepdim=True) * mask, atol=1e-12)


def test_attention_rollout_discards_among_real_tokens():
    """discard_ratio counts and drops the smallest weights among a row's real tokens only, so padding changes
    nothing; position must name a token."""
    model = _model()
    ids, mask, target = _batch()
    r = evalxai.explain(model, ids, target, method="attention_rollout", attention_mask=mask, discard_ratio=0.4)
    assert not torch.allclose(r, evalxai.explain(model, ids, target, method="attention_rollout",
                                                 attention_mask=mask))
    for i, alone in enumerate(_alone(model, ids, mask, target, "attention_rollout", discard_ratio=0.4)):
        assert torch.allclose(r[i, :int(mask[i].sum())], alone, atol=1e-12)
    with pytest.raises(ValueError, match="position='cls' is unknown"):
        evalxai.explain(model, ids, target, method="attention_rollout", attention_mask=mask, position="cls")


# --- the random control and SmoothGrad ----------------------------------------------------------------------------

def test_random_is_seeded_per_sample_with_padding_zero():
    """The random control: the same map for a sample whatever batch it is in (same length), another for another
    seed, padding 0."""
    model = _model()
    ids, mask, target = _batch()
    r = evalxai.explain(model, ids, target, method="random", attention_mask=mask)
    r2 = evalxai.explain(model, ids[[2, 0]], target[[2, 0]], method="random", attention_mask=mask[[2, 0]])
    assert torch.equal(r2, r[[2, 0]]) and (r[mask == 0] == 0).all()
    assert not torch.allclose(r, evalxai.explain(model, ids, target, method="random", attention_mask=mask, seed=1))


def test_smoothgrad_noise_scale_is_the_real_tokens_range(monkeypatch):
    """SmoothGrad's sigma is noise x (max - min) of the real tokens' embedding entries: padding embeddings of any
    size leave it alone (the draws held fixed here, as they are seeded by the sample's content)."""
    from evalxai.methods import gradient

    def draws(x, seed, ks):
        return torch.randn(len(ks), *x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0))

    monkeypatch.setattr(gradient, "noise_draws", draws)
    model = _model()
    with torch.no_grad():
        model.embed.weight[0] *= 1000  # the pad token's embedding far outside the others' range
    ids, mask, target = _batch()
    r = evalxai.explain(model, ids, target, method="smoothgrad", attention_mask=mask, samples=2, noise=0.1,
                        per_token=False)
    e = model.embed(ids).detach()
    real = e[1, :5]
    noisy = (e[1:2] + 0.1 * (real.max() - real.min()) * draws(e[1:2], 0, [0])[0]).requires_grad_(True)
    model(inputs_embeds=noisy, attention_mask=mask[1:2])[0, target[1]].backward()
    assert torch.allclose(r[1], noisy.grad[0] * mask[1, :, None], atol=1e-12)


# --- one traced graph for the groups of one shape -----------------------------------------------------------------

def test_groups_of_one_shape_share_one_trace(monkeypatch):
    """explain_tokens runs one group per attention mask; groups of one shape reuse one traced graph (the mask is an
    input of the trace), one for the masks with padding and one for a mask without, and the maps are those of each
    group explained alone."""
    calls = []
    trace = graph.concrete_trace
    monkeypatch.setattr(graph, "concrete_trace", lambda m, x: calls.append(tuple(x.shape)) or trace(m, x))
    model = _model()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 30, (5, 8), generator=g)
    mask = (torch.arange(8)[None] < torch.tensor([8, 6, 5, 3, 2])[:, None]).long()
    ids[mask == 0] = 0
    target = torch.tensor([0, 1, 2, 0, 1])
    r = evalxai.explain(model, ids, target, method="attnlrp", attention_mask=mask)
    assert calls == [(1, 8, 16), (1, 8, 16)]  # five groups: one trace without padding, one with
    for i in range(5):
        alone = evalxai.explain(model, ids[i:i + 1], target[i:i + 1], method="attnlrp", attention_mask=mask[i:i + 1])
        assert torch.allclose(r[i], alone[0], rtol=0, atol=1e-14)


def test_masked_restores_and_the_mask_is_read_at_run_time():
    """EmbeddingsInput.masked swaps the mask for a block and restores it; the traced graph reads the current mask."""
    model = _model()
    ids, mask, _ = _batch()
    wrapped = EmbeddingsInput(model, mask[:1])
    e = wrapped.embed(ids[2:3])
    g = graph.trace(wrapped, e)
    with wrapped.masked(mask[2:3]):
        run = graph.execute(wrapped, g, e, lambda *a: NotImplemented)
        assert torch.allclose(run, model(ids[2:3], mask[2:3]), atol=1e-12)
    assert wrapped.attention_mask is not None and torch.equal(wrapped.attention_mask, mask[:1])


# --- reference: Hugging Face models ------------------------------------------------------------------------------

def _hf_model(name, attn="eager"):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = {"vocab_size": 50, "num_labels": 3, "attn_implementation": attn}
    if name == "bert":
        cfg = transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=32, **common)
        return transformers.BertForSequenceClassification(cfg).double().eval()
    if name == "gpt2":
        cfg = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=32, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=1, **common)
        return transformers.GPT2ForSequenceClassification(cfg).double().eval()
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0,
                                   bos_token_id=1, eos_token_id=1, **common)
    return transformers.LlamaForSequenceClassification(cfg).double().eval()


def _hf_tokens():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 50, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    return ids, mask, torch.tensor([0, 1, 2])


@pytest.mark.reference
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_attention_rollout_on_huggingface_models(name):
    """Rollout from [CLS] (BERT) or the last real token (GPT-2, Llama) equals the rollout of the attention weights the
    model returns (output_attentions=True, eager), ≤ 1e-12; sdpa attention gives the same map (its weights
    recomputed from F.scaled_dot_product_attention's arguments); padding 0 and a padded batch equal each sequence
    alone."""
    model = _hf_model(name)
    ids, mask, target = _hf_tokens()
    with torch.no_grad():
        weights = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    joint = _rollout_formula(weights)
    last = (torch.arange(7) * mask).argmax(1)
    want = joint[torch.arange(3), last if name != "bert" else torch.zeros(3, dtype=torch.long)] * mask
    got = evalxai.explain(model, ids, target, method="attention_rollout", attention_mask=mask)
    assert torch.allclose(got, want, atol=1e-12), float((got - want).abs().max())
    sdpa = evalxai.explain(_hf_model(name, "sdpa"), ids, target, method="attention_rollout", attention_mask=mask)
    assert torch.allclose(sdpa, got, atol=1e-12)
    for i, alone in enumerate(_alone(model, ids, mask, target, "attention_rollout")):
        assert torch.allclose(got[i, :int(mask[i].sum())], alone, atol=1e-12)


@pytest.mark.reference
@pytest.mark.parametrize("name,baseline", [("bert", "pad"), ("gpt2", "pad"), ("llama", "mask")])
def test_occlusion_and_token_baselines_on_huggingface_models(name, baseline):
    """Occlusion with the pad token of the model's config (pad_token_id; Llama: a [MASK] id given, mask_id=5) equals
    the loop reference; IG from that token's embedding is complete (256 steps, ≤ 1e-3 of |f(e) - f(e')|). Llama's
    pad embedding is zero (padding_idx), and IG from 0 into its first RMSNorm, x / sqrt(mean x^2 + 1e-6), needs far
    more steps near 0: hence the [MASK] id there."""
    model = _hf_model(name)
    ids, mask, target = _hf_tokens()
    wrapped = EmbeddingsInput(model, mask)
    e = wrapped.embed(ids)
    fill = wrapped.embed(torch.tensor([0 if baseline == "pad" else 5]))[0]
    got = evalxai.explain(model, ids, target, method="occlusion", attention_mask=mask, baseline=baseline, mask_id=5)
    with torch.no_grad():
        s0 = wrapped(e)[torch.arange(3), target]
        want = torch.zeros(3, 7, dtype=torch.float64)
        for t in range(7):
            x = e.clone()
            x[:, t] = fill
            want[:, t] = (s0 - wrapped(x)[torch.arange(3), target]) * mask[:, t]
    assert torch.allclose(got, want, atol=1e-12)
    r = evalxai.explain(model, ids, target, method="integrated_gradients", attention_mask=mask, baseline=baseline,
                        steps=256, mask_id=5)
    with torch.no_grad():
        ref = torch.where(mask.bool().unsqueeze(-1), fill, e)
        delta = s0 - wrapped(ref)[torch.arange(3), target]
    assert float((r.sum(1) - delta).abs().max() / delta.abs().max()) <= 1e-3
