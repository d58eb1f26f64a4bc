"""Text data (issue 30): ``text_synthetic`` (seeded, planted decisive words, masks, padding), ``text_files`` (a
folder, a CSV and a JSONL written here), the word tokenizer and, in the reference environment, a Hugging Face
tokenizer saved at test time."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evalxai.data import Dataset, load_dataset, provides_masks
from evalxai.data.text_synthetic import CONFOUNDER, KEYS, NEGATION
from evalxai.data.tokenizers import SPECIALS, WordTokenizer, words

SMALL = {"n_train": 200, "n_test": 100}


def synthetic(variant="plain", **kw):
    return load_dataset("text_synthetic", variant=variant, **{**SMALL, **kw})


@pytest.mark.parametrize("variant", ["plain", "distractor", "confounder"])
def test_synthetic_is_deterministic_by_seed(variant):
    a, b, c = synthetic(variant), synthetic(variant), synthetic(variant, seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert torch.equal(a.test_masks(range(100)), b.test_masks(range(100)))
    assert not torch.equal(a.x_test, c.x_test)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.modality == "text" and Dataset.modality == "image" and provides_masks("text_synthetic")


@pytest.mark.parametrize("variant", ["plain", "distractor", "confounder"])
def test_masks_mark_exactly_the_decisive_key_words(variant):
    """Recomputed from the tokens: a mask marks the key words of the label's class not preceded by 'not', and
    nothing else; the label is decided by them (every un-negated key word is of the label's class)."""
    d = synthetic(variant)
    x, y = d.test_items(range(len(d)))
    masks = d.test_masks(range(len(d)))
    for row, label, mask in zip(x, y, masks):
        toks = d.tokenizer.decode(row.tolist())
        negated = [j > 0 and toks[j - 1] == NEGATION for j in range(len(toks))]
        want = [t in KEYS[int(label)] and not n for t, n in zip(toks, negated)]
        assert mask.tolist() == want
        assert not any(t in KEYS[1 - int(label)] and not n for t, n in zip(toks, negated))  # no un-negated rival
        assert 1 <= sum(want) <= 2 and toks[0] == "[CLS]"
    if variant == "distractor":  # negated words of both classes, in both classes
        neg = [(int(lab), toks[j + 1]) for row, lab in zip(x, y) for toks in [d.tokenizer.decode(row.tolist())]
               for j in range(len(toks) - 1) if toks[j] == NEGATION]
        assert {lab for lab, _ in neg} == {0, 1}
        assert any(t in KEYS[0] for _, t in neg) and any(t in KEYS[1] for _, t in neg)


def test_confounder_follows_the_label_in_train_only():
    d = synthetic("confounder", n_train=2000, n_test=2000)
    conf = d.tokenizer.index[CONFOUNDER]
    train = (d.x_train == conf).any(1).float()
    test = (d.x_test == conf).any(1).float()
    assert train[d.y_train == 1].mean() > 0.85 and train[d.y_train == 0].mean() < 0.15
    assert abs(test[d.y_test == 1].mean() - 0.5) < 0.05 and abs(test[d.y_test == 0].mean() - 0.5) < 0.05
    assert not d.test_masks(range(len(d)))[d.x_test == conf].any()


def test_padding_lengths_and_attention_mask():
    d = synthetic(length=20, min_length=6)
    x, _ = d.test_items(range(len(d)))
    mask = d.attention_mask(x)
    assert x.dtype == torch.int64 and x.shape == (100, 20) and d.input_shape == (20,)
    assert mask.dtype == torch.int64 and torch.equal(mask, (x != d.tokenizer.pad_id).long())
    lengths = mask.sum(1)
    assert lengths.min() >= 6 and lengths.max() <= 20 and len(set(lengths.tolist())) > 5
    # right-padded: tokens first, then padding only
    assert torch.equal(mask, (torch.arange(20)[None] < lengths[:, None]).long())
    assert d.tokens(x[0]) == d.tokenizer.decode(x[0, :lengths[0]].tolist())
    assert d.token_ids == {"pad_id": 0, "mask_id": 3, "unk_id": 1}
    assert d.mean is None and torch.equal(d.normalize(x), x)
    with pytest.raises(ValueError, match="token baseline"):
        d.mean_image()


def test_train_tensors_and_pool_are_ids():
    d = synthetic()
    x, y = d.train_tensors()
    assert x.dtype == torch.int64 and x.shape == (200, 24) and y.dtype == torch.int64
    assert sorted(np.bincount(y.numpy()).tolist()) == [100, 100]
    px, py = d.pool(20, seed=0)
    assert px.dtype == torch.int64 and px.shape == (20, 24)


def test_synthetic_errors_name_the_field():
    with pytest.raises(ValueError, match="dataset.variant='xor'"):
        synthetic("xor")
    with pytest.raises(ValueError, match="min_length"):
        synthetic("distractor", min_length=5)


def test_word_tokenizer_round_trip_and_vocabulary():
    texts = ["The movie was good, really good!", "A bad movie.", "bad bad plot"]
    tok = WordTokenizer.build(texts, min_freq=1)
    assert tuple(tok.vocab[:4]) == SPECIALS and (tok.pad_id, tok.unk_id, tok.cls_id, tok.mask_id) == (0, 1, 2, 3)
    assert tok.vocab[4:7] == ["bad", "good", "movie"]  # most frequent first (3, 2, 2), ties alphabetical
    ids = tok.encode("The movie was GOOD, zebra!")
    assert tok.decode(ids) == ["[CLS]", "the", "movie", "was", "good", ",", "[UNK]", "!"]
    assert WordTokenizer.build(texts, min_freq=2).vocab == [*SPECIALS, "bad", "good", "movie"]
    assert WordTokenizer.build(texts, max_vocab=6).vocab == [*SPECIALS, "bad", "good"]
    cased = WordTokenizer.build(texts, lowercase=False)
    assert "The" in cased.vocab and "the" not in cased.vocab


TEXTS = {"neg": ["a bad film", "awful plot, bad acting", "bad bad bad", "boring and bad", "not good at all"],
         "pos": ["a good film", "great plot", "good good good", "fun and good", "really great acting"]}


RATIONALE = ("bad", "awful", "boring", "good", "great", "fun")


def _first_key(text):
    return next((w for w in words(text) if w in RATIONALE), None)


def _frame():
    """Rows with a rationale: the character span of the text's first sentiment word (none when it has none)."""
    rows = []
    for lab, ts in TEXTS.items():
        for t in ts:
            key = _first_key(t)
            span = [] if key is None else [[t.index(key), t.index(key) + len(key)]]
            rows.append({"review": t, "stars": lab, "why": json.dumps(span)})
    return rows


def test_text_files_from_a_folder(tmp_path):
    for lab, ts in TEXTS.items():
        (tmp_path / lab).mkdir()
        for i, t in enumerate(ts):
            (tmp_path / lab / f"{i}.txt").write_text(t, encoding="utf-8")
    d = load_dataset("text_files", path=str(tmp_path), n_test=4, length=6)
    assert d.classes == ["neg", "pos"] and len(d) == 4 and d.input_shape == (6,)
    assert sorted(d.y_test.tolist()) == [0, 0, 1, 1] and len(d.y_train) == 6
    assert not d.has_masks and d.test_masks([0]) is None
    # the vocabulary holds the train split's words only
    train_words = {w for row in d.x_train for w in d.tokens(row)}
    assert set(d.tokenizer.vocab[4:]) == train_words - set(SPECIALS)
    x, y = d.test_items(range(4))
    for row, label in zip(x, y):  # each test row is [CLS] and the first 5 words of a text of its class, or [UNK]
        known = [[w if w in d.tokenizer.index else "[UNK]" for w in words(t)][:5] for t in TEXTS[d.classes[label]]]
        assert d.tokens(row)[1:] in known
    again = load_dataset("text_files", path=str(tmp_path), n_test=4, length=6)
    assert torch.equal(again.x_test, d.x_test) and again.fingerprint() == d.fingerprint()
    assert load_dataset("text_files", path=str(tmp_path), n_test=4, length=6, seed=1).fingerprint() != d.fingerprint()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_files_from_csv_and_jsonl_with_rationales(tmp_path, fmt):
    import pandas as pd

    path = tmp_path / f"reviews.{fmt}"
    frame = pd.DataFrame(_frame())
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_json(path, orient="records", lines=True)
    d = load_dataset("text_files", path=str(path), text_column="review", label_column="stars",
                     rationale_column="why", n_test=0.4, length=8)
    assert d.classes == ["neg", "pos"] and len(d) == 4 and provides_masks("text_files", {"rationale_column": "why"})
    masks = d.test_masks(range(len(d)))
    x, _ = d.test_items(range(len(d)))
    assert masks.sum() >= 3
    for row, mask in zip(x, masks):  # the first sentiment word's token, and nothing else
        toks = d.tokens(row)
        text = next(t for ts in TEXTS.values() for t in ts
                    if [w if w in d.tokenizer.index else "[UNK]" for w in words(t)] == toks[1:])
        want = [False] * 8
        if _first_key(text) is not None:
            want[1 + words(text).index(_first_key(text))] = True
        assert mask.tolist() == want
    with pytest.raises(ValueError, match="no column \\['text', 'label'\\]"):
        load_dataset("text_files", path=str(path))


def test_text_files_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="needs dataset.path"):
        load_dataset("text_files")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither a folder nor"):
        load_dataset("text_files", path=str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match="no class folders"):
        load_dataset("text_files", path=str(tmp_path))


@pytest.mark.reference
def test_text_files_with_a_hugging_face_tokenizer(tmp_path):
    """A BERT word-piece tokenizer written to tmp_path (vocabulary from the test's words) tokenizes the CSV; its
    [CLS] / [SEP] / [PAD] ids are the dataset's, rationales are read through the fast tokenizer's offsets."""
    transformers = pytest.importorskip("transformers")
    import pandas as pd

    words = sorted({w for ts in TEXTS.values() for t in ts for w in t.replace(",", " ,").split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tok_dir = tmp_path / "tok"
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(tok_dir)
    path = tmp_path / "reviews.csv"
    pd.DataFrame(_frame()).to_csv(path, index=False)
    d = load_dataset("text_files", path=str(path), text_column="review", label_column="stars",
                     rationale_column="why", n_test=4, length=8, tokenizer=str(tok_dir))
    assert d.token_ids == {"pad_id": 0, "mask_id": 4, "unk_id": 1} and d.tokenizer.cls_id == 2
    x, _ = d.test_items(range(len(d)))
    toks = d.tokens(x[0])
    assert toks[0] == "[CLS]" and toks[-1] == "[SEP]" and d.tokenizer.encode("good film") == [2, vocab.index("good"),
                                                                                               vocab.index("film"), 3]
    masks = d.test_masks(range(len(d)))
    for row, mask in zip(x, masks):  # special tokens never marked
        assert not mask[(row == 2) | (row == 3) | (row == 0)].any()
    assert masks.any()
