"""``model=text_transformer`` (issue 30): forward from ids equals forward from embeddings, padding is masked, the
engine explains it (a sequence alone and in a right-padded batch give the same map), it is built from and cached for a
text dataset, and it learns ``text_synthetic``."""
from __future__ import annotations

import copy

import pytest
import torch

import evalxai
from evalxai.data import load_dataset
from evalxai.models import build_model, get_model, model_key, train_model
from evalxai.models.zoo import data_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
METHODS = ["attnlrp", "cp_lrp", "gradient_x_input", "integrated_gradients", "lrp_epsilon"]


def _model(pool="cls", t=12):
    torch.manual_seed(0)
    return build_model("text_transformer", (t,), 3, vocab_size=30, pad_id=0, dim=16, heads=2, mlp=32,
                       pool=pool).double().eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 30, (3, 12), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask, torch.tensor([0, 1, 2])


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_ids_and_embeddings_give_the_same_logits_and_padding_is_masked(pool):
    model = _model(pool)
    ids, mask, _ = _batch()
    out = model(ids)
    assert out.shape == (3, 3)
    assert torch.equal(out, model(input_ids=ids, attention_mask=mask))  # the mask from ids != pad_id
    assert torch.allclose(out, model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask),
                          atol=1e-12, rtol=0)
    for i in range(3):  # a sequence alone (cut to its length) has the logits it has in the padded batch
        t = int(mask[i].sum())
        assert torch.allclose(model(ids[i:i + 1, :t]), out[i:i + 1], atol=1e-12, rtol=0)
        other = ids[i:i + 1].clone()
        other[0, t:] = 0 if t == 12 else 7  # what stands behind the padding mask does not count
        assert torch.allclose(model(other, attention_mask=mask[i:i + 1]), out[i:i + 1], atol=1e-12, rtol=0)
    # embeddings without a mask: every position is a token (here: the padded positions count and change the logits)
    assert not torch.allclose(model(inputs_embeds=model.embed(ids))[2], out[2])


@pytest.mark.parametrize("method", METHODS)
def test_explain_alone_equals_padded_batch(method):
    """Every method explains the word embeddings; padding gets 0, each row of a right-padded batch its map alone
    (float64, <= 1e-6 of max |R|; measured <= 2e-15); the model is left as it was."""
    model = _model()
    before = copy.deepcopy(model.state_dict())
    ids, mask, target = _batch()
    r = evalxai.explain(model, ids, target, method=method, attention_mask=mask)
    assert r.shape == ids.shape and torch.isfinite(r).all() and (r[mask == 0] == 0).all()
    for i in range(3):
        t = int(mask[i].sum())
        alone = evalxai.explain(model, ids[i:i + 1, :t], target[i:i + 1], method=method)
        assert float((r[i, :t] - alone[0]).abs().max() / alone.abs().max()) <= 1e-6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_attnlrp_is_its_own_rule_and_gradient_x_input_the_formula():
    """gradient_x_input = sum_D e * d logit / d e (explicit); attnlrp differs from it (its rules act)."""
    model = _model()
    ids, mask, target = _batch()
    e = model.embed(ids).detach().requires_grad_(True)
    model(inputs_embeds=e, attention_mask=mask)[torch.arange(3), target].sum().backward()
    gxi = evalxai.explain(model, ids, target, method="gradient_x_input", attention_mask=mask)
    assert torch.allclose(gxi, (e * e.grad).sum(-1) * mask, atol=1e-12)
    lrp = evalxai.explain(model, ids, target, method="attnlrp", attention_mask=mask)
    assert (lrp - gxi).abs().max() > 1e-3 * gxi.abs().max()


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="needs vocab_size"):
        build_model("text_transformer", (12,), 2)
    model = _model()
    with pytest.raises(ValueError, match="exceed its 12 positions"):
        model(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        model()
    text = load_dataset("text_synthetic", n_train=8, n_test=4)
    with pytest.raises(ValueError, match="takes image inputs but dataset=text_synthetic is text"):
        data_inputs("lenet", text)
    with pytest.raises(ValueError, match="takes text inputs but dataset=digits is image"):
        data_inputs("text_transformer", load_dataset("digits"))
    x, y = text.train_tensors()
    with pytest.raises(ValueError, match="augment_shift=0"):
        train_model(_model(t=24).float(), x, y, epochs=1, augment_shift=2, progress=False)


def test_model_key_holds_the_vocabulary(tmp_path):
    """The data fingerprint (vocabulary included) keys the trained model: another tokenizer or variant is another
    model."""
    a = load_dataset("text_synthetic", n_train=8, n_test=4)
    b = load_dataset("text_synthetic", n_train=8, n_test=4, variant="confounder")
    cfg = {"name": "text_transformer"}
    assert "vocab" in a.meta["tokenizer"] and model_key(a, cfg, {}, 0) != model_key(b, cfg, {}, 0)
    assert data_inputs("text_transformer", a) == {"vocab_size": len(a.tokenizer.vocab), "pad_id": 0}


@pytest.mark.slow
def test_learns_text_synthetic_and_is_cached(tmp_path):
    """A small text_synthetic (plain, 600 train sequences) is learnt to > 95 % test accuracy in 4 epochs; the second
    call is a cache hit with the same weights."""
    d = load_dataset("text_synthetic", n_train=600, n_test=200)
    cfg = {"name": "text_transformer", "arch": {"dim": 32, "heads": 2, "mlp": 64},
           "train": {"epochs": 4, "batch_size": 32, "lr": 0.003, "weight_decay": 0.0001, "augment_shift": 0}}
    model, info = get_model(d, cfg, seed=0, cache_dir=tmp_path, progress=False)
    assert not info["cache_hit"] and info["test_accuracy"] > 0.95, info
    again, info2 = get_model(d, cfg, seed=0, cache_dir=tmp_path, progress=False)
    assert info2["cache_hit"] and info2["test_accuracy"] == info["test_accuracy"]
    assert all(torch.equal(u, v) for u, v in zip(model.state_dict().values(), again.state_dict().values()))
    x, _ = d.test_items(range(8))
    r = evalxai.explain(model, x, model(x).argmax(1), method="attnlrp", attention_mask=d.attention_mask(x))
    assert r.shape == x.shape and (r[d.attention_mask(x) == 0] == 0).all()


@pytest.mark.reference
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_huggingface_sequence_classifier_from_a_local_folder(tmp_path, arch):
    """model=huggingface model.name=<folder> on a text dataset: a tiny random BERT / GPT-2 sequence classifier saved
    to tmp_path is read with local_files_only (its saved weights: no training), called on the dataset's ids with the
    mask from the pad id, and explained; each row of a padded batch gets its map alone (float64, <= 1e-6)."""
    transformers = pytest.importorskip("transformers")
    import pandas as pd

    texts = ["a good film", "great plot and good acting", "a bad film", "awful plot , bad acting, boring", "fun",
             "not good at all , bad", "really great fun", "boring bad plot", "good", "bad"] * 2
    labels = ["pos", "pos", "neg", "neg", "pos", "neg", "pos", "neg", "pos", "neg"] * 2
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for t in texts for w in t.replace(",", " ,")
                                                                    .split()})]
    tok_dir, model_dir = tmp_path / "tok", tmp_path / arch
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(tok_dir)
    torch.manual_seed(0)
    if arch == "bert":
        config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                                         num_labels=2, attn_implementation="eager")
        hf = transformers.BertForSequenceClassification(config)
    else:
        config = transformers.GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                         num_labels=2, attn_implementation="eager")
        hf = transformers.GPT2ForSequenceClassification(config)
    hf.save_pretrained(model_dir)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "t.csv", index=False)
    d = load_dataset("text_files", path=str(tmp_path / "t.csv"), n_test=6, length=12, tokenizer=str(tok_dir))
    model, info = get_model(d, {"library": "huggingface", "name": str(model_dir)}, {}, seed=0, cache_dir=tmp_path,
                            progress=False)
    assert info["kind"] == "huggingface" and not info["trained"] and info["class"].endswith("ForSequenceClassification")
    x, _ = d.test_items(range(6))
    mask = d.attention_mask(x)
    inner = model.model
    assert torch.allclose(model(x), inner(input_ids=x, attention_mask=mask).logits, atol=1e-6)
    model = model.double()
    target = torch.zeros(6, dtype=torch.long)
    r = evalxai.explain(model, x, target, method="attnlrp", attention_mask=mask)
    assert (r[mask == 0] == 0).all() and torch.isfinite(r).all()
    for i in range(6):
        t = int(mask[i].sum())
        alone = evalxai.explain(model, x[i:i + 1, :t], target[i:i + 1], method="attnlrp")
        assert float((r[i, :t] - alone[0]).abs().max() / alone.abs().max()) <= 1e-6
    with pytest.raises(ValueError, match="classifies images, the dataset is text"):
        get_model(d, {"library": "timm", "name": "resnet18"}, {}, cache_dir=tmp_path, progress=False)
