"""``ops.serpent_step``'s cpu backend: the fused CPU step kernel equals its reference ``torch.cell_step``
(every option: stacked or shared weights, cell projections, the full branch, hold or scatter,
biases, rows that cross a grid point or not, poisoned rows), and Mamba's and SeRpEnt's ``step``
take it exactly when it applies (float32, CPU, no gradients, plain layers)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serpent_ssm.modules import Mamba, SeRpEnt
from serpent_ssm.ops import cpu_build
from serpent_ssm.ops.serpent_step import (
    KernelWeights,
    SeRpEntStepWeights,
    kernel_weights,
    mamba_step,
    serpent_step,
    stack_step_weights,
)
from serpent_ssm.ops.serpent_step.cpu import cell_step_cpu, step_kernel_usable
from serpent_ssm.ops.serpent_step.torch import CellState, cell_step

from tests.helpers import ShiftedLayer, assert_close

pytestmark = pytest.mark.skipif(
    not cpu_build.cpu_kernel_available(), reason="no C++ compiler for the CPU kernel"
)


def case(rates, full, shared, cell_proj, batch, d, d_state, d_conv, bias, seed):
    """Backbones, their reference and kernel weights, a random state and times."""
    torch.manual_seed(seed)
    g = rates + int(full)
    mods = [
        Mamba(d, d_state=d_state, d_conv=d_conv, bias=bias, conv_bias=bias) for _ in range(1 if shared else g)
    ]
    projs = [torch.nn.Linear(d, d) for _ in range(rates)] if cell_proj else []
    weights = mods[0].step_weights() if shared else stack_step_weights([m.step_tensors() for m in mods])
    proj = None
    if projs:
        proj = (torch.stack([p.weight.mT for p in projs]), torch.stack([p.bias for p in projs]).unsqueeze(1))
    with torch.no_grad():
        cells = None
        if projs:
            cells = (torch.stack([p.weight for p in projs]), torch.stack([p.bias for p in projs]))
        kernel = kernel_weights([m.step_tensors() for m in mods], cells)
    e = mods[0].d_inner
    gen = torch.Generator().manual_seed(seed + 1)
    state = CellState(
        torch.randn(rates, batch, d, generator=gen),
        torch.randn(rates, batch, d, generator=gen),
        torch.randn(g, batch, e, d_conv - 1, generator=gen),
        torch.randn(g, batch, e, d_state, generator=gen),
    )
    t_old = torch.rand(rates, batch, generator=gen, dtype=torch.float64) * 5.0
    t_new = t_old + torch.rand(rates, batch, generator=gen, dtype=torch.float64)  # Δ ≤ 1
    if rates and batch:
        t_old[0, 0] = t_new[0, 0] = math.nan  # a poisoned row crosses nothing
    x = torch.randn(batch, d, generator=gen)
    return x, t_old, t_new, state, weights, proj, kernel


@settings(max_examples=40, deadline=None)
@given(
    rates=st.integers(0, 3),
    full=st.booleans(),
    shared=st.booleans(),
    cell_proj=st.booleans(),
    hold=st.booleans(),
    batch=st.integers(0, 3),
    d=st.integers(1, 9),
    d_state=st.integers(1, 5),
    d_conv=st.integers(1, 4),
    bias=st.booleans(),
    seed=st.integers(0, 999),
)
def test_kernel_equals_reference(rates, full, shared, cell_proj, hold, batch, d, d_state, d_conv, bias, seed):
    if rates + int(full) == 0:
        full = True
    x, t_old, t_new, state, weights, proj, kernel = case(
        rates, full, shared, cell_proj, batch, d, d_state, d_conv, bias, seed
    )
    with torch.no_grad():
        want, want_state = cell_step(x, t_old, t_new, state, weights, proj, full, hold)
        got, got_state = cell_step_cpu(x, t_old, t_new, state, kernel, full, hold)
    assert got.shape == want.shape == (rates + int(full), batch, d)
    if rates and batch:  # the poisoned row: NaN in, kept as it was (the caller writes NaN out)
        assert torch.equal(got[0, 0], state.held[0, 0] if hold else torch.zeros(d))
        got, want = got.clone(), want.clone()  # (the reference's output with hold is its held state)
        got[0, 0] = want[0, 0] = 0.0  # scatter multiplies the reference's NaN output by 0
    assert_close(got, want, 1e-5, 1e-5, "outputs")
    for name in CellState._fields:
        torch.testing.assert_close(getattr(got_state, name), getattr(want_state, name), rtol=1e-5, atol=1e-5,
                                   equal_nan=True, msg=name)  # fmt: skip
        assert getattr(state, name) is not getattr(got_state, name)  # the input state is not written to


def test_kernel_applies_only_without_gradients_to_float32_on_the_cpu(monkeypatch):
    x = torch.randn(2, 4)
    assert not step_kernel_usable(x)  # grad mode on
    with torch.no_grad():
        assert step_kernel_usable(x)
        assert not step_kernel_usable(x.double())
        assert not step_kernel_usable(x.bfloat16())
        monkeypatch.setenv("SERPENT_SSM_STEP_KERNEL", "0")
        assert not step_kernel_usable(x)


def as_tree(state):
    """A state as nested dicts and tuples (``torch.testing.assert_close`` compares those)."""
    if dataclasses.is_dataclass(state):
        return {f.name: as_tree(getattr(state, f.name)) for f in dataclasses.fields(state)}
    if isinstance(state, (tuple, list)):
        return tuple(as_tree(s) for s in state)
    return state


def stepped(module, xs, grad):
    state = module.allocate_state(xs.shape[0])
    ys = []
    with torch.set_grad_enabled(grad):
        for t in range(xs.shape[1]):
            y, state = module.step(xs[:, t], state)
            ys.append(y.detach())
    return torch.stack(ys, 1), state


def test_mamba_step_uses_the_kernel_and_equals_forward():
    torch.manual_seed(0)
    m = Mamba(12, d_state=6)
    xs = torch.randn(3, 20, 12)
    with torch.no_grad():
        assert m.step_weights().kernel is not None
        y_forward = m(xs)
    got, _ = stepped(m, xs, grad=False)  # the kernel
    want, _ = stepped(m, xs, grad=True)  # the torch step
    assert not torch.equal(got, want)  # two computations ...
    assert_close(got, want, 1e-5, 1e-6, "kernel vs torch step")  # ... of the same thing
    assert_close(got, y_forward, 1e-5, 1e-6, "kernel vs forward")


@settings(max_examples=30, deadline=None)
@given(
    options=st.fixed_dictionaries(
        {
            "restore": st.sampled_from(["hold", "scatter"]),
            "include_full_branch": st.booleans(),
            "gate": st.booleans(),
            "interval_bounds": st.sampled_from(["ours", "mean", "paper", "fixed"]),
            "share_backbone": st.booleans(),
            "share_intervals": st.booleans(),
            "mix": st.sampled_from(["dense", "gates"]),
            "cell_proj": st.booleans(),
            "init": st.sampled_from(["identity", "default"]),  # the compressed branches show
            "rates": st.sampled_from([(0.5, 0.3, 0.2), (0.5,), (0.25, 0.45)]),
        }
    ),
    batch=st.integers(1, 3),
    seed=st.integers(0, 999),
)
def test_serpent_step_in_one_kernel_call_equals_the_torch_step(options, batch, seed):
    """The whole causal step (scores, intervals, poisoned rows, cells, backbones, output map,
    gate) in one kernel call: outputs and states equal the torch step's, and forward's."""
    torch.manual_seed(seed)
    m = SeRpEnt(10, "mamba", causal=True, backbone_kwargs={"d_state": 4}, **options)
    with torch.no_grad():
        for net in m.scores:  # scores with spread: intervals that differ along the sequence
            net.weight.mul_(4.0)
        assert m.step_weights().layer is not None
    xs = torch.randn(batch, 30, 10, generator=torch.Generator().manual_seed(seed)) * 2.0
    if batch > 1:
        xs[1, 20] = math.inf  # a poisoned row from element 20 on
    with torch.no_grad():
        y_forward = m(xs)
    got, got_state = stepped(m, xs, grad=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SERPENT_SSM_STEP_KERNEL", "0")
        want, want_state = stepped(m, xs, grad=False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(got, y_forward, rtol=1e-4, atol=1e-4, equal_nan=True)
    torch.testing.assert_close(got_state.t, want_state.t, rtol=1e-6, atol=1e-6, equal_nan=True)
    for key in ("held", "aggregator", "backbone"):
        torch.testing.assert_close(
            *(as_tree(getattr(s, key)) for s in (got_state, want_state)), rtol=1e-4, atol=1e-5, equal_nan=True
        )
    torch.testing.assert_close(
        as_tree(got_state.scores), as_tree(want_state.scores), rtol=1e-6, atol=1e-6, equal_nan=True
    )


def test_serpent_layer_kernel_needs_plain_layers_and_scores():
    torch.manual_seed(4)
    m = SeRpEnt(8, "mamba", causal=True, backbone_kwargs={"d_state": 4}, gate=True)
    with torch.no_grad():
        assert m.step_weights().layer is not None
        m.gate_proj.register_forward_hook(lambda mod, inp, out: out * 0.5)
        assert m.step_weights().layer is None  # the hook must apply: the torch step runs
        x = torch.randn(2, 12, 8)
        y = m(x)
    got, _ = stepped(m, x, grad=False)
    assert_close(got, y, 1e-4, 1e-5, "hooked gate")
    backbone = SeRpEnt(8, "mamba", causal=True, backbone_kwargs={"d_state": 4}, interval_source="backbone")
    with torch.no_grad():
        assert backbone.step_weights().layer is None


def test_cached_kernel_weights_follow_parameter_changes():
    torch.manual_seed(2)
    m = Mamba(8, d_state=4)
    x = torch.randn(2, 8)
    with torch.no_grad():
        before, _ = m.step(x, m.allocate_state(2))
        m.A_log.add_(0.5)  # not a projection: its change must still be seen
        m.conv1d.weight.mul_(2.0)
        after, _ = m.step(x, m.allocate_state(2))
    want, _ = m.step(x, m.allocate_state(2))  # grad mode: the torch step
    assert not torch.allclose(before, after)
    assert_close(after, want.detach(), 1e-5, 1e-6, "after the change")


def test_hooked_or_wrapped_layers_are_called_not_read():
    torch.manual_seed(3)
    m = Mamba(8, d_state=4)
    x = torch.randn(2, 8)
    m.out_proj.register_forward_hook(lambda mod, inp, out: out + 1.0)
    with torch.no_grad():
        assert m.step_weights().kernel is None
        y, _ = m.step(x, m.allocate_state(2))
    want = m(x.unsqueeze(1)).detach()[:, 0]
    assert_close(y, want, 1e-5, 1e-6, "hook applied")


@pytest.mark.parametrize("shared", [False, True])
def test_many_rows_give_the_same_step(shared):
    """A batch of 16 through four backbones (64 rows): the same as the reference."""
    x, t_old, t_new, state, weights, proj, kernel = case(3, True, shared, True, 16, 8, 4, 4, True, 5)
    with torch.no_grad():
        want, want_state = cell_step(x, t_old, t_new, state, weights, proj, True, True)
        got, got_state = cell_step_cpu(x, t_old, t_new, state, kernel, True, True)
    got[0, 0] = want[0, 0] = 0.0  # the poisoned row (see test_kernel_equals_reference)
    assert_close(got, want, 1e-5, 1e-5, "outputs")
    for name in CellState._fields:
        torch.testing.assert_close(
            getattr(got_state, name), getattr(want_state, name), rtol=1e-5, atol=1e-5, equal_nan=True
        )


def test_a_layer_wrapped_after_caching_is_called():
    """An adapter wrapping a layer after the kernel's weights were cached (as peft does): the
    next step sees the new layer and calls it."""

    torch.manual_seed(5)
    m = SeRpEnt(8, "mamba", causal=True, backbone_kwargs={"d_state": 4}, share_backbone=True)
    x = torch.randn(2, 12, 8)
    with torch.no_grad():
        assert m.step_weights().kernel is not None  # cached
        m.backbones[0].in_proj = ShiftedLayer(m.backbones[0].in_proj)
        assert m.step_weights().kernel is None  # rebuilt: the torch step calls the wrapper
        y = m(x)
    got, _ = stepped(m, x, grad=False)
    assert_close(got, y, 1e-4, 1e-5, "wrapped layer")


def _kernel_cases():
    """A Mamba layer's and a causal SeRpEnt layer's state and step weights with the kernel's."""
    torch.manual_seed(7)
    mamba = Mamba(8, d_state=4)
    mixer = SeRpEnt(8, "mamba", causal=True, backbone_kwargs={"d_state": 4})
    with torch.no_grad():
        return (
            (mamba, mamba.allocate_state(2), mamba.step_weights()),
            (mixer, mixer.allocate_state(2), mixer.step_weights()),
        )


def _step(weights, x, state):
    op = serpent_step if isinstance(weights, SeRpEntStepWeights) else mamba_step
    with torch.no_grad():
        return op(x, state, weights, backend="cpu")


@pytest.mark.parametrize(
    ("kind", "field", "value", "message"),
    [
        ("mamba", "conv", lambda t: t[:, :, :1], "state.conv: expected a CPU tensor of shape (2, 16, 3), got torch.float32 on cpu of shape (2, 16, 1), not contiguous"),  # noqa: E501
        ("mamba", "ssm", lambda t: t.to("meta"), "state.ssm: expected a CPU tensor of shape (2, 16, 4), got torch.float32 on meta of shape (2, 16, 4)"),  # noqa: E501
        ("mamba", "ssm", lambda t: t[:1], "state.ssm: expected a CPU tensor of shape (2, 16, 4), got torch.float32 on cpu of shape (1, 16, 4)"),  # noqa: E501
        ("serpent", "held", lambda t: t[:, :1], "state.held: expected a CPU tensor of shape (3, 2, 8), got torch.float32 on cpu of shape (3, 1, 8), not contiguous"),  # noqa: E501
        ("serpent", "t", lambda t: t.to("meta"), "state.t: expected a CPU tensor of shape (3, 2), got torch.float64 on meta of shape (3, 2)"),  # noqa: E501
    ],
)  # fmt: skip
def test_the_kernel_refuses_a_state_that_does_not_fit_its_weights(kind, field, value, message):
    """Calling the op directly (no module checks before it): a state of other rows, sizes or
    device is refused by name before a pointer reaches C++ (it read and wrote out of bounds)."""
    (mamba, m_state, m_weights), (mixer, s_state, s_weights) = _kernel_cases()
    if kind == "mamba":
        state, weights = dataclasses.replace(m_state, **{field: value(getattr(m_state, field))}), m_weights
    else:
        state, weights = dataclasses.replace(s_state, **{field: value(getattr(s_state, field))}), s_weights
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _step(weights, torch.randn(2, 8), state)


def test_the_kernel_refuses_an_input_of_another_width():
    (_, state, weights), _ = _kernel_cases()
    message = "x_t: expected a CPU tensor of shape (2, 8), got torch.float32 on cpu of shape (2, 6)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _step(weights, torch.randn(2, 6), state)


def test_kernel_weights_are_checked_when_made():
    """Weights built by hand: a float64, mis-shaped or strided tensor is refused when the record
    is made, with the field's name; a layer record that does not fit the branches too."""
    (mamba, _, _), (mixer, _, s_weights) = _kernel_cases()
    tensors = [mamba.step_tensors()]
    with torch.no_grad():
        good = kernel_weights(tensors)
        bad = [
            (good.tensors._replace(w_in=good.tensors.w_in.double()), "weights.tensors.w_in: expected a contiguous torch.float32 CPU tensor of shape (32, 8), got torch.float64 on cpu of shape (32, 8)"),  # noqa: E501
            (good.tensors._replace(a=good.tensors.a[:, :2]), "weights.tensors.a: expected a contiguous torch.float32 CPU tensor of shape (16, 4), got torch.float32 on cpu of shape (16, 2), not contiguous"),  # noqa: E501
            (good.tensors._replace(w_out=good.tensors.w_out.mT.contiguous().mT), "weights.tensors.w_out: expected a contiguous torch.float32 CPU tensor of shape (8, 16), got torch.float32 on cpu of shape (8, 16), not contiguous"),  # noqa: E501
        ]  # fmt: skip
        for packed, message in bad:
            with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
                KernelWeights(packed, None, None, stacked=False)
        layer = s_weights.layer._replace(w_mix=torch.zeros(3, 8))
        message = "weights.layer.w_mix: expected a contiguous torch.float32 CPU tensor of shape (4, 8), got torch.float32 on cpu of shape (3, 8)"  # noqa: E501  # fmt: skip
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            dataclasses.replace(s_weights, layer=layer)
