"""Residual block: structure, step == forward through the block, norm choices."""

from __future__ import annotations

import re

import pytest
import torch

from serpent_ssm.modules import S4D, Block, Mamba

from tests.helpers import assert_close, right_padding_mask, run_steps


@pytest.mark.parametrize("mixer", ["mamba", "s4d"])
@pytest.mark.parametrize("mlp_ratio", [0.0, 2.0])
def test_step_equals_forward(mixer, mlp_ratio):
    torch.manual_seed(0)
    m = Mamba(8, d_state=4) if mixer == "mamba" else S4D(8, d_state=8)
    block = Block(8, m, norm="rms", mlp_ratio=mlp_ratio).eval()
    x = torch.randn(2, 12, 8)
    with torch.no_grad():
        y = block(x)
    assert_close(run_steps(block, x), y, 1e-4, 1e-5, "step outputs")


def test_residual_structure():
    torch.manual_seed(0)
    block = Block(8, Mamba(8), norm="layer", mlp_ratio=0).eval()
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        assert_close(block(x), x + block.mixer(block.norm(x)), 1e-6, 1e-6, "output")
    assert isinstance(block.norm, torch.nn.LayerNorm) and block.mlp is None


def test_padding_invariance():
    torch.manual_seed(0)
    block = Block(8, Mamba(8), mlp_ratio=2.0).eval()
    x = torch.randn(2, 9, 8)
    mask = right_padding_mask([9, 4], 9)
    with torch.no_grad():
        assert_close(block(x, mask)[1, :4], block(x[1:, :4])[0], 1e-5, 1e-6, "row 1")


def test_bad_arguments():
    with pytest.raises(ValueError, match=re.escape("norm: expected one of 'rms', 'layer', got 'batch'")):
        Block(8, Mamba(8), norm="batch")
    with pytest.raises(ValueError, match=re.escape("mixer: expected an nn.Module, got function")):
        Block(8, lambda x: x)
