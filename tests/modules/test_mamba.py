"""Mamba mixer: equal to transformers' and mambapy's, step == forward, padding invariance, errors."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from serpent_ssm.modules import Mamba

from tests.helpers import assert_close, assert_padding_invariant, right_padding_mask, run_steps

D_MODEL = 16


def make_mamba(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = Mamba(D_MODEL, d_state=kwargs.pop("d_state", 8), **kwargs)
    with torch.no_grad():  # move D and the conv away from their trivial initial values
        model.D.normal_()
    return model.eval()


def test_parameter_names_and_shapes_match_transformers():
    modeling = pytest.importorskip("transformers.models.mamba.modeling_mamba")
    from transformers import MambaConfig

    config = MambaConfig(hidden_size=D_MODEL, state_size=8, expand=2, conv_kernel=4, num_hidden_layers=1)
    theirs = modeling.MambaMixer(config, layer_idx=0)
    ours = Mamba(D_MODEL, d_state=8, dt_rank=config.time_step_rank)
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want


@pytest.mark.parametrize("length", [1, 13, 64])
def test_equals_transformers_mamba_mixer(length):
    modeling = pytest.importorskip("transformers.models.mamba.modeling_mamba")
    from transformers import MambaConfig

    torch.manual_seed(0)
    config = MambaConfig(hidden_size=D_MODEL, state_size=8, expand=2, conv_kernel=4, num_hidden_layers=1)
    theirs = modeling.MambaMixer(config, layer_idx=0).eval()
    with torch.no_grad():
        theirs.D.normal_()
        theirs.conv1d.bias.normal_()
    ours = Mamba(D_MODEL, d_state=8, dt_rank=config.time_step_rank).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, length, D_MODEL)
    with torch.no_grad():
        assert_close(ours(x), theirs(x), 1e-5, 1e-5, "output")


@pytest.mark.parametrize("length", [8, 37])
def test_equals_mambapy_block(length):
    mambapy = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    config = mambapy.MambaConfig(d_model=D_MODEL, n_layers=1, d_state=8, expand_factor=2, d_conv=4)
    theirs = mambapy.MambaBlock(config).eval()
    with torch.no_grad():
        theirs.D.normal_()
    ours = Mamba(D_MODEL, d_state=8, expand=2, d_conv=4).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, length, D_MODEL)
    with torch.no_grad():
        assert_close(ours(x), theirs(x), 1e-5, 1e-5, "output")


def test_initialisation():
    model = Mamba(32, d_state=16, dt_min=0.001, dt_max=0.1)
    dt = torch.nn.functional.softplus(model.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    expected_a = torch.arange(1, 17, dtype=torch.float32).repeat(64, 1)
    assert_close(torch.exp(model.A_log), expected_a, 1e-6, 1e-6, "A")
    assert torch.equal(model.D, torch.ones(64))
    assert model.A_log._no_weight_decay and model.D._no_weight_decay
    assert model.dt_rank == 2 and model.d_inner == 64


@pytest.mark.parametrize("backend", ["ref", "torch"])
@given(length=st.integers(1, 40), batch=st.integers(1, 3), seed=st.integers(0, 1000))
def test_step_equals_forward(backend, length, batch, seed):
    model = make_mamba(seed, backend=backend)
    x = torch.randn(batch, length, D_MODEL, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x)
    assert_close(run_steps(model, x), y, 1e-5, 1e-5, "step outputs")


@given(length=st.integers(2, 50), split=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_forward_with_state_continues_a_split_sequence(length, split, seed):
    model = make_mamba(seed)
    x = torch.randn(2, length, D_MODEL, generator=torch.Generator().manual_seed(seed))
    cut = round(split * length)
    with torch.no_grad():
        y, final = model(x, return_state=True)
        y1, s1 = model(x[:, :cut], return_state=True)
        y2, s2 = model(x[:, cut:], state=s1, return_state=True)
        # the state also hands over to step() for generation after a prompt
        y_next, _ = model.step(x[:, -1], s1 if cut == length else model(x[:, :-1], return_state=True)[1])
    assert_close(torch.cat([y1, y2], 1), y, 1e-5, 1e-5, "outputs")
    for k in ("conv", "ssm"):
        assert_close(getattr(s2, k), getattr(final, k), 1e-5, 1e-5, f"state {k}")
    if cut != length:
        assert_close(y_next, y[:, -1], 1e-5, 1e-5, "step after forward")


@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    extra=st.integers(0, 12),
    seed=st.integers(0, 1000),
)
def test_padding_invariance(lengths, extra, seed):
    """Each row padded to a common length (plus extra padding) gives its unpadded outputs."""
    x = torch.randn(
        len(lengths), max(lengths) + extra, D_MODEL, generator=torch.Generator().manual_seed(seed)
    )
    assert_padding_invariant(make_mamba(seed), x, lengths, 1e-5, 1e-5, with_state=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_intervals_are_what_forward_scans_with(monkeypatch, dtype):
    """``intervals`` equals softplus(delta + delta_bias) of the arguments forward passes to the scan."""
    from serpent_ssm.modules import mamba

    model = make_mamba(0, backend="torch").to(dtype)
    x = torch.randn(3, 17, D_MODEL, dtype=dtype)
    mask = right_padding_mask([17, 9, 0], 17)
    seen = {}

    def spy(u, delta, *args, delta_bias=None, **kwargs):
        seen["delta"], seen["delta_bias"] = delta, delta_bias
        return selective_scan(u, delta, *args, delta_bias=delta_bias, **kwargs)

    selective_scan = mamba.selective_scan
    monkeypatch.setattr(mamba, "selective_scan", spy)
    with torch.no_grad():
        model(x, mask=mask)
        got = model.intervals(x, mask)
    cdt = seen["delta"].dtype
    want = torch.nn.functional.softplus(seen["delta"] + seen["delta_bias"].to(cdt)[:, None]).transpose(1, 2)
    assert got.shape == (3, 17, model.d_inner) and got.dtype == dtype
    assert torch.equal(got, want * mask.unsqueeze(-1))
    assert torch.count_nonzero(got[1, 9:]) == 0 and torch.count_nonzero(got[2]) == 0
    assert (got[0] > 0).all()


def test_intervals_step_equals_intervals():
    model = make_mamba(3).double()
    x = torch.randn(2, 13, D_MODEL, dtype=torch.float64)
    conv, steps = model.allocate_state(2).conv, []
    with torch.no_grad():
        for t in range(13):
            delta, conv = model.intervals_step(x[:, t], conv)
            steps.append(delta)
        want = model.intervals(x)
    torch.testing.assert_close(torch.stack(steps, 1).double(), want, rtol=1e-6, atol=1e-7)


def test_intervals_of_an_empty_sequence():
    model = make_mamba(0)
    assert model.intervals(torch.zeros(2, 0, D_MODEL)).shape == (2, 0, model.d_inner)


def test_gradients_reach_every_parameter():
    model = make_mamba(0).train()
    x = torch.randn(2, 20, D_MODEL)
    mask = right_padding_mask([20, 11], 20)
    model(x, mask=mask).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_dt_rank_auto():
    assert Mamba(100).dt_rank == math.ceil(100 / 16)


# ----------------------------------------------------------------------------- bad input
def _raises(message, fn):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fn()


def test_bad_constructor_arguments():
    _raises("d_model: expected a positive integer, got 0", lambda: Mamba(0))
    _raises("d_state: expected a positive integer, got 2.5", lambda: Mamba(8, d_state=2.5))
    _raises("dt_max: expected dt_max >= dt_min=0.1, got 0.01", lambda: Mamba(8, dt_min=0.1, dt_max=0.01))
    _raises(
        "backend: expected one of 'auto', 'ref', 'torch', 'cpu', 'cuda', got 'fast'",
        lambda: Mamba(8, backend="fast"),
    )
    _raises("dt_init: expected 'random' or 'constant', got 'zeros'", lambda: Mamba(8, dt_init="zeros"))


def test_bad_forward_input():
    model = make_mamba()
    _raises(
        "x: expected a tensor of rank 3, got rank 2 with shape (5, 16)",
        lambda: model(torch.zeros(5, D_MODEL)),
    )
    _raises("x: expected shape (*, *, 16), got (1, 5, 8)", lambda: model(torch.zeros(1, 5, 8)))
    _raises(
        "x: expected a floating-point tensor, got dtype torch.int64",
        lambda: model(torch.zeros(1, 5, 16).long()),
    )
    bad_mask = torch.tensor([[True, False, True]])
    _raises(
        "mask: expected right padding (real elements first, then padding) in every row, "
        "got a real element after padding in row 0",
        lambda: model(torch.zeros(1, 3, D_MODEL), mask=bad_mask),
    )
    _raises(
        "mask: expected shape (1, 3), got (1, 4)",
        lambda: model(torch.zeros(1, 3, D_MODEL), mask=torch.ones(1, 4, dtype=torch.bool)),
    )


def test_nan_parameter_is_reported():
    model = make_mamba()
    with torch.no_grad():
        model.A_log[0, 0] = float("nan")
    _raises(
        "A: expected finite values, got 1 NaN and 0 infinite entries out of 256",
        lambda: model(torch.zeros(1, 3, D_MODEL)),
    )


def test_bad_state():
    model = make_mamba()
    _raises(
        "state: expected a MambaState (from allocate_state, step or forward), got Tensor",
        lambda: model.step(torch.zeros(2, D_MODEL), torch.zeros(2)),
    )
    _raises(
        "state: expected a MambaState (from allocate_state, step or forward), got dict",
        lambda: model.step(
            torch.zeros(2, D_MODEL), {"conv": torch.zeros(2, 32, 3), "ssm": torch.zeros(2, 32, 8)}
        ),
    )
    _raises(
        "state.ssm: expected shape (2, 32, 8), got (3, 32, 8)",
        lambda: model.step(
            torch.zeros(2, D_MODEL), dataclasses.replace(model.allocate_state(3), conv=torch.zeros(2, 32, 3))
        ),
    )
    _raises(
        "state.ssm: expected a tensor on cpu, got one on meta",
        lambda: model.step(
            torch.zeros(2, D_MODEL),
            dataclasses.replace(model.allocate_state(2), ssm=torch.zeros(2, 32, 8, device="meta")),
        ),
    )
    _raises(
        "x_t: expected a tensor on cpu, got one on meta",
        lambda: model.step(torch.zeros(2, D_MODEL, device="meta"), model.allocate_state(2)),
    )
