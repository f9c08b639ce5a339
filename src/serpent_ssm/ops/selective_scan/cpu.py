"""The fused CPU selective scan: the ``"cpu"`` backend of ``selective_scan``.

The kernel (``csrc/selective_scan_cpu.cpp``) is built and loaded with the other CPU kernels by
``ops.cpu_build`` (compiler, flags, cache, ``SERPENT_SSM_CPU_KERNEL``, fallback). Each (batch row,
channel) is one task: its whole recurrence runs with the state in registers, fusing softplus and
bias, discretisation, the state update, the ``C`` contraction, the ``D`` skip and the ``z`` gate.
Tasks are split over ``torch.get_num_threads()`` threads. The forward pass keeps the state every
``CHECKPOINT_INTERVAL`` steps (``Bt·D·L/T·N`` numbers); the backward pass recomputes the states of
one chunk at a time from those checkpoints.

``cpu_scan`` takes arguments that ``selective_scan`` has checked (shapes, devices): it is no entry
point of its own. Every pointer it hands the kernel still goes through ``data_pointer`` (a
contiguous CPU tensor of the compute dtype), so no tensor of another device reaches C++.
"""

from __future__ import annotations

import ctypes

import torch

from serpent_ssm.ops.cpu_build import data_pointer, kernel_entries, struct_fields

__all__ = ["CHECKPOINT_INTERVAL"]

CHECKPOINT_INTERVAL = 64


class _ScanArgs(ctypes.Structure):
    """Mirror of ``ScanArgs`` in the C++ source (same order, same types)."""

    _fields_ = struct_fields(
        "batch dim length dstate groups_b groups_c chunk n_threads softplus has_D has_z has_bias "
        "has_h0 has_lengths has_dhT sb_b sb_g sb_l sc_b sc_g sc_l "
        "gb_t gb_b gb_g gb_l gc_t gc_b gc_g gc_l",
        "u delta A B C D z bias h0 lengths y h_final ckpt dy dhT "
        "du ddelta dz dA_part dB dC dD_part dbias_part dh0",
    )


def _kernel() -> ctypes.CDLL:
    """The loaded library with the scan's entry points bound (``ops.cpu_build.kernel_entries``)."""
    lib = kernel_entries("ss", _ScanArgs, ("forward_f32", "forward_f64", "backward_f32", "backward_f64"))
    if lib is None:
        raise RuntimeError("serpent_ssm: the CPU scan kernel is not loaded or does not match this version")
    return lib


def _kernel_layout(x: torch.Tensor, length: int, dtype: torch.dtype):
    """B or C (differentiably) -> ``(tensor, (kind, groups, (s_b, s_g, s_l)))`` for the kernel.

    ``(D, N)`` time-invariant stays ``(D, N)`` (one group per channel, strides 0 over batch and
    time); ``(Bt, N, L)`` and ``(Bt, G, N, L)`` become ``(Bt, G, L, N)`` with the state index
    contiguous.
    """
    if x.dim() == 2:
        t = x.to(dtype).contiguous()
        return t, ("time-invariant", t.shape[0], (0, t.shape[1], 0))
    kind = "shared" if x.dim() == 3 else "grouped"
    t = (x.unsqueeze(1) if x.dim() == 3 else x).to(dtype).transpose(2, 3).contiguous()
    g, n = t.shape[1], t.shape[3]
    return t, (kind, g, (g * length * n, length * n, n))


def _grad_buffer(kind: str, bt: int, groups: int, length: int, n: int, d: int, threads: int, dtype):
    """Accumulator for dB or dC, ``(copies, ...)``, and its strides (t, b, g, l).

    Summing over the first dimension gives the gradient in the kernel layout.
    """
    if kind == "time-invariant":  # one (D, N) copy per batch row, summed afterwards
        buf = torch.zeros(bt, d, n, dtype=dtype)
        return buf, (0, d * n, n, 0)
    # (Bt, G, L, N); one copy per thread when several channels share a group
    copies = threads if groups < d else 1
    buf = torch.zeros(copies, bt, groups, length, n, dtype=dtype)
    return buf, (bt * groups * length * n if copies > 1 else 0, groups * length * n, length * n, n)


def _run(fn, args: _ScanArgs, dtype: torch.dtype, **tensors: torch.Tensor | None) -> None:
    """Point ``args`` at ``tensors`` (None -> null; each a contiguous CPU tensor of ``dtype``, the
    lengths int64) and call the kernel entry point ``fn``."""
    for name, t in tensors.items():
        setattr(args, name, data_pointer(name, t, torch.int64 if name == "lengths" else dtype))
    if fn(ctypes.byref(args)) != 0:
        raise RuntimeError("serpent_ssm: the CPU scan kernel rejected its arguments (a bug)")


class _CpuScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, Bk, Ck, D, z, delta_bias, h0, lengths, softplus, b_layout, c_layout):
        # b_layout, c_layout: (kind, groups, (s_b, s_g, s_l)) of Bk, Ck; see _kernel_layout
        lib = _kernel()
        bt, d, length = u.shape
        n = A.shape[1]
        cdt = u.dtype
        threads = torch.get_num_threads()
        n_chunks = -(-length // CHECKPOINT_INTERVAL)
        y = torch.empty_like(u)
        h_final = torch.empty(bt, d, n, dtype=cdt)
        ckpt = torch.empty(bt, d, n_chunks, n, dtype=cdt)
        args = _ScanArgs(
            batch=bt,
            dim=d,
            length=length,
            dstate=n,
            groups_b=b_layout[1],
            groups_c=c_layout[1],
            chunk=CHECKPOINT_INTERVAL,
            n_threads=threads,
            softplus=int(softplus),
            has_D=D is not None,
            has_z=z is not None,
            has_bias=delta_bias is not None,
            has_h0=h0 is not None,
            has_lengths=lengths is not None,
            has_dhT=0,
            sb_b=b_layout[2][0],
            sb_g=b_layout[2][1],
            sb_l=b_layout[2][2],
            sc_b=c_layout[2][0],
            sc_g=c_layout[2][1],
            sc_l=c_layout[2][2],
        )
        _run(lib.ss_forward_f64 if cdt == torch.float64 else lib.ss_forward_f32, args, cdt,
             u=u, delta=delta, A=A, B=Bk, C=Ck, D=D, z=z, bias=delta_bias, h0=h0, lengths=lengths,
             y=y, h_final=h_final, ckpt=ckpt)  # fmt: skip
        ctx.args = args
        ctx.layouts = (b_layout, c_layout)
        ctx.save_for_backward(u, delta, A, Bk, Ck, D, z, delta_bias, lengths, ckpt)
        ctx.mark_non_differentiable(ckpt)
        return y, h_final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dh_final):
        u, delta, A, Bk, Ck, D, z, delta_bias, lengths, ckpt = ctx.saved_tensors
        (b_kind, groups_b, _), (c_kind, groups_c, _) = ctx.layouts
        lib = _kernel()
        bt, d, length = u.shape
        n = A.shape[1]
        cdt = u.dtype
        threads = max(1, min(ctx.args.n_threads, bt * d))
        dy = dy.to(cdt).contiguous() if dy is not None else torch.zeros_like(u)
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dz = torch.empty_like(u) if z is not None else None
        dA_part = torch.empty(bt, d, n, dtype=cdt)
        dD_part = torch.empty(bt, d, dtype=cdt)
        dbias_part = torch.empty(bt, d, dtype=cdt)
        dh0 = torch.empty(bt, d, n, dtype=cdt)
        dB, gb = _grad_buffer(b_kind, bt, groups_b, length, n, d, threads, cdt)
        dC, gc = _grad_buffer(c_kind, bt, groups_c, length, n, d, threads, cdt)
        dhT = dh_final.to(cdt).contiguous() if dh_final is not None else None
        args = ctx.args
        args.n_threads = threads
        args.has_dhT = dhT is not None
        args.gb_t, args.gb_b, args.gb_g, args.gb_l = gb
        args.gc_t, args.gc_b, args.gc_g, args.gc_l = gc
        _run(lib.ss_backward_f64 if cdt == torch.float64 else lib.ss_backward_f32, args, cdt,
             u=u, delta=delta, A=A, B=Bk, C=Ck, D=D, z=z, bias=delta_bias, lengths=lengths, ckpt=ckpt,
             dy=dy, dhT=dhT, du=du, ddelta=ddelta, dz=dz, dA_part=dA_part, dB=dB, dC=dC,
             dD_part=dD_part, dbias_part=dbias_part, dh0=dh0)  # fmt: skip
        grads = (
            du,
            ddelta,
            dA_part.sum(0),
            dB.sum(0) if dB.shape[0] > 1 else dB[0],
            dC.sum(0) if dC.shape[0] > 1 else dC[0],
            dD_part.sum(0),
            dz,
            dbias_part.sum(0),
            dh0,
        )
        needed = ctx.needs_input_grad[: len(grads)]
        return *(g if need else None for g, need in zip(grads, needed, strict=True)), None, None, None, None


def cpu_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, mask, initial_state, return_final_state):
    """The fused kernel with ``selective_scan``'s arguments, already checked there (shapes, devices,
    mask): not part of the API, call ``selective_scan(..., backend="cpu")``.

    Computes in float32 (float64 for float64 ``u``); returns ``y`` in ``u``'s dtype and the
    final state ``(Bt, D, N)`` in the compute dtype when requested.
    """
    bt, d, length = u.shape
    out_dtype = u.dtype
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32

    def prep(x):
        return None if x is None else x.to(cdt).contiguous()

    Bk, b_layout = _kernel_layout(B, length, cdt)
    Ck, c_layout = _kernel_layout(C, length, cdt)
    lengths = mask.sum(1, dtype=torch.int64).contiguous() if mask is not None else None
    y, h = _CpuScan.apply(
        prep(u),
        prep(delta),
        prep(A),
        Bk,
        Ck,
        prep(D),
        prep(z),
        prep(delta_bias),
        prep(initial_state),
        lengths,
        bool(delta_softplus),
        b_layout,
        c_layout,
    )
    y = y.to(out_dtype)
    return (y, h) if return_final_state else y
