"""What the CPU step kernel's entry points check before a pointer reaches C++: every weight a
contiguous float32 CPU tensor of the shape its sizes give (once, when the weights are built), and
at every step the input and the state on the CPU with the shapes the weights imply (the kernel
reads sizes, not shapes: a wrong shape would read or write out of bounds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from serpent_ssm.ops.serpent_step.weights import KernelWeights, LayerWeights

__all__ = ["check_kernel_weights", "check_layer_weights", "check_step_buffer", "check_weight"]


def _describe(t: object) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    layout = "" if t.is_contiguous() else ", not contiguous"
    return f"{t.dtype} on {t.device} of shape {tuple(t.shape)}{layout}"


def check_weight(name: str, t: object, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> None:
    """``t`` is a contiguous ``dtype`` CPU tensor of ``shape``."""
    ok = (
        isinstance(t, torch.Tensor)
        and t.device.type == "cpu"
        and t.dtype == dtype
        and tuple(t.shape) == tuple(shape)
        and t.is_contiguous()
    )
    if not ok:
        raise ValueError(
            f"{name}: expected a contiguous {dtype} CPU tensor of shape {tuple(shape)}, got {_describe(t)}"
        )


def check_step_buffer(name: str, t: object, shape: tuple[int, ...]) -> None:
    """``t`` is a CPU tensor of ``shape`` (any dtype and layout: the kernel's caller converts)."""
    if not isinstance(t, torch.Tensor) or not t.is_cpu or t.shape != shape:
        raise ValueError(f"{name}: expected a CPU tensor of shape {shape}, got {_describe(t)}")


def check_kernel_weights(w: KernelWeights) -> None:
    """Every tensor of ``w`` against ``w.tensors.sizes`` (with a leading ``G`` when stacked)."""
    sizes = w.tensors.sizes
    if len(sizes) != 5 or not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise ValueError(f"weights.tensors.sizes: expected five positive ints (D, E, N, K, r), got {sizes!r}")
    d, e, n, k, r = sizes
    lead: tuple[int, ...] = ()
    if w.stacked:
        first = w.tensors.w_in
        lead = (first.shape[0],) if isinstance(first, torch.Tensor) and first.dim() == 3 else (-1,)
    shapes = {
        "w_in": (2 * e, d), "b_in": (2 * e,), "w_conv": (e, k), "b_conv": (e,), "w_x": (r + 2 * n, e),
        "w_dt": (e, r), "b_dt": (e,), "a": (e, n), "d_skip": (e,), "w_out": (d, e), "b_out": (d,),
    }  # fmt: skip
    for name, shape in shapes.items():
        t = getattr(w.tensors, name)
        if t is None and name in ("b_in", "b_conv", "b_out"):
            continue
        check_weight(f"weights.tensors.{name}", t, lead + shape)
    if (w.w_cell is None) != (w.b_cell is None):
        raise ValueError(
            "weights.w_cell: expected w_cell and b_cell both given or both None, got one of them"
        )
    if w.w_cell is not None:
        rates = w.w_cell.shape[0] if isinstance(w.w_cell, torch.Tensor) and w.w_cell.dim() == 3 else -1
        check_weight("weights.w_cell", w.w_cell, (rates, d, d))
        check_weight("weights.b_cell", w.b_cell, (rates, d))


def check_layer_weights(layer: LayerWeights, d: int, rates: int, groups: int) -> None:
    """The rest of a SeRpEnt layer for the kernel, ``d`` wide, with ``rates`` rate branches and
    ``groups`` branches in the merge."""
    slots = layer.w_score.shape[0] if isinstance(layer.w_score, torch.Tensor) else -1
    if slots not in (1, rates):
        raise ValueError(
            f"weights.layer.w_score: expected 1 or {rates} score rows, got {_describe(layer.w_score)}"
        )
    check_weight("weights.layer.w_score", layer.w_score, (slots, d))
    check_weight("weights.layer.b_score", layer.b_score, (slots,))
    if layer.rates is not None:
        check_weight("weights.layer.rates", layer.rates, (rates,), torch.float64)
    else:
        check_weight("weights.layer.offset", layer.offset, (rates,))
        check_weight("weights.layer.scale", layer.scale, (rates,))
    check_weight("weights.layer.w_mix", layer.w_mix, (groups, d) if layer.mix_gates else (d, groups * d))
    check_weight("weights.layer.b_mix", layer.b_mix, (d,))
    if (layer.w_gate is None) != (layer.b_gate is None):
        raise ValueError("weights.layer.w_gate: expected w_gate and b_gate both given or both None, got one")
    if layer.w_gate is not None:
        check_weight("weights.layer.w_gate", layer.w_gate, (d, d))
        check_weight("weights.layer.b_gate", layer.b_gate, (d,))
