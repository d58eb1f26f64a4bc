"""The memory budget (issue 16): chunks sized in bytes, the same numbers at any budget (the pipeline here; every
method and metric in tests/test_contracts.py), an error when one image does not fit, SmoothGrad noise drawn per
chunk."""
import importlib

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import evalxai
from evalxai.core import memory
from evalxai.runs.configs import CONF as CONFIGS


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4)).double().eval()


def data(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.arange(n) % 4


def test_parse_and_scope():
    assert memory.parse_bytes("1.5GB") == int(1.5 * 2**30) and memory.parse_bytes("512 MiB") == 512 * 2**20
    assert memory.parse_bytes(1000) == 1000
    for bad in ("lots", "-1GB", 0, "3 parsecs"):
        with pytest.raises(ValueError, match="memory_budget"):
            memory.parse_bytes(bad)
    default = memory.budget()
    assert default > 2**26  # half of the free memory of this machine
    with evalxai.memory_budget("64MB"):
        assert memory.budget() == 64 * 2**20
        with evalxai.memory_budget(2**20):
            assert memory.budget() == 2**20
        assert memory.budget() == 64 * 2**20
    assert memory.budget() == default
    evalxai.memory_budget("1GB")  # a plain call sets it for the process
    try:
        assert memory.budget() == 2**30
    finally:
        evalxai.memory_budget(None)
    assert memory.budget() == default


def tiny_budget(model, x) -> int:
    """Room for about one LRP pass over one image: every chunk holds one or two images."""
    return int(3.5 * memory.image_cost(model, x))


def test_an_image_that_does_not_fit_is_an_error_saying_how_much_it_needs():
    model, (x, t) = cnn(), data()
    with evalxai.memory_budget(1000), pytest.raises(MemoryError, match=r"needs about \d+ MB per image.*memory_budget"):
        evalxai.explain(model, x, t, method="lrp_epsilon_plus")


def test_smoothgrad_draws_its_noise_per_chunk(monkeypatch):
    """The noisy copies exist only a chunk at a time: no gradient call and no noise draw covers all of them."""
    gradient = importlib.import_module("evalxai.methods.gradient")

    model, (x, t) = cnn(), data()
    sizes, draws = [], []
    real_grad, real_draws = gradient.target_grad, gradient.noise_draws
    monkeypatch.setattr(gradient, "target_grad", lambda m, xs, tt: sizes.append(len(xs)) or real_grad(m, xs, tt))
    monkeypatch.setattr(gradient, "noise_draws", lambda xx, s, ks, *a: draws.append(len(xx) * len(list(ks)))
                        or real_draws(xx, s, ks, *a))
    with evalxai.memory_budget(tiny_budget(model, x)):
        chunk = memory.images_per_chunk(model, x, "gradient")
        evalxai.explain(model, x, t, method="smoothgrad", samples=5)
    assert sum(sizes) == 5 * len(x) and max(sizes) <= chunk < 5 * len(x) and max(draws) <= chunk


@pytest.mark.slow
def test_pipeline_scores_do_not_depend_on_the_budget(tmp_path, cache_dir):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from evalxai.runs.pipeline import run_experiment

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["experiment=mnist_smoke", "n_samples=4", "attribution_cache=false",
                                           "methods=[smoothgrad,lrp_epsilon_plus]", "progress=false"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    a = run_experiment({**cfg, "memory_budget": "16GB"}, tmp_path / "a", progress=False)
    b = run_experiment({**cfg, "memory_budget": "40MB"}, tmp_path / "b", progress=False)
    ta, tb = pd.read_parquet(a / "scores.parquet"), pd.read_parquet(b / "scores.parquet")
    assert (ta["run_id"] == tb["run_id"]).all()  # the budget is not part of the run's identity
    np.testing.assert_allclose(ta["value"].to_numpy(dtype=float), tb["value"].to_numpy(dtype=float), rtol=1e-5,
                               atol=1e-6, equal_nan=True)


def test_removal_defaults_scale_with_the_image():
    """At 224 x 224 the defaults stay bounded: about 50 steps and 8-pixel patches (pixel flipping, insertion/
    deletion), 32-pixel patches for selectivity; on MNIST-sized images the patch is a pixel."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 7, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x, t = torch.rand(2, 3, 224, 224), torch.tensor([0, 1])
    r = torch.rand_like(x)
    pf = evalxai.score(model, x, t, r, metric="pixel_flipping", order="morf")
    curve = pf[pf["measure"] == "curve_morf"]
    assert curve["step"].max() == 49 and curve["fraction"].max() == 1.0  # 784 patches of 8 x 8, 16 per step
    sel = evalxai.score(model, x, t, r, metric="selectivity", method="gradient")
    assert sel["fraction"].max() == pytest.approx(20 / 49)  # 7 x 7 patches of 32 x 32, 20 steps
    ins = evalxai.score(model, x, t, r, metric="insertion_deletion")
    assert ins["step"].max() <= 50
    small = evalxai.score(cnn(), *data(2), torch.rand(2, 1, 8, 8, dtype=torch.float64), metric="pixel_flipping")
    assert small["step"].max() == 32 and small["fraction"].max() == 1.0  # 64 pixels: patch 1, 2 per step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_maps_and_scores_equal_the_cpu_ones_and_the_budget_reads_gpu_memory():
    model, (x, t) = cnn(), data()
    gpu = model.cuda()
    assert memory.budget("cuda") <= torch.cuda.mem_get_info()[0]
    for method in ("lrp_epsilon_plus", "integrated_gradients", "smoothgrad"):
        r_cpu = evalxai.explain(cnn(), x, t, method=method)
        r_gpu = evalxai.explain(gpu, x.cuda(), t.cuda(), method=method)
        torch.testing.assert_close(r_gpu.cpu(), r_cpu, rtol=1e-9, atol=1e-10)
    df = evalxai.score(gpu, x.cuda(), t.cuda(), r_gpu, metric="pixel_flipping", patch_size=2)
    assert df["value"].notna().all()


@pytest.mark.slow
def test_progress_bars_per_chunk_only_when_asked(capsys):
    model, (x, t) = cnn(), data()
    with evalxai.memory_budget(tiny_budget(model, x)):
        evalxai.explain(model, x, t, method="integrated_gradients", steps=4)
        assert "gradient passes" not in capsys.readouterr().err
        memory.show_progress(True)
        try:
            evalxai.explain(model, x, t, method="integrated_gradients", steps=4)
        finally:
            memory.show_progress(False)
    assert "gradient passes" in capsys.readouterr().err


def test_rows_are_put_in_row_major_order_whatever_the_metric_wrote():
    """score's table lists row k of every sample, then row k + 1: a metric writing sample by sample is reordered
    (the same table as from several chunks), a table already in that order is left as it is."""
    import numpy as np

    from evalxai.api import row_major_order

    assert row_major_order(np.array([0, 0, 1, 1, 2])).tolist() == [0, 2, 4, 1, 3]
    assert row_major_order(np.array([0, 1, 2, 0, 1, 2])) is None
    assert row_major_order(np.array([1, 0, 1, 0])).tolist() == [1, 0, 3, 2]


def test_cpu_forward_chunks_stay_cache_sized_and_change_no_number():
    """Perturbation stacks are forwarded in chunks of about 32 MB of activations on the CPU (a speed bound: one
    chunk as large as the budget ran pixel flipping at 1.6x its bare forwards, these at 1.1x); gradients and LRP
    keep the budget's chunks, and the scores are the same whichever bound applies."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 12 * 12, 3))
    model, x = model.double().eval(), torch.rand(6, 1, 12, 12, dtype=torch.float64)
    per_image = max(1, int(0.5 * memory.image_cost(model, x)))
    with memory.memory_budget("8GB"):
        n = memory.images_per_chunk(model, x, "forward")
        assert n == max(memory._FORWARD_MIN_IMAGES, memory._FORWARD_CHUNK_BYTES // per_image)
        assert memory.images_per_chunk(model, x, "gradient") > n  # only forwards take the speed bound
        t, r = torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn_like(x)
        bounds = memory._FORWARD_CHUNK_BYTES, memory._FORWARD_MIN_IMAGES
        scores = []
        try:
            for chunk in (50 * per_image, 2**62):  # 37 steps x 6 images: five chunks of 50, then one
                memory._FORWARD_CHUNK_BYTES, memory._FORWARD_MIN_IMAGES = chunk, 1
                scores.append(evalxai.score(model, x, t, r, metric="pixel_flipping", patch_size=1, per_step=4))
        finally:
            memory._FORWARD_CHUNK_BYTES, memory._FORWARD_MIN_IMAGES = bounds
    pd.testing.assert_frame_equal(*scores, check_exact=False, rtol=1e-12, atol=1e-14)  # float64: chunking only
