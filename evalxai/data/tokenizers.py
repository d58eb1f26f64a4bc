"""Tokenizers of text datasets: a word-level vocabulary built from the training split (``WordTokenizer``), or a
Hugging Face tokenizer read from a local folder (``HFTokenizer``).

Both offer what a run reads: ``vocab`` (list of token strings, index = id), the special ids ``pad_id``, ``unk_id``,
``mask_id``, ``cls_id`` (None where the tokenizer has no such token), ``encode(text) -> list[int]`` (the ids the
model sees for the text, special tokens included: ``[CLS]`` first for the word tokenizer, the Hugging Face
tokenizer's own, e.g. ``[CLS] ... [SEP]`` for BERT) and ``decode(ids) -> list[str]`` (one string per id: a token,
not a sentence).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from evalxai.core.files import content_key

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[MASK]")  # ids 0, 1, 2, 3 of every word vocabulary
WORDS = re.compile(r"\w+|[^\w\s]")  # a run of word characters, or one punctuation character


class WordTokenizer:
    """Words and punctuation (``\\w+|[^\\w\\s]``), lowercased by default, looked up in ``vocab``: the four special
    tokens ``[PAD] [UNK] [CLS] [MASK]`` (ids 0-3), then the words. Unknown words are ``[UNK]``; ``encode`` puts
    ``[CLS]`` first."""

    def __init__(self, vocab: Sequence[str], lowercase: bool = True):
        vocab = [str(v) for v in vocab]
        if tuple(vocab[:len(SPECIALS)]) != SPECIALS or len(set(vocab)) != len(vocab):
            raise ValueError(f"a word vocabulary starts with {list(SPECIALS)} and holds no token twice, got "
                             f"{vocab[:6]}... ({len(vocab)} tokens) (evalxai.data.tokenizers.WordTokenizer)")
        self.vocab, self.lowercase = vocab, bool(lowercase)
        self.index = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.unk_id, self.cls_id, self.mask_id = 0, 1, 2, 3

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, max_vocab: int | None = None,
              lowercase: bool = True) -> WordTokenizer:
        """The vocabulary of ``texts`` (the training split): the special tokens, then every word seen at least
        ``min_freq`` times, most frequent first (ties alphabetical), at most ``max_vocab`` tokens in all."""
        if int(min_freq) < 1 or (max_vocab is not None and int(max_vocab) <= len(SPECIALS)):
            raise ValueError(f"min_freq={min_freq} must be >= 1 and max_vocab={max_vocab} > {len(SPECIALS)} (the "
                             "special tokens) or null (evalxai.data.tokenizers.WordTokenizer.build)")
        counts = Counter(w for text in texts for w in words(text, lowercase))
        kept = sorted((w for w, c in counts.items() if c >= int(min_freq) and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            kept = kept[: int(max_vocab) - len(SPECIALS)]
        return cls([*SPECIALS, *kept], lowercase)

    def encode(self, text: str) -> list[int]:
        """``[CLS]`` and the ids of the words of ``text`` (``[UNK]`` for words outside the vocabulary)."""
        return [self.cls_id, *(self.index.get(w, self.unk_id) for w in words(text, self.lowercase))]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The token string of each id."""
        return [self.vocab[int(i)] for i in ids]

    @property
    def meta(self) -> dict:
        """What identifies the tokenizer (a trained model's cache key holds it)."""
        return {"kind": "word", "lowercase": self.lowercase, "size": len(self.vocab), "vocab": content_key(self.vocab)}


def words(text: str, lowercase: bool = True) -> list[str]:
    """The word and punctuation tokens of ``text``."""
    return WORDS.findall(text.lower() if lowercase else text)


class HFTokenizer:
    """A Hugging Face tokenizer from a local folder (``AutoTokenizer.from_pretrained(folder, local_files_only=True)``;
    transformers is imported here, only when one is asked for). Padding is its pad token, else its end-of-sequence
    token (GPT-2 has no pad token)."""

    def __init__(self, folder: str | Path):
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"dataset.tokenizer={folder} is not a folder: give 'word' or a folder written by a "
                                    "Hugging Face tokenizer's save_pretrained")
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ImportError(f"dataset.tokenizer={folder} needs transformers: pip install transformers (or use "
                              "dataset.tokenizer=word)") from None
        self.path = path.resolve()
        self.tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        if pad is None:
            raise ValueError(f"the tokenizer in {self.path} has neither a pad nor an end-of-sequence token: add one "
                             "(tokenizer.add_special_tokens({'pad_token': '[PAD]'}) and save_pretrained)")
        self.pad_id = int(pad)
        self.unk_id, self.mask_id, self.cls_id = self.tok.unk_token_id, self.tok.mask_token_id, self.tok.cls_token_id
        self.vocab = self.tok.convert_ids_to_tokens(list(range(len(self.tok))))

    def encode(self, text: str) -> list[int]:
        """The tokenizer's ids of ``text``, its special tokens included."""
        return list(self.tok.encode(text, add_special_tokens=True))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """The token string of each id."""
        return self.tok.convert_ids_to_tokens([int(i) for i in ids])

    @property
    def meta(self) -> dict:
        files = {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file()}
        return {"kind": "huggingface", "class": type(self.tok).__name__, "files": files, "size": len(self.vocab),
                "vocab": content_key(self.vocab)}


def load_tokenizer(tokenizer: str, texts: Iterable[str], min_freq: int = 1, max_vocab: int | None = None,
                   lowercase: bool = True) -> WordTokenizer | HFTokenizer:
    """``tokenizer='word'``: a ``WordTokenizer`` built from ``texts``; otherwise a local Hugging Face folder."""
    if tokenizer == "word":
        return WordTokenizer.build(texts, min_freq, max_vocab, lowercase)
    return HFTokenizer(tokenizer)
