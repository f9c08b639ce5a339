"""The ``"naive"`` backend and reference of a causal SeRpEnt layer's step: branch by branch.

Any configuration steps here (any number of grid points per element, any backbone and
aggregator): per rate branch the intervals move the running time, the aggregator closes the cells
this element completes, the backbone steps once per closed cell, and the branch outputs its held
(``"hold"``) or new (``"scatter"``) output; the full branch steps on the element itself; the merge
and the gate map the branch outputs to ``y_t``. A non-finite input (or interval, or time)
poisons its row: its running times become NaN, no grid point is crossed any more, and its outputs
are NaN from there on. The ``"torch"`` and ``"cpu"`` backends compute the same (tests pin them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from serpent_ssm.ops import resample as rs
from serpent_ssm.ops.serpent_step.weights import SeRpEntStepWeights
from serpent_ssm.ops.states import ScoreState, SeRpEntState, map_state

__all__ = ["advance_times", "merge_branches", "serpent_step_naive", "step_deltas"]


def step_deltas(
    x_t: torch.Tensor, scores: tuple[ScoreState, ...], w: SeRpEntStepWeights
) -> tuple[torch.Tensor, tuple[ScoreState, ...]]:
    """``Δ_t (R, B)`` of every branch for one element ``x_t (B, D)``, and the new score states."""
    values, new_states = [], []
    for score, st in zip(w.scores, scores, strict=True):
        s, new = score(x_t, st)
        values.append(s)
        new_states.append(new)
    if w.mean_rates is None:
        return w.intervals(values[0] if len(values) == 1 else torch.stack(values)), tuple(new_states)
    deltas = []
    for j, (s, st) in enumerate(zip(values, scores, strict=True)):
        n = st.n + 1.0
        rate = w.mean_rates if len(values) == 1 else w.mean_rates[j]  # one slot serves every branch
        delta, log_sum = rs.mean_normalised_step(s, st.log_sum, n, rate)
        new_states[j] = dataclasses.replace(new_states[j], log_sum=log_sum, n=n)
        deltas.append(delta)
    return (deltas[0] if len(deltas) == 1 else torch.stack(deltas)), tuple(new_states)


def advance_times(
    x_t: torch.Tensor, t: torch.Tensor, deltas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running times after ``x_t (B, D)``: ``t (R, B)`` float64 plus ``Δ (R, B)``, NaN on rows
    that are poisoned (a non-finite input or time), and which rows those are, ``(B,)`` bool."""
    t_new = t + deltas.double()
    bad = ~(torch.isfinite(x_t).all(-1) & torch.isfinite(t_new).all(0))
    return torch.where(bad, math.nan, t_new), bad


def merge_branches(
    out: torch.Tensor, x_t: torch.Tensor, bad: torch.Tensor, w: SeRpEntStepWeights
) -> torch.Tensor:
    """The branch outputs ``(G, B, D)`` -> ``y_t (B, D)``: merge, gate, NaN on poisoned rows."""
    y = w.merge(out.transpose(0, 1).flatten(1))
    if w.gate is not None:
        y = y * (2.0 * torch.sigmoid(w.gate(x_t)))
    return torch.where(bad.unsqueeze(-1), math.nan, y)


def _where_rows(cond: torch.Tensor, new: Any, old: Any) -> Any:
    """Per-row select ``cond (B,)`` between two recurrent states of the same structure."""
    return map_state(lambda n, o: torch.where(cond.view(-1, *([1] * (n.dim() - 1))), n, o), new, old)


def _branch_step(
    w: SeRpEntStepWeights, i: int, x_t: torch.Tensor, branch: SeRpEntState, t_new: torch.Tensor,
    crossings: torch.Tensor, most: int,
) -> tuple[torch.Tensor, SeRpEntState]:  # fmt: skip
    """Rate branch ``i``'s output ``(B, D)`` for ``x_t`` and its new part of the state; ``most`` is
    the largest number of grid points a row crosses."""
    inputs, aggregator = w.grid_inputs[i](x_t, branch.t, t_new, branch.aggregator, most)
    held, backbone = branch.held, branch.backbone
    scattered = None if w.hold else torch.zeros_like(held)
    for j, xk in enumerate(inputs, start=1):
        active = crossings >= j
        yk, stepped = w.branch_steps[i](xk, backbone)
        backbone = _where_rows(active, stepped, backbone)
        held = torch.where(active.unsqueeze(1), yk, held)
        if scattered is not None:
            scattered = scattered + yk * active.unsqueeze(1).to(yk.dtype)
    return (held if w.hold else scattered), SeRpEntState(t_new, held, aggregator, backbone, ())


def serpent_step_naive(
    x_t: torch.Tensor, state: SeRpEntState, w: SeRpEntStepWeights
) -> tuple[torch.Tensor, SeRpEntState]:
    """One element ``x_t (B, D)`` -> ``y_t (B, D)`` and the new state, branch by branch."""
    deltas, scores = step_deltas(x_t, state.scores, w)
    t_new, bad = advance_times(x_t, state.t, deltas)
    crossings = torch.where(bad, 0.0, torch.floor(t_new) - torch.floor(state.t)).long()  # (R, B)
    rates = len(w.branch_steps)
    most = crossings.max(1).values.tolist() if x_t.shape[0] else [0] * rates  # one host sync
    outs, branches = [], []
    for i in range(rates):
        y, new = _branch_step(w, i, x_t, state.branch(i), t_new[i], crossings[i], most[i])
        outs.append(y)
        branches.append(new)
    backbones = [br.backbone for br in branches]
    if w.full_step is not None:
        y_full, full = w.full_step(x_t, map_state(lambda leaf: leaf[rates], state.backbone))
        outs.append(y_full)
        backbones.append(full)
    stacked = map_state(
        lambda *leaves: torch.stack(leaves), *(dataclasses.replace(br, backbone=None) for br in branches)
    )
    new_state = dataclasses.replace(
        stacked, backbone=map_state(lambda *leaves: torch.stack(leaves), *backbones), scores=scores
    )
    return merge_branches(torch.stack(outs), x_t, bad, w), new_state
