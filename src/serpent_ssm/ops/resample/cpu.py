"""The fused CPU resampling ops: ``cell_pool`` and ``restore`` (``"hold"``, ``"interp"``), forward
and backward, each in one kernel call.

The kernel (``csrc/resample_cpu.cpp``) is built into the one library of ``ops.cpu_build`` (same
compiler, flags, cache and fallback). The torch versions in ``resample.torch`` are the reference:
they express each op as a dozen gathers, scatters, selections and copies over ``(B, L, D)``
tensors, each a pass over memory in the forward pass and again in the backward one; the kernel
makes one pass over the elements of each row. It computes in float32 with float64 times; its
outputs are the reference's bit for bit, and its gradients (for the values and the times) follow
the reference's autograd, ties included, to rounding.
``ops.resample.cell_pool`` and ``.restore`` (``resample.interface``) call it when
``resample_kernel_usable`` and their checks say it applies (``kernel=None``), and tests pin it to
the reference. ``cell_pool_cpu`` and ``restore_cpu`` take arguments those ops have checked
(shapes, devices, ``counts <= buffer``, times ``>= 0``): they are no entry points of their own.
Every pointer they hand the kernel still goes through ``ops.cpu_build.data_pointer`` (a contiguous
CPU tensor of the kernel's dtype), so no tensor of another device reaches C++.

Environment: ``SERPENT_SSM_CPU_KERNEL=0`` (``ops.cpu_build``) builds no kernel, and the torch
versions run.
"""

from __future__ import annotations

import ctypes

import torch

from serpent_ssm.ops.cpu_build import data_pointer, kernel_entries, struct_fields

__all__ = ["resample_kernel_usable"]

_ABI_VERSION = 1


class _ResampleArgs(ctypes.Structure):
    """Mirror of ``ResampleArgs`` in the C++ source (same order, same types)."""

    _fields_ = struct_fields(
        "batch length dim buffer n_threads has_mask has_start interp",
        "x t start counts mask grad out dx dt",
    )


def _kernel() -> ctypes.CDLL | None:
    names = ("cell_pool_forward_f32", "cell_pool_backward_f32", "restore_forward_f32", "restore_backward_f32")
    return kernel_entries("rs", _ResampleArgs, names, _ABI_VERSION)


def resample_kernel_usable(x: torch.Tensor, t: torch.Tensor) -> bool:
    """Whether the kernel can take these values ``x`` and times ``t``: a float32 and a float64
    CPU tensor, and the kernel is built (``SERPENT_SSM_CPU_KERNEL`` is not ``0``)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and t.device.type == "cpu"
        and t.dtype == torch.float64
        and _kernel() is not None
    )


# the element type of each pointer of ``ResampleArgs`` that is not float32
_DTYPES = {
    "t": torch.float64,
    "start": torch.float64,
    "dt": torch.float64,
    "counts": torch.int64,
    "mask": torch.uint8,
}


def _call(entry: str, args: _ResampleArgs, **tensors: torch.Tensor | None) -> None:
    """Point ``args`` at ``tensors`` (None -> null) and call the kernel entry point ``rs_{entry}_f32``."""
    for name, t in tensors.items():
        setattr(args, name, data_pointer(name, t, _DTYPES.get(name, torch.float32)))
    if getattr(_kernel(), f"rs_{entry}_f32")(ctypes.byref(args)) != 0:
        raise RuntimeError("serpent_ssm: the CPU resampling kernel rejected its arguments (a bug)")


def _args(x, t, buffer: int, mask, start, interp: bool = False) -> _ResampleArgs:
    b, length = t.shape
    return _ResampleArgs(
        batch=b,
        length=length,
        dim=x.shape[2],
        buffer=buffer,
        n_threads=torch.get_num_threads(),
        has_mask=mask is not None,
        has_start=start is not None,
        interp=int(interp),
    )


class _CellPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t, counts, buffer, mask, start):
        out = x.new_empty(x.shape[0], buffer, x.shape[2])
        args = _args(x, t, buffer, mask, start)
        _call("cell_pool_forward", args, x=x, t=t, start=start, counts=counts, mask=mask, out=out)
        ctx.args = args
        ctx.save_for_backward(x, t, counts, mask, start)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, t, counts, mask, start = ctx.saved_tensors
        dx, dt = torch.empty_like(x), torch.empty_like(t)
        _call("cell_pool_backward", ctx.args, x=x, t=t, start=start, counts=counts, mask=mask,
              grad=grad.contiguous(), dx=dx, dt=dt)  # fmt: skip
        return dx, dt, None, None, None, None


class _Restore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, t, counts, mask, interp):
        out = y.new_empty(y.shape[0], t.shape[1], y.shape[2])
        args = _args(y, t, y.shape[1], mask, None, interp)
        _call("restore_forward", args, x=y, t=t, counts=counts, mask=mask, out=out)
        ctx.args = args
        ctx.save_for_backward(y, t, counts, mask)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, t, counts, mask = ctx.saved_tensors
        dy = torch.empty_like(y)
        dt = torch.empty_like(t) if ctx.args.interp and ctx.needs_input_grad[1] else None
        _call("restore_backward", ctx.args, x=y, t=t, counts=counts, mask=mask,
              grad=grad.contiguous(), dx=dy, dt=dt)  # fmt: skip
        return dy, dt, None, None, None


def _mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask.to(torch.uint8).contiguous()


def cell_pool_cpu(
    x: torch.Tensor,
    t: torch.Tensor,
    counts: torch.Tensor,
    buffer: int,
    mask: torch.Tensor | None,
    t_start: torch.Tensor | None,
) -> torch.Tensor:
    """``ops.resample.cell_pool`` in the kernel (arguments as there, already checked by it: shapes,
    devices, ``counts <= buffer``, ``t_start`` without gradient): ``(B, L, D)`` -> ``(B, L', D)``."""
    start = None if t_start is None else t_start.detach().to(torch.float64).contiguous()
    return _CellPool.apply(
        x.contiguous(), t.contiguous(), counts.long().contiguous(), buffer, _mask(mask), start
    )


def restore_cpu(
    y: torch.Tensor, t: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor | None, how: str
) -> torch.Tensor:
    """``ops.resample.restore`` with ``how`` ``"hold"`` or ``"interp"`` in the kernel (arguments as
    there, already checked by it): ``y (B, L', D)`` -> ``(B, L, D)``."""
    return _Restore.apply(
        y.contiguous(), t.contiguous(), counts.long().contiguous(), _mask(mask), how == "interp"
    )
