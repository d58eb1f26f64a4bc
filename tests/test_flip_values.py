"""Pixel flipping's numbers pinned (issue 29: speed work must not move them), and the memory probe that sizes its
forward chunks: the bytes of one image do not depend on whether x is a view of a larger tensor."""
import torch
from torch import nn

import evalxai
from evalxai.core import memory


def case():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).eval()
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    return model, x, torch.tensor([0, 1, 2, 3])


def test_pixel_flipping_values_are_pinned():
    """Values of the code before the issue-29 changes (float32 model, random ties, zero baseline), to 1e-6."""
    model, x, t = case()
    r = evalxai.explain(model, x, t, method="gradient_x_input")
    df = evalxai.score(model, x, t, r, metric="pixel_flipping", patch_size=1, per_step=8)
    pinned = {"aopc_morf": [0.02004860400369293, 0.08289207067144544, 0.05146970746940688, 0.048544550020443764],
              "auc_lerf": [0.15400237579726508, 0.08671052267567979, 0.050017996018545494, 0.12241486335794133],
              "abpc": [0.12665293365716934, 0.12075375255785491, 0.12924376718307795, 0.058755955413768164]}
    for measure, values in pinned.items():
        got = torch.tensor(df[df.measure == measure].value.tolist(), dtype=torch.float64)
        assert torch.allclose(got, torch.tensor(values, dtype=torch.float64), rtol=0, atol=1e-6), measure
    curve = df[(df.measure == "curve_morf") & (df["sample"] == 1)].value.tolist()[:6]
    expected = [0.045848723500967026, 0.0047784224152565, -0.0006340630352497101, -0.011612862348556519,
                -0.03621937334537506, -0.05502869933843613]
    assert torch.allclose(torch.tensor(curve), torch.tensor(expected), rtol=0, atol=1e-6)


def test_image_cost_of_a_view_is_that_of_its_images():
    """A batch sliced from a data set (x_test[:32]) used to be charged the whole data set's storage per image, which
    shrank the forward chunks of pixel flipping to their minimum (64 images) on MNIST."""
    model, x, _ = case()
    big = torch.rand(500, 1, 12, 12)
    view = big[:4]
    assert view.untyped_storage().nbytes() == big.untyped_storage().nbytes()
    memory._COSTS.pop(model, None)
    from_view = memory.image_cost(model, view)
    memory._COSTS.pop(model, None)
    assert from_view == memory.image_cost(model, x.clone())
    assert from_view < big.untyped_storage().nbytes() / 10
