"""The fused CPU recurrent step: ``cell_step`` (and a single Mamba's step) in one kernel call.

The kernel (``csrc/mamba_step_cpu.cpp``) is built into the library of ``ops.scan_cpu`` (same
compiler, flags, cache and fallback). One call does, for every backbone of a SeRpEnt mixer and
every row, what ``ops.mamba_step.cell_step`` does with some forty tensor operations: the cell
pooling, the projections, the convolution, the state update and the output, where each operation
on tensors this small costs more in dispatch than in arithmetic. It computes in float32, without
gradients; ``step_kernel_usable`` says when it applies, and callers run the reference otherwise.
Tests pin it to the reference.

Environment: ``SERPENT_SSM_STEP_KERNEL=0`` steps with the torch reference (read at every step;
benchmarks compare the two), and ``SERPENT_SSM_CPU_KERNEL=0`` (``ops.scan_cpu``) builds no kernel.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from serpent_ssm.ops.mamba_step import CellState
from serpent_ssm.ops.scan_cpu import kernel_entries, struct_fields

__all__ = [
    "KernelWeights",
    "LayerWeights",
    "cell_step_cpu",
    "step_kernel_usable",
    "kernel_weights",
    "mamba_step_cpu",
    "serpent_step_cpu",
]

_ENV_SWITCH = "SERPENT_SSM_STEP_KERNEL"


class _CellStepArgs(ctypes.Structure):
    """Mirror of ``CellStepArgs`` in the C++ source (same order, same types)."""

    _fields_ = struct_fields(
        "batch d_model d_inner d_state d_conv dt_rank rates full "
        "stacked has_in_bias has_conv_bias has_out_bias has_cell_proj restore_hold",
        "x t_old t_new acc held conv ssm w_in b_in w_conv b_conv w_x w_dt b_dt a d_skip w_out "
        "b_out w_cell b_cell out acc_new held_new conv_new ssm_new",
    ) + struct_fields(  # the whole layer's step only
        "score_slots bounds_mean mix_gates has_gate",
        "w_score b_score offset scale rate_values log_sum count log_sum_new count_new t_out w_mix b_mix "
        "w_gate b_gate y",
    )


class KernelWeights(NamedTuple):
    """The weights the kernel reads, float32 and contiguous, in PyTorch's layouts; with
    ``stacked`` each has a leading dim ``G`` (one set per backbone), else one set serves every
    backbone: ``w_in (2E, D)``, ``b_in (2E,)``, ``w_conv (E, K)``, ``b_conv (E,)``,
    ``w_x (r + 2N, E)``, ``w_dt (E, r)``, ``b_dt (E,)``, ``a (E, N)`` (``−exp(A_log)``),
    ``d_skip (E,)``, ``w_out (D, E)``, ``b_out (D,)`` (biases may be None); the cell projections
    ``w_cell (R, D, D)``, ``b_cell (R, D)`` or None."""

    w_in: torch.Tensor
    b_in: torch.Tensor | None
    w_conv: torch.Tensor
    b_conv: torch.Tensor | None
    w_x: torch.Tensor
    w_dt: torch.Tensor
    b_dt: torch.Tensor
    a: torch.Tensor
    d_skip: torch.Tensor
    w_out: torch.Tensor
    b_out: torch.Tensor | None
    w_cell: torch.Tensor | None
    b_cell: torch.Tensor | None
    stacked: bool
    sizes: tuple[int, int, int, int, int]  # d_model, d_inner, d_state, d_conv, dt_rank


def kernel_weights(backbones: Sequence[Any], cell_projs: Sequence[Any] | None = None) -> KernelWeights:
    """The kernel's weights of Mamba modules (anything with Mamba's layers: ``in_proj``,
    ``conv1d``, ``x_proj``, ``dt_proj``, ``out_proj``, ``A_log``, ``D``): one module, shared by
    every backbone, or ``G`` modules stacked; and the rate branches' cell projections
    (``nn.Linear(D, D)`` each) or None. Detached copies or views: build them without gradients."""
    stacked = len(backbones) > 1

    def get(fn: Any) -> torch.Tensor | None:
        values = [fn(m) for m in backbones]
        if values[0] is None:
            return None
        t = torch.stack(values) if stacked else values[0]
        return t.detach().float().contiguous()

    first = backbones[0]
    weights = KernelWeights(
        w_in=get(lambda m: m.in_proj.weight),
        b_in=get(lambda m: m.in_proj.bias),
        w_conv=get(lambda m: m.conv1d.weight[:, 0, :]),
        b_conv=get(lambda m: m.conv1d.bias),
        w_x=get(lambda m: m.x_proj.weight),
        w_dt=get(lambda m: m.dt_proj.weight),
        b_dt=get(lambda m: m.dt_proj.bias),
        a=get(lambda m: -torch.exp(m.A_log.float())),
        d_skip=get(lambda m: m.D),
        w_out=get(lambda m: m.out_proj.weight),
        b_out=get(lambda m: m.out_proj.bias),
        w_cell=None,
        b_cell=None,
        stacked=stacked,
        sizes=(first.d_model, first.d_inner, first.d_state, first.d_conv, first.dt_rank),
    )
    if cell_projs:
        weights = weights._replace(
            w_cell=torch.stack([p.weight for p in cell_projs]).detach().float().contiguous(),
            b_cell=torch.stack([p.bias for p in cell_projs]).detach().float().contiguous(),
        )
    return weights


class LayerWeights(NamedTuple):
    """What a causal SeRpEnt mixer's whole step reads besides its backbones and cell projections
    (``serpent_step_cpu``), float32 and contiguous unless noted: the score layers ``w_score
    (S, D)``, ``b_score (S,)`` (``S`` = 1 shared or ``R``); the intervals ``Δ = offset + scale·σ(s)``
    (``offset``, ``scale`` ``(R,)``; bounds ``"ours"``, ``"paper"``, ``"fixed"``) or, for
    ``"mean"``, the rates ``(R,)`` float64; the output map ``w_mix`` (dense ``(D, G·D)``, or
    ``gates`` ``(G, D)``) and ``b_mix (D,)``; the gate ``w_gate (D, D)``, ``b_gate (D,)`` or None."""

    w_score: torch.Tensor
    b_score: torch.Tensor
    offset: torch.Tensor | None
    scale: torch.Tensor | None
    rates: torch.Tensor | None
    w_mix: torch.Tensor
    b_mix: torch.Tensor
    mix_gates: bool
    w_gate: torch.Tensor | None
    b_gate: torch.Tensor | None


def _step_kernel() -> ctypes.CDLL | None:
    """The loaded library (``ops.scan_cpu``) when its step kernel matches this module's layout."""
    return kernel_entries("ms", _CellStepArgs, ("cell_step_f32", "serpent_step_f32"))


def step_kernel_usable(x: torch.Tensor) -> bool:
    """Whether the kernel can take this step: grad mode is off (it computes no gradients), ``x``
    is a float32 CPU tensor, the kernel is built, and ``SERPENT_SSM_STEP_KERNEL`` is not ``0``."""
    return (
        not torch.is_grad_enabled()
        and os.environ.get(_ENV_SWITCH, "1") != "0"
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and _step_kernel() is not None
    )


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _as(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in ``dtype``, contiguous (itself when it already is: the kernel only reads it)."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.detach().to(dtype).contiguous()


def _run(
    x: torch.Tensor,
    times: tuple[torch.Tensor, torch.Tensor | None] | None,
    cells: tuple[torch.Tensor, torch.Tensor] | None,
    conv: torch.Tensor,
    ssm: torch.Tensor,
    weights: KernelWeights,
    full: bool,
    hold: bool,
    layer: LayerWeights | None = None,
    scores: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[torch.Tensor | None]:
    """One kernel call; ``times`` (``t_old``, ``t_new``) and ``cells`` (``acc``, ``held``) are None
    without rate branches. Returns ``[out, acc, held, conv, ssm]`` (None for absent parts): views
    of one new buffer (one allocation; the input state is not written to). With ``layer`` (the
    whole SeRpEnt step) ``t_new`` is computed, not given, and the list goes on with ``t_new (R, B)``
    float64, ``y (B, D)`` and, with ``scores`` (``log_sum``, ``count`` ``(S, B)`` float64 of bounds
    ``"mean"``), their new values."""
    lib = _step_kernel()
    d_model, d_inner, d_state, d_conv, dt_rank = weights.sizes
    batch = x.shape[0]
    rates = 0 if cells is None else cells[0].shape[0]
    g = rates + int(full)
    f32, f64 = torch.float32, torch.float64
    x_, conv, ssm = _as(x, f32), _as(conv, f32), _as(ssm, f32)
    acc, held = (None, None) if cells is None else (_as(c, f32) for c in cells)
    t0, t1 = (None, None) if times is None else (_as(t, f64) for t in times)
    shapes = [(g, batch, d_model), *(() if cells is None else (acc.shape, held.shape)), conv.shape, ssm.shape]
    if layer is not None:
        shapes.append((batch, d_model))
    sizes = [math.prod(shape) for shape in shapes]
    parts = x_.new_empty(sum(sizes)).split(sizes)
    views = [part.view(shape) for part, shape in zip(parts, shapes, strict=True)]
    if cells is None:
        views[1:1] = [None, None]
    w = weights
    args = _CellStepArgs(
        batch, d_model, d_inner, d_state, d_conv, dt_rank, rates, int(full), int(w.stacked),
        w.b_in is not None, w.b_conv is not None, w.b_out is not None, w.w_cell is not None, int(hold),
        *map(_ptr, (x_, t0, t1, acc, held, conv, ssm, w.w_in, w.b_in, w.w_conv, w.b_conv, w.w_x,
                    w.w_dt, w.b_dt, w.a, w.d_skip, w.w_out, w.b_out, w.w_cell, w.b_cell, *views[:5])),
    )  # fmt: skip
    if layer is None:
        if lib.ms_cell_step_f32(ctypes.byref(args)) != 0:
            raise RuntimeError("serpent_ssm: the CPU step kernel rejected its arguments (a bug)")
        return views
    y = views.pop()
    t_out = torch.empty(rates, batch, dtype=f64)
    views += [t_out, y]
    args.score_slots, args.mix_gates = layer.w_score.shape[0], int(layer.mix_gates)
    args.has_gate, args.bounds_mean = layer.w_gate is not None, scores is not None
    args.w_score, args.b_score = layer.w_score.data_ptr(), layer.b_score.data_ptr()
    args.w_mix, args.b_mix, args.t_out, args.y = (
        layer.w_mix.data_ptr(),
        layer.b_mix.data_ptr(),
        t_out.data_ptr(),
        y.data_ptr(),
    )
    if layer.w_gate is not None:
        args.w_gate, args.b_gate = layer.w_gate.data_ptr(), layer.b_gate.data_ptr()
    if scores is None:
        args.offset, args.scale = layer.offset.data_ptr(), layer.scale.data_ptr()
    else:
        log_sum, count = (_as(t, f64) for t in scores)
        new_scores = torch.empty(2, *log_sum.shape, dtype=f64)
        args.rate_values, args.log_sum, args.count = (
            layer.rates.data_ptr(),
            log_sum.data_ptr(),
            count.data_ptr(),
        )
        args.log_sum_new, args.count_new = new_scores[0].data_ptr(), new_scores[1].data_ptr()
        views += [new_scores[0], new_scores[1]]
    if lib.ms_serpent_step_f32(ctypes.byref(args)) != 0:
        raise RuntimeError("serpent_ssm: the CPU step kernel rejected its arguments (a bug)")
    return views


def cell_step_cpu(
    x: torch.Tensor,
    t_old: torch.Tensor,
    t_new: torch.Tensor,
    state: CellState,
    weights: KernelWeights,
    full: bool = False,
    hold: bool = True,
) -> tuple[torch.Tensor, CellState]:
    """``ops.mamba_step.cell_step`` in one kernel call (same arguments, with ``KernelWeights``;
    ``step_kernel_usable`` must hold)."""
    out, *new = _run(x, (t_old, t_new), (state.acc, state.held), state.conv, state.ssm, weights, full, hold)
    return out.to(x.dtype), CellState(*new)


def mamba_step_cpu(
    x: torch.Tensor, conv: torch.Tensor, ssm: torch.Tensor, weights: KernelWeights
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ops.mamba_step.mamba_step`` of one module (``kernel_weights([module])``) in one kernel
    call: ``x (B, D)``, ``conv (B, E, K − 1)``, ``ssm (B, E, N)`` -> ``y (B, D)`` and the new
    ``conv`` and ``ssm`` (``step_kernel_usable`` must hold)."""
    out, _, _, conv_new, ssm_new = _run(x, None, None, conv[None], ssm[None], weights, True, True)
    return out[0].to(x.dtype), conv_new[0].to(conv.dtype), ssm_new[0]


def serpent_step_cpu(
    x: torch.Tensor,
    t: torch.Tensor,
    state: CellState,
    scores: tuple[torch.Tensor, torch.Tensor] | None,
    weights: KernelWeights,
    layer: LayerWeights,
    full: bool,
    hold: bool,
) -> tuple[torch.Tensor, torch.Tensor, CellState, tuple[torch.Tensor, torch.Tensor] | None]:
    """A causal SeRpEnt mixer's whole step in one kernel call (``SeRpEnt.step`` with
    ``interval_source="score"``, cell aggregation, Mamba backbones and ``Δ ≤ 1``; its torch path is
    the reference): ``x (B, D)``, the running times ``t (R, B)`` float64, the cell state, for
    bounds ``"mean"`` the score state ``(log_sum, count)`` ``(S, B)`` float64 (else None) ->
    ``y (B, D)`` (NaN on poisoned rows), the new times (NaN on poisoned rows), cell state and
    score state (``step_kernel_usable`` must hold)."""
    out = _run(
        x, (t, None), (state.acc, state.held), state.conv, state.ssm, weights, full, hold, layer, scores
    )
    _, acc, held, conv, ssm, t_new, y, *new_scores = out
    return y.to(x.dtype), t_new, CellState(acc, held, conv, ssm), (tuple(new_scores) if new_scores else None)
