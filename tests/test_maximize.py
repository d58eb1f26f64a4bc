"""Activation maximization (evalxai.maximize): known optima on linear models, prototypes of a trained LeNet, the VAE
generator, the model left untouched, the naturalness table and its claims, errors."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

import evalxai
from evalxai.data import load_dataset
from evalxai.generators import get_generator
from evalxai.maximization import target_log_prob
from evalxai.maximization.claims import verdicts
from evalxai.maximization.naturalness import get_classifier
from evalxai.models import get_model
from evalxai.runs.configs import CONF as CONFIGS
from tests.conftest import no_hooks

UNBOUNDED = {"low": -math.inf, "high": math.inf}  # the closed forms below have no box
STEPS, LR = 600, 0.1  # Adam on the concave linear objectives: converges to 1e-5 of the maximiser
CONF = CONFIGS
TINY_VAE = {"name": "vae_tiny", "kind": "vae", "dataset": "mnist", "arch": {"latent_dim": 16, "hidden": [256]},
            "train": {"epochs": 5, "batch_size": 128, "lr": 0.002}, "seed": 0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)


def newton(grad_hess, v0: np.ndarray, iters: int = 60) -> np.ndarray:
    """Maximiser of a strictly concave objective from its gradient and Hessian (float64)."""
    v = v0.copy()
    for _ in range(iters):
        g, h = grad_hess(v)
        v = v - np.linalg.solve(h, g)
    return v


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def linear_objective(w, b, c, lam, center):
    """Gradient and Hessian of J(x) = log softmax(Wx + b)_c - lam ||x - center||^2 (concave: log-sum-exp is convex)."""
    def gh(x):
        p = softmax(w @ x + b)
        e = np.eye(len(b))[c]
        g = w.T @ (e - p) - 2 * lam * (x - center)
        h = -w.T @ (np.diag(p) - np.outer(p, p)) @ w - 2 * lam * np.eye(len(x))
        return g, h

    return gh


def test_input_space_linear_model_reaches_the_closed_form_maximiser():
    torch.manual_seed(0)
    model = nn.Linear(6, 3).double().eval()
    mean = torch.randn(1, 6, dtype=torch.float64)
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    lam = 0.3
    x = evalxai.maximize(model, torch.tensor([0, 1, 2]), "input", mean=mean, lam=lam, steps=STEPS, lr=LR, **UNBOUNDED)
    assert x.shape == (3, 6) and x.dtype == torch.float64
    for c in range(3):
        ref = newton(linear_objective(w, b, c, lam, mean[0].numpy()), mean[0].numpy())
        g, _ = linear_objective(w, b, c, lam, mean[0].numpy())(ref)
        assert np.abs(g).max() < 1e-10  # the reference is the stationary point
        np.testing.assert_allclose(x[c].numpy(), ref, atol=1e-5)
    # the two-class case in closed form: log p = -softplus(-(u.x + a)); stationarity x = xbar + t u with
    # 2 lam t = sigmoid(-(u.xbar + a + t |u|^2)), one scalar root
    two = nn.Linear(4, 2).double().eval()
    u = (two.weight[1] - two.weight[0]).detach().numpy()
    a = float((two.bias[1] - two.bias[0]).detach())
    xbar = np.zeros(4)
    lo, hi = 0.0, 1 / (2 * lam)
    for _ in range(200):  # bisection: 2 lam t - sigmoid(-(a + t |u|^2)) is increasing in t
        t = (lo + hi) / 2
        lo, hi = (t, hi) if 2 * lam * t < 1 / (1 + np.exp(a + t * u @ u)) else (lo, t)
    x1 = evalxai.maximize(two, 1, "input", lam=lam, input_shape=(4,), steps=STEPS, lr=LR, start="mean", **UNBOUNDED)
    with pytest.raises(ValueError, match="restarts=0"):
        evalxai.maximize(two, 1, input_shape=(4,), restarts=0)
    np.testing.assert_allclose(x1[0].numpy(), xbar + t * u, atol=1e-5)


def test_input_space_box_constraint_meets_kkt():
    """With the data range [0, 1] active, x* satisfies the KKT conditions: zero gradient inside, the gradient
    pointing out of the box where x sits on a bound."""
    torch.manual_seed(1)
    model = nn.Linear(8, 3).double().eval()
    with torch.no_grad():
        model.weight.mul_(4)
    mean = torch.full((1, 8), 0.5, dtype=torch.float64)
    x = evalxai.maximize(model, 2, "input", mean=mean, lam=0.05, steps=800, lr=0.05, low=0.0, high=1.0)[0]
    assert x.min() >= 0 and x.max() <= 1
    g, _ = linear_objective(model.weight.detach().numpy(), model.bias.detach().numpy(), 2, 0.05, mean[0].numpy())(
        x.numpy())
    at_low, at_high = x.numpy() <= 1e-12, x.numpy() >= 1 - 1e-12
    assert at_low.any() or at_high.any()  # the bound is active
    inside = ~(at_low | at_high)
    assert np.abs(g[inside]).max(initial=0) < 1e-5
    assert (g[at_low] <= 1e-9).all() and (g[at_high] >= -1e-9).all()


def test_input_space_defaults_to_the_data_range_of_explain_and_score():
    """Without low / high a prototype stays in the API's one default data range (``evalxai.core.baselines.DATA_RANGE``,
    [0, 1]: what explain's and score's black and uniform baselines assume); low=-inf, high=inf lift the bounds."""
    from evalxai.core.baselines import DATA_RANGE

    torch.manual_seed(1)
    model = nn.Linear(8, 3).double().eval()
    with torch.no_grad():
        model.weight.mul_(4)
    kw = dict(input_shape=(8,), lam=0.05, steps=300, lr=0.05)
    x = evalxai.maximize(model, torch.tensor([0, 1, 2]), **kw)
    assert x.min() == DATA_RANGE[0] and x.max() == DATA_RANGE[1]  # both bounds active
    free = evalxai.maximize(model, torch.tensor([0, 1, 2]), low=-math.inf, high=math.inf, **kw)
    assert free.min() < DATA_RANGE[0] and free.max() > DATA_RANGE[1]
    noise = evalxai.maximize(model, 0, start="noise", **{**kw, "steps": 0})  # the noise start is drawn in the range
    assert 0 < noise.min() and noise.max() < 1


def test_code_space_linear_generator_reaches_the_maximiser():
    """g(z) = A z + d and a linear model: J(z) = log softmax(W(Az + d) + b)_c - lam |z|^2 is concave in z."""
    torch.manual_seed(2)
    model = nn.Linear(5, 3).double().eval()
    gen = nn.Linear(2, 5).double().eval()
    gen.latent_dim = 2
    lam = 0.2
    x = evalxai.maximize(model, torch.tensor([2, 0]), "code", generator=gen, lam=lam, steps=STEPS, lr=LR)
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    a, d = gen.weight.detach().numpy(), gen.bias.detach().numpy()
    for i, c in enumerate([2, 0]):
        z = newton(linear_objective(w @ a, w @ d + b, c, lam, np.zeros(2)), np.zeros(2))
        np.testing.assert_allclose(x[i].numpy(), a @ z + d, atol=1e-5)


def test_batched_targets_equal_one_at_a_time_and_noise_starts_are_seeded():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).eval()
    kw = dict(input_shape=(6,), steps=50, lr=0.05, start="noise", low=-1.0, high=1.0, seed=4)
    both = evalxai.maximize(model, torch.tensor([3, 1]), **kw)
    torch.testing.assert_close(both[0], evalxai.maximize(model, 3, **kw)[0])
    torch.testing.assert_close(both[1], evalxai.maximize(model, torch.tensor([1]), **kw)[0])
    assert not torch.equal(both[0], evalxai.maximize(model, 3, **{**kw, "seed": 5})[0])
    # restarts: the best of R starts by the objective, each target as alone
    many = evalxai.maximize(model, torch.tensor([3, 1]), **{**kw, "restarts": 3})
    torch.testing.assert_close(many[1], evalxai.maximize(model, 1, **{**kw, "restarts": 3})[0])
    lp = target_log_prob(model, torch.cat([both, many]), torch.tensor([3, 1, 3, 1])).detach()
    reg = 1e-4 * torch.cat([both, many]).pow(2).sum(1)
    assert ((lp - reg)[2:] >= (lp - reg)[:2] - 1e-6).all()  # restart 0 is the single start: never worse


@pytest.fixture(scope="module")
def lenet_setup(cache_dir):
    """LeNet trained briefly (1 epoch: test accuracy about 0.9) and a small VAE, both through their caches."""
    torch.manual_seed(0)
    dataset = load_dataset("mnist", cache_dir=cache_dir)
    model, _ = get_model(dataset, {"name": "lenet", "arch": {"channels": [16, 32], "hidden": 128}},
                         {"epochs": 1, "batch_size": 128, "lr": 0.003, "weight_decay": 1e-4}, seed=0,
                         cache_dir=cache_dir, progress=False)
    generator = get_generator(TINY_VAE, dataset=dataset, cache_dir=cache_dir, progress=False)
    return dataset, model, generator


@pytest.mark.slow
def test_lenet_prototypes_activate_their_class_at_least_as_much_as_the_median_test_image(lenet_setup):
    dataset, model, generator = lenet_setup
    x, y = dataset.test_items(np.arange(len(dataset)))
    with torch.no_grad():
        logp = target_log_prob(model, x, y)
    median = torch.stack([logp[y == c].median() for c in range(10)])
    classes = torch.arange(10)
    # lam 1e-4 as by default, 200 Adam steps (600 by default); code space keeps the best of 2 starts (z = 0, a prior
    # draw).
    for space, params in (("input", {"low": dataset.low, "high": dataset.high, "steps": 200, "lr": 0.1}),
                          ("code", {"restarts": 2, "steps": 200, "lr": 0.3})):
        protos = evalxai.maximize(model, classes, space, generator=generator, mean=dataset.mean_image(), **params)
        assert protos.shape == (10, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(model(protos).argmax(1), classes), space
            lp = target_log_prob(model, protos, classes)
        assert (lp >= median).all(), (space, lp - median)
        assert protos.min() >= 0 and protos.max() <= 1


def test_generator_round_trips_test_images_and_is_cached(lenet_setup, cache_dir):
    dataset, _, generator = lenet_setup
    x, _ = dataset.test_items(np.arange(200))
    err = generator.reconstruction_error(x)
    # stated: the 5-epoch 784-256-16 VAE reconstructs test digits with a mean squared pixel error below 0.05
    # (measured 0.035; the default vae_mnist, 30 epochs, 784-512-256-10: 0.022), well below the mean image's
    assert err.mean() < 0.05
    mean_err = (dataset.mean_image() - x).pow(2).flatten(1).mean(1)
    assert err.mean() < 0.6 * mean_err.mean()
    assert generator.info["cache_hit"] is False and generator.info["test_recon_mse"] < 0.05
    again = get_generator(TINY_VAE, dataset=dataset, cache_dir=cache_dir, progress=False)
    assert again.info["cache_hit"] is True and again.info["key"] == generator.info["key"]
    for a, b in zip(again.state_dict().values(), generator.state_dict().values()):
        assert torch.equal(a, b)
    other = get_generator({**TINY_VAE, "seed": 1}, dataset=dataset, cache_dir=cache_dir, progress=False)
    assert other.info["key"] != generator.info["key"]
    ckpt = Path(generator.info["path"])
    torch.load(ckpt, weights_only=True)  # weights only
    z = torch.zeros(2, generator.latent_dim)
    assert torch.equal(generator(z), again(z))


def test_model_and_generator_are_left_untouched():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, 3))
    model[0].weight.requires_grad_(False)
    model.train()
    gen = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid())
    gen.latent_dim = 2
    gen.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gbefore = {k: v.clone() for k, v in gen.state_dict().items()}
    with pytest.warns(UserWarning, match="training mode"):
        evalxai.maximize(model, 1, input_shape=(4,), steps=5)
    with pytest.warns(UserWarning, match="training mode"):
        evalxai.maximize(model, torch.tensor([0, 2]), "code", generator=gen, steps=5)
    assert model.training and model[1].training and not gen.training
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True]
    assert all(p.requires_grad for p in gen.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, gbefore[k]) for k, v in gen.state_dict().items())
    assert no_hooks(model) and no_hooks(gen)
    assert all(p.grad is None for p in model.parameters()) and all(p.grad is None for p in gen.parameters())


def test_errors_say_what_to_do():
    model = nn.Linear(4, 3).eval()
    with pytest.raises(ValueError, match=r"needs a generator.*get_generator\('vae_mnist'\).*-m evalxai.maximization"):
        evalxai.maximize(model, 0, "code")
    with pytest.raises(ValueError, match="not a module with a latent_dim"):
        evalxai.maximize(model, 0, "code", generator=nn.Linear(2, 4))
    with pytest.raises(ValueError, match="space='pixel' is unknown"):
        evalxai.maximize(model, 0, "pixel", input_shape=(4,))
    with pytest.raises(ValueError, match=r"has no parameter \['lamda'\]"):
        evalxai.maximize(model, 0, input_shape=(4,), lamda=1.0)
    with pytest.raises(ValueError, match="needs the input shape"):
        evalxai.maximize(model, 0)
    with pytest.raises(ValueError, match=r"target classes \[3\] are out of range"):
        evalxai.maximize(model, torch.tensor([0, 3]), input_shape=(4,))
    with pytest.raises(ValueError, match="start='zeros' is unknown"):
        evalxai.maximize(model, 0, input_shape=(4,), start="zeros")
    with pytest.raises(ValueError, match="target must be an int"):
        evalxai.maximize(model, torch.tensor([0.5]), input_shape=(4,))
    with pytest.raises(ValueError, match="unknown generator 'vae_nope'"):
        get_generator("vae_nope")
    with pytest.raises(ValueError, match="is for dataset 'mnist', not 'digits'"):
        get_generator("vae_mnist", dataset=load_dataset("digits"))


def test_claims_on_a_known_table():
    """code wins every pair on all three measures: holds; input wins every pair: does not hold."""
    rows = []
    for c in range(10):
        rows.append({"class": c, "space": "code", "seed": 0, "independent_prob": 0.9 + c / 100,
                     "independent_correct": True, "recon_error": 0.01, "nn_distance": 5.0 + c / 10})
        rows.append({"class": c, "space": "input", "seed": 0, "independent_prob": 0.2 + c / 50,
                     "independent_correct": False, "recon_error": 0.05 + c / 100, "nn_distance": 4.0})
    v = verdicts(pd.DataFrame(rows)).set_index("claim")
    assert v.loc["recognised", "verdict"] == "holds" and v.loc["on_manifold", "verdict"] == "holds"
    assert v.loc["near_data", "verdict"] == "does not hold"
    assert v.loc["recognised", "p"] == pytest.approx(2 / 2**10)
    assert "recognised (argmax) code 10/10, input 0/10" in v.loc["recognised", "measured"]


@pytest.mark.slow
def test_cli_on_digits_writes_table_grids_and_claims(tmp_path, cache_dir):
    """The whole command on the 8x8 digits (an MLP, a tiny VAE, a logistic judge) through Hydra composition."""
    from evalxai.maximization.cli import run_prototypes

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("maximize", overrides=[
            "dataset=digits", "model=mlp", "model.train.epochs=3", "generator=vae_digits", "generator.train.epochs=5",
            "prototypes.input.steps=60", "prototypes.code.steps=60", "prototypes.input.restarts=1",
            "prototypes.code.restarts=1", f"cache_dir={cache_dir}"])
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(cfg, resolve=True)
    assert cfg["prototypes"]["spaces"] == ["input", "code"] and cfg["generator"]["name"] == "vae_digits"
    out = run_prototypes(cfg, tmp_path / "run")
    table = pd.read_parquet(out / "prototypes.parquet")
    assert set(table["space"]) == {"input", "code", "test_median"}
    assert (table.groupby("space").size() == 10).all()
    for col in ("class", "model_log_prob", "independent_prob", "recon_error", "neg_elbo", "nn_distance"):
        assert table[col].notna().all(), col
    assert table["independent_prob"].between(0, 1).all() and (table["recon_error"] >= 0).all()
    for png in ("prototypes.png", "prototypes_input.png", "prototypes_code.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims["claim"]) == ["recognised", "on_manifold", "near_data"]
    assert set(claims["verdict"]) <= {"holds", "does not hold", "inconclusive"}
    assert (out / "run.json").exists() and (out / "summary.csv").exists()


def test_independent_classifier_is_cached_arrays(cache_dir):
    digits = load_dataset("digits", cache_dir=cache_dir)
    clf = get_classifier(digits, "logistic", cache_dir=cache_dir)
    assert clf.info["test_accuracy"] > 0.9  # logistic regression on 8x8 digits
    again = get_classifier(digits, "logistic", cache_dir=cache_dir)
    assert again.info["cache_hit"] and all(np.array_equal(a, b) for (a, _), (b, _) in zip(clf.weights, again.weights))
    x, _ = digits.test_pixels(np.arange(5))
    np.testing.assert_allclose(clf.predict_proba(x.numpy()).sum(1), 1.0)
    with pytest.raises(ValueError, match="kind 'svm' is unknown"):
        get_classifier(digits, "svm")
