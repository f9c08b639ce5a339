"""The SeRpEnt mixer: selective resampling over any backbone (docs/design.md, "The SeRpEnt mixer").

Each branch ``r`` with compression rate ``κ_r``:

1. intervals ``Δ_l = κ_r · 2σ(s_l)`` from a score ``s_l = w·x_l + b`` (``interval_bounds="ours"``;
   ``"paper"``: ``κ_r + (1 − κ_r)σ(·)`` in ``[κ_r, 1]``; ``"fixed"``: ``Δ ≡ κ_r``; ``"mean"``:
   ``min(2κ_r, κ_r·e^{s_l} / mean e^{s})``), 0 on padding; ``interval_source="backbone"`` takes
   the score from the backbone's own selectivity (log of Mamba's mean ``Δ`` at ``l``);
2. times ``t = cumsum(Δ)`` (non-causal: rescaled so that each row has exactly ``ceil(κ_r n)``
   grid points; causal: ``floor(t_n)`` of them);
3. grid point ``k`` selects ``l_k = min{l : t_l >= k}``;
4. aggregation into the grid point (``modules.serpent_aggregate``): ``aggregate="cell"``
   (default) pools every element into the grid cells ``(k − 1, k]`` its interval overlaps,
   weighted by the overlap; ``"linear"`` (the paper's figure) and ``"kernel"`` aggregate a window
   of ``K`` elements around ``l_k`` (causal: ``l_k`` and its ``K − 1`` predecessors; non-causal:
   centred) with the Gaussian RBF features of the offsets ``k − t_j``;
5. the branch backbone runs on the compressed sequence (bidirectional by default when
   non-causal);
6. the output is restored to length ``L`` (``"hold"``: causal default; ``"interp"``: linear in
   time, non-causal default; ``"scatter"``);

and the branches merge: ``y = Σ_r g_r ⊙ ŷ^r + c`` (``mix="gates"``, the default: a weight per
branch and channel) or ``y = W_o · concat_r(ŷ^r)`` (``mix="dense"``), with the plain backbone on
the full sequence as one more branch when ``include_full_branch`` (the causal default; with
``init="backbone"``, also the causal default, the merge starts as that branch alone), optionally
gated per position (``gate=True``: ``y ⊙ 2σ(W_g x + b_g)``). By default every branch runs one
backbone's weights (``share_backbone``). The surrounding residual block adds the skip connection.

Options: ``SeRpEntOptions`` / ``SeRpEntConfig`` (``modules.serpent_config``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from serpent_ssm.modules._shared import CachedWeights, cached_weights, plain_linear
from serpent_ssm.modules.backbones import make_backbone
from serpent_ssm.modules.bidirectional import Bidirectional
from serpent_ssm.modules.mamba import Mamba
from serpent_ssm.modules.protocol import StateSupport, map_state, state_support
from serpent_ssm.modules.serpent_aggregate import Grid, make_aggregator
from serpent_ssm.modules.serpent_config import SeRpEntConfig, SeRpEntOptions
from serpent_ssm.ops import resample as rs
from serpent_ssm.ops.mamba_step import CellState, MambaStepWeights, cell_step, stack_step_weights
from serpent_ssm.ops.mamba_step_cpu import (
    KernelWeights,
    LayerWeights,
    cell_step_cpu,
    kernel_weights,
    serpent_step_cpu,
    step_kernel_usable,
)
from serpent_ssm.utils.sequence import from_first, zero_padding
from serpent_ssm.utils.validation import (
    check_float_tensor,
    check_mixer_input,
    check_module_dtype,
    check_shape,
)

__all__ = ["SeRpEnt", "SeRpEntConfig", "SeRpEntOptions"]


def _where_state(cond: torch.Tensor, new: Any, old: Any) -> Any:
    """Per-row select ``cond (B,)`` between two recurrent states of the same structure."""
    return map_state(lambda n, o: torch.where(cond.view(-1, *([1] * (n.dim() - 1))), n, o), new, old)


def _stack_states(states: list[Any]) -> Any:
    """States of the same structure -> one with a leading dim, ``len(states)``, on every leaf."""
    return map_state(lambda *leaves: torch.stack(leaves), *states)


def _index_state(state: Any, i: int) -> Any:
    """Entry ``i`` of a state stacked by ``_stack_states`` (views)."""
    return map_state(lambda leaf: leaf[i], state)


def _log_selectivity(selectivity: torch.Tensor) -> torch.Tensor:
    """The score of ``interval_source="backbone"``: ``log`` of the mean ``Δ`` (clamped above 0)."""
    return torch.log(selectivity.clamp(min=torch.finfo(selectivity.dtype).tiny))


class _FusedWeights(NamedTuple):
    """What a fused step reads: the stacked step weights and cell projections (the torch step),
    the CPU kernel's weights of the cell step, and of the rest of the layer (None where the kernel
    does not apply)."""

    weights: MambaStepWeights
    proj: tuple[torch.Tensor, torch.Tensor] | None
    kernel: KernelWeights | None
    layer: LayerWeights | None


def _cell_state(state: dict[str, Any]) -> CellState:
    """The part of a fused-step mixer's streaming state that ``ops.mamba_step.cell_step`` reads."""
    backbone = state["backbone"]
    return CellState(state["aggregator"]["acc"], state["held"], backbone["conv"], backbone["ssm"])


def _from_cell_state(t: torch.Tensor, cells: CellState) -> dict[str, Any]:
    """A streaming state (no scores) from the running times and ``cell_step``'s new state."""
    backbone = {"conv": cells.conv, "ssm": cells.ssm}
    return {"t": t, "held": cells.held, "aggregator": {"acc": cells.acc}, "backbone": backbone}


def _outputs(y: torch.Tensor, info: dict, state: Any, return_info: bool, return_state: bool) -> Any:
    """``forward``'s return value: ``y``, then ``info`` and ``state`` as asked."""
    extra = ((info,) if return_info else ()) + ((state,) if return_state else ())
    return (y, *extra) if extra else y


class BranchGates(nn.Module):
    """``mix="gates"``: ``(..., n·D)`` (the branch outputs, concatenated) -> ``(..., D)``,
    ``y = Σ_b weight[b] ⊙ ŷ_b + bias``; ``weight (n, D)`` starts at ``1/n`` (the mean of the
    branches) or, with ``full_only``, at 1 for the last branch (the full one) and 0 for the rest."""

    def __init__(self, n: int, d: int, full_only: bool = False) -> None:
        super().__init__()
        self.n, self.d = n, d
        weight = torch.full((n, d), 1.0 / n)
        if full_only:
            weight.zero_()
            weight[-1] = 1.0
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, branches: torch.Tensor) -> torch.Tensor:
        y = branches.unflatten(-1, (self.n, self.d))
        return (y * self.weight).sum(-2) + self.bias


class SeRpEnt(CachedWeights):
    """SeRpEnt mixer ``(B, L, d_model) -> (B, L, d_model)``; options as in ``SeRpEntConfig``.

    ``forward(x, mask=None, return_info=False)``. Rows that are all padding give zero output;
    padding may hold anything (NaN and Inf included) without changing a real output. A
    non-finite value at a real position gives NaN outputs from there on in causal mode (in
    ``forward`` and ``step``) and over its whole row in non-causal mode, and changes nothing
    else (see ``_poisoned``).
    In causal mode, ``allocate_state(batch)`` and ``step(x_t, state)`` stream one element at a
    time with constant memory: per branch the running time, the backbone's recurrent state, the
    held output, and the aggregator's state (the open cell's pooled input, or the last ``K``
    inputs and their times).
    """

    def __init__(
        self, d_model: int, backbone: str | Callable[[], nn.Module] = "mamba", **options: Any
    ) -> None:
        super().__init__()
        cfg = options.pop("config", None)
        if cfg is None:
            cfg = SeRpEntConfig(d_model=d_model, backbone=backbone, **options)
        elif not isinstance(cfg, SeRpEntConfig) or cfg.d_model != d_model or options:
            raise ValueError(
                f"config: expected a SeRpEntConfig with d_model={d_model} and no other options, "
                f"got {type(cfg).__name__} with extra options {sorted(options)}"
            )
        self.config = cfg
        d = cfg.d_model
        self.d_model = d
        n_scores = 0 if cfg.interval_source == "backbone" else self._score_slots()
        self.scores = nn.ModuleList(nn.Linear(d, 1) for _ in range(n_scores))
        for s in self.scores:
            nn.init.zeros_(s.bias)
        self.aggregators = nn.ModuleList(
            make_aggregator(
                d,
                cfg.window,
                cfg.n_bases,
                cfg.aggregate,
                cfg.causal,
                cfg.delta_max(r),
                # "backbone" differs from "identity" only in the merge: each aggregator passes its input
                "identity" if cfg.init == "backbone" else cfg.init,
                cfg.cell_proj,
            )
            for r in cfg.rates
        )
        if cfg.share_backbone:  # one module, registered once (as backbones.0): one set of weights
            shared = self._make_backbone()
            self.backbones = nn.ModuleList([shared])
            # the full branch runs the same module; registering it twice would put every weight
            # in the state dict twice (tied tensors that transformers' save_pretrained refuses)
            object.__setattr__(self, "full_backbone", shared if cfg.include_full_branch else None)
            if cfg.include_full_branch:
                self.register_load_state_dict_pre_hook(_drop_shared_full_branch_keys)
        else:
            self.backbones = nn.ModuleList(self._make_backbone() for _ in cfg.rates)
            self.full_backbone = self._make_backbone() if cfg.include_full_branch else None
        n_branches = len(cfg.rates) + int(cfg.include_full_branch)
        if cfg.mix == "gates":
            self.out_proj: nn.Module = BranchGates(n_branches, d, full_only=cfg.init == "backbone")
        else:
            self.out_proj = nn.Linear(n_branches * d, d)
        if cfg.init in ("identity", "backbone") and cfg.mix == "dense":
            with torch.no_grad():
                if cfg.init == "identity":  # the mean of the branches
                    self.out_proj.weight.copy_(torch.eye(d).repeat(1, n_branches) / n_branches)
                else:  # the full branch (the last) alone: the mixer starts as its backbone
                    self.out_proj.weight.zero_()
                    self.out_proj.weight[:, -d:] = torch.eye(d)
                self.out_proj.bias.zero_()
        self.gate_proj = nn.Linear(d, d) if cfg.gate else None
        if self.gate_proj is not None and cfg.init in ("identity", "backbone"):
            nn.init.zeros_(self.gate_proj.weight)
            nn.init.zeros_(self.gate_proj.bias)
        # step() runs every branch as one stacked backbone step when each crosses at most one
        # grid point per element, with plain Mamba backbones and cell aggregation
        self._fused_step = (
            cfg.causal
            and cfg.aggregate == "cell"
            and all(cfg.delta_max(r) <= 1.0 for r in cfg.rates)
            and all(type(m) is Mamba for m in (*self.backbones, self.full_backbone) if m is not None)
        )
        if cfg.interval_source == "backbone":
            for j in range(self._score_slots()):
                if not callable(getattr(self.branch_backbone(j), "intervals", None)):
                    raise ValueError(
                        "interval_source: expected a backbone with selective intervals (an "
                        f"'intervals' method, as Mamba has), got {type(self.branch_backbone(j)).__name__}"
                    )

    @classmethod
    def from_config(cls, config: SeRpEntConfig) -> SeRpEnt:
        """Build from a validated ``SeRpEntConfig``."""
        return cls(config.d_model, config=config)

    @property
    def state_support(self) -> StateSupport:
        """Causal SeRpEnt streams through ``step`` and carries its state through ``forward`` when
        its backbones do (Mamba, S4D)."""
        causal = self.config.causal
        chunks = causal and all(
            state_support(m).forward_state for m in (*self.backbones, self.full_backbone) if m is not None
        )
        return StateSupport(step=causal, forward_state=chunks)

    def _score_slots(self) -> int:
        """How many score sequences the branches read: 1 shared, or one per branch."""
        return 1 if self.config.share_intervals else len(self.config.rates)

    def branch_backbone(self, i: int) -> nn.Module:
        """The backbone of rate branch ``i`` (the shared one with ``share_backbone``)."""
        return self.backbones[0 if self.config.share_backbone else i]

    def _make_backbone(self) -> nn.Module:
        cfg = self.config
        if isinstance(cfg.backbone, str):
            return make_backbone(cfg.backbone, cfg.d_model, cfg.backbone_kwargs, cfg.bidirectional)

        def one() -> nn.Module:
            m = cfg.backbone()
            if not isinstance(m, nn.Module):
                raise ValueError(
                    f"backbone: expected the factory to return an nn.Module, got {type(m).__name__}"
                )
            return m

        return Bidirectional(one, cfg.d_model) if cfg.bidirectional else one()

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"d_model={c.d_model}, rates={c.rates}, window={c.window}, n_bases={c.n_bases}, "
            f"causal={c.causal}, aggregate={c.aggregate!r}, restore={c.restore!r}, "
            f"interval_bounds={c.interval_bounds!r}, interval_source={c.interval_source!r}, "
            f"full_branch={c.include_full_branch}, gate={c.gate}, share_backbone={c.share_backbone}, "
            f"mix={c.mix!r}, cell_proj={c.cell_proj}"
        )

    # ------------------------------------------------------------------ intervals
    def _scores(
        self, x: torch.Tensor, mask: torch.Tensor | None, states: list[dict] | None = None
    ) -> tuple[list[torch.Tensor], list[dict] | None]:
        """The score sequences ``s (B, L)`` for ``x (B, L, D)`` (0 at padding), one per score
        slot, and, for a causal chunk from the score ``states``, the states after it."""
        cfg = self.config
        scores, new_states = [], None if states is None else []
        for j in range(self._score_slots()):
            new = None if states is None else dict(states[j])
            if cfg.interval_source == "score":
                s = self.scores[j](x).squeeze(-1)
            else:
                bb = self.branch_backbone(j)
                if new is None:
                    selectivity = bb.intervals(x, mask)
                else:
                    selectivity, new["conv"] = bb.intervals(x, mask, conv=states[j]["conv"])
                real = (
                    mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                )
                s = _log_selectivity(torch.where(real, selectivity.mean(-1), 1.0))  # (B, L)
            if new is not None and cfg.interval_bounds == "mean":
                new["log_sum"], new["n"] = rs.mean_normalised_carry(
                    s, mask, states[j]["log_sum"], states[j]["n"]
                )
            scores.append(s)
            if new_states is not None:
                new_states.append(new)
        return scores, new_states

    def _intervals(self, s: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``Δ = offset + scale·σ(s)`` of the elementwise bounds (``"ours"``, ``"paper"``,
        ``"fixed"``) for scores ``s``, with a branch's (or every branch's) factors from
        ``_rate_factors``; the shapes broadcast."""
        bounds = self.config.interval_bounds
        if bounds == "fixed":
            return torch.zeros_like(s) + offset
        sig = torch.sigmoid(s)
        return scale * sig if bounds == "ours" else offset + scale * sig

    def _branch_intervals(
        self, x: torch.Tensor, mask: torch.Tensor | None, states: list[dict] | None = None
    ) -> tuple[list[torch.Tensor], list[dict] | None]:
        """Intervals ``Δ (B, L)`` of every branch for ``x (B, L, D)`` (one score pass when shared)
        and, for a causal chunk from the score ``states``, the states after it."""
        cfg = self.config
        scores, new_states = self._scores(x, mask, states)
        offset, scale = self._rate_factors(scores[0].dtype, x.device)
        out = []
        for i, rate in enumerate(cfg.rates):
            j = 0 if cfg.share_intervals else i
            if cfg.interval_bounds == "mean":
                carry = None if states is None else (states[j]["log_sum"], states[j]["n"])
                out.append(rs.mean_normalised_intervals(scores[j], rate, mask, cfg.causal, carry))
            else:
                out.append(self._intervals(scores[j], offset[i], scale[i]))
        return out, new_states

    def _gated(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y ⊙ 2σ(W_g x + b_g)`` with ``gate=True``, else ``y``; shapes ``(..., D)``."""
        return y if self.gate_proj is None else y * (2.0 * torch.sigmoid(self.gate_proj(x)))

    # ------------------------------------------------------------------ full sequence
    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_info: bool = False,
        state: dict[str, Any] | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[Any, ...]:
        """Mix ``x (B, L, d_model)`` with optional right-padding ``mask (B, L)``.

        Returns ``y (B, L, d_model)`` (0 at padding), then, with ``return_info``, a dict with
        ``"branches"``: per branch ``rate``, ``delta (B, L)``, ``t (B, L)`` (the running time),
        ``index (B, L')``, ``valid (B, L')``, ``counts (B,)`` (the grid points of this call), then,
        with ``return_state``, the state after each row's last real element.

        Causal mode carries the streaming state across calls (``state_support.forward_state``):
        ``state`` (from ``allocate_state``, ``step`` or an earlier ``forward``) continues a
        sequence, so a text can be processed in chunks of any sizes, with the same outputs and
        final state as one call over the whole text or ``step`` element by element.
        """
        check_mixer_input(x, mask, self.d_model, self)
        b, length, d = x.shape
        if state is not None or return_state:
            self._check_chunking()
            state = self.allocate_state(b, x.device, x.dtype) if state is None else state
            self._check_state(state, b)
        info: dict[str, Any] = {"branches": []}
        if length == 0 or b == 0:
            return _outputs(x.new_zeros(b, length, d), info, state, return_info, return_state)
        xm = zero_padding(x, mask)  # whatever the padding holds, zeros go in
        deltas, score_states = self._branch_intervals(xm, mask, None if state is None else state["scores"])
        poisoned = self._poisoned(xm, deltas, mask, state)
        if mask is not None or bool(poisoned.any()):  # poisoned positions are treated as padding
            mask = ~poisoned if mask is None else mask & ~poisoned
            xm = zero_padding(xm, mask)
        lengths = mask.sum(1) if mask is not None else torch.full((b,), length, device=x.device)
        outs, branches = [], []
        for i, delta in enumerate(deltas):
            st = None if state is None else self._branch_state(state, i)
            y_branch, branch_info, new = self._branch_forward(i, xm, delta, mask, lengths, st)
            outs.append(y_branch)
            branches.append(new)
            if return_info:
                info["branches"].append(branch_info)
        if self.full_backbone is not None and state is None:
            outs.append(self.full_backbone(xm, mask=mask))
        elif self.full_backbone is not None:
            full = _index_state(state["backbone"], len(deltas))
            y_full, full = self.full_backbone(xm, mask=mask, state=full, return_state=True)
            outs.append(y_full)
        y = zero_padding(self._gated(self.out_proj(torch.cat(outs, dim=-1)), xm), mask)
        y = torch.where(poisoned.unsqueeze(-1), math.nan, y)
        new_state = None
        if state is not None:
            new_state = self._stacked_state(branches, full if self.full_backbone is not None else None)
            new_state["t"] = torch.where(poisoned.any(1), math.nan, new_state["t"])  # stays poisoned
            new_state["scores"] = score_states
        return _outputs(y, info, new_state, return_info, return_state)

    def _branch_state(self, state: dict[str, Any], i: int) -> dict[str, Any]:
        """Branch ``i``'s part of a streaming state (views): ``t (B,)``, ``held (B, D)`` and its
        aggregator's and backbone's states."""
        return {
            "t": state["t"][i],
            "held": state["held"][i],
            "aggregator": _index_state(state["aggregator"], i),
            "backbone": _index_state(state["backbone"], i),
        }

    @staticmethod
    def _stacked_state(branches: list[dict[str, Any]], full: Any) -> dict[str, Any]:
        """The inverse of ``_branch_state``: the branches' states stacked (``t``, ``held``, the
        aggregators' and the backbones' states), the full branch's backbone state (or None) last."""
        state = _stack_states([{k: br[k] for k in ("t", "held", "aggregator")} for br in branches])
        backbones = [br["backbone"] for br in branches] + ([full] if full is not None else [])
        state["backbone"] = _stack_states(backbones)
        return state

    def _poisoned(
        self,
        xm: torch.Tensor,
        deltas: list[torch.Tensor],
        mask: torch.Tensor | None,
        state: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Real positions whose outputs are NaN, ``(B, L)`` bool, for ``xm (B, L, D)`` (0 at padding).

        A non-finite value at a real position (in ``xm`` or in a branch's intervals ``Δ (B, L)``,
        which a finite but huge ``x`` can overflow) has no place on the time axis. In causal mode
        it poisons its row from there on, in non-causal mode the whole row; the mixer treats
        poisoned positions as padding and returns NaN there, so nothing raises and no other row
        or (causal) earlier position changes.
        """
        bad = ~torch.isfinite(xm).all(-1)
        for delta in deltas:
            bad = bad | ~torch.isfinite(delta)
        if state is not None:  # a row poisoned in an earlier chunk
            bad = bad | ~torch.isfinite(state["t"]).all(0).unsqueeze(1)
        real = mask if mask is not None else torch.ones_like(bad)
        bad = bad & real
        return (from_first(bad) if self.config.causal else bad.any(1, keepdim=True)) & real

    def _branch_forward(
        self,
        i: int,
        xm: torch.Tensor,
        delta: torch.Tensor,
        mask: torch.Tensor | None,
        lengths: torch.Tensor,
        st: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any], dict[str, Any] | None]:
        """Branch ``i`` on the masked input ``xm (B, L, D)`` with intervals ``delta (B, L)``: its
        output restored to ``(B, L, D)``, its resampling (see ``forward``'s info) and, for a
        causal chunk from the branch state ``st``, the state after it.

        A chunk counts time from the state's (``t0``): its grid points are those after
        ``base = floor(t0)``, numbered from 1, so the resampling ops see local times
        ``t0 − base + Σ Δ`` and the first cell may hold inputs of earlier chunks."""
        cfg = self.config
        rate, length = cfg.rates[i], xm.shape[1]
        t, counts = rs.intervals_to_times(delta, mask, rate, cfg.causal)  # masks Δ itself
        if st is not None:  # a poisoned row (NaN time) is all padding here: any finite time will do
            t0 = torch.where(torch.isfinite(st["t"]), st["t"], 0.0)
            base = torch.floor(t0)
            start = t0 - base
            elapsed, t = t[:, -1], t + start.unsqueeze(1)
            counts = torch.floor(t[:, -1]).long()
        buffer = rs.compressed_length(rate, length, cfg.causal, cfg.delta_max(rate))
        counts = counts.clamp(max=buffer)
        if cfg.trim_buffer:  # slots past the batch's largest count are padding in every row
            buffer = max(1, min(buffer, int(counts.max())))
        index, valid = rs.select_grid(t.detach(), counts, lengths, buffer)
        grid = Grid(t, counts, index, valid, lengths, mask, buffer)
        if st is None:
            xc = self.aggregators[i].aggregate(xm, grid)
            yc = self.branch_backbone(i)(zero_padding(xc, valid), mask=valid)
        else:
            xc, agg_state = self.aggregators[i].aggregate_chunk(xm, grid, st["aggregator"], start, base)
            yc, b_state = self.branch_backbone(i)(
                zero_padding(xc, valid), mask=valid, state=st["backbone"], return_state=True
            )
        y = rs.restore(yc, t, counts, index, valid, mask, cfg.restore)
        info = {"rate": rate, "delta": zero_padding(delta, mask), "t": t, "index": index, "valid": valid}
        info["counts"] = counts
        if st is None:
            return y, info, None
        info["t"] = t + base.unsqueeze(1)
        if cfg.restore == "hold":  # before the chunk's first grid point: the state's held output
            y = zero_padding(
                torch.where((torch.floor(t) < 1).unsqueeze(-1), st["held"].unsqueeze(1), y), mask
            )
        last = yc.gather(1, (counts - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, yc.shape[2]))[:, 0]
        held = torch.where((counts >= 1).unsqueeze(1), last, st["held"])
        new = {"t": t0 + elapsed, "held": held, "backbone": b_state, "aggregator": agg_state}
        return y, info, new

    # ------------------------------------------------------------------ streaming
    def _check_streaming(self) -> None:
        if not self.config.causal:
            raise ValueError("step: expected a causal SeRpEnt (causal=True), got a non-causal one")

    def _check_chunking(self) -> None:
        if not self.state_support.forward_state:
            raise ValueError(
                "state: expected a causal SeRpEnt whose backbones carry a state through forward "
                f"(causal=True, backbone forward_state), got causal={self.config.causal}"
            )

    def _check_state(self, state: Any, rows: int | None = None) -> None:
        """``state`` is one of this mixer's streaming states (for ``rows`` rows, when given)."""
        t = state.get("t") if isinstance(state, dict) else None
        if (
            not isinstance(t, torch.Tensor)
            or t.dim() != 2
            or t.shape[0] != len(self.aggregators)
            or len(state.get("scores", ())) != self._score_slots()
            or not {"held", "aggregator", "backbone"} <= set(state)
        ):
            raise ValueError(
                "state: expected the dict returned by allocate_state(), step() or forward(), "
                "got something else"
            )
        if rows is not None and t.shape[1] != rows:
            raise ValueError(
                f"state: expected the state of {rows} rows (allocate_state({rows})), "
                f"got one of {t.shape[1]} rows"
            )

    def allocate_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, Any]:
        """Streaming state for ``batch`` rows (causal mode only), every branch's stacked on a
        leading dim: the running times ``t (R, B)`` float64, the held outputs ``held (R, B, D)``,
        the aggregators' states (leaves ``(R, B, ...)``), the backbones' states (leaves
        ``(R + F, B, ...)``: the rate branches', then the full branch's when there is one) and
        the score states ``scores`` (a list, one dict per score slot)."""
        self._check_streaming()
        device = device if device is not None else self.out_proj.weight.device
        dtype = dtype if dtype is not None else self.out_proj.weight.dtype
        rates = len(self.aggregators)
        backbones = [self.branch_backbone(i) for i in range(rates)]
        if self.full_backbone is not None:
            backbones.append(self.full_backbone)
        aggregators = [a.allocate_state(batch, device, dtype) for a in self.aggregators]
        backbone_states = [m.allocate_state(batch, device=device, dtype=dtype) for m in backbones]
        return {
            "t": torch.zeros(rates, batch, dtype=torch.float64, device=device),
            "held": torch.zeros(rates, batch, self.d_model, dtype=dtype, device=device),
            "aggregator": _stack_states(aggregators),
            "backbone": _stack_states(backbone_states),
            "scores": self._allocate_score_states(batch, device, dtype),
        }

    def select_state(self, state: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
        """Rows ``index (B',)`` of a streaming state (the branches' stacked states keep their rows
        on dim 1, the score states on dim 0); ``modules.protocol.select_rows`` calls it."""
        self._check_state(state)

        def rows(dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda t: t.index_select(dim, index.to(t.device))

        selected = {k: map_state(rows(1), state[k]) for k in ("t", "held", "aggregator", "backbone")}
        selected["scores"] = map_state(rows(0), state["scores"])
        return selected

    def _allocate_score_states(
        self, batch: int, device: torch.device | str, dtype: torch.dtype
    ) -> list[dict[str, torch.Tensor]]:
        """Per score slot what the intervals carry from element to element: the convolution state
        of the backbone whose selectivity scores (``"conv"``), and for ``interval_bounds="mean"``
        ``log Σ e^s`` so far (``"log_sum" (B,)`` float64) and the count (``"n" (B,)`` float64)."""
        cfg, slots = self.config, []
        for j in range(self._score_slots()):
            st: dict[str, torch.Tensor] = {}
            if cfg.interval_source == "backbone":
                st["conv"] = self.branch_backbone(j).allocate_state(batch, device=device, dtype=dtype)["conv"]
            if cfg.interval_bounds == "mean":
                st["log_sum"] = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)
                st["n"] = torch.zeros(batch, dtype=torch.float64, device=device)
            slots.append(st)
        return slots

    def _rate_factors(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``(2, R, 1)``: per branch the offset and scale of ``Δ = offset + scale·σ(s)`` (``"ours"``,
        ``"paper"``, ``"fixed"``: ``_intervals``) or the rates twice (``"mean"``); cached per
        dtype and device."""
        cfg, key = self.config, (dtype, device)
        cache = self.__dict__.setdefault("_rate_factor_cache", {})
        if key not in cache:
            bounds = cfg.interval_bounds
            pairs = [
                {"ours": (0.0, 2.0 * r), "paper": (r, 1.0 - r), "fixed": (r, 0.0), "mean": (r, r)}[bounds]
                for r in cfg.rates
            ]
            cache[key] = torch.tensor(pairs, dtype=dtype, device=device).T.unsqueeze(-1)
        return cache[key]

    def _step_deltas(
        self, x_t: torch.Tensor, states: list[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """``Δ_t (R, B)`` of every branch for one element ``x_t (B, D)``, and the new score states."""
        cfg, scores, new_states = self.config, [], []
        for j, st in enumerate(states):
            new = dict(st)
            if cfg.interval_source == "backbone":
                selectivity, new["conv"] = self.branch_backbone(j).intervals_step(x_t, st["conv"])
                s = _log_selectivity(selectivity.mean(-1))
            else:
                s = self.scores[j](x_t).squeeze(-1)
            scores.append(s)
            new_states.append(new)
        if cfg.interval_bounds != "mean":
            s = scores[0] if len(scores) == 1 else torch.stack(scores)  # (B,) or (R, B)
            return self._intervals(s, *self._rate_factors(s.dtype, x_t.device)), new_states
        rates = self._rate_factors(torch.float64, x_t.device)[0]  # (R, 1)
        deltas = []
        for j, (s, st, new) in enumerate(zip(scores, states, new_states, strict=True)):
            new["n"] = st["n"] + 1.0
            rate = rates if len(scores) == 1 else rates[j]  # one slot serves every branch
            delta, new["log_sum"] = rs.mean_normalised_step(s, st["log_sum"], new["n"], rate)
            deltas.append(delta)
        return (deltas[0] if len(deltas) == 1 else torch.stack(deltas)), new_states

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """One element ``x_t (B, d_model)`` -> ``y_t (B, d_model)``; returns the new state.

        Mixers whose every branch crosses at most one grid point per element (``Δ ≤ 1``), with
        Mamba backbones and cell aggregation (the causal defaults), run all branches' backbones
        as one stacked step (``ops.mamba_step``) with no host synchronisation; the others step
        branch by branch."""
        self._check_streaming()
        check_float_tensor("x_t", x_t, ndim=2)
        check_module_dtype("x_t", x_t, self)
        check_shape("x_t", x_t, (None, self.d_model))
        self._check_state(state, x_t.shape[0])
        fused = self._fused_weights() if self._fused_step else None
        if fused is not None and fused.layer is not None and step_kernel_usable(x_t):
            return self._step_kernel(x_t, state, fused)
        deltas, score_states = self._step_deltas(x_t, state["scores"])
        # a non-finite input (or interval, or time) poisons its row: its running times become NaN,
        # no grid point is crossed any more, and its outputs are NaN from here on
        t_new = state["t"] + deltas.double()  # (R, B)
        bad = ~(torch.isfinite(x_t).all(-1) & torch.isfinite(t_new).all(0))
        t_new = torch.where(bad, math.nan, t_new)
        if fused is not None:
            out, new_state = self._step_fused(x_t, state, t_new, fused.weights, fused.proj, fused.kernel)
        else:
            out, new_state = self._step_branches(x_t, state, t_new, bad)
        new_state["scores"] = score_states
        y = self._gated(self.out_proj(out.transpose(0, 1).flatten(1)), x_t)
        return torch.where(bad.unsqueeze(-1), math.nan, y), new_state

    def _fused_weights(self) -> _FusedWeights | None:
        """The step weights of the branch backbones (then the full one's), stacked, the stacked
        cell projections (``(R, D, D)`` transposed and ``(R, 1, D)``; None with
        ``cell_proj=False``) and, without gradients, the same for the fused CPU kernel
        (``ops.mamba_step_cpu``; else None). With ``share_backbone`` the shared module's own
        layers serve every branch (the kernel only when they are plain ``nn.Linear``s). None when
        a layer to be stacked is not a plain ``nn.Linear`` (an adapter such as a LoRA layer wraps
        it): ``step`` then goes branch by branch, through the layers.

        Without gradients they are cached (``_shared.cached_weights``): a changed parameter, a
        replaced layer or a hook rebuilds them, ``.to()`` drops them."""
        if torch.is_grad_enabled():
            return self._build_fused_weights()
        sources = [*self.backbones, *([self.full_backbone] if self.full_backbone is not None else [])]
        sources += [self.aggregators, self.scores, self.out_proj]
        if self.gate_proj is not None:
            sources.append(self.gate_proj)
        return cached_weights(self, "_fused_cache", sources, self._build_fused_weights)

    def _build_fused_weights(self) -> _FusedWeights | None:
        """What ``_fused_weights`` returns, built."""
        r = len(self.aggregators)
        backbones = [self.branch_backbone(i) for i in range(r)]
        backbones += [self.full_backbone] if self.full_backbone is not None else []
        owners = backbones[:1] if self.config.share_backbone else backbones
        cells = [a.proj for a in self.aggregators] if self.config.cell_proj else []
        own = [getattr(m, n) for m in owners for n in ("in_proj", "x_proj", "dt_proj", "out_proj")]
        if not all(map(plain_linear, cells + ([] if self.config.share_backbone else own))):
            return None
        if self.config.share_backbone:
            weights = backbones[0].step_weights()
        else:
            weights = stack_step_weights([m.step_weights() for m in backbones])
        proj = None
        if cells:
            proj = (
                torch.stack([p.weight.mT for p in cells]),
                torch.stack([p.bias for p in cells]).unsqueeze(1),
            )
        if torch.is_grad_enabled() or not all(map(plain_linear, own)):
            return _FusedWeights(weights, proj, None, None)
        return _FusedWeights(weights, proj, kernel_weights(owners, cells), self._layer_weights())

    def _layer_weights(self) -> LayerWeights | None:
        """The kernel's weights of the rest of the layer (``ops.mamba_step_cpu.LayerWeights``), or
        None where it does not apply (scores from the backbone's selectivity, or a score, output
        or gate layer that is wrapped or hooked)."""
        cfg = self.config
        out_proj = self.out_proj
        plain_mix = plain_linear(out_proj) or (
            type(out_proj) is BranchGates and not (out_proj._forward_hooks or out_proj._forward_pre_hooks)
        )
        gates = [] if self.gate_proj is None else [self.gate_proj]
        if (
            cfg.interval_source != "score"
            or not plain_mix
            or not all(map(plain_linear, [*self.scores, *gates]))
        ):
            return None

        def f32(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(torch.float32).contiguous()

        offset = scale = rates = None
        if cfg.interval_bounds == "mean":
            rates = torch.tensor(cfg.rates, dtype=torch.float64)
        else:
            offset, scale = (f32(f[:, 0]) for f in self._rate_factors(torch.float32, torch.device("cpu")))
        return LayerWeights(
            w_score=f32(torch.cat([net.weight for net in self.scores])),
            b_score=f32(torch.cat([net.bias for net in self.scores])),
            offset=offset,
            scale=scale,
            rates=rates,
            w_mix=f32(out_proj.weight),
            b_mix=f32(out_proj.bias),
            mix_gates=cfg.mix == "gates",
            w_gate=None if self.gate_proj is None else f32(self.gate_proj.weight),
            b_gate=None if self.gate_proj is None else f32(self.gate_proj.bias),
        )

    def _step_kernel(
        self, x_t: torch.Tensor, state: dict[str, Any], fused: _FusedWeights
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``step`` in one call of the fused CPU kernel (``ops.mamba_step_cpu.serpent_step_cpu``)."""
        cells = _cell_state(state)
        scores = None
        if self.config.interval_bounds == "mean":
            slots = state["scores"]
            scores = (torch.stack([st["log_sum"] for st in slots]), torch.stack([st["n"] for st in slots]))
        full, hold = self.full_backbone is not None, self.config.restore == "hold"
        y, t_new, cells, new_scores = serpent_step_cpu(
            x_t, state["t"], cells, scores, fused.kernel, fused.layer, full, hold
        )
        score_states = [dict(st) for st in state["scores"]]
        if new_scores is not None:
            for j, st in enumerate(score_states):
                st["log_sum"], st["n"] = new_scores[0][j], new_scores[1][j]
        return y, {**_from_cell_state(t_new, cells), "scores": score_states}

    def _step_fused(
        self,
        x_t: torch.Tensor,
        state: dict[str, Any],
        t_new: torch.Tensor,
        weights: MambaStepWeights,
        proj: tuple[torch.Tensor, torch.Tensor] | None,
        kernel: KernelWeights | None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Every branch at once (``ops.mamba_step.cell_step``, or its fused CPU kernel when it
        applies): the branch outputs ``(R + F, B, D)`` and the new state (no scores)."""
        cells = _cell_state(state)
        full, hold = self.full_backbone is not None, self.config.restore == "hold"
        if kernel is not None and step_kernel_usable(x_t):
            out, cells = cell_step_cpu(x_t, state["t"], t_new, cells, kernel, full, hold)
        else:
            out, cells = cell_step(x_t, state["t"], t_new, cells, weights, proj, full, hold)
        return out, _from_cell_state(t_new, cells)

    def _step_branches(
        self, x_t: torch.Tensor, state: dict[str, Any], t_new: torch.Tensor, bad: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Branch by branch (any number of grid points per element, any backbone and aggregator):
        the branch outputs ``(R + F, B, D)`` and the new state (no scores)."""
        crossings = torch.where(bad, 0.0, torch.floor(t_new) - torch.floor(state["t"])).long()  # (R, B)
        most = crossings.max(1).values.tolist() if x_t.shape[0] else [0] * len(self.aggregators)
        outs, branches = [], []
        for i in range(len(self.aggregators)):  # one host sync above for all branches
            y, new = self._branch_step(i, x_t, self._branch_state(state, i), t_new[i], crossings[i], most[i])
            outs.append(y)
            branches.append(new)
        full = None
        if self.full_backbone is not None:
            y_full, full = self.full_backbone.step(x_t, _index_state(state["backbone"], len(branches)))
            outs.append(y_full)
        return torch.stack(outs), self._stacked_state(branches, full)

    def _branch_step(
        self,
        i: int,
        x_t: torch.Tensor,
        st: dict[str, Any],
        t_new: torch.Tensor,
        crossings: torch.Tensor,
        n: int,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Branch ``i``'s output ``(B, D)`` for ``x_t`` and its new state; ``n`` = most crossings."""
        inputs, agg_state = self.aggregators[i].grid_inputs(x_t, st["t"], t_new, st["aggregator"], n)
        held, bstate = st["held"], st["backbone"]
        scatter = self.config.restore == "scatter"
        scattered = torch.zeros_like(held) if scatter else None
        for j, xk in enumerate(inputs, start=1):
            active = crossings >= j
            yk, new_bstate = self.branch_backbone(i).step(xk, bstate)
            bstate = _where_state(active, new_bstate, bstate)
            held = torch.where(active.unsqueeze(1), yk, held)
            if scatter:
                scattered = scattered + yk * active.unsqueeze(1).to(yk.dtype)
        new = {"t": t_new, "held": held, "backbone": bstate, "aggregator": agg_state}
        return (scattered if scatter else held), new


def _drop_shared_full_branch_keys(module, state_dict, prefix, *args) -> None:
    """Load hook of a SeRpEnt mixer with a shared backbone: a state dict saved before 0.4.0 also
    named the full branch (``full_backbone.*``, the same tensors as ``backbones.0.*``)."""
    for key in [k for k in state_dict if k.startswith(prefix + "full_backbone.")]:
        del state_dict[key]
