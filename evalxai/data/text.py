"""Text classification data: ``TextDataset``, token ids with their tokenizer behind the ``Dataset`` protocol.

An input is a row of ``T = input_shape[0]`` token ids (int64), right-padded with the tokenizer's ``pad_id``; the
first token is ``[CLS]`` where the tokenizer has one. The "pixels" of text are these ids: ``test_items`` /
``train_tensors`` give them unchanged (``mean = std = None``), so the trainer (``evalxai.models.train``) trains
``model(input_ids)`` and a run explains ``evalxai.explain(model, input_ids, target, attention_mask=...)``.
Ground truth, where a loader has it, is a (n, T) bool mask per sample: True = a token of the rationale.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from evalxai.data.base import ArrayDataset
from evalxai.data.tokenizers import HFTokenizer, WordTokenizer


class TextDataset(ArrayDataset):
    """Train and test token ids (n, T) int64 with labels, a ``tokenizer``, optional test masks (n, T) bool: an
    ``ArrayDataset`` whose "pixels" (``x_train`` / ``x_test``) are token ids, read and split as it reads images.

    ``attention_mask(ids)`` is 1 on tokens, 0 on padding (``ids != pad_id``); ``token_ids`` the baseline tokens
    (``pad_id``, ``mask_id``, ``unk_id``) the pipeline hands to the methods and metrics that take them; ``tokens(row)``
    the strings of a row's tokens (padding left out)."""

    modality = "text"

    def __init__(self, name: str, ids_train: torch.Tensor, y_train: torch.Tensor, ids_test: torch.Tensor,
                 y_test: torch.Tensor, tokenizer: WordTokenizer | HFTokenizer, classes: Sequence[str],
                 meta: dict, masks_test: torch.Tensor | None = None, mask_meta: dict | None = None):
        ids_train, y_train = _ids(ids_train, name, "train"), torch.as_tensor(y_train, dtype=torch.int64)
        ids_test, y_test = _ids(ids_test, name, "test"), torch.as_tensor(y_test, dtype=torch.int64)
        if ids_train.shape[1] != ids_test.shape[1] or len(ids_train) != len(y_train) or len(ids_test) != len(y_test):
            raise ValueError(f"dataset '{name}': train ids {tuple(ids_train.shape)} / labels {len(y_train)}, test ids "
                             f"{tuple(ids_test.shape)} / labels {len(y_test)} do not match (one row of T ids per "
                             "label, the same T)")
        both = torch.cat([ids_train.flatten(), ids_test.flatten()])
        high = int(both.max())
        if high >= len(tokenizer.vocab) or int(both.min()) < 0:
            raise ValueError(f"dataset '{name}': token ids span [{int(both.min())}, {high}], outside the vocabulary "
                             f"of {len(tokenizer.vocab)} tokens: encode the texts with the dataset's tokenizer")
        if masks_test is not None:
            masks_test = torch.as_tensor(masks_test)
            if masks_test.dtype != torch.bool or tuple(masks_test.shape) != tuple(ids_test.shape):
                raise ValueError(f"dataset '{name}': masks_test is {masks_test.dtype} {tuple(masks_test.shape)}; "
                                 f"expected bool {tuple(ids_test.shape)} (one (T,) mask per test sequence)")
        super().__init__(name, ids_train, y_train, ids_test, y_test, [str(c) for c in classes],
                         {**meta, "tokenizer": tokenizer.meta})  # no normalisation: ids pass unchanged
        self.tokenizer, self.masks_test, self.mask_meta = tokenizer, masks_test, dict(mask_meta or {})

    def mean_image(self) -> torch.Tensor:
        raise ValueError(f"dataset '{self.name}' is text: token ids have no mean input; use a token baseline "
                         "(pad, mask or unk) or zero embeddings instead of baseline=mean")

    def attention_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(n, T) int64: 1 where a token is, 0 on padding (``input_ids != pad_id``)."""
        return (input_ids != self.tokenizer.pad_id).to(torch.int64)

    def tokens(self, input_ids_row: torch.Tensor | Sequence[int]) -> list[str]:
        """The strings of one row's tokens, padding left out."""
        row = torch.as_tensor(input_ids_row).flatten()
        return self.tokenizer.decode(row[row != self.tokenizer.pad_id].tolist())

    @property
    def token_ids(self) -> dict:
        """The baseline tokens, under the parameter names methods and metrics take: pad_id, mask_id, unk_id."""
        tok = self.tokenizer
        return {"pad_id": tok.pad_id, "mask_id": tok.mask_id, "unk_id": tok.unk_id}

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer.vocab)


def _ids(ids, name: str, split: str) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dtype != torch.int64 or ids.dim() != 2:
        raise ValueError(f"dataset '{name}': {split} token ids are {ids.dtype} {tuple(ids.shape)}; expected int64 "
                         "(n, T)")
    return ids


def pad_rows(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[torch.Tensor, int]:
    """Right-pad (or cut) every row to ``length`` ids: (ids (n, length) int64, number of rows cut)."""
    out = np.full((len(rows), length), pad_id, dtype=np.int64)
    cut = 0
    for i, r in enumerate(rows):
        cut += len(r) > length
        r = r[:length]
        out[i, :len(r)] = r
    return torch.from_numpy(out), cut
