"""``ops.serpent_step``'s torch backend: the stacked step of ``R`` Mamba modules equals each
module's own ``Mamba.step`` (the reference), and one module's weights shared over ``R`` rows equal stepping
that module ``R`` times."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serpent_ssm.modules import Mamba
from serpent_ssm.ops.serpent_step import stack_step_weights
from serpent_ssm.ops.serpent_step.torch import mamba_step_torch
from serpent_ssm.ops.states import map_state

from tests.helpers import assert_close


def modules(count, d, bias, conv_bias, seed):
    torch.manual_seed(seed)
    return [Mamba(d, d_state=4, bias=bias, conv_bias=conv_bias).double() for _ in range(count)]


def random_states(mods, batch, seed):
    g = torch.Generator().manual_seed(seed)
    states = []
    for m in mods:
        s = m.allocate_state(batch, dtype=torch.float64)
        states.append(map_state(lambda v: torch.randn(v.shape, generator=g, dtype=v.dtype), s))
    return states


@settings(max_examples=25, deadline=None)
@given(
    count=st.integers(1, 4),
    batch=st.integers(1, 3),
    d=st.integers(2, 9),
    bias=st.booleans(),
    conv_bias=st.booleans(),
    seed=st.integers(0, 999),
)
def test_stacked_step_equals_each_modules_step(count, batch, d, bias, conv_bias, seed):
    mods = modules(count, d, bias, conv_bias, seed)
    states = random_states(mods, batch, seed)
    x = torch.randn(count, batch, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    with torch.no_grad():
        want = [m.step(x[i], states[i]) for i, m in enumerate(mods)]
        y, conv, ssm = mamba_step_torch(
            x,
            torch.stack([s.conv for s in states]),
            torch.stack([s.ssm for s in states]),
            stack_step_weights([m.step_tensors() for m in mods]),
        )
    for i, (y_i, s_i) in enumerate(want):
        assert_close(y[i], y_i, 1e-6, 1e-7, f"output of module {i}")
        assert_close(conv[i], s_i.conv, 1e-6, 1e-7, f"conv state of module {i}")
        assert_close(ssm[i], s_i.ssm, 1e-6, 1e-7, f"ssm state of module {i}")


def test_one_modules_weights_broadcast_over_a_leading_dim():
    (m,) = modules(1, 6, True, True, 0)
    states = random_states([m] * 3, 2, 1)
    x = torch.randn(3, 2, 6, dtype=torch.float64)
    with torch.no_grad():
        conv0, ssm0 = torch.stack([s.conv for s in states]), torch.stack([s.ssm for s in states])
        y, conv, ssm = mamba_step_torch(x, conv0, ssm0, m.step_weights())
        for i in range(3):
            y_i, s_i = m.step(x[i], states[i])
            assert_close(y[i], y_i, 1e-6, 1e-7, f"row {i}")
            assert_close(ssm[i], s_i.ssm, 1e-6, 1e-7, f"ssm state of row {i}")


def test_gradients_flow_through_the_stack():
    mods = modules(2, 4, False, True, 3)
    states = random_states(mods, 2, 0)
    x = torch.randn(2, 2, 4, dtype=torch.float64)
    y, _, _ = mamba_step_torch(
        x,
        torch.stack([s.conv for s in states]),
        torch.stack([s.ssm for s in states]),
        stack_step_weights([m.step_tensors() for m in mods]),
    )
    y[1].sum().backward()
    assert mods[0].in_proj.weight.grad.abs().sum() == 0  # module 0's rows do not touch the sum
    assert mods[1].in_proj.weight.grad.abs().sum() > 0 and mods[1].A_log.grad.abs().sum() > 0


def test_stacking_refuses_modules_of_different_shapes():
    a, b = Mamba(4, d_state=4), Mamba(4, d_state=4, bias=True)
    message = "weights: expected modules of the same shapes and biases, got different ones"
    with pytest.raises(ValueError, match=f"^{message}$"):
        stack_step_weights([a.step_tensors(), b.step_tensors()])
