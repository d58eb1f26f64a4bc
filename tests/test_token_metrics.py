"""Metrics for text (issue 30): ``evalxai.score`` on token ids against explicit float64 formulas.

A bag-of-embeddings classifier (logits = W sum_t m_t e_t, no bias) makes every curve known: removing token t with the
zero baseline lowers the target logit by exactly its contribution c_t = w_y . e_t, which is also its gradient x input
relevance. Token flipping, AOPC, ABPC and AUC, comprehensiveness and sufficiency (5 tokens, softmax by hand),
localisation and plausibility against rationale masks (known answers, ties by hand), padding (a sequence alone and in
a right-padded batch give the same rows, on the bag model and on a tiny transformer), batch independence, declared
costs against counted forwards, and the refusals.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score
from torch import nn

import evalxai
from evalxai.metrics import METRICS, get_metric
from evalxai.metrics.tokens import TOKEN_MAPS, removed_embeddings
from tests.test_text_explain import TinyTextClassifier
from tests.text_batches import padded_batch

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN_METRICS = ("token_flipping", "comprehensiveness", "eraser_sufficiency")
MASK_METRICS = ("token_f1", "token_iou", "auprc", *[m for m in TOKEN_MAPS if "masks" in get_metric(m).needs])
MAP_METRICS = ("sparseness", "complexity", "effective_complexity")


class BagOfEmbeddings(nn.Module):
    """logits = W sum_t mask_t e_t: a token's contribution to logit c is w_c . e_t, whatever the other tokens."""

    def __init__(self, vocab=20, d=4, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, classes, bias=False)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        e = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        keep = torch.ones(e.shape[:2], dtype=e.dtype) if attention_mask is None else attention_mask.to(e.dtype)
        return self.head((e * keep.unsqueeze(-1)).sum(1))


def bag():
    torch.manual_seed(0)
    return BagOfEmbeddings().double().eval()


def batch():
    """Three sequences of 6, 4 and 5 tokens, right-padded with id 0."""
    return padded_batch((6, 4, 5), vocab=20, seed=3)


def contributions(model, ids, target):
    """c[n, t] = w_y . e_t (N, T), float64: the bag model's exact gradient x input."""
    return (model.embed(ids) @ model.head.weight.T).gather(2, target.view(-1, 1, 1).expand(*ids.shape, 1))[..., 0] \
        .detach()


def rows(df, measure, sample):
    return df[(df["measure"] == measure) & (df["sample"] == sample)].sort_values("step", na_position="first")


# ---------------------------------------------------------------- token flipping


@pytest.mark.parametrize("per_step", [1, 2, 0.34])
def test_token_flipping_curves_aopc_abpc_auc_by_hand(per_step):
    model = bag()
    ids, mask, target = batch()
    c = contributions(model, ids, target)
    r = evalxai.explain(model, ids, target, method="gradient_x_input", attention_mask=mask)
    assert torch.allclose(r, c * mask, atol=1e-12)
    df = evalxai.score(model, ids, target, r, metric="token_flipping", attention_mask=mask, per_step=per_step)
    for n in range(3):
        length = int(mask[n].sum())
        p = per_step if per_step >= 1 else math.ceil(per_step * length)
        k = math.ceil(length / p)
        y0 = float(c[n, :length].sum())
        removed = [min(j * p, length) for j in range(k + 1)]
        frac = np.array(removed) / length
        want = {}
        for order, srt in (("morf", sorted(c[n, :length].tolist(), reverse=True)),
                           ("lerf", sorted(c[n, :length].tolist()))):
            y = np.array([y0 - sum(srt[:j]) for j in removed])
            want[order] = y
            got = rows(df, f"curve_{order}", n)
            np.testing.assert_allclose(got["value"], y, rtol=0, atol=1e-12)
            assert got["step"].tolist() == list(range(k + 1)) and np.allclose(got["fraction"], frac)
            np.testing.assert_allclose(rows(df, f"aopc_{order}", n)["value"], [np.mean(y0 - y)], atol=1e-12)
            auc = sum((frac[i + 1] - frac[i]) * (y[i] + y[i + 1]) / 2 for i in range(k))
            np.testing.assert_allclose(rows(df, f"auc_{order}", n)["value"], [auc], atol=1e-12)
        np.testing.assert_allclose(rows(df, "abpc", n)["value"], [np.mean(want["lerf"] - want["morf"])], atol=1e-12)
    assert set(df[df["measure"] == "abpc"]["direction"]) == {"higher"}


def test_token_flipping_softmax_and_pad_baseline_by_hand():
    """score_space softmax: p_y of W (sum of kept e + removed x e_pad), the pad token's embedding put in."""
    model = bag()
    ids, mask, target = batch()
    c = contributions(model, ids, target)
    df = evalxai.score(model, ids, target, c, metric="token_flipping", attention_mask=mask, order="morf",
                       baseline="pad", pad_id=7, score_space="softmax")
    e, w, pad = model.embed(ids).detach(), model.head.weight.detach(), model.embed.weight[7].detach()
    for n in range(3):
        length = int(mask[n].sum())
        order = torch.argsort(c[n, :length], descending=True)
        want = []
        for k in range(length + 1):
            kept = e[n, :length].clone()
            kept[order[:k]] = pad
            want.append(float((w @ kept.sum(0)).softmax(0)[target[n]]))
        np.testing.assert_allclose(rows(df, "curve_morf", n)["value"], want, atol=1e-12)


def test_random_order_and_ties_are_drawn_per_sequence():
    """A constant map: MoRF = LeRF = a random order per sequence, seeded by its tokens (the same alone and padded,
    whatever the padding id)."""
    model = bag()
    ids, mask, target = batch()
    ids = ids.masked_fill(mask == 0, 19)
    flat = torch.ones(3, 6, dtype=torch.float64)
    df = evalxai.score(model, ids, target, flat, metric="token_flipping", attention_mask=mask,
                       order=("morf", "lerf", "random"))
    for n in range(3):
        assert np.allclose(rows(df, "curve_morf", n)["value"], rows(df, "curve_lerf", n)["value"])
        length = int(mask[n].sum())
        alone = evalxai.score(model, ids[n:n + 1, :length], target[n:n + 1], flat[n:n + 1, :length],
                              metric="token_flipping", order=("morf", "random"))
        for m in ("curve_morf", "curve_random"):
            np.testing.assert_allclose(rows(alone, m, 0)["value"], rows(df, m, n)["value"], atol=1e-12)


# ---------------------------------------------------------------- ERASER


def test_comprehensiveness_and_sufficiency_by_hand_on_five_tokens():
    """L = 5, bins [0.01, 0.05, 0.1, 0.2, 0.5]: k = 1, 1, 1, 1, 3; p = softmax of W sum e (zero baseline)."""
    model = bag()
    ids = torch.tensor([[3, 9, 4, 12, 5]])
    target = torch.tensor([1])
    e, w = model.embed(ids).detach()[0], model.head.weight.detach()
    rel = torch.tensor([[0.5, -2.0, 3.0, 1.0, 0.1]], dtype=torch.float64)  # top-1 token 2, top-3 tokens 2, 3, 0

    def p(keep):
        return float((w @ e[keep].sum(0)).softmax(0)[1])

    full = p([0, 1, 2, 3, 4])
    comp_bins = [full - p([0, 1, 3, 4])] * 4 + [full - p([1, 4])]
    suff_bins = [full - p([2])] * 4 + [full - p([0, 2, 3])]
    for removal in ("replace", "delete"):  # the bag model sums its tokens: deleting is replacing by zero
        comp = evalxai.score(model, ids, target, rel, metric="comprehensiveness", removal=removal)
        suff = evalxai.score(model, ids, target, rel, metric="eraser_sufficiency", removal=removal)
        np.testing.assert_allclose(rows(comp, "comprehensiveness_bin", 0)["value"], comp_bins, atol=1e-12)
        np.testing.assert_allclose(rows(suff, "sufficiency_bin", 0)["value"], suff_bins, atol=1e-12)
        assert rows(comp, "comprehensiveness_bin", 0)["k"].tolist() == [1, 1, 1, 1, 3]
        np.testing.assert_allclose(rows(comp, "comprehensiveness", 0)["value"], [np.mean(comp_bins)], atol=1e-12)
        np.testing.assert_allclose(rows(suff, "sufficiency", 0)["value"], [np.mean(suff_bins)], atol=1e-12)
    assert get_metric("comprehensiveness").direction("comprehensiveness") == "higher"
    assert get_metric("eraser_sufficiency").direction("sufficiency") == "lower"


def test_deletion_shifts_left_and_repads():
    e = torch.arange(1, 6, dtype=torch.float64).view(1, 5, 1).repeat(2, 1, 2)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    removed = torch.tensor([[False, True, False, True, False], [True, True, False, False, False]])
    base = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    out, m = removed_embeddings(e, mask, removed, base, delete=True)
    assert m.tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert out[0, :, 0].tolist() == [1, 3, 0, 0, 0]
    assert out[1, :, 0].tolist() == [-1, 0, 0, 0, 0]  # emptied: one baseline token
    out, m = removed_embeddings(e, mask, removed, base, delete=False)
    assert torch.equal(m, mask) and out[0, :, 0].tolist() == [1, -1, 3, -1, 5]


# ---------------------------------------------------------------- localisation and plausibility against token masks


def test_localisation_on_tokens_known_answers_padding_excluded():
    """Real tokens r = [3, 1, -1, 2], rationale {0, 3}; a padding position with relevance 100 marked in the mask is
    never counted."""
    model = bag()
    ids = torch.tensor([[4, 5, 6, 7, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    r = torch.tensor([[3.0, 1.0, -1.0, 2.0, 100.0]], dtype=torch.float64)
    gt = torch.tensor([[True, False, False, True, True]])
    want = {"relevance_mass_accuracy": 5 / 6, "relevance_rank_accuracy": 1.0, "pointing_game": 1.0,
            "localisation_auc": 1.0, "token_f1": 1.0, "token_iou": 1.0, "auprc": 1.0,
            "attribution_localisation": 5 / 6, "energy_pointing_game": 1.0}
    for metric, value in want.items():
        df = evalxai.score(model, ids, 0, r, metric=metric, attention_mask=mask, masks=gt)
        assert df["value"].iloc[0] == pytest.approx(value, abs=1e-12), metric
    tki = evalxai.score(model, ids, 0, r, metric="top_k_intersection", attention_mask=mask, masks=gt, k=2)
    assert tki["value"].iloc[0] == pytest.approx(1.0)
    gini = evalxai.score(model, ids, 0, r, metric="sparseness", attention_mask=mask)["value"].iloc[0]
    a = np.sort([3.0, 1.0, 1.0, 2.0])
    assert gini == pytest.approx(sum((2 * i - 5) * v for i, v in enumerate(a, 1)) / (4 * a.sum()), abs=1e-12)


def test_plausibility_ties_by_hand():
    """A constant map over 4 tokens, rationale of 2: hits ~ hypergeometric (1/6, 4/6, 1/6); F1 = 1/2, IOU = 4/6 x 1/3
    + 1/6 x 1 = 7/18, AUPRC = 1/2; k = 1: F1 = 2 (1/2) / 3; k = 3: F1 = 2 (3/2) / 5."""
    model = bag()
    ids = torch.tensor([[4, 5, 6, 7]])
    r = torch.ones(1, 4, dtype=torch.float64)
    gt = torch.tensor([[True, False, True, False]])
    got = {m: evalxai.score(model, ids, 0, r, metric=m, masks=gt)["value"].iloc[0]
           for m in ("token_f1", "token_iou", "auprc")}
    assert got == pytest.approx({"token_f1": 0.5, "token_iou": 7 / 18, "auprc": 0.5}, abs=1e-12)
    for k, f1 in ((1, 1 / 3), (3, 3 / 5), (0.5, 0.5)):
        assert evalxai.score(model, ids, 0, r, metric="token_f1", masks=gt, k=k)["value"].iloc[0] == \
            pytest.approx(f1, abs=1e-12)


def test_auprc_equals_sklearn_with_ties():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 4, (6, 12), generator=g).double()
    gt = torch.rand(6, 12, generator=g) > 0.6
    gt[:, 0] = True
    ids = torch.randint(1, 20, (6, 12), generator=g)
    got = evalxai.score(bag(), ids, 0, r, metric="auprc", masks=gt)["value"].to_numpy()
    want = [average_precision_score(gt[i].numpy(), r[i].numpy()) for i in range(6)]
    np.testing.assert_allclose(got, want, atol=1e-12)


# ---------------------------------------------------------------- padding and batch independence

ALL = (*TOKEN_METRICS, *MASK_METRICS, *MAP_METRICS)


def _score_all(model, ids, target, r, mask, gt):
    out = {}
    for m in ALL:
        kw = {"masks": gt} if "masks" in get_metric(m).needs else {}
        out[m] = evalxai.score(model, ids, target, r, metric=m, attention_mask=mask, **kw)
    return out


@pytest.mark.parametrize("kind", ["bag", "transformer"])
def test_a_sequence_alone_and_in_a_padded_batch_give_the_same_rows(kind):
    if kind == "bag":
        model, (ids, mask, target) = bag(), batch()
    else:
        torch.manual_seed(0)
        model = TinyTextClassifier().double().eval()
        ids, mask, target = batch()
    gt = torch.zeros_like(ids, dtype=torch.bool)
    gt[:, 1:3] = True
    r = evalxai.explain(model, ids, target, method="gradient_x_input", attention_mask=mask)
    r = r + (1 - mask) * 5.0  # relevance on padding must not count
    both = _score_all(model, ids, target, r, mask, gt)
    for n in range(3):
        length = int(mask[n].sum())
        alone = _score_all(model, ids[n:n + 1, :length], target[n:n + 1], r[n:n + 1, :length], None,
                           gt[n:n + 1, :length])
        in_batch = _score_all(model, ids[n:n + 1], target[n:n + 1], r[n:n + 1], mask[n:n + 1], gt[n:n + 1])
        for m in ALL:
            want = both[m][both[m]["sample"] == n].reset_index(drop=True).assign(sample=0)
            for got, what in ((alone[m], "alone"), (in_batch[m], "alone with its padding")):
                pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_exact=False, rtol=1e-10,
                                              atol=1e-12, obj=f"{m} sample {n} {what} vs the batch")


def test_budget_does_not_change_the_rows():
    model, (ids, mask, target) = bag(), batch()
    r = contributions(model, ids, target)
    want = evalxai.score(model, ids, target, r, metric="token_flipping", attention_mask=mask)
    with evalxai.memory_budget(4096):
        got = evalxai.score(model, ids, target, r, metric="token_flipping", attention_mask=mask)
    pd.testing.assert_frame_equal(got, want)


# ---------------------------------------------------------------- costs


@pytest.mark.parametrize("metric,params", [("token_flipping", {}), ("token_flipping", {"per_step": 2, "order": "morf"}),
                                           ("comprehensiveness", {}), ("eraser_sufficiency", {"bins": [0.5]})])
def test_declared_cost_is_the_counted_forwards(metric, params):
    """Rows forwarded through the model per sequence of T tokens equal the registration's cost (probes of one
    sequence, for the output size and the memory per row, on top)."""
    model = bag()
    ids = torch.randint(1, 20, (3, 6), generator=torch.Generator().manual_seed(0))
    r = contributions(model, ids, torch.zeros(3, dtype=torch.long))
    seen = []
    handle = model.register_forward_hook(lambda mod, args, kwargs, out: seen.append(len(out)), with_kwargs=True)
    try:
        evalxai.score(model, ids, 0, r, metric=metric, **params)
    finally:
        handle.remove()
    declared = get_metric(metric).passes(model, ids, params)
    assert declared.explains == 0 and 0 <= sum(seen) - 3 * declared.forwards <= 3, (sum(seen), declared)


def test_bind_fills_the_token_ids_a_run_takes_from_its_dataset():
    """A run passes its dataset's token_ids as data: filled where the metric takes them and the config leaves them
    unset; a direct call falls back on the model's own ids (a Hugging Face config's mask_token_id, or a mask_id
    attribute as here)."""
    from evalxai.binding import bind

    ids = {"pad_id": 0, "mask_id": 1, "unk_id": 2}
    assert bind(get_metric("token_flipping"), {"mask_id": 5}, data=ids) == {"mask_id": 5, "pad_id": 0, "unk_id": 2}
    assert bind(get_metric("sparseness"), {}, data=ids) == {}
    model, (ids_, mask, target) = bag(), batch()
    model.mask_id = 7
    r = contributions(model, ids_, target)
    a = evalxai.score(model, ids_, target, r, metric="comprehensiveness", attention_mask=mask, baseline="mask")
    b = evalxai.score(model, ids_, target, r, metric="comprehensiveness", attention_mask=mask, baseline="pad",
                      pad_id=7)
    pd.testing.assert_series_equal(a["value"], b["value"])


# ---------------------------------------------------------------- refusals


def test_metrics_without_a_meaning_for_tokens_are_refused_with_the_reason():
    model, (ids, mask, target) = bag(), batch()
    r = contributions(model, ids, target)
    for name, why in (("continuity", "translates images"), ("focus", "mosaics"), ("road", "inpaints images"),
                      ("pixel_flipping", "pixels and patches"), ("sufficiency", "eraser_sufficiency")):
        with pytest.raises(ValueError, match=f"metric '{name}' does not score token ids: .*{why}.*token_flipping"):
            evalxai.score(model, ids, target, r, metric=name, attention_mask=mask)
    takes = {n for n, s in METRICS.items() if "tokens" in s.inputs}
    assert set(ALL) <= takes and "continuity" not in takes


def test_token_metrics_on_float_inputs_and_bad_token_arguments_are_refused():
    x = torch.rand(2, 1, 4, 4)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    for name in (*TOKEN_METRICS, "token_f1"):
        with pytest.raises(ValueError, match=f"metric '{name}' takes token ids"):
            evalxai.score(lin, x, 0, x, metric=name)
    with pytest.raises(ValueError, match="attention_mask is for token ids"):
        evalxai.score(lin, x, 0, x, metric="sparseness", attention_mask=torch.ones(2, 16))
    model, (ids, mask, target) = bag(), batch()
    r = contributions(model, ids, target)
    with pytest.raises(ValueError, match="metric 'token_flipping': baseline='mask' needs the mask token's id.* pass "
                                         "mask_id="):
        evalxai.score(model, ids, target, r, metric="token_flipping", attention_mask=mask, baseline="mask")
    with pytest.raises(ValueError, match="bins=\\[0, 0.5\\] of metric 'comprehensiveness'"):
        evalxai.score(model, ids, target, r, metric="comprehensiveness", attention_mask=mask, bins=[0, 0.5])
    with pytest.raises(ValueError, match="per_step=1.5 of metric 'token_flipping'"):
        evalxai.score(model, ids, target, r, metric="token_flipping", attention_mask=mask, per_step=1.5)
    with pytest.raises(ValueError, match="masks of token ids must be a bool tensor"):
        evalxai.score(model, ids, target, r, metric="token_f1", attention_mask=mask, masks=mask)
    with pytest.raises(ValueError, match="attributions of token ids must be a float tensor"):
        evalxai.score(model, ids, target, r[:, :3], metric="sparseness", attention_mask=mask)


# ---------------------------------------------------------------- reference: Hugging Face models


@pytest.mark.reference
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_huggingface_removal_is_the_model_on_the_edited_text(name):
    """On tiny BERT / GPT-2 / Llama classifiers (right-padded batch): comprehensiveness with ``baseline='mask'`` is
    the model, through its own input_ids, on the text with the top tokens' ids replaced by the mask id (attention
    mask kept; not the pad id: GPT-2 / Llama find their last token from input_ids != pad, while the metric keeps a
    replaced token a token and classifies at the mask's last one); with ``removal='delete'`` on the text without
    them, re-padded (GPT-2 / Llama then classify from the new last token); sufficiency likewise with only the top
    tokens; every token metric gives a sequence the same rows alone and in the padded batch (1e-8)."""
    from tests.test_text_explain import _hf_model, _tokens

    model = _hf_model(name)
    ids, mask, target = _tokens()
    r = evalxai.explain(model, ids, target, method="gradient_x_input", attention_mask=mask)
    bins = [0.2, 0.5]

    def p(edited, m):
        with torch.no_grad():
            return model(input_ids=edited, attention_mask=m).logits.softmax(-1)[torch.arange(len(ids)), target]

    full = p(ids, mask)
    for keep_top, metric in ((False, "comprehensiveness"), (True, "eraser_sufficiency")):
        for removal in ("replace", "delete"):
            df = evalxai.score(model, ids, target, r, metric=metric, attention_mask=mask, bins=bins,
                               baseline="mask", mask_id=3, removal=removal)
            per_bin = df[df["measure"].str.endswith("_bin")].sort_values(["sample", "step"])
            want = []
            for b in bins:
                k = torch.ceil(b * mask.sum(1).double()).long().clamp(min=1)
                rank = torch.argsort(torch.argsort(-r.masked_fill(mask == 0, -math.inf), dim=1, stable=True), dim=1)
                top = (rank < k[:, None]) & (mask == 1)
                gone = (mask == 1) & (~top if keep_top else top)
                if removal == "replace":
                    want.append(full - p(ids.masked_fill(gone, 3), mask))
                else:
                    kept = [ids[n][(mask[n] == 1) & ~gone[n]] for n in range(len(ids))]
                    edited = torch.zeros_like(ids)
                    m = torch.zeros_like(mask)
                    for n, t in enumerate(kept):
                        edited[n, :len(t)], m[n, :len(t)] = t, 1
                    want.append(full - p(edited, m))
            want = torch.stack(want, 1).reshape(-1).numpy()
            np.testing.assert_allclose(per_bin["value"].to_numpy(), want, atol=1e-10, err_msg=f"{metric} {removal}")
    for metric in TOKEN_METRICS:
        both = evalxai.score(model, ids, target, r, metric=metric, attention_mask=mask, baseline="pad")  # config's
        for n in range(len(ids)):
            t = int(mask[n].sum())
            alone = evalxai.score(model, ids[n:n + 1, :t], target[n:n + 1], r[n:n + 1, :t], metric=metric,
                                  baseline="pad")
            want = both[both["sample"] == n].reset_index(drop=True).assign(sample=0)
            pd.testing.assert_frame_equal(alone, want, check_exact=False, rtol=1e-8, atol=1e-10,
                                          obj=f"{name} {metric} sample {n}")
