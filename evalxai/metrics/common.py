"""Shared pieces of metrics: score spaces, batched forwards, tidy row building."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from evalxai.scoring import SCORE_SPACES, batched_scores, check_score_space, target_scores  # noqa: F401


def scalar_rows(values, measure: str, direction: str, **extra) -> pd.DataFrame:
    """One row per sample for a per-sample scalar."""
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    return pd.DataFrame({"sample": np.arange(len(v)), "measure": measure, "value": v, "direction": direction, **extra})
