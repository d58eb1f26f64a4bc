"""Token heatmaps (evalxai.report.tokens) and the meta-evaluation's token perturbation (perturb_tokens)."""
import numpy as np
import pytest
import torch

from evalxai.meta.perturbation import perturb_tokens
from evalxai.report.tokens import shades, token_html, token_png


def test_shades_are_signed_shares_of_the_row_maximum():
    np.testing.assert_allclose(shades(np.array([0.5, -2.0, 1.0, 0.0])), [0.25, -1.0, 0.5, 0.0])
    assert not shades(np.zeros(3)).any()


def test_token_html_draws_real_tokens_escaped_with_rationale(tmp_path):
    tokens = [["[CLS]", "<b>good</b>", "film"], ["[CLS]", "bad"]]
    maps = {"attnlrp": np.array([[0.0, 2.0, -1.0], [0.0, 1.0, 9.0]])}  # 9.0 sits on padding of row 1
    rationale = np.array([[False, True, False], [False, True, False]])
    text = token_html(tokens, maps, tmp_path / "t.html", ["a", "b"], rationale).read_text()
    assert "&lt;b&gt;good&lt;/b&gt;" in text and "<b>good" not in text
    assert text.count("class='t g'") == 2 and text.count("class='t'") == 3
    assert "rgba(214,38,40,1.000)" in text  # the row maximum, positive: opaque red
    assert "rgba(30,89,191,0.500)" in text  # -1 against max 2: half-opaque blue
    assert "rgba(214,38,40,0.111)" not in text  # padding (9.0) is neither drawn nor scales row 1


def test_token_png_is_written(tmp_path):
    path = token_png([["[CLS]", "a", "b"]], {"m": np.array([[0.0, 1.0, -1.0]])}, tmp_path / "p" / "t.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_perturb_tokens_replaces_ordinary_tokens_only():
    ids = torch.tensor([[1, 5, 6, 7, 0, 0], [1, 8, 9, 5, 6, 7]])
    mask = (ids != 0).long()
    repl = torch.arange(4, 20)
    assert torch.equal(perturb_tokens(ids, mask, 1e-9, 0, repl), ids)
    out = perturb_tokens(ids, mask, 1.0, 0, repl)
    assert torch.equal(out[:, 0], ids[:, 0]) and torch.equal(out[0, 4:], ids[0, 4:])  # [CLS] and padding stay
    assert torch.isin(out[:, 1:][mask[:, 1:] == 1], repl).all()
    assert not torch.equal(out, ids)
    half = perturb_tokens(ids, mask, 0.5, 3, repl)
    assert torch.equal(perturb_tokens(ids[1:], mask[1:], 0.5, 3, repl), half[1:])  # per sample, not per batch
    assert not torch.equal(perturb_tokens(ids, mask, 0.5, 4, repl), half)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_perturb_tokens_rate(rate):
    ids = torch.randint(4, 50, (64, 40))
    out = perturb_tokens(ids, torch.ones_like(ids), rate, 0, torch.arange(4, 50))
    changed = (out != ids).double().mean().item()
    assert abs(changed - rate * 45 / 46) < 0.05  # a draw may pick the same token
