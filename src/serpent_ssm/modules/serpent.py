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

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from serpent_ssm.modules._shared import CachedWeights
from serpent_ssm.modules.backbones import make_backbone
from serpent_ssm.modules.bidirectional import Bidirectional
from serpent_ssm.modules.mamba import Mamba
from serpent_ssm.modules.protocol import StateSupport, state_support
from serpent_ssm.modules.serpent_aggregate import Grid, make_aggregator
from serpent_ssm.modules.serpent_config import SeRpEntConfig, SeRpEntOptions
from serpent_ssm.modules.serpent_merge import BranchGates
from serpent_ssm.modules.serpent_streaming import SeRpEntStreaming, log_selectivity
from serpent_ssm.ops import resample as rs
from serpent_ssm.ops.states import ScoreState, SeRpEntState, map_state, stack_states
from serpent_ssm.utils.sequence import from_first, zero_padding
from serpent_ssm.utils.validation import (
    check_mixer_input,
)

__all__ = ["SeRpEnt", "SeRpEntConfig", "SeRpEntOptions"]


def _outputs(y: torch.Tensor, info: dict, state: Any, return_info: bool, return_state: bool) -> Any:
    """``forward``'s return value: ``y``, then ``info`` and ``state`` as asked."""
    extra = ((info,) if return_info else ()) + ((state,) if return_state else ())
    return (y, *extra) if extra else y


class SeRpEnt(SeRpEntStreaming, CachedWeights):
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
        self, x: torch.Tensor, mask: torch.Tensor | None, states: tuple[ScoreState, ...] | None = None
    ) -> tuple[list[torch.Tensor], list[ScoreState] | None]:
        """The score sequences ``s (B, L)`` for ``x (B, L, D)`` (0 at padding), one per score
        slot, and, for a causal chunk from the score ``states``, the states after it."""
        cfg = self.config
        scores, new_states = [], None if states is None else []
        for j in range(self._score_slots()):
            new = None if states is None else states[j]
            if cfg.interval_source == "score":
                s = self.scores[j](x).squeeze(-1)
            else:
                bb = self.branch_backbone(j)
                if new is None:
                    selectivity = bb.intervals(x, mask)
                else:
                    selectivity, conv = bb.intervals(x, mask, conv=new.conv)
                    new = dataclasses.replace(new, conv=conv)
                real = (
                    mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                )
                s = log_selectivity(torch.where(real, selectivity.mean(-1), 1.0))  # (B, L)
            if new is not None and cfg.interval_bounds == "mean":
                log_sum, n = rs.mean_normalised_carry(s, mask, new.log_sum, new.n)
                new = dataclasses.replace(new, log_sum=log_sum, n=n)
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
        self, x: torch.Tensor, mask: torch.Tensor | None, states: tuple[ScoreState, ...] | None = None
    ) -> tuple[list[torch.Tensor], list[ScoreState] | None]:
        """Intervals ``Δ (B, L)`` of every branch for ``x (B, L, D)`` (one score pass when shared)
        and, for a causal chunk from the score ``states``, the states after it."""
        cfg = self.config
        scores, new_states = self._scores(x, mask, states)
        offset, scale = self._rate_factors(scores[0].dtype, x.device)
        out = []
        for i, rate in enumerate(cfg.rates):
            j = 0 if cfg.share_intervals else i
            if cfg.interval_bounds == "mean":
                carry = None if states is None else (states[j].log_sum, states[j].n)
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
        state: SeRpEntState | None = None,
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
        deltas, score_states = self._branch_intervals(xm, mask, None if state is None else state.scores)
        poisoned = self._poisoned(xm, deltas, mask, state)
        if mask is not None or bool(poisoned.any()):  # poisoned positions are treated as padding
            mask = ~poisoned if mask is None else mask & ~poisoned
            xm = zero_padding(xm, mask)
        lengths = mask.sum(1) if mask is not None else torch.full((b,), length, device=x.device)
        outs, branches = [], []
        for i, delta in enumerate(deltas):
            st = None if state is None else state.branch(i)
            y_branch, branch_info, new = self._branch_forward(i, xm, delta, mask, lengths, st)
            outs.append(y_branch)
            branches.append(new)
            if return_info:
                info["branches"].append(branch_info)
        if self.full_backbone is not None and state is None:
            outs.append(self.full_backbone(xm, mask=mask))
        elif self.full_backbone is not None:
            full = map_state(lambda leaf: leaf[len(deltas)], state.backbone)
            y_full, full = self.full_backbone(xm, mask=mask, state=full, return_state=True)
            outs.append(y_full)
        y = zero_padding(self._gated(self.out_proj(torch.cat(outs, dim=-1)), xm), mask)
        y = torch.where(poisoned.unsqueeze(-1), math.nan, y)
        new_state = None
        if state is not None:
            backbones = [br.backbone for br in branches]
            backbones += [full] if self.full_backbone is not None else []
            new_state = SeRpEntState(
                t=torch.where(
                    poisoned.any(1), math.nan, torch.stack([br.t for br in branches])
                ),  # stays poisoned
                held=torch.stack([br.held for br in branches]),
                aggregator=stack_states([br.aggregator for br in branches]),
                backbone=stack_states(backbones),
                scores=tuple(score_states),
            )
        return _outputs(y, info, new_state, return_info, return_state)

    def _poisoned(
        self,
        xm: torch.Tensor,
        deltas: list[torch.Tensor],
        mask: torch.Tensor | None,
        state: SeRpEntState | None = None,
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
            bad = bad | ~torch.isfinite(state.t).all(0).unsqueeze(1)
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
        st: SeRpEntState | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any], SeRpEntState | None]:
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
            t0 = torch.where(torch.isfinite(st.t), st.t, 0.0)
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
            xc, agg_state = self.aggregators[i].aggregate_chunk(xm, grid, st.aggregator, start, base)
            yc, b_state = self.branch_backbone(i)(
                zero_padding(xc, valid), mask=valid, state=st.backbone, return_state=True
            )
        y = rs.restore(yc, t, counts, index, valid, mask, cfg.restore)
        info = {"rate": rate, "delta": zero_padding(delta, mask), "t": t, "index": index, "valid": valid}
        info["counts"] = counts
        if st is None:
            return y, info, None
        info["t"] = t + base.unsqueeze(1)
        if cfg.restore == "hold":  # before the chunk's first grid point: the state's held output
            y = zero_padding(torch.where((torch.floor(t) < 1).unsqueeze(-1), st.held.unsqueeze(1), y), mask)
        last = yc.gather(1, (counts - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, yc.shape[2]))[:, 0]
        held = torch.where((counts >= 1).unsqueeze(1), last, st.held)
        new = SeRpEntState(t0 + elapsed, held, agg_state, b_state, ())
        return y, info, new

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


def _drop_shared_full_branch_keys(module, state_dict, prefix, *args) -> None:
    """Load hook of a SeRpEnt mixer with a shared backbone: a state dict saved before 0.4.0 also
    named the full branch (``full_backbone.*``, the same tensors as ``backbones.0.*``)."""
    for key in [k for k in state_dict if k.startswith(prefix + "full_backbone.")]:
        del state_dict[key]
