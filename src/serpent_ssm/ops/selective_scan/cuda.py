"""Adapter to mamba_ssm's CUDA selective-scan kernel: the ``"cuda"`` backend.

mamba_ssm is optional and imported lazily; nothing here is touched on a machine without it.
The kernel has no initial state and no mask: the mask is applied by discretising ``Δ`` here
(softplus and bias first, then ``Δ = 0``, ``u = 0``, ``B = C = z = 0`` on padding, selected with
``torch.where``) and passing the result with ``delta_softplus=False``.
"""

from __future__ import annotations

import functools

import torch

from serpent_ssm.ops.selective_scan.chunked import discretise, zero_padded_inputs
from serpent_ssm.utils.sequence import zero_padding

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
    """Run mamba_ssm's ``selective_scan_fn`` with our mask semantics. Shapes as in ``selective_scan``.

    With a mask, ``Δ`` is discretised here and ``Δ``, ``u``, ``B``, ``C`` and ``z`` are zeroed on
    padding by selection (the kernel reads every position, so NaN or Inf there would leak).
    """
    fn = _load_kernel()
    if mask is not None:
        delta, u, B, C, z = zero_padded_inputs(mask, delta, u, B, C, z)
        delta = discretise(delta, delta_bias, delta_softplus, torch.float32)
        delta = zero_padding(delta, mask, dim=-1).to(u.dtype)
        delta_bias, delta_softplus = None, False
    out = fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_final_state)
    if mask is None:
        return out
    if return_final_state:
        y, last = out
        return zero_padding(y, mask, dim=-1), last
    return zero_padding(out, mask, dim=-1)
