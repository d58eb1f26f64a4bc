"""How natural is a prototype? Scores of activation-maximization prototypes that do not come from the explained
model alone (Montavon, Samek & Mueller 2018, §3: code-space prototypes look like data, input-space ones like noise).

Per prototype (model-space input x of class c):
- ``model_log_prob``: log p(c|x) under the explained model (how strongly it activates the class);
- ``independent_prob``: p(c|x) under an independent classifier, a scikit-learn model trained on the dataset's train
  split (labels, pixels), never on the explained model's outputs;
- ``recon_error`` and ``neg_elbo``: the VAE's mean squared pixel error of x against its reconstruction and -ELBO
  (nats, an upper bound on -log p(x) under the VAE): how far x lies from the data the generator learnt;
- ``nn_distance``: Euclidean pixel distance to the nearest training image, a distance to the data that no model
  gives (the VAE-based scores favour its own decoder's outputs).
"""
from __future__ import annotations

import json
import logging
import time
import warnings

import numpy as np
import pandas as pd
import torch

from evalxai.core.files import atomic_path, cache_root, code_fingerprint, content_key, write_json
from evalxai.core.guard import frozen
from evalxai.maximization.prototypes import log_prob_of

log = logging.getLogger(__name__)
CLASSIFIERS = ("logistic", "mlp")
SCORES = {  # column: which direction is more natural / more strongly activating
    "model_log_prob": "higher", "independent_prob": "higher", "independent_correct": "higher",
    "recon_error": "lower", "neg_elbo": "lower", "nn_distance": "lower",
}


class IndependentClassifier:
    """A dense softmax classifier on flattened pixels, held as weight arrays (layers with ReLU between): a
    scikit-learn LogisticRegression (one layer) or MLPClassifier, stored as arrays so the cache holds no pickle."""

    def __init__(self, weights: list[tuple[np.ndarray, np.ndarray]], info: dict | None = None):
        self.weights, self.info = weights, dict(info or {})

    def predict_proba(self, pixels) -> np.ndarray:
        """Class probabilities (N, classes) of pixel-space images (N, ...)."""
        h = np.asarray(pixels, dtype=np.float64).reshape(len(pixels), -1)
        for i, (w, b) in enumerate(self.weights):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0)
        h = h - h.max(1, keepdims=True)
        e = np.exp(h)
        return e / e.sum(1, keepdims=True)


def _fit(kind: str, x: np.ndarray, y: np.ndarray, params: dict, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    # lazy: sklearn's estimators take seconds to import, and a fitted classifier is cached (get_classifier)
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if kind == "logistic":
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(C=float(params.get("C", 0.05)), max_iter=int(params.get("max_iter", 300)))
            clf.fit(x, y)
            return [(clf.coef_.T.copy(), clf.intercept_.copy())]
        from sklearn.neural_network import MLPClassifier

        clf = MLPClassifier(hidden_layer_sizes=tuple(params.get("hidden", (128,))),
                            alpha=float(params.get("alpha", 1e-3)), max_iter=int(params.get("max_iter", 60)),
                            random_state=seed)
        clf.fit(x, y)
        return [(w.copy(), b.copy()) for w, b in zip(clf.coefs_, clf.intercepts_)]


def get_classifier(dataset, kind: str = "logistic", seed: int = 0, cache_dir=None, **params) -> IndependentClassifier:
    """The independent classifier of ``dataset`` (trained on its train split's pixels and labels), from
    ``<cache>/classifiers/<kind>-<key>.npz`` or trained and stored (arrays only, read without pickle).
    ``kind``: "logistic" (``C``, ``max_iter``) or "mlp" (``hidden``, ``alpha``, ``max_iter``)."""
    if kind not in CLASSIFIERS:
        raise ValueError(f"independent classifier kind '{kind}' is unknown: choose one of {list(CLASSIFIERS)}")
    key = content_key({"dataset": dataset.name, "data": dataset.meta, "shape": list(dataset.input_shape),
                       "kind": kind, "params": params, "seed": seed, "code": code_fingerprint("data"),
                       "sklearn": __import__("sklearn").__version__, "format": 1})
    folder = cache_root(cache_dir) / "classifiers"
    path, meta = folder / f"{kind}-{key}.npz", folder / f"{kind}-{key}.json"
    if path.exists() and meta.exists():
        with np.load(path, allow_pickle=False) as f:
            n = len(f.files) // 2
            weights = [(f[f"w{i}"], f[f"b{i}"]) for i in range(n)]
        return IndependentClassifier(weights, {**json.loads(meta.read_text()), "cache_hit": True, "key": key})
    t0 = time.perf_counter()
    x, y = dataset.train_pixels()
    weights = _fit(kind, x.reshape(len(x), -1).double().numpy(), y.numpy(), params, seed)
    clf = IndependentClassifier(weights)
    xt, yt = dataset.test_pixels(np.arange(len(dataset)))
    info = {"kind": kind, "params": params, "train_seconds": round(time.perf_counter() - t0, 2),
            "test_accuracy": float((clf.predict_proba(xt.numpy()).argmax(1) == yt.numpy()).mean())}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{f"{k}{i}": a for i, wb in enumerate(weights) for k, a in zip("wb", wb)})
    write_json(meta, info)
    clf.info = {**info, "cache_hit": False, "key": key}
    return clf


def nearest_distance(pixels: torch.Tensor, reference: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distance of each image to its nearest image in ``reference`` (both pixel space), float64."""
    a = pixels.reshape(len(pixels), -1).double()
    best = torch.full((len(a),), float("inf"), dtype=torch.float64)
    for i in range(0, len(reference), chunk):
        r = reference[i:i + chunk].reshape(-1, a.shape[1]).double()
        best = torch.minimum(best, torch.cdist(a, r).min(1).values)
    return best


@torch.no_grad()
def naturalness(model, x: torch.Tensor, target, classifier: IndependentClassifier, generator=None, dataset=None,
                train_pixels: torch.Tensor | None = None) -> pd.DataFrame:
    """One row per image of ``x`` (model space) with class ``target``: the scores of the module docstring.
    ``generator``: an ``evalxai.generators.Generator`` (its VAE gives recon_error and neg_elbo; None: NaN);
    ``dataset`` maps model space to pixels (None: x is in pixel space); ``train_pixels`` for nn_distance."""
    target = torch.as_tensor(target).long().view(-1)
    with frozen(model, warn_train=False):
        logits = model(x)
        logp = log_prob_of(logits, target)
    pixels = dataset.denormalize(x.float()) if dataset is not None else x.float()
    proba = classifier.predict_proba(pixels.cpu().numpy())
    t = target.cpu().numpy()
    df = pd.DataFrame({"class": t, "model_log_prob": logp.double().cpu().numpy(),
                       "model_correct": (logits.argmax(1).cpu() == target.cpu()).numpy(),
                       "independent_prob": proba[np.arange(len(t)), t],
                       "independent_correct": proba.argmax(1) == t})
    if generator is not None:
        with frozen(generator, warn_train=False):
            df["recon_error"] = generator.reconstruction_error(x.float()).double().cpu().numpy()
            df["neg_elbo"] = generator.neg_elbo(x.float()).double().cpu().numpy()
    else:
        df["recon_error"] = df["neg_elbo"] = np.nan
    df["nn_distance"] = (nearest_distance(pixels.cpu(), train_pixels).numpy() if train_pixels is not None
                         else np.nan)
    return df
