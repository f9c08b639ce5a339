"""S4D mixer: FFT convolution == recurrence == direct convolution, padding, state, errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from serpent_ssm.modules import S4D

from tests.helpers import assert_close, assert_padding_invariant, right_padding_mask, run_steps

D_MODEL = 8


def make_s4d(seed=0, **kwargs):
    torch.manual_seed(seed)
    return S4D(D_MODEL, d_state=kwargs.pop("d_state", 16), dt_min=0.01, dt_max=0.5, **kwargs).eval()


def test_kernel_equals_explicit_recurrence():
    """K_l = 2 Re(C dB dA^l): the impulse response of the discretised system, by a plain loop."""
    model = make_s4d()
    length = 50
    dta, db, c = model._discrete()
    h = db.clone()  # state after an impulse at t = 0
    expected = []
    for _ in range(length):
        expected.append(2 * (c * h).sum(-1).real)
        h = torch.exp(dta) * h
    assert_close(model.kernel(length), torch.stack(expected, -1), 1e-5, 1e-5, "kernel")


def test_fft_convolution_equals_direct_convolution():
    model = make_s4d()
    x = torch.randn(2, 40, D_MODEL)
    k = model.kernel(40)
    u = x.transpose(1, 2)
    direct = F.conv1d(F.pad(u, (39, 0)), k.flip(-1).unsqueeze(1), groups=D_MODEL) + model.D[:, None] * u
    expected = F.glu(model.out_linear(F.gelu(direct).transpose(1, 2)), dim=-1)
    with torch.no_grad():
        assert_close(model(x), expected, 1e-5, 1e-5, "output")


@given(length=st.integers(1, 60), batch=st.integers(1, 3), seed=st.integers(0, 1000))
def test_step_equals_forward(length, batch, seed):
    model = make_s4d(seed)
    x = torch.randn(batch, length, D_MODEL, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x)
    assert_close(run_steps(model, x), y, 1e-4, 1e-5, "step outputs")


@given(length=st.integers(2, 60), split=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_forward_with_state_continues_a_split_sequence(length, split, seed):
    model = make_s4d(seed)
    x = torch.randn(2, length, D_MODEL, generator=torch.Generator().manual_seed(seed))
    cut = max(1, round(split * length))
    with torch.no_grad():
        y, final = model(x, return_state=True)
        y1, s1 = model(x[:, :cut], return_state=True)
        parts = [y1]
        if cut < length:
            y2, s1 = model(x[:, cut:], state=s1, return_state=True)
            parts.append(y2)
    assert_close(torch.cat(parts, 1), y, 1e-4, 1e-5, "outputs")
    assert_close(s1, final, 1e-4, 1e-5, "final state")


@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    extra=st.integers(0, 10),
    seed=st.integers(0, 1000),
)
def test_padding_invariance(lengths, extra, seed):
    x = torch.randn(
        len(lengths), max(lengths) + extra, D_MODEL, generator=torch.Generator().manual_seed(seed)
    )
    assert_padding_invariant(make_s4d(seed), x, lengths, 1e-4, 1e-5, with_state=True)


def test_learning_rate_hints_and_gradients():
    model = make_s4d().train()
    for name in ("log_dt", "log_A_real", "A_imag"):
        assert getattr(model, name)._optim == {"lr": 1e-3, "weight_decay": 0.0}, name
    assert not hasattr(model.C, "_optim")
    model(torch.randn(2, 30, D_MODEL), mask=right_padding_mask([30, 9], 30)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_no_lr_hint_when_disabled():
    assert not hasattr(S4D(4, lr=None).log_dt, "_optim")


def _raises(message, fn):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fn()


def test_bad_input():
    _raises("d_state: expected an even number (N/2 complex modes), got 7", lambda: S4D(4, d_state=7))
    _raises("dropout: expected a probability in [0, 1), got 1.5", lambda: S4D(4, dropout=1.5))
    model = make_s4d()
    _raises("x: expected shape (*, *, 8), got (1, 4, 3)", lambda: model(torch.zeros(1, 4, 3)))
    _raises(
        "state: expected a complex tensor of shape (2, 8, 8) from allocate_state, got torch.float32",
        lambda: model.step(torch.zeros(2, D_MODEL), torch.zeros(2, 8, 8)),
    )


# ----------------------------------------------------------------------------- causality at the edges
@pytest.mark.parametrize("value", [1e3, -1e6, 1e8])
def test_large_later_values_leave_earlier_outputs(value):
    """A large value at position 10 moves outputs 0-9 by no more than float32 round-off of the
    values before them (the FFT convolution is causal up to ~1e-16 of the largest later value)."""
    model = make_s4d()
    x = torch.randn(2, 32, D_MODEL, generator=torch.Generator().manual_seed(1))
    x2 = x.clone()
    x2[0, 10] = value
    with torch.no_grad():
        y, y2 = model(x), model(x2)
    assert_close(y2[0, :10], y[0, :10], 1e-6, 1e-6, "outputs before the large value")
    assert torch.equal(y2[1], y[1])


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("channels", ["one", "all"])
def test_non_finite_later_values_leave_earlier_outputs(value, channels):
    """Inf or NaN at position 10: outputs 0-9 unchanged and finite, NaN from position 10 on (the
    channel's convolution sees a zero there and its output is NaN from there on), also through
    ``return_state`` and with a mask; the final state is not finite."""
    model = make_s4d()
    x = torch.randn(2, 32, D_MODEL, generator=torch.Generator().manual_seed(1))
    x2 = x.clone()
    x2[0, 10, : 1 if channels == "one" else D_MODEL] = value
    mask = right_padding_mask([20, 32], 32)
    with torch.no_grad():
        y, y2 = model(x, mask=mask), model(x2, mask=mask)
        _, state = model(x2, mask=mask, return_state=True)
    assert_close(y2[0, :10], y[0, :10], 1e-6, 1e-6, "outputs before the non-finite value")
    assert torch.isnan(y2[0, 10:20]).all()
    assert torch.count_nonzero(y2[0, 20:]) == 0
    assert torch.equal(y2[1], y[1])
    assert not torch.isfinite(state[0]).all() and torch.isfinite(state[1]).all()


def test_convolution_runs_in_float64(monkeypatch):
    """The documented cost of causality: the FFT works in float64, the output is float32."""
    model = make_s4d()
    seen = []
    rfft = torch.fft.rfft

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return rfft(x, *args, **kwargs)

    monkeypatch.setattr(torch.fft, "rfft", spy)
    with torch.no_grad():
        y = model(torch.randn(1, 9, D_MODEL))
    assert seen and set(seen) == {torch.float64} and y.dtype == torch.float32
