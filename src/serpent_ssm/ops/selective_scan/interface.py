"""``selective_scan``: argument checks, then dispatch to the backend that runs.

Backends: ``"ref"`` (``naive.selective_scan_ref``, a plain loop over time: the oracle),
``"torch"`` (chunked parallel scan, any device, see ``chunked``), ``"cpu"`` (the fused C++
kernel, compiled on first use, see ``cpu`` and ``ops.cpu_build``), ``"cuda"`` (mamba_ssm's
kernel, see ``cuda``) and ``"auto"`` (``"cuda"`` on a GPU with mamba_ssm, ``"cpu"`` on the CPU,
else ``"torch"``).
"""

from __future__ import annotations

import torch

from serpent_ssm.ops.cpu_build import cpu_kernel_available, warn_fallback_once
from serpent_ssm.ops.selective_scan.checks import check_scan_arguments
from serpent_ssm.ops.selective_scan.chunked import torch_scan
from serpent_ssm.ops.selective_scan.cpu import cpu_scan
from serpent_ssm.ops.selective_scan.cuda import cuda_kernel_available, cuda_scan
from serpent_ssm.ops.selective_scan.naive import selective_scan_ref

__all__ = ["BACKENDS", "available_backends", "check_backend", "resolve_backend", "selective_scan"]

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
        ``y (Bt, D, L)`` in ``u``'s dtype, and the final state ``(Bt, D, N)`` in the compute
        dtype when requested. Computation is in float32 (float64 for float64 ``u``), whatever
        the input dtype, so bf16/fp16 inputs are upcast.
    """
    if return_last_state is not None:
        return_final_state = bool(return_last_state)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, mask)
    if backend == "ref":  # the naive twin checks its arguments itself
        return selective_scan_ref(*args, initial_state, return_final_state)
    check_scan_arguments(u, delta, A, B, C, D, z, delta_bias, mask, initial_state)
    name = resolve_backend(backend, u.device, needs_initial_state=initial_state is not None)
    if name == "cuda":
        return cuda_scan(*args, return_final_state)
    if name == "cpu":
        return cpu_scan(*args, initial_state, return_final_state)
    return torch_scan(*args, initial_state, return_final_state)
