"""The ``"cpu"`` backend of the recurrent steps: a causal SeRpEnt layer's step (or a single Mamba's
step) in one call of a C++ kernel.

The kernel (``csrc/mamba_step_cpu.cpp``) is built with the other CPU kernels by ``ops.cpu_build``
(same compiler, flags, cache and fallback). One call does, for every backbone of a SeRpEnt mixer and
every row, what ``torch.cell_step`` does with some forty tensor operations: the cell
pooling, the projections, the convolution, the state update and the output, where each operation
on tensors this small costs more in dispatch than in arithmetic. It computes in float32, without
gradients; ``step_kernel_usable`` says when it applies (``interface`` runs the ``"torch"`` backend
otherwise). Tests pin it to its references, ``torch.cell_step`` and ``naive.serpent_step_naive``.

Environment: ``SERPENT_SSM_STEP_KERNEL=0`` steps with the torch reference (read at every step;
benchmarks compare the two), and ``SERPENT_SSM_CPU_KERNEL=0`` (``ops.cpu_build``) builds no kernel.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os

import torch

from serpent_ssm.ops.cpu_build import kernel_entries, struct_fields
from serpent_ssm.ops.serpent_step.checks import check_step_buffer
from serpent_ssm.ops.serpent_step.naive import advance_times, merge_branches, step_deltas
from serpent_ssm.ops.serpent_step.torch import CellState, from_cells
from serpent_ssm.ops.serpent_step.weights import KernelWeights, LayerWeights, SeRpEntStepWeights
from serpent_ssm.ops.states import MambaState, SeRpEntState

__all__ = ["cell_step_cpu", "mamba_step_cpu", "serpent_step_cpu", "step_kernel_usable"]

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


def _step_kernel() -> ctypes.CDLL | None:
    """The loaded library (``ops.cpu_build``) when its step kernel matches this module's layout."""
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


def _check_buffers(x, times, cells, conv, ssm, scores, weights: KernelWeights, layer, full: bool) -> None:
    """``_run``'s input and state against its weights, by its callers' names: the kernel reads
    sizes, not shapes, so a state of other rows, sizes or device would be read or written out of
    bounds."""
    batch = x.shape[0] if x.dim() >= 1 else 0
    rates = 0 if cells is None else cells[0].shape[0]
    g = rates + int(full)
    d_model, d_inner, d_state, d_conv, _ = weights.tensors.sizes
    if weights.groups not in (1, g) or weights.rates not in (None, rates):
        raise ValueError(
            f"weights: expected the weights of 1 or {g} backbones and {rates} cell projections or "
            f"none, got {weights.groups} and {weights.rates}"
        )
    buffers = [("x_t", x, (batch, d_model))]
    if times is not None:
        t_old, t_new = times
        buffers += [("state.t", t_old, (rates, batch))]
        buffers += [] if t_new is None else [("t_new", t_new, (rates, batch))]
    if cells is not None:
        buffers += [("state.aggregator.acc", cells[0], (rates, batch, d_model))]
        buffers += [("state.held", cells[1], (rates, batch, d_model))]
    buffers += [
        ("state.backbone.conv", conv, (g, batch, d_inner, d_conv - 1)),
        ("state.backbone.ssm", ssm, (g, batch, d_inner, d_state)),
    ]
    if scores is not None:
        slots = layer.w_score.shape[0]
        buffers += [
            ("state.scores.log_sum", scores[0], (slots, batch)),
            ("state.scores.n", scores[1], (slots, batch)),
        ]
    for name, t, shape in buffers:  # one loop, the check inline: this runs at every token
        if not isinstance(t, torch.Tensor) or not t.is_cpu or t.shape != shape:
            check_step_buffer(name, t, shape)


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
    """One kernel call (its arguments checked by the caller: ``_check_buffers``); ``times``
    (``t_old``, ``t_new``) and ``cells`` (``acc``, ``held``) are None without rate branches. Returns
    ``[out, acc, held, conv, ssm]`` (None for absent parts): views of one new buffer (one
    allocation; the input state is not written to). With ``layer`` (the whole SeRpEnt step)
    ``t_new`` is computed, not given, and the list goes on with ``t_new (R, B)`` float64, ``y (B,
    D)`` and, with ``scores`` (``log_sum``, ``count`` ``(S, B)`` float64 of bounds ``"mean"``),
    their new values."""
    lib = _step_kernel()
    d_model, d_inner, d_state, d_conv, dt_rank = weights.tensors.sizes
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
    w = weights.tensors
    args = _CellStepArgs(
        batch, d_model, d_inner, d_state, d_conv, dt_rank, rates, int(full), int(weights.stacked),
        w.b_in is not None, w.b_conv is not None, w.b_out is not None, weights.w_cell is not None, int(hold),
        *map(_ptr, (x_, t0, t1, acc, held, conv, ssm, w.w_in, w.b_in, w.w_conv, w.b_conv, w.w_x,
                    w.w_dt, w.b_dt, w.a, w.d_skip, w.w_out, w.b_out, weights.w_cell, weights.b_cell,
                    *views[:5])),
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
    """``torch.cell_step`` in one kernel call (same arguments, with ``KernelWeights``;
    ``step_kernel_usable`` must hold)."""
    times, cells = (t_old, t_new), (state.acc, state.held)
    _check_buffers(x, times, cells, state.conv, state.ssm, None, weights, None, full)
    out, *new = _run(x, times, cells, state.conv, state.ssm, weights, full, hold)
    return out.to(x.dtype), CellState(*new)


def mamba_step_cpu(
    x: torch.Tensor, state: MambaState, weights: KernelWeights
) -> tuple[torch.Tensor, MambaState]:
    """One Mamba layer's step (``weights`` of one module) in one kernel call: ``x (B, D)`` and
    the state -> ``y (B, D)`` and the new state (``step_kernel_usable`` must hold)."""
    conv, ssm = state.conv, state.ssm
    _, d_inner, d_state, d_conv, _ = weights.tensors.sizes
    batch = x.shape[0] if x.dim() >= 1 else 0
    if weights.stacked or weights.rates is not None:
        raise ValueError(
            "weights: expected one Mamba layer's kernel weights, got stacked ones or cell projections"
        )
    check_step_buffer("x_t", x, (batch, weights.tensors.sizes[0]))
    check_step_buffer("state.conv", conv, (batch, d_inner, d_conv - 1))
    check_step_buffer("state.ssm", ssm, (batch, d_inner, d_state))
    out, _, _, conv_new, ssm_new = _run(x, None, None, conv[None], ssm[None], weights, True, True)
    return out[0].to(x.dtype), MambaState(conv_new[0].to(conv.dtype), ssm_new[0])


def _layer_step_cpu(
    x: torch.Tensor,
    t: torch.Tensor,
    state: CellState,
    scores: tuple[torch.Tensor, torch.Tensor] | None,
    weights: KernelWeights,
    layer: LayerWeights,
    full: bool,
    hold: bool,
) -> tuple[torch.Tensor, torch.Tensor, CellState, tuple[torch.Tensor, torch.Tensor] | None]:
    """The whole layer in one kernel call: ``x (B, D)``, the running times ``t (R, B)`` float64,
    the cell state, for bounds ``"mean"`` the score state ``(log_sum, count)`` ``(S, B)`` float64
    (else None) -> ``y (B, D)`` (NaN on poisoned rows), the new times (NaN on poisoned rows),
    cell state and score state."""
    times, cells = (t, None), (state.acc, state.held)
    _check_buffers(x, times, cells, state.conv, state.ssm, scores, weights, layer, full)
    out = _run(x, times, cells, state.conv, state.ssm, weights, full, hold, layer, scores)
    _, acc, held, conv, ssm, t_new, y, *new_scores = out
    return y.to(x.dtype), t_new, CellState(acc, held, conv, ssm), (tuple(new_scores) if new_scores else None)


def serpent_step_cpu(
    x_t: torch.Tensor, state: SeRpEntState, w: SeRpEntStepWeights
) -> tuple[torch.Tensor, SeRpEntState]:
    """A causal SeRpEnt layer's step with the kernel (``w.kernel``; ``step_kernel_usable`` must
    hold): the whole layer in one call with ``w.layer``, else the intervals in torch and every
    branch's cell and backbone step in one call."""
    cells = CellState(state.aggregator.acc, state.held, state.backbone.conv, state.backbone.ssm)
    full = w.full_step is not None
    if w.layer is None:
        deltas, scores = step_deltas(x_t, state.scores, w)
        t_new, bad = advance_times(x_t, state.t, deltas)
        out, cells = cell_step_cpu(x_t, state.t, t_new, cells, w.kernel, full, w.hold)
        return merge_branches(out, x_t, bad, w), from_cells(t_new, cells, scores)
    slots = state.scores
    packed = None
    if w.mean_rates is not None:
        packed = (torch.stack([st.log_sum for st in slots]), torch.stack([st.n for st in slots]))
    y, t_new, cells, new_scores = _layer_step_cpu(
        x_t, state.t, cells, packed, w.kernel, w.layer, full, w.hold
    )
    if new_scores is not None:
        slots = tuple(
            dataclasses.replace(st, log_sum=new_scores[0][j], n=new_scores[1][j])
            for j, st in enumerate(slots)
        )
    return y, from_cells(t_new, cells, slots)
