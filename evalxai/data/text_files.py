"""``text_files``: a user's labelled texts, from a folder with one sub-folder of ``.txt`` files per class or from a
``.csv`` / ``.jsonl`` file with a text and a label column.

The texts are split into train and test by ``stratified_split`` (``n_test``: a count, or a fraction below 1; seeded),
then tokenized: ``tokenizer: word`` builds a word vocabulary from the train split alone (lowercased, words and
punctuation, ``min_freq``, ``max_vocab``, special tokens ``[PAD] [UNK] [CLS] [MASK]``; ``evalxai.data.tokenizers``),
any other value is a local folder of a Hugging Face tokenizer. Rows are cut to ``length`` tokens and right-padded.
Classes: the sub-folder names, or the sorted distinct labels of the column.

Rationales (optional, CSV / JSONL only): ``rationale_column`` names a column of character spans ``[[start, end],
...]`` (end exclusive; a JSON string in a CSV) in the row's text; a token is in the rationale when its characters
overlap a span. The test split's masks then mark those tokens (needs the word tokenizer or a fast Hugging Face
tokenizer, which report character offsets).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from evalxai.data.base import file_signature, stratified_split
from evalxai.data.registry import register
from evalxai.data.text import TextDataset, pad_rows
from evalxai.data.tokenizers import WORDS, HFTokenizer, WordTokenizer, load_tokenizer

log = logging.getLogger(__name__)
SUFFIXES = (".csv", ".jsonl")


def read_texts(path: Path, text_column: str, label_column: str, rationale_column: str | None
               ) -> tuple[list[str], list, list | None, list[Path]]:
    """(texts, labels, rationale spans or None, the files read) of a folder of class folders or a CSV / JSONL."""
    if path.is_dir():
        if rationale_column:
            raise ValueError(f"dataset.rationale_column={rationale_column} needs a .csv or .jsonl file; {path} is a "
                             "folder (dataset=text_files)")
        classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        files = {c: sorted((path / c).glob("*.txt")) for c in classes}
        if not classes or not any(files.values()):
            raise ValueError(f"dataset.path={path} holds no class folders of .txt files (dataset=text_files): give "
                             "<path>/<class>/<name>.txt, or a .csv / .jsonl file")
        texts = [f.read_text(encoding="utf-8") for c in classes for f in files[c]]
        labels = [c for c in classes for _ in files[c]]
        return texts, labels, None, [f for c in classes for f in files[c]]
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"dataset.path={path} is neither a folder nor a {' / '.join(SUFFIXES)} file "
                         "(dataset=text_files)")
    import pandas as pd

    frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_json(path, lines=True)
    wanted = [c for c in (text_column, label_column, rationale_column) if c]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} has no column {missing} (columns: {list(frame.columns)}): set dataset.text_column / "
                         "dataset.label_column / dataset.rationale_column (dataset=text_files)")
    spans = None
    if rationale_column:
        spans = [json.loads(s) if isinstance(s, str) else ([] if s is None else s) for s in frame[rationale_column]]
    return [str(t) for t in frame[text_column]], frame[label_column].tolist(), spans, [path]


def token_spans(tokenizer: WordTokenizer | HFTokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids as ``encode`` gives them, the character span (start, end) of each; special tokens (0, 0))."""
    if isinstance(tokenizer, WordTokenizer):
        source = text.lower() if tokenizer.lowercase else text  # lowercasing keeps offsets (one char to one)
        found = list(WORDS.finditer(source)) if len(source) == len(text) else None
        if found is None:
            raise ValueError("a text changes length when lowercased: set dataset.lowercase=false to use rationales")
        return tokenizer.encode(text), [(0, 0)] + [m.span() for m in found]
    if not getattr(tokenizer.tok, "is_fast", False):
        raise ValueError(f"rationales need character offsets, which the slow tokenizer in {tokenizer.path} does not "
                         "give: save a fast tokenizer (tokenizers library)")
    enc = tokenizer.tok(text, add_special_tokens=True, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def rationale_mask(spans: list[tuple[int, int]], marked: list, length: int, where: str) -> np.ndarray:
    """(length,) bool: tokens whose characters overlap a rationale span [start, end)."""
    out = np.zeros(length, dtype=bool)
    for span in marked:
        if len(span) != 2 or not 0 <= int(span[0]) <= int(span[1]):
            raise ValueError(f"{where}: rationale span {span} is not [start, end) with 0 <= start <= end")
        a, b = int(span[0]), int(span[1])
        for j, (s, e) in enumerate(spans[:length]):
            out[j] |= e > s and s < b and e > a
    return out


@register("text_files", masks=lambda params: bool(params.get("rationale_column")))
def load_text_files(path: str | None = None, text_column: str = "text", label_column: str = "label",
                    rationale_column: str | None = None, n_test: float = 0.2, seed: int = 0, length: int = 64,
                    tokenizer: str = "word", lowercase: bool = True, min_freq: int = 1, max_vocab: int | None = 20000,
                    cache_dir: str | None = None) -> TextDataset:
    """Labelled texts from a folder of class folders or a CSV / JSONL file, split, tokenized and padded (module
    docstring)."""
    if not path:
        raise ValueError("dataset=text_files needs dataset.path=DIR (one folder of .txt files per class) or a .csv / "
                         ".jsonl file with text and label columns")
    root = Path(str(path)).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"dataset.path={path} does not exist (dataset=text_files)")
    if not isinstance(length, int) or length < 2:
        raise ValueError(f"dataset.length={length!r} must be an integer >= 2 (tokens per row) (dataset=text_files)")
    texts, labels, spans, files = read_texts(root, text_column, label_column, rationale_column)
    classes = sorted(set(labels), key=lambda v: (str(type(v)), v))
    y = np.array([classes.index(v) for v in labels], dtype=np.int64)
    if len(classes) < 2:
        raise ValueError(f"dataset.path={path} holds one class ({classes}): a classifier needs two or more")
    train, test = stratified_split(y, n_test, seed)
    tok = load_tokenizer(tokenizer, (texts[i] for i in train), min_freq, max_vocab, lowercase)
    ids, masks, cut = {}, None, 0
    for split, idx in (("train", train), ("test", test)):
        rows = [tok.encode(texts[i]) for i in idx]
        ids[split], c = pad_rows(rows, length, tok.pad_id)
        cut += c
    if spans is not None:
        masks = torch.from_numpy(np.stack([rationale_mask(token_spans(tok, texts[i])[1], spans[i], length,
                                                          f"{root} row {i}") for i in test]))
    if cut:
        log.warning("dataset=text_files: %d of %d texts are longer than dataset.length=%d tokens and were cut", cut,
                    len(texts), length)
    meta = {"source": "text_files", "path": str(root), "files": file_signature(files, root if root.is_dir() else None),
            "text_column": text_column, "label_column": label_column, "rationale_column": rationale_column,
            "n_test": n_test, "seed": seed, "length": length, "tokenizer_source": tokenizer,
            "lowercase": lowercase, "min_freq": min_freq, "max_vocab": max_vocab}
    mask_meta = {"kind": "rationale", "marks": f"tokens overlapping the character spans of column {rationale_column}"} \
        if masks is not None else {}
    return TextDataset("text_files", ids["train"], torch.from_numpy(y[train]), ids["test"], torch.from_numpy(y[test]),
                       tok, [str(c) for c in classes], meta, masks_test=masks, mask_meta=mask_meta)
