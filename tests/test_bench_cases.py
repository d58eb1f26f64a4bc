"""The issue-29 benches: the pixel-flipping race (evalxai against its bare per-step forwards) and the cases handed
to a Quantus process (models rebuilt from evalxai/bench/standalone.py, which imports only torch)."""
import pandas as pd
import pytest
import torch

import evalxai
from evalxai.bench import quantus as quantus_bench
from evalxai.bench import standalone


def test_standalone_lenet_is_the_zoo_lenet():
    """The Quantus process rebuilds the zoo's LeNet from its state dict: same names, same logits."""
    from evalxai.models.zoo import build_model

    torch.manual_seed(0)
    zoo = build_model("lenet", (1, 28, 28)).eval()
    copy = standalone.build("lenet", zoo.state_dict())
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(zoo(x), copy(x))
    with pytest.raises(ValueError, match="unknown architecture 'vgg'.*standalone"):
        standalone.build("vgg", {})


def test_resnet18_case_and_requests(tmp_path):
    model, x, t, a, masks = quantus_bench.resnet18_case(batch=2, size=32)
    assert sum(p.numel() for p in model.parameters()) == 11181642  # ResNet-18 at 10 classes
    assert x.shape == a.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32) and masks.any()
    assert torch.equal(t, model(x).argmax(1))
    case = torch.load(quantus_bench.write_case(tmp_path / "c.pt", "resnet18", (model, x, t, a, masks)),
                      weights_only=True)
    assert torch.equal(standalone.build(case["arch"], case["state"])(x), model(x))
    entry = {"quantus_class": "MaxSensitivity", "init": {"nr_samples": 10}, "call": {"explain_func": "gxi"},
             "a_batch": "attributions"}
    assert quantus_bench.quantus_request("M", entry)["a"] == "attributions"  # re-explains: x-shaped maps
    entry = {**entry, "call": {}, "quantus_class": "PixelFlipping"}
    req = quantus_bench.quantus_request("P", entry, {"nr_samples": 3})
    assert req["a"] == "summed" and req["init"] == {"nr_samples": 3}


def test_flip_race_ratios_come_from_the_medians():
    from evalxai.bench.metrics import FLIP_RACE, bench_flip_race
    from evalxai.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28)).eval()
    x = torch.rand(4, 1, 28, 28)
    t = model(x).argmax(1)
    r = evalxai.explain(model, x, t, method="gradient")
    df = bench_flip_race(model, x, t, r, repeats=1).set_index("contestant")
    assert list(df.index) == ["bare forwards", "evalxai"] and (df["forwards"] == 50).all()
    assert df.loc["evalxai", "ratio_to_bare"] == pytest.approx(df.loc["evalxai", "median_ms"] /
                                                              df.loc["bare forwards", "median_ms"])
    assert df.loc["evalxai", "evalxai_speedup"] == 1.0
    curve = evalxai.score(model, x, t, r, metric="pixel_flipping", **FLIP_RACE)
    assert curve["step"].max() + 1 == 50
    assert isinstance(df, pd.DataFrame)
