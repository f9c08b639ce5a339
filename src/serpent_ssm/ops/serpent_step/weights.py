"""What a recurrent step reads: the weights of one Mamba layer (``MambaStepWeights``, and the CPU
kernel's packed copy ``KernelWeights``) and of a whole causal SeRpEnt layer
(``SeRpEntStepWeights``).

The modules build these (``Mamba.step_weights()``, ``SeRpEnt.step_weights()``); the step ops read
nothing else. Projections are callables (a module's own layers, so an adapter or a hook wrapping
them applies, or ``StackedLinear``s); everything else is a tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from serpent_ssm.ops.serpent_step.checks import check_kernel_weights, check_layer_weights

__all__ = [
    "KernelWeights",
    "LayerWeights",
    "MambaStepWeights",
    "MambaTensors",
    "SeRpEntStepWeights",
    "StackedLinear",
    "kernel_weights",
    "stack_step_weights",
]

Linear = Callable[[torch.Tensor], torch.Tensor]


class StackedLinear:
    """``R`` linear maps applied at once: ``x (R, B, in) -> (R, B, out)`` with ``weight
    (R, in, out)`` and ``bias (R, 1, out)`` or None."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.weight) if self.bias is None else torch.baddbmm(self.bias, x, self.weight)


class MambaTensors(NamedTuple):
    """One Mamba layer's weights as plain tensors, in PyTorch's layouts (``E = d_inner``, ``N =
    d_state``, ``K = d_conv``, ``r = dt_rank``): ``w_in (2E, D)``, ``b_in (2E,)``, ``w_conv (E, K)``,
    ``b_conv (E,)``, ``w_x (r + 2N, E)``, ``w_dt (E, r)``, ``b_dt (E,)``, ``a (E, N)``
    (``−exp(A_log)``), ``d_skip (E,)``, ``w_out (D, E)``, ``b_out (D,)`` (biases may be None) and
    ``sizes = (D, E, N, K, r)``."""

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
    sizes: tuple[int, int, int, int, int]


@dataclasses.dataclass(frozen=True)
class KernelWeights:
    """What the CPU step kernel reads: ``tensors``, a ``MambaTensors`` float32 and contiguous,
    with a leading dim ``G`` on each tensor when ``stacked`` (one set per backbone; else one set
    serves every backbone), and the rate branches' cell projections ``w_cell (R, D, D)``,
    ``b_cell (R, D)`` or None. Checked when made (``checks.check_kernel_weights``): the kernel
    reads sizes, not shapes."""

    tensors: MambaTensors
    w_cell: torch.Tensor | None
    b_cell: torch.Tensor | None
    stacked: bool

    def __post_init__(self) -> None:
        check_kernel_weights(self)

    @property
    def groups(self) -> int:
        """How many backbones the weights hold: ``G`` when stacked, else 1."""
        return self.tensors.w_in.shape[0] if self.stacked else 1

    @property
    def rates(self) -> int | None:
        """How many cell projections: ``R``, or None without them."""
        return None if self.w_cell is None else self.w_cell.shape[0]


def _packed(values: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    if values[0] is None:
        return None
    t = torch.stack(list(values)) if len(values) > 1 else values[0]
    return t.detach().float().contiguous()


def kernel_weights(
    layers: Sequence[MambaTensors], cells: tuple[torch.Tensor, torch.Tensor] | None = None
) -> KernelWeights:
    """The kernel's weights of one Mamba layer (shared by every backbone) or of ``G`` layers
    (stacked), and the cell projections' weights ``(R, D, D)`` and biases ``(R, D)`` or None.
    Detached float32 copies or views: build them without gradients."""
    fields = {name: _packed([getattr(t, name) for t in layers]) for name in MambaTensors._fields[:-1]}
    w_cell = b_cell = None
    if cells is not None:
        w_cell, b_cell = (c.detach().float().contiguous() for c in cells)
    packed = MambaTensors(**fields, sizes=layers[0].sizes)
    return KernelWeights(packed, w_cell, b_cell, stacked=len(layers) > 1)


class LayerWeights(NamedTuple):
    """What the CPU kernel's whole SeRpEnt step reads besides the backbones and cell projections,
    float32 and contiguous unless noted: the score layers ``w_score (S, D)``, ``b_score (S,)``
    (``S`` = 1 shared or ``R``); the intervals ``Δ = offset + scale·σ(s)`` (``offset``, ``scale``
    ``(R,)``; bounds ``"ours"``, ``"paper"``, ``"fixed"``) or, for ``"mean"``, the rates ``(R,)``
    float64; the output map ``w_mix`` (dense ``(D, G·D)``, or ``gates`` ``(G, D)``) and ``b_mix
    (D,)``; the gate ``w_gate (D, D)``, ``b_gate (D,)`` or None."""

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


class MambaStepWeights(NamedTuple):
    """What one Mamba step reads, one module's (shapes on the left) or a stack of ``R`` modules'
    (``stack_step_weights``, on the right); ``E = d_inner``, ``N = d_state``, ``K = d_conv``.

    The projections ``in_proj`` (``D -> 2E``), ``x_proj`` (``E -> dt_rank + 2N``), ``dt_proj``
    (``dt_rank -> E``) and ``out_proj`` (``E -> D``) are callables. conv_w ``(E, K)`` |
    ``(R, 1, E, K)``, conv_b ``(E,)`` | ``(R, 1, E)`` or None, a ``= −exp(A_log)`` float
    ``(E, N)`` | ``(R, 1, E, N)``, d float ``(E,)`` | ``(R, 1, E)``. ``kernel``: the same weights
    for the CPU kernel (one module's, built without gradients), or None where it does not apply.
    """

    in_proj: Linear
    conv_w: torch.Tensor
    conv_b: torch.Tensor | None
    x_proj: Linear
    dt_proj: Linear
    a: torch.Tensor
    d: torch.Tensor
    out_proj: Linear
    dt_rank: int
    d_state: int
    kernel: KernelWeights | None = None


def stack_step_weights(tensors: Sequence[MambaTensors]) -> MambaStepWeights:
    """The step weights of ``R`` Mamba layers of the same shapes, from their plain tensors
    (``MambaTensors``, gradients flowing), in the stacked layout: ``StackedLinear`` projections
    and ``(R, 1, ...)`` tensors."""
    if len({(tuple(t.sizes), *((v is None) for v in t[:-1])) for t in tensors}) != 1:
        raise ValueError("weights: expected modules of the same shapes and biases, got different ones")
    _, _, n, _, dt_rank = tensors[0].sizes

    def rows(name: str, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        values = [getattr(t, name) for t in tensors]
        if values[0] is None:
            return None
        return torch.stack([v if dtype is None else v.to(dtype) for v in values]).unsqueeze(1)

    def linear(weight: str, bias: str | None) -> StackedLinear:
        w = torch.stack([getattr(t, weight).mT for t in tensors])
        return StackedLinear(w, None if bias is None else rows(bias))

    return MambaStepWeights(
        in_proj=linear("w_in", "b_in"),
        conv_w=rows("w_conv"),
        conv_b=rows("b_conv"),
        x_proj=linear("w_x", None),
        dt_proj=linear("w_dt", "b_dt"),
        a=rows("a"),
        d=rows("d_skip", torch.float32),
        out_proj=linear("w_out", "b_out"),
        dt_rank=dt_rank,
        d_state=n,
    )


@dataclasses.dataclass(frozen=True)
class SeRpEntStepWeights:
    """What one step of a causal SeRpEnt mixer reads (``SeRpEnt.step_weights()``), ``R`` rate
    branches, ``S`` score slots, ``G = R + F`` backbones (``F = 1`` with the full branch).

    Every step (the ``"naive"`` backend reads only these):
      ``scores``: per slot ``(x_t (B, D), ScoreState) -> (s (B,), ScoreState)`` (the score and
      the slot's new convolution state; ``log_sum``/``n`` are the op's);
      ``intervals``: scores ``(B,)`` (one slot) or ``(R, B)`` -> ``Δ (R, B)`` (bounds ``"ours"``,
      ``"paper"``, ``"fixed"``); ``mean_rates``: ``(R, 1)`` float64 for bounds ``"mean"``, else None;
      ``grid_inputs``: per branch ``(x_t, t_old, t_new, aggregator state, n) -> ([x_k] * n, state)``;
      ``branch_steps``: per branch the backbone's ``step(x_k, state) -> (y_k, state)``;
      ``full_step``: the full branch's backbone ``step`` or None; ``hold``: the restore
      (``"hold"``: True, ``"scatter"``: False); ``merge``: ``(B, G·D) -> (B, D)``; ``gate``:
      ``x_t -> (B, D)`` pre-activation of ``y ⊙ 2σ(·)``, or None.
    The ``"torch"`` backend (every branch crosses at most one grid point per element, cell
    aggregation, Mamba backbones): ``stacked``, the backbones' ``MambaStepWeights`` stacked (or one
    module's, shared), and ``cell_proj``, the cell projections (``(R, D, D)`` transposed, ``(R, 1,
    D)``) or None. The ``"cpu"`` backend: ``kernel`` and, for the whole layer in one call,
    ``layer`` (None where it does not apply: scores from the backbone's selectivity).
    """

    scores: tuple[Callable[..., Any], ...]
    intervals: Callable[[torch.Tensor], torch.Tensor]
    mean_rates: torch.Tensor | None
    grid_inputs: tuple[Callable[..., Any], ...]
    branch_steps: tuple[Callable[..., Any], ...]
    full_step: Callable[..., Any] | None
    hold: bool
    merge: Linear
    gate: Linear | None
    stacked: MambaStepWeights | None = None
    cell_proj: tuple[torch.Tensor, torch.Tensor] | None = None
    kernel: KernelWeights | None = None
    layer: LayerWeights | None = None

    def __post_init__(self) -> None:
        if self.kernel is None:
            if self.layer is not None:
                raise ValueError("weights.layer: expected None without weights.kernel, got LayerWeights")
            return
        rates = len(self.grid_inputs)
        groups = rates + int(self.full_step is not None)
        if self.kernel.groups not in (1, groups) or self.kernel.rates not in (None, rates):
            raise ValueError(
                f"weights.kernel: expected the weights of 1 or {groups} backbones and {rates} cell "
                f"projections or none, got {self.kernel.groups} and {self.kernel.rates}"
            )
        if self.layer is not None:
            check_layer_weights(self.layer, self.kernel.tensors.sizes[0], rates, groups)
