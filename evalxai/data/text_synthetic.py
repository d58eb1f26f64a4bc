"""``text_synthetic``: a generated sentiment-like task with planted decisive words and known rationales, in the
spirit of XAI-TRIS (Clark, Wilming & Haufe 2024: ground truth by construction, with distractor and confounder
variants that an explanation can fall for).

Two classes, ``negative`` (0) and ``positive`` (1), balanced, generated offline and deterministically from ``seed``
(train and test from their own streams). A sequence is ``[CLS]`` and ``L - 1`` words, L drawn uniformly from
[``min_length``, ``length``], right-padded with ``[PAD]`` to ``length`` tokens. Its words are neutral filler
(``FILLER``), ``k`` key words of its class (k uniform in 1..``n_keys``, each drawn from the class's six words in
``KEYS``) and, per variant:

- ``plain``: nothing else. The key words decide the label.
- ``distractor``: ``d`` negated key words (d uniform in 1..``n_keys``), each the pair ``not <key word>``, the key
  word of either class at random, independent of the label: the other class's words planted too, but negated, and
  negated words of the sequence's own class as well, so that no negated word says anything about the label. The
  label is the class of the un-negated key words; a model must read ``not`` to reach high accuracy.
- ``confounder``: the word ``friday`` (``CONFOUNDER``), which is no key word, is planted in a train sequence of
  class 1 with probability ``confounder_rate`` and of class 0 with 1 - ``confounder_rate``: correlated with the
  label in training but never needed (the key words alone decide). In the test split it occurs with probability
  0.5 whatever the class, so a model that leans on it loses test accuracy.

The units (one key word, a ``not`` pair, the confounder, a filler word) are shuffled into a random order.

Masks (``test_masks``, (n, T) bool): in every variant exactly the positions of the un-negated key words of the
sequence's class, the tokens that decide its label. Never ``[CLS]``, padding, filler, ``not``, the negated key words
(distractor) or ``friday`` (confounder), whose test distribution does not depend on the class.
"""
from __future__ import annotations

import numpy as np
import torch

from evalxai.data.registry import register
from evalxai.data.text import TextDataset, pad_rows
from evalxai.data.tokenizers import SPECIALS, WordTokenizer

VARIANTS = ("plain", "distractor", "confounder")
CLASSES = ("negative", "positive")
KEYS = (("bad", "awful", "terrible", "boring", "poor", "dull"),
        ("good", "great", "excellent", "wonderful", "superb", "fun"))
NEGATION = "not"
CONFOUNDER = "friday"
FILLER = ("the", "a", "movie", "film", "plot", "story", "actor", "actors", "scene", "scenes", "was", "is", "were",
          "and", "with", "this", "that", "it", "of", "in", "on", "director", "music", "ending", "characters",
          "script", "camera", "very", "quite", "really", "some", "all", "one", "two", "time", "hour", "watched",
          "saw", "cast", "role", "dialogue", "my", "friends", "evening", "city", "sound", "its", "at")
VOCAB = (*SPECIALS, *FILLER, *KEYS[0], *KEYS[1], NEGATION, CONFOUNDER)


def _check(variant, n_train, n_test, length, min_length, n_keys, confounder_rate) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"dataset.variant={variant!r} is not one of {list(VARIANTS)} (dataset=text_synthetic)")
    for value, what, low in ((n_train, "n_train", 2), (n_test, "n_test", 2), (n_keys, "n_keys", 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"dataset.{what}={value!r} must be an integer >= {low} (dataset=text_synthetic)")
    units = 1 + n_keys + (2 * n_keys if variant == "distractor" else 0) + (variant == "confounder")
    if not isinstance(min_length, int) or not isinstance(length, int) or not units <= min_length <= length:
        raise ValueError(f"dataset.min_length={min_length!r} and dataset.length={length!r} must be integers with "
                         f"{units} <= min_length <= length: [CLS] and up to {units - 1} planted words of the "
                         f"{variant} variant with n_keys={n_keys} must fit (dataset=text_synthetic)")
    if not (isinstance(confounder_rate, (int, float)) and 0 <= confounder_rate <= 1):
        raise ValueError(f"dataset.confounder_rate={confounder_rate!r} must be a probability in [0, 1] "
                         "(dataset=text_synthetic)")


def generate(variant: str, n: int, length: int, min_length: int, n_keys: int, confounder_rate: float | None,
             rng: np.random.Generator) -> tuple[list[list[int]], np.ndarray, list[list[int]]]:
    """(token id rows with [CLS] first, unpadded; labels (n,) int64; the positions of each row's decisive key words).

    confounder_rate: P(confounder | class 1) = rate, P(confounder | class 0) = 1 - rate; None: 0.5 for both (test).
    Every random draw is made for all rows at once; the rows are then assembled from their shuffled units.
    """
    index = {w: i for i, w in enumerate(VOCAB)}
    keys = np.array([[index[w] for w in ks] for ks in KEYS])
    filler = np.array([index[w] for w in FILLER])
    cls, neg, conf = index["[CLS]"], index[NEGATION], index[CONFOUNDER]
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    words = rng.integers(min_length, length + 1, n) - 1
    n_key = rng.integers(1, n_keys + 1, n)
    key_words = keys[y[:, None], rng.integers(0, keys.shape[1], (n, n_keys))]
    n_neg = rng.integers(1, n_keys + 1, n) if variant == "distractor" else np.zeros(n, dtype=np.int64)
    neg_words = keys[rng.integers(0, 2, (n, n_keys)), rng.integers(0, keys.shape[1], (n, n_keys))]
    p = np.full(n, 0.5) if confounder_rate is None else np.where(y == 1, confounder_rate, 1 - confounder_rate)
    has_conf = (rng.random(n) < p) if variant == "confounder" else np.zeros(n, dtype=bool)
    fill = filler[rng.integers(0, len(filler), (n, length))]
    order = np.argsort(rng.random((n, length)), axis=1)  # a random order of each row's units
    rows, decisive = [], []
    for i in range(n):
        units: list[tuple[int, ...]] = [(int(w),) for w in key_words[i, :n_key[i]]]  # the decisive ones first
        units += [(neg, int(w)) for w in neg_words[i, :n_neg[i]]]
        units += [(conf,)] * int(has_conf[i])
        units += [(int(w),) for w in fill[i, :words[i] - n_key[i] - 2 * n_neg[i] - int(has_conf[i])]]
        row, marks = [cls], []
        for j in order[i][order[i] < len(units)]:
            if j < n_key[i]:
                marks.append(len(row))
            row.extend(units[j])
        rows.append(row)
        decisive.append(marks)
    return rows, y, decisive


@register("text_synthetic", masks=True)
def load_text_synthetic(variant: str = "plain", n_train: int = 8000, n_test: int = 500, length: int = 24,
                        min_length: int = 8, n_keys: int = 2, confounder_rate: float = 0.9, seed: int = 0,
                        cache_dir: str | None = None) -> TextDataset:
    """A seeded sentiment-like text task whose decisive words are known (module docstring: variants and masks)."""
    _check(variant, n_train, n_test, length, min_length, n_keys, confounder_rate)
    tokenizer = WordTokenizer(VOCAB)
    splits = {}
    for split, n, stream in (("train", n_train, 0), ("test", n_test, 1)):
        rng = np.random.default_rng([seed, stream])
        rate = confounder_rate if split == "train" else None
        rows, y, decisive = generate(variant, n, length, min_length, n_keys, rate, rng)
        ids, _ = pad_rows(rows, length, tokenizer.pad_id)
        masks = torch.zeros(n, length, dtype=torch.bool)
        for i, marks in enumerate(decisive):
            masks[i, marks] = True
        splits[split] = (ids, torch.from_numpy(y), masks)
    meta = {"source": "text_synthetic", "variant": variant, "n_train": n_train, "n_test": n_test, "length": length,
            "min_length": min_length, "n_keys": n_keys, "seed": seed, "generator": 1,
            **({"confounder_rate": float(confounder_rate)} if variant == "confounder" else {})}
    mask_meta = {"kind": "decisive key words",
                 "marks": "the un-negated key words of the sequence's class (they decide the label)",
                 "not_marked": {"plain": "[CLS], filler, padding",
                                "distractor": "[CLS], filler, padding, 'not' and the negated key words (either class, "
                                              "independent of the label)",
                                "confounder": "[CLS], filler, padding and the confounder 'friday' (correlated with "
                                              "the label in train only)"}[variant]}
    return TextDataset("text_synthetic", splits["train"][0], splits["train"][1], splits["test"][0],
                       splits["test"][1], tokenizer, CLASSES, meta, masks_test=splits["test"][2], mask_meta=mask_meta)
