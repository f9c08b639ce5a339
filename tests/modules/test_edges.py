"""Numerics at the edges (docs/design.md, "Numerics at the edges"), for every mixer.

- Padding contents never matter: NaN, ±Inf or 1e30 at padded positions give the same outputs at
  real positions (bit for bit), zero outputs at padding, the same final states and the same
  parameter gradients as zeros there.
- A non-finite value at a real position never raises: causal mixers keep the outputs before it
  and give non-finite outputs from it on (SeRpEnt: NaN); non-causal ones give non-finite outputs
  over the whole row; other rows are untouched.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serpent_ssm.modules import S4D, Bidirectional, Block, Mamba, SeRpEnt
from serpent_ssm.ops import available_backends

from tests.helpers import assert_close, right_padding_mask, run_steps

D = 8
SCAN_BACKENDS = [b for b in ("ref", "torch", "cpu") if b in available_backends("cpu")]
#: what padding may hold: every special value, and finite values whose products overflow
GARBAGE = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38])


def _mamba(backend):
    return lambda: Mamba(D, d_state=4, backend=backend)


def _s4d():
    return S4D(D, d_state=8, dt_min=0.01, dt_max=0.5)


def _serpent(causal, aggregate, backbone="mamba", **options):
    kwargs = {"d_state": 4} if backbone == "mamba" else {"d_state": 8}
    options.setdefault("init", "identity")  # the compressed branches show (the causal default zeroes them)
    return lambda: SeRpEnt(D, backbone, causal=causal, aggregate=aggregate, backbone_kwargs=kwargs, **options)


#: name -> (factory, causal, returns a state)
MIXERS = {
    **{f"mamba-{b}": (_mamba(b), True, True) for b in SCAN_BACKENDS},
    "s4d": (_s4d, True, True),
    "bidirectional-mamba": (lambda: Bidirectional(_mamba("torch"), D), False, False),
    "bidirectional-s4d": (lambda: Bidirectional(_s4d, D), False, False),
    **{
        f"serpent-{mode}-{agg}": (_serpent(mode == "causal", agg), mode == "causal", False)
        for mode in ("causal", "noncausal")
        for agg in ("cell", "linear", "kernel")
    },
    "serpent-noncausal-s4d": (_serpent(False, "cell", "s4d"), False, False),
    "serpent-causal-s4d": (_serpent(True, "cell", "s4d"), True, False),
    # without the full branch, nothing but the resampling carries a NaN to the outputs
    # a residual block with an MLP: its norms and MLP must not see the padding either
    "block-mamba-mlp": (lambda: Block(D, Mamba(D, d_state=4), mlp_ratio=2.0), True, True),
    "serpent-causal-no-full-branch": (_serpent(True, "cell", include_full_branch=False), True, False),
}
STREAMING = ["s4d", "mamba-torch", "serpent-causal-cell", "serpent-causal-linear", "serpent-causal-kernel"]
STREAMING += ["serpent-causal-no-full-branch"]


def build(name, seed=0):
    torch.manual_seed(seed)
    return MIXERS[name][0]().eval()


def _run(model, x, mask, with_state):
    """``(y, state)``: the final state only for mixers that return one."""
    if with_state:
        return model(x, mask=mask, return_state=True)
    return model(x, mask=mask), None


def _states(state):
    if dataclasses.is_dataclass(state):
        return [(f.name, getattr(state, f.name)) for f in dataclasses.fields(state)]
    return state.items() if isinstance(state, dict) else [("state", state)]


@st.composite
def padded_batches(draw, max_len=14):
    """``(x, x_garbage, mask)``: a right-padded batch, and the same with garbage in its padding."""
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(1, max_len))
    lengths = draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    mask = right_padding_mask(lengths, length)
    x = torch.randn(batch, length, D, generator=g).masked_fill(~mask.unsqueeze(-1), 0.0)
    pick = torch.randint(len(GARBAGE), (batch, length, D), generator=g)
    if draw(st.booleans()):  # one value everywhere, or a mixture
        pick = pick[:1, :1, :1].expand_as(pick)
    garbage = torch.where(mask.unsqueeze(-1), x, GARBAGE[pick])
    return x, garbage, mask


@pytest.mark.parametrize("name", list(MIXERS))
@settings(max_examples=25)
@given(batch=padded_batches(), seed=st.integers(0, 100))
def test_padding_contents_never_matter(name, batch, seed):
    x, garbage, mask = batch
    model = build(name, seed)
    with_state = MIXERS[name][2]
    results = []
    for inp in (x, garbage):
        inp = inp.clone().requires_grad_(True)
        y, state = _run(model, inp, mask, with_state)
        model.zero_grad()
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((y.detach(), state, grads, inp.grad))
    (y0, s0, g0, dx0), (y1, s1, g1, dx1) = results
    real = mask.unsqueeze(-1).expand_as(y0)
    assert torch.equal(y1[real], y0[real]), "outputs at real positions"
    assert torch.count_nonzero(y1[~real]) == 0, "outputs at padding"
    if with_state:
        for (k, v1), (_, v0) in zip(_states(s1), _states(s0), strict=True):
            assert torch.equal(v1, v0), f"final state {k}"
    assert g1.keys() == g0.keys()
    for k in g0:
        assert torch.equal(g1[k], g0[k]), f"gradient of {k}"
    assert torch.equal(dx1[real], dx0[real]), "input gradient at real positions"
    assert torch.count_nonzero(dx1[~real]) == 0, "input gradient at padding"


# ----------------------------------------------------------------------------- non-finite at real positions
BAD = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def poisoned_batches(draw, max_len=14):
    """``(x, x_bad, mask, row, p)``: ``x_bad`` has a non-finite value at real position ``p`` of ``row``."""
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(1, max_len))
    lengths = draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    row = draw(st.integers(0, batch - 1))
    lengths[row] = max(lengths[row], 1)
    p = draw(st.integers(0, lengths[row] - 1))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    mask = right_padding_mask(lengths, length)
    x = torch.randn(batch, length, D, generator=g)
    bad = x.clone()
    channels = draw(st.sampled_from(["one", "all"]))
    bad[row, p, : 1 if channels == "one" else D] = draw(BAD)
    full = all(n == length for n in lengths)
    return x, bad, (None if full and draw(st.booleans()) else mask), row, p


def _assert_rows_kept(y, y0, row, atol):
    others = [b for b in range(y.shape[0]) if b != row]
    assert_close(y[others], y0[others], 0, atol, "other rows")


@pytest.mark.parametrize("name", list(MIXERS))
@settings(max_examples=20)
@given(batch=poisoned_batches(), seed=st.integers(0, 100))
def test_non_finite_at_a_real_position(name, batch, seed):
    """No exception; other rows and (causal) the positions before it unchanged; non-finite after."""
    x, bad, mask, row, p = batch
    model = build(name, seed)
    n = int(mask[row].sum()) if mask is not None else x.shape[1]
    with torch.no_grad():
        y0, y = model(x, mask=mask), model(bad, mask=mask)
    # SeRpEnt's trimmed buffer depends on the whole batch, and S4D's convolution sees the
    # non-finite value as a zero: equal up to round-off there, bit for bit elsewhere
    atol = 1e-6 if name.startswith(("serpent", "s4d")) else 0.0
    _assert_rows_kept(y, y0, row, atol)
    assert torch.count_nonzero(y[row, n:]) == 0, "outputs at padding"
    if MIXERS[name][1]:
        assert_close(y[row, :p], y0[row, :p], 1e-6 if atol else 0.0, atol, "outputs before it")
        first = p
    else:
        first = 0
    assert not torch.isfinite(y[row, first:n]).any(-1).any(), "outputs from the non-finite value on"
    if name.startswith("serpent"):
        assert torch.isnan(y[row, first:n]).all(), "SeRpEnt: NaN from the non-finite value on"


@pytest.mark.parametrize("name", STREAMING)
@settings(max_examples=15)
@given(batch=poisoned_batches(), seed=st.integers(0, 100))
def test_non_finite_while_streaming(name, batch, seed):
    """``step`` over a non-finite element: no exception, the past unchanged, non-finite from it on."""
    x, bad, _, row, p = batch
    model = build(name, seed)
    y0, y = run_steps(model, x), run_steps(model, bad)
    _assert_rows_kept(y, y0, row, 0.0)
    assert torch.equal(y[row, :p], y0[row, :p])
    assert not torch.isfinite(y[row, p:]).any(-1).any()
    if name.startswith("serpent"):
        assert torch.isnan(y[row, p:]).all()


# ----------------------------------------------------------------------------- one-line errors
def _mixers():
    torch.manual_seed(0)
    return {
        "mamba": Mamba(8, d_state=4),
        "s4d": S4D(8, d_state=8),
        "serpent": SeRpEnt(8, backbone_kwargs={"d_state": 4}),
        "serpent-causal": SeRpEnt(8, causal=True, backbone_kwargs={"d_state": 4}, init="identity"),
    }


@pytest.mark.parametrize("name", ["mamba", "s4d", "serpent", "serpent-causal"])
def test_a_batch_of_zero_rows_gives_zero_rows(name):
    mixer = _mixers()[name]
    assert mixer(torch.zeros(0, 5, 8)).shape == (0, 5, 8)


@pytest.mark.parametrize("name", ["mamba", "s4d", "serpent", "serpent-causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_input_of_another_dtype_than_the_module_is_named(name, dtype):
    mixer = _mixers()[name]
    got = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=f"^x: expected float32 like the module's weights, got {got} "):
        mixer(torch.zeros(2, 5, 8, dtype=dtype))


@pytest.mark.parametrize("name", ["mamba", "s4d", "serpent-causal"])
def test_step_with_the_state_of_another_batch_is_named(name):
    mixer = _mixers()[name]
    state = mixer.allocate_state(3)
    with pytest.raises(ValueError, match=r"^state"):
        mixer.step(torch.zeros(2, 8), state)
