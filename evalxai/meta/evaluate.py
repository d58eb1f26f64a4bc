"""Meta-evaluation of every metric of a run (MetaQuantus, Hedström et al., TMLR 2023): how far each scalar measure
stays put under minor perturbations of the model or input and moves under disruptive ones.

``meta_evaluate`` explains the samples with every method once, scores them with every metric once (the
unperturbed scores Q), then for each test, iteration and perturbation re-explains and re-scores the samples that
test keeps on the perturbed model (a perturbed copy) or input (the original model). Every scalar row with a
direction (``higher`` / ``lower``) of every metric is one estimator; curve rows (direction ``none``) are left out.
The explanations of one perturbed model or input serve every metric; unkept samples are neither explained nor
scored (their scores would be discarded); the unperturbed scores are computed once for all four tests; maps that do
not depend on the model (the ``control`` family: random, edge) are reused under model perturbations.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import evalxai
from evalxai.meta.consistency import criteria, meta_consistency
from evalxai.meta.perturbation import (
    ModelNoise,
    PerturbationTest,
    default_tests,
    draw_seed,
    kept,
    perturb_input,
    perturb_tokens,
    predict,
)
from evalxai.methods import get_method
from evalxai.runs.pipeline import method_calls, metric_call

CRITERIA = ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR")


@dataclass
class MetaResult:
    """``summary``: one row per (metric, measure, space) with the four criteria, MC and MC_std; ``detail``: every
    IAC (per method) and IEC value per (test, iteration, perturbation); ``scores``: per-sample scores, unperturbed
    (test ``none``) and perturbed (kept samples); ``unperturbed``: the unperturbed scalar rows as a tidy table;
    ``timings``: seconds (``explain_s``, ``score_s``, ``bare_s`` = both, ``total_s``, ``ratio`` = total / bare) and
    counts."""
    summary: pd.DataFrame
    detail: pd.DataFrame
    scores: pd.DataFrame
    unperturbed: pd.DataFrame
    timings: dict = field(default_factory=dict)


def estimates(df: pd.DataFrame, n: int) -> dict[tuple[str, str], tuple[str, np.ndarray]]:
    """(metric, measure) -> (direction, values (n,)) of the scalar rows with a direction (NaN where missing)."""
    sc = df[df["step"].isna() & df["direction"].isin(["higher", "lower"])]
    out = {}
    for (metric, measure), g in sc.groupby(["metric", "measure"], sort=False):
        v = np.full(n, np.nan)
        v[g["sample"].to_numpy()] = g["value"].to_numpy(np.float64)
        out[(metric, measure)] = (str(g["direction"].iloc[0]), v)
    return out


def consistency_table(Q0: dict, Qp: dict, kept_: dict, directions: dict, tests: list[PerturbationTest],
                      methods: list[str], iec_per: str = "position") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, detail) from unperturbed scores ``Q0[estimator]`` (K, N), perturbed scores
    ``Qp[test][estimator]`` (I, P, K, N), kept samples ``kept_[test]`` (I, P, N) and each estimator's direction.
    MC needs a resilience and an adversary test of the same space (else NaN)."""
    summary, detail = [], []
    for key, Q in Q0.items():
        metric, measure = key
        direction = directions[key]
        per_test = {}
        for t in tests:
            intra, inter = criteria(Q, Qp[t.name][key], kept_[t.name], t.kind, direction, iec_per)
            per_test[t.name] = (intra, inter)
            n_i, n_p = inter.shape
            ii, pp = np.meshgrid(np.arange(n_i), np.arange(n_p), indexing="ij")
            for m, method in enumerate(methods):
                detail.append(pd.DataFrame({"metric": metric, "measure": measure, "test": t.name, "space": t.space,
                                            "kind": t.kind, "criterion": "IAC", "method": method,
                                            "iteration": ii.ravel(), "perturbation": pp.ravel(),
                                            "value": intra[m].ravel()}))
            detail.append(pd.DataFrame({"metric": metric, "measure": measure, "test": t.name, "space": t.space,
                                        "kind": t.kind, "criterion": "IEC", "method": pd.NA,
                                        "iteration": ii.ravel(), "perturbation": pp.ravel(), "value": inter.ravel()}))
        for space in ("model", "input"):
            res = next((per_test[t.name] for t in tests if t.space == space and t.kind == "resilience"), None)
            adv = next((per_test[t.name] for t in tests if t.space == space and t.kind == "adversary"), None)
            if res is None and adv is None:
                continue
            nan_iac, nan_iec = np.full((len(methods), 1, 1), np.nan), np.full((1, 1), np.nan)
            r = res or (nan_iac, nan_iec)
            a = adv or (nan_iac, nan_iec)
            mc = meta_consistency(r[0], a[0], r[1], a[1])
            if res is None or adv is None:
                mc["MC"] = mc["MC_std"] = np.nan
            shares = {f"kept_{kind}": float(np.mean(kept_[t.name])) for t in tests if t.space == space
                      for kind in [t.kind]}
            summary.append({"metric": metric, "measure": measure, "direction": direction, "space": space, **mc,
                            **shares})
    cols = ["metric", "measure", "direction", "space", "MC", "MC_std", *[c for n in CRITERIA for c in (n, f"{n}_std")],
            "kept_resilience", "kept_adversary"]
    table = pd.DataFrame(summary)
    for c in cols:
        if c not in table:
            table[c] = np.nan
    return table[cols], (pd.concat(detail, ignore_index=True) if detail else pd.DataFrame())


class _Clock:
    def __init__(self):
        self.explain = self.score = 0.0
        self.explain_calls = self.score_calls = self.explained = 0


def _explain_and_score(model, x, target, calls, metrics, from_data, clock: _Clock, maps=None,
                       keep_maps: dict | None = None, inputs: dict | None = None,
                       ground: dict | None = None) -> list[pd.DataFrame]:
    """Every method's maps of (model, x) (``maps``: given ones to reuse; ``keep_maps``: a dict that receives them)
    and every metric's rows for them; ``inputs``: the attention mask of token ids; ``ground``: the samples' masks."""
    inputs = inputs or {}
    frames = []
    for name, method, params in calls:
        if maps is not None and name in maps:
            attributions = maps[name]
        else:
            t0 = time.perf_counter()
            attributions = evalxai.explain(model, x, target, method=method, **inputs, **params)
            clock.explain += time.perf_counter() - t0
            clock.explain_calls += 1
            clock.explained += len(x)
        if keep_maps is not None:
            keep_maps[name] = attributions
        for metric, mparams in metrics:
            mp = metric_call(metric, mparams, method, params, from_data, ground)
            t0 = time.perf_counter()
            df = evalxai.score(model, x, target, attributions, metric=metric, **inputs, **mp)
            clock.score += time.perf_counter() - t0
            clock.score_calls += 1
            df["method"] = name
            frames.append(df)
    return frames


def meta_evaluate(model, x: torch.Tensor, target: torch.Tensor, methods: list[tuple[str, dict]],
                  metrics: list[tuple[str, dict]], *, tests: list[PerturbationTest] | None = None,
                  iterations: int = 5, perturbations: int = 10, seed: int = 0, low=None, high=None, std=None,
                  mean=None, iec_per: str = "position", maps: dict | None = None, progress: bool = False,
                  attention_mask: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                  token_ids: dict | None = None, replacements: torch.Tensor | None = None) -> MetaResult:
    """Meta-evaluate every (metric, measure) of ``metrics`` over the explanations of ``methods`` (lists of
    ``(name, params)`` as ``evalxai.runs.pipeline.method_list`` / ``metric_list`` give them) on the samples (x, target).

    ``tests``: the four MetaQuantus tests by default; ``iterations`` x ``perturbations`` draws each (MetaQuantus:
    5 x 10); ``low`` / ``high``: the data range (model space) the input tests clip to and the metrics get;
    ``std``: the dataset's per-channel std (input noise is in pixel units); ``mean``: the dataset's mean image for
    methods and metrics that take it; ``maps``: unperturbed attributions already computed (name -> tensor);
    ``masks``: ground-truth masks of the samples (they mark positions, which neither test moves), for the metrics that
    take them. Token ids: ``attention_mask`` (N, T), ``token_ids`` (pad / mask / unk ids for the methods and metrics
    that take them) and ``replacements`` (the ordinary token ids the input tests draw from, ``perturb_tokens``).
    Draws are seeded by ``seed``; the model is copied, never changed."""
    if iterations < 1 or perturbations < 1:
        raise ValueError(f"iterations={iterations} and perturbations={perturbations} must be >= 1 (evalxai.meta)")
    tests = default_tests() if tests is None else list(tests)
    t_start = time.perf_counter()
    text = attention_mask is not None
    if text and replacements is None and any(t.space == "input" for t in tests):
        raise ValueError("the input tests on token ids need the replacement tokens: pass replacements= (evalxai.meta)")
    from_data = dict(token_ids or {}) if text else {"low": low, "high": high, "mean": mean}
    calls = method_calls(methods, from_data)

    def rows_of(idx=None):  # the attention mask and masks of the samples idx (all: None)
        pick = (lambda t: t) if idx is None else (lambda t: t[idx])
        return ({} if attention_mask is None else {"attention_mask": pick(attention_mask)},
                None if masks is None else {"masks": pick(masks)})
    names = [name for name, _, _ in calls]
    if len(set(names)) != len(names):
        raise ValueError(f"methods {names} name one method twice: give each a distinct name (evalxai.meta)")
    n, k = len(x), len(calls)
    clock = _Clock()
    pred0 = predict(model, x, attention_mask)

    maps0: dict = {}
    frames = _explain_and_score(model, x, target, calls, metrics, from_data, clock, maps, maps0, *rows_of())
    # maps that do not depend on the model (the controls: random, edge) stay valid on a perturbed model
    model_free = [name for name, method, _ in calls
                  if isinstance(method, str) and get_method(method).family == "control"]
    rows0 = pd.concat(frames, ignore_index=True)
    Q0, directions = {}, {}
    for m, name in enumerate(names):
        for key, (direction, v) in estimates(rows0[rows0["method"] == name], n).items():
            Q0.setdefault(key, np.full((k, n), np.nan))[m] = v
            directions[key] = direction
    if not Q0:
        raise ValueError("no metric of the run gives a scalar with a direction (higher/lower): nothing to "
                         "meta-evaluate (evalxai.meta)")

    Qp = {t.name: {key: np.full((iterations, perturbations, k, n), np.nan) for key in Q0} for t in tests}
    kept_ = {t.name: np.zeros((iterations, perturbations, n), bool) for t in tests}
    noisy = ModelNoise(model) if any(t.space == "model" for t in tests) else None
    jobs = [(t, i, p) for t in tests for i in range(iterations) for p in range(perturbations)]
    for t, i, p in tqdm(jobs, desc="meta-evaluation", disable=not progress):
        s = draw_seed(seed, t, i * perturbations + p)
        if t.space == "model":
            m_, x_ = noisy(t.noise, s), x
        elif text:
            m_, x_ = model, perturb_tokens(x, attention_mask, t.noise, s, replacements)
        else:
            m_, x_ = model, perturb_input(x, t.noise, s, low, high, std)
        keep = kept(t, pred0, predict(m_, x_, attention_mask))
        kept_[t.name][i, p] = keep.cpu().numpy()
        idx = torch.nonzero(keep).flatten()
        if len(idx) == 0:
            continue
        reuse = {name: maps0[name][idx] for name in model_free} if t.space == "model" else None
        frames = _explain_and_score(m_, x_[idx], target[idx], calls, metrics, from_data, clock, reuse, None,
                                    *rows_of(idx))
        rows = pd.concat(frames, ignore_index=True)
        where = idx.cpu().numpy()
        for m, name in enumerate(names):
            for key, (_, v) in estimates(rows[rows["method"] == name], len(idx)).items():
                if key in Q0:
                    Qp[t.name][key][i, p, m, where] = v
    t_scored = time.perf_counter()
    summary, detail = consistency_table(Q0, Qp, kept_, directions, tests, names, iec_per)
    scores = _score_table(Q0, Qp, kept_, directions, names)
    bare = clock.explain + clock.score
    total = time.perf_counter() - t_start
    timings = {"total_s": total, "explain_s": clock.explain, "score_s": clock.score, "bare_s": bare,
               "ratio": total / bare if bare > 0 else np.nan, "stats_s": total - (t_scored - t_start),
               "explain_calls": clock.explain_calls, "score_calls": clock.score_calls,
               "explained_samples": clock.explained,
               # what MetaQuantus explains: all samples, unperturbed once per test, then every draw of every test
               "metaquantus_explained_samples": n * k * len(tests) * (1 + iterations * perturbations)}
    return MetaResult(summary, detail, scores, rows0, timings)


def _score_table(Q0: dict, Qp: dict, kept_: dict, directions: dict, methods: list[str]) -> pd.DataFrame:
    """Per-sample scores: unperturbed (test ``none``, iteration and perturbation -1) and perturbed (kept samples)."""
    parts = []
    for key, Q in Q0.items():
        k, n = Q.shape
        mm, ss = np.meshgrid(np.arange(k), np.arange(n), indexing="ij")
        parts.append(pd.DataFrame({"test": "none", "iteration": -1, "perturbation": -1, "metric": key[0],
                                   "measure": key[1], "direction": directions[key],
                                   "method": np.asarray(methods, dtype=object)[mm.ravel()], "sample": ss.ravel(),
                                   "value": Q.ravel()}))
        for test, by_key in Qp.items():
            arr = by_key[key]
            keep = np.broadcast_to(kept_[test][:, :, None, :], arr.shape)
            i, p, m, s = np.nonzero(keep)
            parts.append(pd.DataFrame({"test": test, "iteration": i, "perturbation": p, "metric": key[0],
                                       "measure": key[1], "direction": directions[key],
                                       "method": np.asarray(methods, dtype=object)[m], "sample": s,
                                       "value": arr[i, p, m, s]}))
    return pd.concat(parts, ignore_index=True)
