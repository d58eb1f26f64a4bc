"""evalxai.core.sorting gives torch.sort's stable results (values and indices, ascending and descending, with ties)."""
import pytest
import torch

from evalxai.core.sorting import sort_rows, sorted_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("descending", [False, True])
def test_rows_sort_as_torch_stable_sort(dtype, descending):
    g = torch.Generator().manual_seed(0)
    values = torch.randint(-3, 4, (5, 300), generator=g).to(dtype) * 0.5  # many ties, and -0.0 / 0.0
    values[0] = -values[0]
    values = values[:, ::2]  # not contiguous
    want = torch.sort(values, dim=1, descending=descending, stable=True)
    got = sort_rows(values, descending)
    assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)
    assert got[0].dtype == dtype and got[1].dtype == torch.int64
    assert torch.equal(sorted_rows(values, descending), want.values)


def test_rows_sort_continuous_values_and_gradients_are_ignored():
    values = torch.randn(3, 1000, dtype=torch.float64, requires_grad=True)
    want = torch.sort(values.detach(), dim=1, stable=True)
    got = sort_rows(values)
    assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)
