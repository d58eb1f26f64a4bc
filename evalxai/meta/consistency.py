"""MetaQuantus's consistency scores of a quality estimator (Hedström et al., "The Meta-Evaluation Problem in
Explainable AI", TMLR 2023): intra-consistency (IAC), inter-consistency (IEC) and meta-consistency (MC).

Score arrays: ``q`` (N,) one method's unperturbed scores over N samples; ``Q`` (K, N) K methods' scores; perturbed
scores ``Q_hat`` likewise; ``kept`` (N,) bool marks the samples a test keeps (prediction unchanged under a
resilience test, changed under an adversary test). Non-finite scores drop out of every comparison.
"""
from __future__ import annotations

import warnings

import numpy as np

KINDS = ("resilience", "adversary")
DIRECTIONS = ("higher", "lower")


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"test kind {kind!r} is not one of {list(KINDS)} (evalxai.meta)")
    return kind


def iac(q, q_hat, kept, kind: str) -> float:
    """Intra-consistency of one method: the two-sided Wilcoxon signed-rank p-value between unperturbed and
    perturbed scores of the kept samples (zero differences split, as MetaQuantus), p for a resilience test and
    1 - p for an adversary test. NaN when no kept sample has both scores finite."""
    from scipy.stats import wilcoxon

    _kind(kind)
    q, q_hat, kept = np.asarray(q, np.float64), np.asarray(q_hat, np.float64), np.asarray(kept, bool)
    ok = kept & np.isfinite(q) & np.isfinite(q_hat)
    if not ok.any():
        return np.nan
    d = q_hat[ok] - q[ok]
    if not d.any():  # every score unchanged: no evidence of a difference
        p = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(wilcoxon(d, zero_method="zsplit", alternative="two-sided").pvalue)
    return p if kind == "resilience" else 1.0 - p


def iac_methods(Q, Q_hat, kept, kind: str) -> np.ndarray:
    """``iac`` of every method (K,) at once: one vectorised Wilcoxon call over the methods whose kept differences
    are finite, non-zero and untied (where scipy's exact test applies, as it does for one method alone); the rest
    one by one. Equal to ``[iac(Q[m], Q_hat[m], kept, kind) for m in range(K)]``."""
    from scipy.stats import wilcoxon

    _kind(kind)
    Q, Q_hat, kept = np.asarray(Q, np.float64), np.asarray(Q_hat, np.float64), np.asarray(kept, bool)
    out = np.full(len(Q), np.nan)
    d = Q_hat[:, kept] - Q[:, kept]
    if d.shape[1] == 0:
        return out
    a = np.sort(np.abs(d), axis=1)
    clean = np.isfinite(d).all(1) & (a[:, 0] > 0) & ~(np.diff(a, axis=1) == 0).any(1) & (d.shape[1] <= 50)
    if clean.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = np.asarray(wilcoxon(d[clean], zero_method="zsplit", alternative="two-sided", axis=1).pvalue)
        out[clean] = p if kind == "resilience" else 1.0 - p
    for m in np.flatnonzero(~clean):
        out[m] = iac(Q[m], Q_hat[m], kept, kind)
    return out


def iec_resilience(Q, Q_hat, kept, per: str = "position") -> float:
    """Inter-consistency under a resilience test: do the kept samples rank the K methods the same way before
    and after? ``per="position"`` (MetaQuantus): the share of (sample, rank position) pairs holding the same method
    (ranks by ``argsort`` over methods, stable for ties); ``per="sample"``: the share of samples whose whole
    ranking is unchanged. Samples with a non-finite score are left out; NaN when none remains."""
    Q, Q_hat, kept = np.asarray(Q, np.float64), np.asarray(Q_hat, np.float64), np.asarray(kept, bool)
    ok = kept & np.isfinite(Q).all(0) & np.isfinite(Q_hat).all(0)
    if not ok.any():
        return np.nan
    same = np.argsort(Q[:, ok], axis=0, kind="stable") == np.argsort(Q_hat[:, ok], axis=0, kind="stable")
    if per == "position":
        return float(same.mean())
    if per == "sample":
        return float(same.all(0).mean())
    raise ValueError(f"iec ranking per={per!r} is not 'position' or 'sample' (evalxai.meta)")


def iec_adversary(Q, Q_hat, kept, direction: str) -> float:
    """Inter-consistency under an adversary test: the share of (method, kept sample) pairs whose score got worse,
    in the estimator's own direction (``higher`` is better: q_hat < q; ``lower``: q_hat > q). NaN when no pair
    has both scores finite. (MetaQuantus tests the string's truth value, so it always counts q_hat > q.)"""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {list(DIRECTIONS)} (evalxai.meta)")
    Q, Q_hat, kept = np.asarray(Q, np.float64), np.asarray(Q_hat, np.float64), np.asarray(kept, bool)
    ok = kept[None, :] & np.isfinite(Q) & np.isfinite(Q_hat)
    if not ok.any():
        return np.nan
    worse = Q_hat < Q if direction == "higher" else Q_hat > Q
    return float(worse[ok].mean())


def _nanmean(a, axis=None):
    a = np.asarray(a, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _nanstd(a, axis=None):
    a = np.asarray(a, np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(a, axis=axis)


def criteria(Q, Q_hat, kept, kind: str, direction: str, per: str = "position") -> tuple[np.ndarray, np.ndarray]:
    """IAC (K, I, P) and IEC (I, P) of one test from unperturbed scores ``Q`` (K, N), perturbed scores ``Q_hat``
    (I, P, K, N) and the kept samples ``kept`` (I, P, N) of every iteration i and perturbation p."""
    _kind(kind)
    Q, Q_hat, kept = np.asarray(Q, np.float64), np.asarray(Q_hat, np.float64), np.asarray(kept, bool)
    n_i, n_p, k = Q_hat.shape[:3]
    intra = np.full((k, n_i, n_p), np.nan)
    inter = np.full((n_i, n_p), np.nan)
    for i in range(n_i):
        for p in range(n_p):
            intra[:, i, p] = iac_methods(Q, Q_hat[i, p], kept[i, p], kind)
            inter[i, p] = (iec_resilience(Q, Q_hat[i, p], kept[i, p], per) if kind == "resilience"
                           else iec_adversary(Q, Q_hat[i, p], kept[i, p], direction))
    return intra, inter


def meta_consistency(iac_nr, iac_ar, iec_nr, iec_ar) -> dict:
    """MC of one perturbation space (model or input), as MetaQuantus: IAC (K, I, P) averaged over methods and
    perturbations, IEC (I, P) over perturbations, giving four criteria per iteration; MC is the mean of the four
    criteria over iterations, ``MC_std`` the spread over iterations of each iteration's mean of the four.
    Returns the four criteria (mean and std over iterations), MC and MC_std; NaNs are skipped."""
    per_iter = {"IAC_NR": _nanmean(iac_nr, axis=(0, 2)), "IAC_AR": _nanmean(iac_ar, axis=(0, 2)),
                "IEC_NR": _nanmean(iec_nr, axis=1), "IEC_AR": _nanmean(iec_ar, axis=1)}
    stack = np.stack(list(per_iter.values()))  # (4, I)
    out = {}
    for name, v in per_iter.items():
        out[name], out[f"{name}_std"] = float(_nanmean(v)), float(_nanstd(v))
    out["MC"] = float(_nanmean(stack))
    out["MC_std"] = float(_nanstd(_nanmean(stack, axis=0)))
    return out


def sanity_scores(check: str, k: int, n: int, iterations: int, perturbations: int, seed: int = 0):
    """MetaQuantus's sanity checks of the framework itself: scores of a fake estimator, as (Q (K, N), Q_hat
    (I, P, K, N), kept (I, P, N) all True). ``different``: unperturbed scores ~ N(c, 1) with c a random integer in
    [-1000, -2], perturbed ~ N(0, 1), so IAC should be about 0 under resilience and 1 under adversary tests;
    ``same``: the perturbed scores equal the unperturbed ones (U(0, 1)), so the opposite."""
    rng = np.random.default_rng(seed)
    if check == "different":
        Q = rng.normal(rng.integers(-1000, -1, size=(k, 1)), 1.0, size=(k, n))
        Q_hat = rng.normal(0.0, 1.0, size=(iterations, perturbations, k, n))
    elif check == "same":
        Q = rng.uniform(0.0, 1.0, size=(k, n))
        Q_hat = np.broadcast_to(Q, (iterations, perturbations, k, n)).copy()
    else:
        raise ValueError(f"sanity_check={check!r} is not 'different' or 'same' (evalxai.meta)")
    return Q, Q_hat, np.ones((iterations, perturbations, n), bool)
