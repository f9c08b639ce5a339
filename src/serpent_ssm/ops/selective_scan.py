"""The selective scan (S6) behind one function, with interchangeable backends.

``selective_scan`` takes the argument layout of mamba_ssm's ``selective_scan_fn``, so code
written for mamba_ssm calls it unchanged::

    y = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)

It computes, per batch ``b``, channel ``d`` and state ``n``::

    Δ_t     = softplus(delta_t + delta_bias)          (or delta_t + delta_bias)
    h_t     = exp(Δ_t A[d, n]) h_{t-1} + Δ_t B_t[n] u_t
    y_t     = sum_n C_t[n] h_t[n] + D[d] u_t
    y_t    *= silu(z_t)                               (when z is given)

Backends: ``"ref"`` (a plain loop over time: the oracle), ``"torch"`` (chunked parallel scan,
any device, see ``scan_chunked``), ``"cpu"`` (the fused C++ kernel, compiled on first use, see
``scan_cpu``), ``"cuda"`` (mamba_ssm's kernel) and ``"auto"`` (``"cuda"`` on a GPU with
mamba_ssm, ``"cpu"`` on the CPU, else ``"torch"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from serpent_ssm.ops.scan_chunked import chunked_scan
from serpent_ssm.ops.scan_cpu import cpu_kernel_available, cpu_scan, warn_fallback_once
from serpent_ssm.ops.scan_cuda import cuda_kernel_available, cuda_scan
from serpent_ssm.utils.validation import check_finite, check_float_tensor, check_mask, check_shape

__all__ = [
    "BACKENDS",
    "available_backends",
    "check_backend",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
]

BACKENDS = ("auto", "ref", "torch", "cpu", "cuda")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` in this environment, fastest first."""
    device = torch.device(device)
    names = []
    if device.type == "cuda" and cuda_kernel_available():
        names.append("cuda")
    if device.type == "cpu" and cpu_kernel_available():
        names.append("cpu")
    names += ["torch", "ref"]
    return names


def check_backend(backend: object) -> str:
    """Raise unless ``backend`` is one of ``BACKENDS``."""
    if backend not in BACKENDS:
        names = ", ".join(repr(b) for b in BACKENDS)
        raise ValueError(f"backend: expected one of {names}, got {backend!r}")
    return backend


def resolve_backend(backend: str, device: torch.device | str, needs_initial_state: bool = False) -> str:
    """Map ``backend`` (possibly ``"auto"``) to the concrete backend that will run.

    ``"cpu"`` and ``"auto"`` on the CPU run ``"torch"`` when the fused kernel cannot be built
    (no compiler), with one warning per process.
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "auto":
        if device.type == "cuda" and cuda_kernel_available() and not needs_initial_state:
            return "cuda"
        if device.type == "cpu":
            if cpu_kernel_available():
                return "cpu"
            warn_fallback_once()
        return "torch"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend: 'cpu' needs tensors on the CPU, got device {device}")
        if not cpu_kernel_available():
            warn_fallback_once()
            return "torch"
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend: 'cuda' needs tensors on a CUDA device, got device {device}")
        if not cuda_kernel_available():
            raise ValueError(
                "backend: 'cuda' needs mamba_ssm's selective-scan kernel, which did not import "
                "(pip install mamba-ssm), got an environment without it"
            )
        if needs_initial_state:
            raise ValueError(
                "initial_state: the 'cuda' backend (mamba_ssm's kernel) has no initial state, "
                "got a tensor; use backend='torch' or 'auto'"
            )
    return backend


def _scan_ref_core(u, delta, A, B, C, h):
    """Plain loop over time. ``u, delta (Bt, D, L)``, ``B, C (Bt, G, N, L)``, ``h (Bt, D, N)``."""
    d = u.shape[1]
    Bx = B.repeat_interleave(d // B.shape[1], dim=1)  # (Bt, D, N, L)
    Cx = C.repeat_interleave(d // C.shape[1], dim=1)
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(delta[:, :, t, None] * A)  # (Bt, D, N)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * Bx[:, :, :, t]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape)
    return y, h


def _validate(u, delta, A, B, C, D, z, delta_bias, mask, initial_state):
    check_float_tensor("u", u, ndim=3)
    bt, d, length = u.shape
    check_float_tensor("delta", delta, ndim=3)
    check_shape("delta", delta, (bt, d, length))
    check_float_tensor("A", A, ndim=2)
    if A.shape[0] != d:
        raise ValueError(f"A: expected shape ({d}, N) matching u's {d} channels, got {tuple(A.shape)}")
    n = A.shape[1]
    check_finite("A", A.detach())
    for name, x in (("B", B), ("C", C)):
        check_float_tensor(name, x, ndim=(2, 3, 4))
        if x.dim() == 2:
            check_shape(name, x, (d, n))
        elif x.dim() == 3:
            check_shape(name, x, (bt, n, length))
        else:
            check_shape(name, x, (bt, None, n, length))
            g = x.shape[1]
            if g < 1 or d % g != 0:
                raise ValueError(f"{name}: expected a group count G dividing D={d}, got G={g}")
    if D is not None:
        check_float_tensor("D", D, ndim=1)
        check_shape("D", D, (d,))
        check_finite("D", D.detach())
    if z is not None:
        check_float_tensor("z", z, ndim=3)
        check_shape("z", z, (bt, d, length))
    if delta_bias is not None:
        check_float_tensor("delta_bias", delta_bias, ndim=1)
        check_shape("delta_bias", delta_bias, (d,))
        check_finite("delta_bias", delta_bias.detach())
    if mask is not None:
        check_mask(mask, bt, length)
    if initial_state is not None:
        check_float_tensor("initial_state", initial_state, ndim=3)
        check_shape("initial_state", initial_state, (bt, d, n))


def _grouped(x: torch.Tensor, bt: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """B or C in any accepted layout -> ``(Bt, G, N, L)`` in ``dtype`` (a view where possible)."""
    x = x.to(dtype)
    if x.dim() == 2:  # time-invariant (D, N): one group per channel
        return x[None, :, :, None].expand(bt, x.shape[0], x.shape[1], length)
    if x.dim() == 3:
        return x.unsqueeze(1)
    return x


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    mask: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
    *,
    return_last_state: bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with mamba_ssm's ``selective_scan_fn`` argument layout.

    Args:
        u: ``(Bt, D, L)`` input.
        delta: ``(Bt, D, L)`` time steps before bias/softplus.
        A: ``(D, N)`` real state matrix (diagonal, negative for a stable system).
        B, C: ``(Bt, N, L)`` input-dependent, ``(Bt, G, N, L)`` per group of ``D/G`` channels,
            or ``(D, N)`` time-invariant.
        D: ``(D,)`` skip, optional.
        z: ``(Bt, D, L)`` gate, optional: the output is multiplied by ``silu(z)``.
        delta_bias: ``(D,)`` added to ``delta`` before the softplus, optional.
        delta_softplus: apply ``softplus`` to ``delta + delta_bias``.
        mask: ``(Bt, L)`` bool, True = real element, right padding only. At padded positions
            no time passes (``Δ = 0``) and no input enters (``u = 0``), so the state stays at
            its value after the last real element; the output there is 0.
        initial_state: ``(Bt, D, N)`` state before the first element, optional (zeros).
        return_final_state: also return the state after the last element ``(Bt, D, N)``
            (with a mask: after the last *real* element). ``return_last_state`` is accepted as
            mamba_ssm's name for the same flag.
        backend: ``"auto"`` | ``"ref"`` | ``"torch"`` | ``"cpu"`` | ``"cuda"``.

    Returns:
        ``y (Bt, D, L)`` in ``u``'s dtype, and the final state ``(Bt, D, N)`` float32 when
        requested. Computation is in float32 (float64 for float64 inputs), whatever the input
        dtype, so bf16/fp16 inputs are upcast.
    """
    if return_last_state is not None:
        return_final_state = bool(return_last_state)
    _validate(u, delta, A, B, C, D, z, delta_bias, mask, initial_state)
    name = resolve_backend(backend, u.device, needs_initial_state=initial_state is not None)
    if name == "cuda":
        return cuda_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, mask, return_final_state)
    if name == "cpu":
        return cpu_scan(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, mask, initial_state, return_final_state
        )

    bt, d, length = u.shape
    out_dtype = u.dtype
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32  # compute dtype
    uf, dt = u.to(cdt), delta.to(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    if mask is not None:
        m = mask.unsqueeze(1).to(cdt)
        dt = dt * m
        uf = uf * m
    Af = A.to(cdt)
    Bg, Cg = _grouped(B, bt, length, cdt), _grouped(C, bt, length, cdt)
    h0 = initial_state.to(cdt) if initial_state is not None else uf.new_zeros(bt, d, A.shape[1])
    if name == "ref":
        y, h = _scan_ref_core(uf, dt, Af, Bg, Cg, h0)
    else:
        y, h = chunked_scan(uf, dt, Af, Bg, Cg, h0)
    if D is not None:
        y = y + D.to(cdt)[:, None] * uf
    if z is not None:
        y = y * F.silu(z.to(cdt))
    if mask is not None:
        y = y * m
    y = y.to(out_dtype)
    return (y, h) if return_final_state else y


def selective_scan_ref(*args, **kwargs):
    """``selective_scan`` with ``backend="ref"``: the plain-loop oracle of the other backends."""
    kwargs["backend"] = "ref"
    return selective_scan(*args, **kwargs)
