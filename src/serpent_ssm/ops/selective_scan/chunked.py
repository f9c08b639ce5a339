"""Chunked selective scan in pure PyTorch: the ``"torch"`` backend of ``selective_scan``.

The recurrence ``h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t``, ``y_t = <C_t, h_t>`` is processed in
chunks of ``chunk_size`` time steps. Inside a chunk the linear recurrence is solved by a
Hillis-Steele parallel scan over the pairs ``(a_t, b_t)`` (``log2(chunk_size)`` vectorised steps,
no Python loop over time); only products of decays in ``(0, 1]`` are ever formed, so nothing
overflows, whatever the sequence length or the magnitude of ``Δ·A`` (a long product simply
underflows to 0, which is the correct limit). A short Python loop over chunks carries the state
from one chunk to the next.

Memory: the ``(B, D, T, N)`` state tensor exists for one chunk at a time. With autograd each
chunk is wrapped in activation checkpointing, so the forward keeps only the chunk inputs (views
of the arguments) and one ``(B, D, N)`` carry per chunk; the backward recomputes one chunk at a
time. Peak extra memory is therefore ``O(B·D·T·N + B·D·N·L/T)`` instead of ``O(B·D·L·N)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from serpent_ssm.utils.sequence import zero_padding

__all__ = ["DEFAULT_CHUNK_SIZE", "chunked_scan", "discretise", "torch_scan", "zero_padded_inputs"]

#: 32 keeps one chunk's (B, D, T, N) working set in the last-level cache for the common sizes
#: (B=4, D=256, N=16: 2 MiB), which measured fastest on CPU (see benchmarks/scan.py).
DEFAULT_CHUNK_SIZE = 32


def _scan_chunk(
    h0: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of the scan.

    Shapes: ``h0 (Bt, D, N)``, ``u, delta (Bt, D, T)``, ``A (D, N)``, ``B, C (Bt, G, T, N)``.
    Returns ``y (Bt, D, T)`` and the state after the chunk ``(Bt, D, N)``.
    """
    bt, d, t = u.shape
    g, n = B.shape[1], B.shape[-1]
    a = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))  # (Bt, D, T, N), in (0, 1]
    du = (delta * u).view(bt, g, d // g, t, 1)
    b = (du * B.unsqueeze(2)).view(bt, d, t, n)  # Δ_t u_t B_t
    k = 1
    while k < t:
        # b_t <- b_t + a_t b_{t-k}; a_t <- a_t a_{t-k}  (a: product of the last 2k decays)
        b = torch.addcmul(b, a, F.pad(b[:, :, : t - k], (0, 0, k, 0)))
        a = a * F.pad(a[:, :, : t - k], (0, 0, k, 0), value=1.0)
        k *= 2
    h = torch.addcmul(b, a, h0.unsqueeze(2))  # a is now the cumulative decay from the chunk start
    y = (h.view(bt, g, d // g, t, n) * C.unsqueeze(2)).sum(-1).view(bt, d, t)
    return y, h[:, :, -1].clone()


def chunked_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Core scan without skip, gate or masking (those are applied by ``torch_scan``).

    Args:
        u, delta: ``(Bt, D, L)`` float32; ``delta`` already discretised (softplus, bias, mask).
        A: ``(D, N)`` float32.
        B, C: ``(Bt, G, N, L)`` float32 with ``D % G == 0``.
        initial_state: ``(Bt, D, N)`` or None (zeros).
    Returns:
        ``y (Bt, D, L)`` and the final state ``(Bt, D, N)``.
    """
    bt, d, length = u.shape
    n = A.shape[1]
    h = initial_state if initial_state is not None else u.new_zeros(bt, d, n)
    if length == 0:
        return u.new_zeros(bt, d, 0), h
    Bt = B.transpose(-1, -2)  # (Bt, G, L, N): the state dimension innermost, like h
    Ct = C.transpose(-1, -2)
    need_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (u, delta, A, B, C, h))
    # split once (not slice per chunk): the backward of split assembles each gradient with
    # one concatenation instead of one full-size zero tensor per chunk
    pieces = zip(
        u.split(chunk_size, dim=-1),
        delta.split(chunk_size, dim=-1),
        Bt.split(chunk_size, dim=2),
        Ct.split(chunk_size, dim=2),
        strict=True,
    )
    ys = []
    for u_c, d_c, b_c, c_c in pieces:
        args = (h, u_c, d_c, A, b_c, c_c)
        if need_grad:
            y, h = checkpoint(_scan_chunk, *args, use_reentrant=False)
        else:
            y, h = _scan_chunk(*args)
        ys.append(y)
    return torch.cat(ys, dim=-1), h


def _grouped(x: torch.Tensor, bt: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """B or C in any accepted layout -> ``(Bt, G, N, L)`` in ``dtype`` (a view where possible)."""
    x = x.to(dtype)
    if x.dim() == 2:  # time-invariant (D, N): one group per channel
        return x[None, :, :, None].expand(bt, x.shape[0], x.shape[1], length)
    if x.dim() == 3:
        return x.unsqueeze(1)
    return x


def discretise(delta: torch.Tensor, delta_bias, delta_softplus: bool, dtype: torch.dtype) -> torch.Tensor:
    """``Δ = softplus(delta + delta_bias)`` (or without the softplus) in ``dtype``; ``(Bt, D, L)``."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if delta_softplus else dt


def zero_padded_inputs(mask: torch.Tensor, *xs: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Each per-position ``x (Bt, ..., L)`` with 0 at the padded positions of ``mask (Bt, L)``,
    by selection (``utils.sequence.zero_padding``); None and time-invariant ``(D, N)`` matrices
    (rank 2) are returned as they are."""
    return [x if x is None or x.dim() < 3 else zero_padding(x, mask, dim=-1) for x in xs]


def torch_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, mask, initial_state, return_final_state):
    """The ``"torch"`` backend with ``selective_scan``'s arguments (already validated).

    Discretises ``Δ`` (bias, softplus), zeroes ``Δ``, ``u``, ``B``, ``C`` and ``z`` on padding
    (so no time passes and nothing comes in there, whatever the padding holds), runs
    ``chunked_scan``, then adds the skip, applies the gate and zeroes the outputs at padding.
    Computes in float32 (float64 for float64 ``u``); returns ``y (Bt, D, L)`` in ``u``'s dtype
    and the final state ``(Bt, D, N)`` in the compute dtype when requested.
    """
    bt, d, length = u.shape
    out_dtype = u.dtype
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32  # compute dtype
    uf = u.to(cdt)
    if mask is not None:  # the raw inputs first: no NaN may reach a backward through the softplus
        delta, uf, B, C, z = zero_padded_inputs(mask, delta, uf, B, C, z)
    dt = zero_padding(discretise(delta, delta_bias, delta_softplus, cdt), mask, dim=-1)
    Bg, Cg = _grouped(B, bt, length, cdt), _grouped(C, bt, length, cdt)
    h0 = initial_state.to(cdt) if initial_state is not None else uf.new_zeros(bt, d, A.shape[1])
    y, h = chunked_scan(uf, dt, A.to(cdt), Bg, Cg, h0)
    if D is not None:
        y = y + D.to(cdt)[:, None] * uf
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = zero_padding(y, mask, dim=-1).to(out_dtype)
    return (y, h) if return_final_state else y
