"""Recording intervals: Mamba's Δ per layer, SeRpEnt's resampling intervals per branch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from serpent_ssm.analysis.intervals import record_intervals

from tests.helpers import causal_lm


def test_mamba_delta_per_layer_matches_a_manual_computation():
    torch.manual_seed(0)
    lm = causal_lm("mamba", 40, 16, 2).eval()
    ids = torch.randint(0, 40, (2, 12))
    rec = record_intervals(lm, ids)
    assert sorted(rec) == ["layer0", "layer1"] and rec["layer0"].shape == (2, 12)
    # layer 0 by hand: embedding -> norm -> in_proj -> causal conv -> x_proj -> dt_proj -> softplus
    m = lm.blocks[0].mixer
    with torch.no_grad():
        x = lm.blocks[0].norm(lm.embedding(ids))
        xs = m.in_proj(x).chunk(2, dim=-1)[0].transpose(1, 2)
        xc = F.silu(F.conv1d(F.pad(xs, (m.d_conv - 1, 0)), m.conv1d.weight, m.conv1d.bias, groups=m.d_inner))
        dt = m.x_proj(xc.transpose(1, 2))[..., : m.dt_rank]
        want = F.softplus(m.dt_proj(dt)).mean(-1)
    torch.testing.assert_close(rec["layer0"], want, rtol=1e-5, atol=1e-6)
    assert (rec["layer1"] > 0).all()


def test_serpent_intervals_per_branch_equal_return_info():
    torch.manual_seed(0)
    lm = causal_lm("serpent-mamba", 40, 16, 1).eval()
    ids = torch.randint(0, 40, (2, 20))
    rec = record_intervals(lm, ids)
    assert sorted(rec) == ["layer0/rate0.2", "layer0/rate0.3", "layer0/rate0.5"]
    with torch.no_grad():
        _, info = lm.blocks[0].mixer(lm.blocks[0].norm(lm.embedding(ids)), return_info=True)
    for branch in info["branches"]:
        torch.testing.assert_close(rec[f"layer0/rate{branch['rate']:g}"], branch["delta"])
    assert not lm.blocks[0].mixer._forward_hooks  # hooks removed


def test_unsupported_model():
    with pytest.raises(ValueError, match=r"^model: expected a model with \.blocks"):
        record_intervals(torch.nn.Linear(2, 2), torch.zeros(1, 2))
