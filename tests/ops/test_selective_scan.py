"""selective_scan: every backend against the naive twin, mask semantics, stability, bad input."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serpent_ssm.ops import available_backends, resolve_backend, selective_scan
from serpent_ssm.ops.cpu_build import cpu_kernel_available
from serpent_ssm.ops.selective_scan import naive
from serpent_ssm.ops.selective_scan.chunked import DEFAULT_CHUNK_SIZE
from serpent_ssm.ops.selective_scan.cpu import CHECKPOINT_INTERVAL
from serpent_ssm.ops.selective_scan.naive import selective_scan_ref

from tests.helpers import assert_close, right_padding_mask

# fp32 tolerances (mamba_ssm's own kernel tests use rtol 6e-4 / atol 2e-3 in fp32)
RTOL, ATOL = 2e-4, 2e-4
FAST_BACKENDS = [b for b in available_backends("cpu") if b != "ref"]

# lengths up to 2048, biased towards the chunk boundaries of the chunked scan and the
# checkpoint boundaries of the CPU kernel
_BOUNDARIES = [DEFAULT_CHUNK_SIZE, CHECKPOINT_INTERVAL, 2 * CHECKPOINT_INTERVAL]
LENGTHS = st.one_of(
    st.integers(1, 70),
    st.sampled_from(sorted({b + k for b in _BOUNDARIES for k in (-1, 0, 1)} | {257, 2048})),
)
# state sizes: small ones, and those the CPU kernel specialises at compile time
STATE_SIZES = st.one_of(st.integers(1, 6), st.sampled_from([8, 16, 32, 64]))
# (batch, (channels D, groups G of B and C), state size N, length L, layout of B and C)
SHAPES = st.tuples(
    st.integers(1, 3),
    st.sampled_from([(1, 1), (4, 1), (6, 2), (8, 4)]),
    STATE_SIZES,
    LENGTHS,
    st.sampled_from(["shared", "grouped", "time-invariant"]),
)
needs_cpu_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason="no C++ compiler for the CPU kernel")


def make_inputs(
    batch, d, n, length, *, b_layout="shared", groups=1, seed=0, dtype=torch.float32, requires_grad=True
):
    """Random, well-conditioned scan inputs with the layout of mamba_ssm's selective_scan_fn."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    inputs = {
        "u": r(batch, d, length),
        "delta": r(batch, d, length, scale=0.5),
        "A": -(torch.rand(d, n, generator=g) * 2 + 0.1).to(dtype),
        "D": r(d),
        "z": r(batch, d, length),
        "delta_bias": r(d, scale=0.5),
    }
    if b_layout == "shared":
        inputs["B"], inputs["C"] = r(batch, n, length), r(batch, n, length)
    elif b_layout == "grouped":
        inputs["B"], inputs["C"] = r(batch, groups, n, length), r(batch, groups, n, length)
    else:  # time-invariant
        inputs["B"], inputs["C"] = r(d, n), r(d, n)
    if requires_grad:
        for v in inputs.values():
            v.requires_grad_(True)
    return inputs


def run_scan(inputs, backend, scan=selective_scan, **kwargs):
    """Forward, then the gradient of a random projection of the outputs w.r.t. every input.

    ``scan`` is ``selective_scan`` (run with ``backend``) or ``selective_scan_ref`` called directly.
    """
    out = scan(
        inputs["u"],
        inputs["delta"],
        inputs["A"],
        inputs["B"],
        inputs["C"],
        kwargs.pop("D", inputs["D"]),
        z=kwargs.pop("z", inputs["z"]),
        delta_bias=kwargs.pop("delta_bias", inputs["delta_bias"]),
        backend=backend,
        **kwargs,
    )
    y, h = out if isinstance(out, tuple) else (out, None)
    g = torch.Generator().manual_seed(123)
    loss = (y * torch.randn(y.shape, generator=g)).sum()
    if h is not None:
        loss = loss + (h * torch.randn(h.shape, generator=g)).sum()
    params = [v for v in inputs.values() if v.requires_grad]
    if kwargs.get("initial_state") is not None:
        params.append(kwargs["initial_state"])
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return y, h, grads


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@given(
    shape=SHAPES,
    use_mask=st.booleans(),
    use_init=st.booleans(),
    use_final=st.booleans(),
    softplus=st.booleans(),
    optional=st.sampled_from(["all", "no_D", "no_z", "no_bias"]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_backend_matches_ref_forward_and_gradients(
    backend, shape, use_mask, use_init, use_final, softplus, optional, seed, data
):
    batch, (d, groups), n, length, b_layout = shape
    inputs = make_inputs(batch, d, n, length, b_layout=b_layout, groups=groups, seed=seed)
    if not softplus:  # Δ is a time step: without the softplus the caller passes Δ >= 0
        with torch.no_grad():
            inputs["delta"].abs_()
            inputs["delta_bias"].abs_()
    kwargs = {"delta_softplus": softplus, "return_final_state": use_final}
    if optional != "all":
        kwargs[{"no_D": "D", "no_z": "z", "no_bias": "delta_bias"}[optional]] = None
    if use_mask:
        lengths = data.draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
        kwargs["mask"] = right_padding_mask(lengths, length)
    if use_init:
        h0 = torch.randn(batch, d, n, generator=torch.Generator().manual_seed(seed + 1))
        kwargs["initial_state"] = h0.requires_grad_(True)
    want = run_scan(inputs, "ref", **dict(kwargs))
    got = run_scan(inputs, backend, **dict(kwargs))
    assert got[0].shape == (batch, d, length)
    assert_same_scan(got, want, inputs, use_init, (batch, d, n) if use_final else None)


def assert_same_scan(got, want, inputs, use_init, final_shape):
    """``(y, h, grads)`` of ``run_scan`` equal to fp32 tolerance; ``final_shape`` None: no state."""
    (y, h, grads), (y_ref, h_ref, g_ref) = got, want
    assert_close(y, y_ref, RTOL, ATOL, "y")
    if final_shape is not None:
        assert h.shape == final_shape
        assert_close(h, h_ref, RTOL, ATOL, "final state")
    names = [k for k, v in inputs.items() if v.requires_grad] + (["initial_state"] if use_init else [])
    for name, got_g, want_g in zip(names, grads, g_ref, strict=True):
        if want_g is None:
            assert got_g is None or torch.count_nonzero(got_g) == 0, name
            continue
        scale = max(1.0, want_g.abs().max().item())
        assert_close(got_g, want_g, RTOL * 5, ATOL * 5 * scale, f"grad {name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@given(shape=SHAPES, delta_scale=st.sampled_from([1.0, 20.0]), seed=st.integers(0, 2**16), data=st.data())
def test_backend_matches_the_naive_twin_with_every_option(backend, shape, delta_scale, seed, data):
    """Softplus, bias, mask, D, z, initial state and final state all at once, against
    ``selective_scan_ref`` called directly; ``delta_scale`` 20 puts ``delta + bias`` on both sides
    of torch's softplus threshold (20), which the naive twin does not use."""
    batch, (d, groups), n, length, b_layout = shape
    inputs = make_inputs(batch, d, n, length, b_layout=b_layout, groups=groups, seed=seed)
    with torch.no_grad():
        inputs["delta"].mul_(delta_scale)
    lengths = data.draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    h0 = torch.randn(batch, d, n, generator=torch.Generator().manual_seed(seed + 1)).requires_grad_(True)
    kwargs = {
        "delta_softplus": True,
        "mask": right_padding_mask(lengths, length),
        "initial_state": h0,
        "return_final_state": True,
    }
    want = run_scan(inputs, "ref", scan=selective_scan_ref, **dict(kwargs))
    got = run_scan(inputs, backend, **dict(kwargs))
    assert_same_scan(got, want, inputs, True, (batch, d, n))


def test_naive_twin_by_hand():
    """One channel, one state, Python floats: the recurrence as written, every option on."""
    u, delta, z = [0.5, -1.0, 2.0, 0.3], [0.1, -0.4, 30.0, 5.0], [1.5, -0.2, 0.8, 2.0]
    b, c = [0.9, -0.3, 1.1, 0.4], [-0.6, 1.2, 0.5, 0.7]
    bias, a, skip, h = 0.2, -1.5, 0.7, 0.4
    want = []
    for t in range(3):  # the fourth element is padding
        dt = math.log1p(math.exp(delta[t] + bias))
        h = math.exp(dt * a) * h + dt * u[t] * b[t]
        want.append((c[t] * h + skip * u[t]) * z[t] / (1 + math.exp(-z[t])))
    want.append(0.0)

    def f64(values, shape):
        return torch.tensor(values, dtype=torch.float64).view(shape)

    y, h_final = selective_scan_ref(
        *(f64(v, (1, 1, 4)) for v in (u, delta)),
        f64([a], (1, 1)),
        *(f64(v, (1, 1, 4)) for v in (b, c)),
        f64([skip], (1,)),
        z=f64(z, (1, 1, 4)),
        delta_bias=f64([bias], (1,)),
        delta_softplus=True,
        mask=torch.tensor([[True, True, True, False]]),
        initial_state=f64([0.4], (1, 1, 1)),
        return_final_state=True,
    )
    assert_close(y, f64(want, (1, 1, 4)), 1e-14, 1e-14, "y")
    assert_close(h_final, f64([h], (1, 1, 1)), 1e-14, 1e-14, "final state")


def test_naive_twin_imports_no_fast_path():
    """The oracle stands alone: torch and the argument checks, nothing of the fast backends."""
    tree = ast.parse(Path(naive.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert imported == {"__future__", "torch", "torch.nn.functional", "serpent_ssm.ops.selective_scan.checks"}


def test_ref_backend_is_the_naive_twin():
    inputs = make_inputs(2, 4, 3, 20, requires_grad=False)
    kwargs = {"delta_softplus": True, "mask": right_padding_mask([20, 7], 20), "return_final_state": True}
    y, h = selective_scan(**inputs, backend="ref", **kwargs)
    y_naive, h_naive = selective_scan_ref(**inputs, **kwargs)
    assert torch.equal(y, y_naive) and torch.equal(h, h_naive)
    with pytest.raises(
        ValueError,
        match="^backend: selective_scan_ref runs the 'ref' loop only, expected 'ref', got 'torch'$",
    ):
        selective_scan_ref(**inputs, backend="torch")


def test_ref_matches_transformers_slow_path():
    """An independent oracle for the oracle: transformers' own (sequential) Mamba scan."""
    modeling = pytest.importorskip("transformers.models.mamba.modeling_mamba")
    inputs = make_inputs(2, 8, 4, 50, requires_grad=False)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D")]
    y, h = selective_scan(
        *args,
        z=inputs["z"],
        delta_bias=inputs["delta_bias"],
        delta_softplus=True,
        return_final_state=True,
        backend="ref",
    )
    y_hf, h_hf = modeling.mamba_selective_scan(
        *args, z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True, return_last_state=True
    )
    assert_close(y, y_hf, 1e-5, 1e-5, "y")
    assert_close(h, h_hf, 1e-5, 1e-5, "final state")


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
def test_mask_means_no_time_and_no_input(backend):
    """Padded positions: output 0, and the state stays at its value after the last real element."""
    inputs = make_inputs(3, 4, 3, 40, requires_grad=False)
    lengths = [40, 17, 0]
    mask = right_padding_mask(lengths, 40)
    common = {"delta_softplus": True, "return_final_state": True, "backend": backend}
    y, h = selective_scan(**inputs, mask=mask, **common)
    for b, n in enumerate(lengths):
        assert torch.count_nonzero(y[b, :, n:]) == 0
        row = {k: (v[b : b + 1, ..., :n] if v.dim() == 3 else v) for k, v in inputs.items()}
        y_b, h_b = selective_scan(**row, **common)
        assert_close(y[b, :, :n], y_b[0], 1e-6, 1e-6, f"row {b} outputs")
        assert_close(h[b], h_b[0], 1e-6, 1e-6, f"row {b} final state")


#: what padding may hold: every special value, and finite values whose products overflow
GARBAGE = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38])


def _pad_with(inputs, mask, fill):
    """Leaf copies of the scan inputs whose per-position tensors (``u, delta, z``, and ``B, C``
    unless time-invariant) hold ``fill(shape)`` at the padded positions."""
    out = {}
    for k, v in inputs.items():
        v = v.detach()
        if v.dim() >= 3:  # (Bt, ..., L)
            pad = ~mask.view(mask.shape[0], *([1] * (v.dim() - 2)), mask.shape[1])
            v = torch.where(pad, fill(v.shape), v)
        out[k] = v.clone().requires_grad_(True)
    return out


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
@settings(max_examples=25)
@given(
    shape=st.tuples(
        st.integers(1, 3),
        st.sampled_from([(1, 1), (4, 1), (6, 2)]),
        st.integers(1, 5),
        st.integers(1, 40),
        st.sampled_from(["shared", "grouped", "time-invariant"]),
    ),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_padding_contents_never_matter(backend, shape, seed, data):
    """NaN, ±Inf or 1e30 in the padding of u, delta, B, C and z: the outputs at real positions, the
    final state and every gradient equal those with zeros there, bit for bit; outputs and input
    gradients at padding are 0."""
    batch, (d, groups), n, length, b_layout = shape
    lengths = data.draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch))
    mask = right_padding_mask(lengths, length)
    clean = make_inputs(batch, d, n, length, b_layout=b_layout, groups=groups, seed=seed)
    g = torch.Generator().manual_seed(seed)
    zeros = _pad_with(clean, mask, torch.zeros)
    garbage = _pad_with(clean, mask, lambda s: GARBAGE[torch.randint(len(GARBAGE), s, generator=g)])
    h0 = torch.randn(batch, d, n, generator=g)
    runs = []
    for inputs in (zeros, garbage):
        kwargs = {"mask": mask, "delta_softplus": True, "return_final_state": True}
        runs.append(run_scan(inputs, backend, initial_state=h0.clone().requires_grad_(True), **kwargs))
    (y0, h_0, g0), (y1, h_1, g1) = runs
    real = mask.unsqueeze(1).expand_as(y0)
    assert torch.equal(y1[real], y0[real]), "outputs at real positions"
    assert torch.count_nonzero(y1[~real]) == 0, "outputs at padding"
    assert torch.equal(h_1, h_0), "final state"
    names = [*zeros, "initial_state"]
    for name, a, b in zip(names, g1, g0, strict=True):
        if a is not None and a.dim() >= 3 and a.shape[-1] == length and name != "initial_state":
            pad = ~mask.view(batch, *([1] * (a.dim() - 2)), length).expand_as(a)
            assert torch.count_nonzero(a[pad]) == 0, f"grad {name} at padding"
        assert torch.equal(a, b), f"grad {name}"


@pytest.mark.parametrize("backend", ["ref", *FAST_BACKENDS])
def test_initial_state_continues_a_split_sequence(backend):
    inputs = make_inputs(2, 4, 3, 60, requires_grad=False)
    common = {"delta_softplus": True, "return_final_state": True, "backend": backend}
    y, h = selective_scan(**inputs, **common)
    first = {k: (v[..., :25] if v.dim() == 3 else v) for k, v in inputs.items()}
    second = {k: (v[..., 25:] if v.dim() == 3 else v) for k, v in inputs.items()}
    y1, h1 = selective_scan(**first, **common)
    y2, h2 = selective_scan(**second, initial_state=h1, **common)
    assert_close(torch.cat([y1, y2], -1), y, 1e-5, 1e-5, "y")
    assert_close(h2, h, 1e-5, 1e-5, "final state")


def test_return_last_state_is_mamba_ssm_spelling():
    inputs = make_inputs(1, 2, 2, 5, requires_grad=False)
    y, h = selective_scan(**inputs, return_last_state=True)
    assert y.shape == (1, 2, 5) and h.shape == (1, 2, 2)


def _long_inputs(length, dtype=torch.float32):
    """Large Δ·A (up to 5 time units per step, |A| up to 3000) over a long sequence."""
    batch, d, n = 1, 2, 4
    g = torch.Generator().manual_seed(0)
    return {
        "u": torch.randn(batch, d, length, generator=g, dtype=dtype),
        "delta": torch.rand(batch, d, length, generator=g, dtype=dtype) * 5,
        "A": -torch.tensor([[0.01, 1.0, 50.0, 500.0], [1e-4, 3.0, 30.0, 3000.0]], dtype=dtype),
        "B": torch.randn(batch, n, length, generator=g, dtype=dtype),
        "C": torch.randn(batch, n, length, generator=g, dtype=dtype),
    }


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("length", [16384, 65536])
def test_long_sequences_are_stable(backend, length):
    """No overflow of cumulative decays, no NaN, equal to an fp64 oracle (the loop up to 16K, the
    chunked scan beyond, where the loop takes too long); gradients too."""
    inputs = {k: v.requires_grad_(True) for k, v in _long_inputs(length).items()}
    y, h = selective_scan(**inputs, return_final_state=True, backend=backend)
    loss = (y * torch.linspace(-1, 1, length)).sum() + h.sum()
    grads = torch.autograd.grad(loss, list(inputs.values()))
    assert torch.isfinite(y).all() and all(torch.isfinite(gr).all() for gr in grads)
    x64 = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    oracle = "ref" if length <= 16384 else "torch"
    y64, h64 = selective_scan(**x64, return_final_state=True, backend=oracle)
    scale = y64.abs().max().item()  # fp32 rounding grows with the size of the state
    assert_close(y.double(), y64, 0.0, 1e-5 * scale, "y")
    if backend == "cpu" or length <= 16384:  # the fp64 chunked backward at 64K is slow
        loss64 = (y64 * torch.linspace(-1, 1, length, dtype=torch.float64)).sum() + h64.sum()
        grads64 = torch.autograd.grad(loss64, list(x64.values()))
        for name, got, want in zip(inputs, grads, grads64, strict=True):
            assert_close(got.double(), want, 1e-4, 1e-4 * max(1.0, want.abs().max().item()), f"grad {name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_bf16_inputs_are_upcast(backend):
    inputs = make_inputs(2, 4, 3, 33, requires_grad=False)
    low = {k: v.to(torch.bfloat16) for k, v in inputs.items()}
    y_low = selective_scan(**low, delta_softplus=True, backend=backend)
    y_ref = selective_scan(**{k: v.float() for k, v in low.items()}, delta_softplus=True, backend="ref")
    assert y_low.dtype == torch.bfloat16
    assert_close(y_low.float(), y_ref, 1e-2, 1e-2, "y")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_float64_computes_in_float64(backend):
    inputs = make_inputs(1, 3, 2, 40, dtype=torch.float64, requires_grad=False)
    y_ref = selective_scan(**inputs, delta_softplus=True, backend="ref")
    y = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert y.dtype == torch.float64
    assert_close(y, y_ref, 1e-12, 1e-12, "y")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradcheck_in_float64(backend):
    """Analytic gradients against finite differences, every input, mask and initial state."""
    inputs = make_inputs(2, 4, 3, 70, b_layout="grouped", groups=2, dtype=torch.float64)
    h0 = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    mask = right_padding_mask([70, 66], 70)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]

    def fn(*xs):
        kw = dict(zip(names, xs[:-1], strict=True))
        kw.update(initial_state=xs[-1], mask=mask, delta_softplus=True, return_final_state=True)
        return selective_scan(**kw, backend=backend)

    assert torch.autograd.gradcheck(fn, [inputs[k] for k in names] + [h0], eps=1e-6, atol=1e-6)


@needs_cpu_kernel
def test_auto_backend_is_the_cpu_kernel_on_cpu():
    assert resolve_backend("auto", "cpu") == "cpu"
    assert available_backends("cpu") == ["cpu", "torch", "ref"]


@needs_cpu_kernel
@pytest.mark.parametrize("b_layout", ["shared", "grouped", "time-invariant"])
def test_cpu_kernel_does_not_depend_on_the_thread_count(b_layout):
    """Tasks are whole channels, so outputs are bitwise equal for any thread count; gradients of
    shared B and C are summed over per-thread copies, so equal up to rounding."""
    inputs = make_inputs(3, 8, 16, 200, b_layout=b_layout, groups=2)
    kw = {"delta_softplus": True, "mask": right_padding_mask([200, 130, 64], 200)}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, _, g1 = run_scan(inputs, "cpu", **kw)
        torch.set_num_threads(2)
        y2, _, g2 = run_scan(inputs, "cpu", **kw)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y1, y2)
    for name, a, b in zip(inputs, g1, g2, strict=True):
        assert_close(a, b, 1e-6, 1e-6, f"grad {name}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backend_matches_ref():  # pragma: no cover - runs on GPU machines only
    pytest.importorskip("mamba_ssm")
    inputs = {k: v.detach().cuda() for k, v in make_inputs(2, 8, 4, 300, requires_grad=False).items()}
    mask = right_padding_mask([300, 123], 300).cuda()
    y = selective_scan(**inputs, delta_softplus=True, mask=mask, backend="cuda")
    y_ref = selective_scan(**inputs, delta_softplus=True, mask=mask, backend="ref")
    assert_close(y, y_ref, 6e-4, 2e-3, "y")


# ----------------------------------------------------------------------------- bad input
def _ok():
    return make_inputs(2, 4, 3, 10, requires_grad=False)


def _raises(message: str, **overrides):
    inputs = _ok()
    kwargs = {}
    for k, v in overrides.items():
        (inputs if k in inputs else kwargs)[k] = v
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        selective_scan(**inputs, **kwargs)


def test_bad_rank():
    _raises("u: expected a tensor of rank 3, got rank 2 with shape (4, 10)", u=torch.zeros(4, 10))


def test_mismatched_delta():
    _raises("delta: expected shape (2, 4, 10), got (2, 4, 9)", delta=torch.zeros(2, 4, 9))


def test_mismatched_A():
    _raises("A: expected shape (4, N) matching u's 4 channels, got (5, 3)", A=-torch.ones(5, 3))


def test_mismatched_B():
    _raises("B: expected shape (2, 3, 10), got (2, 2, 10)", B=torch.zeros(2, 2, 10))


def test_groups_must_divide_channels():
    _raises("C: expected a group count G dividing D=4, got G=3", C=torch.zeros(2, 3, 3, 10))


def test_non_float_dtype():
    _raises(
        "u: expected a floating-point tensor, got dtype torch.int64",
        u=torch.zeros(2, 4, 10, dtype=torch.long),
    )


def test_complex_A_rejected():
    _raises(
        "A: expected a real floating-point tensor, got complex dtype torch.complex64",
        A=torch.zeros(4, 3, dtype=torch.cfloat),
    )


def test_nan_in_parameters():
    a = -torch.ones(4, 3)
    a[1, 2] = float("nan")
    _raises("A: expected finite values, got 1 NaN and 0 infinite entries out of 12", A=a)
    d = torch.ones(4)
    d[0] = float("inf")
    _raises("D: expected finite values, got 0 NaN and 1 infinite entries out of 4", D=d)


def test_unknown_backend():
    _raises("backend: expected one of 'auto', 'ref', 'torch', 'cpu', 'cuda', got 'triton'", backend="triton")


def test_cuda_backend_needs_cuda_tensors():
    _raises("backend: 'cuda' needs tensors on a CUDA device, got device cpu", backend="cuda")


def test_mask_must_be_bool():
    _raises(
        "mask: expected dtype torch.bool (True = real element), got torch.int64",
        mask=torch.ones(2, 10, dtype=torch.long),
    )


def test_mask_must_be_right_padding():
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 3] = False
    _raises(
        "mask: expected right padding (real elements first, then padding) in every row, "
        "got a real element after padding in row 1",
        mask=mask,
    )


def test_initial_state_shape():
    _raises("initial_state: expected shape (2, 4, 3), got (2, 4, 5)", initial_state=torch.zeros(2, 4, 5))
