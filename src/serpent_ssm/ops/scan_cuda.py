"""Adapter to mamba_ssm's CUDA selective-scan kernel: the ``"cuda"`` backend.

mamba_ssm is optional and imported lazily; nothing here is touched on a machine without it.
The kernel has no initial state and no mask: the mask is applied by discretising ``Δ`` here
(softplus and bias first, then ``Δ = 0`` and ``u = 0`` on padding) and passing the result with
``delta_softplus=False``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["cuda_kernel_available", "cuda_scan"]


@functools.lru_cache(maxsize=1)
def _load_kernel():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, missing CUDA runtime, ABI mismatch: all mean "not available"
        return None
    return selective_scan_fn


def cuda_kernel_available() -> bool:
    """True when mamba_ssm's selective-scan kernel imports and a CUDA device is present."""
    return torch.cuda.is_available() and _load_kernel() is not None


def cuda_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, mask, return_final_state):
    """Run mamba_ssm's ``selective_scan_fn`` with our mask semantics. Shapes as in ``selective_scan``."""
    fn = _load_kernel()
    if mask is not None:
        delta = delta.float()
        if delta_bias is not None:
            delta = delta + delta_bias.float()[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        m = mask.unsqueeze(1)
        delta = (delta * m).to(u.dtype)
        u = u * m
        delta_bias, delta_softplus = None, False
    out = fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_final_state)
    if mask is None:
        return out
    if return_final_state:
        y, last = out
        return y * mask.unsqueeze(1), last
    return out * mask.unsqueeze(1)
