"""The recurrent states of the mixers, as typed values, and the one function that walks them.

A state is what a causal mixer carries from one element to the next (``allocate_state``,
``step``, ``forward(state=..., return_state=True)``). Each is a frozen dataclass whose fields are
tensors, ``None`` or other states; ``map_state`` applies a function leaf by leaf, so stacking,
indexing, selecting rows or moving a state to a device is one call and no mixer needs helpers of
its own. Shapes below are one mixer's (``B`` rows); stacked states (one per SeRpEnt branch) carry
a leading dim on every leaf.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "CellPoolState",
    "MambaState",
    "ScoreState",
    "SeRpEntState",
    "WindowState",
    "map_state",
    "stack_states",
]


@dataclasses.dataclass(frozen=True)
class MambaState:
    """A Mamba layer's state: the last ``d_conv − 1`` convolution inputs ``conv (B, E, K − 1)``
    (the module's dtype) and the SSM state ``ssm (B, E, N)`` float32."""

    conv: torch.Tensor
    ssm: torch.Tensor


@dataclasses.dataclass(frozen=True)
class CellPoolState:
    """The cell aggregator's state: the open cell's pooled input so far, ``acc (B, D)``."""

    acc: torch.Tensor


@dataclasses.dataclass(frozen=True)
class WindowState:
    """The window aggregators' state: how many elements the row has seen ``seen (B,)`` int64, the
    last ``K`` inputs ``x (B, K, D)`` and their running times ``times (B, K)`` float64."""

    seen: torch.Tensor
    x: torch.Tensor
    times: torch.Tensor


@dataclasses.dataclass(frozen=True)
class ScoreState:
    """What one score slot of a SeRpEnt mixer carries: with ``interval_source="backbone"`` the
    convolution state of the backbone whose selectivity scores, ``conv (B, E, K − 1)``; with
    ``interval_bounds="mean"`` ``log Σ e^s`` so far, ``log_sum (B,)``, and the count ``n (B,)``,
    both float64. Absent parts are None."""

    conv: torch.Tensor | None = None
    log_sum: torch.Tensor | None = None
    n: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class SeRpEntState:
    """A causal SeRpEnt mixer's state, its ``R`` rate branches stacked on dim 0: the running times
    ``t (R, B)`` float64, the held outputs ``held (R, B, D)``, the aggregators' states (leaves
    ``(R, B, ...)``), the backbones' states (leaves ``(G, B, ...)``, ``G = R + 1`` with the full
    branch, whose state is last) and one ``ScoreState`` per score slot (rows on dim 0)."""

    t: torch.Tensor
    held: torch.Tensor
    aggregator: Any
    backbone: Any
    scores: tuple[ScoreState, ...]

    def branch(self, i: int) -> SeRpEntState:
        """Rate branch ``i``'s part (views; ``scores`` empty): ``t (B,)``, ``held (B, D)``, its
        aggregator's and backbone's states without the leading dim."""
        parts = SeRpEntState(self.t, self.held, self.aggregator, self.backbone, ())
        return map_state(lambda leaf: leaf[i], parts)

    def select(self, index: torch.Tensor) -> SeRpEntState:
        """Rows ``index (B',)`` int64 (beam search): dim 1 of the branch parts, dim 0 of the scores."""
        branches = SeRpEntState(self.t, self.held, self.aggregator, self.backbone, ())
        picked = map_state(lambda leaf: leaf.index_select(1, index.to(leaf.device)), branches)
        scores = map_state(lambda leaf: leaf.index_select(0, index.to(leaf.device)), self.scores)
        return dataclasses.replace(picked, scores=scores)


def map_state(fn: Callable[..., torch.Tensor], *states: Any) -> Any:
    """``fn`` applied leaf by leaf to recurrent states of the same structure (tensors, the
    dataclasses above, dicts, lists, tuples; ``None`` stays ``None``); returns a state of that
    structure."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return fn(*states)
    if first is None:
        if any(st is not None for st in states):
            raise ValueError("state: expected states of the same structure, got None beside a value")
        return None
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        if any(type(st) is not type(first) for st in states):
            raise ValueError(
                f"state: expected states of the same structure, got {type(first).__name__} beside "
                f"{next(type(st).__name__ for st in states if type(st) is not type(first))}"
            )
        fields = {
            f.name: map_state(fn, *(getattr(st, f.name) for st in states)) for f in dataclasses.fields(first)
        }
        return type(first)(**fields)
    if isinstance(first, dict):
        return {k: map_state(fn, *(st[k] for st in states)) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(map_state(fn, *parts) for parts in zip(*states, strict=True))
    raise ValueError(
        f"state: expected tensors, state dataclasses, dicts or tuples, got {type(first).__name__}"
    )


def stack_states(states: list[Any]) -> Any:
    """States of the same structure -> one with a leading dim, ``len(states)``, on every leaf."""
    return map_state(lambda *leaves: torch.stack(leaves), *states)
