"""The streaming half of the SeRpEnt mixer: its typed state, ``step`` and the weights ``step`` reads.

``SeRpEntStreaming`` is a mixin of ``modules.serpent.SeRpEnt`` (it reads the mixer's ``config``,
``scores``, ``aggregators``, backbones, ``out_proj`` and ``gate_proj``); it holds what a causal
mixer needs to decode element by element: ``allocate_state``/``select_state`` (``ops.states.
SeRpEntState``), ``step`` (one call of ``ops.serpent_step.serpent_step``) and ``step_weights``,
which packs the layer for that op's backends without the op reading any module attribute.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch

from serpent_ssm.modules._shared import cached_weights, plain_linear
from serpent_ssm.modules.serpent_merge import BranchGates
from serpent_ssm.ops.serpent_step import (
    LayerWeights,
    SeRpEntStepWeights,
    kernel_weights,
    serpent_step,
    stack_step_weights,
)
from serpent_ssm.ops.states import ScoreState, SeRpEntState, stack_states
from serpent_ssm.utils.validation import check_device, check_float_tensor, check_module_dtype, check_shape

__all__ = ["SeRpEntStreaming", "log_selectivity"]


def log_selectivity(selectivity: torch.Tensor) -> torch.Tensor:
    """The score of ``interval_source="backbone"``: ``log`` of the mean ``Δ`` (clamped above 0)."""
    return torch.log(selectivity.clamp(min=torch.finfo(selectivity.dtype).tiny))


class SeRpEntStreaming:
    """``SeRpEnt``'s streaming methods (causal mode): state, ``step``, ``step_weights``."""

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
        if not isinstance(state, SeRpEntState):
            raise ValueError(
                "state: expected a SeRpEntState (from allocate_state, step or forward), got "
                f"{type(state).__name__}"
            )
        branches = len(self.aggregators)
        if state.t.dim() != 2 or state.t.shape[0] != branches or len(state.scores) != self._score_slots():
            raise ValueError(
                f"state: expected the state of a mixer with {branches} rate branches and "
                f"{self._score_slots()} score slots, got t of shape {tuple(state.t.shape)} and "
                f"{len(state.scores)} score slots"
            )
        if rows is not None and state.t.shape[1] != rows:
            raise ValueError(
                f"state: expected the state of {rows} rows (allocate_state({rows})), "
                f"got one of {state.t.shape[1]} rows"
            )
        check_device("state.held", state.held, self.out_proj.bias.device)

    def allocate_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SeRpEntState:
        """Streaming state for ``batch`` rows (causal mode only; ``ops.states.SeRpEntState``): the
        running times ``t (R, B)`` float64, the held outputs ``held (R, B, D)``, the aggregators'
        states (leaves ``(R, B, ...)``), the backbones' states (leaves ``(R + F, B, ...)``: the rate
        branches', then the full branch's when there is one) and one ``ScoreState`` per score slot."""
        self._check_streaming()
        device = device if device is not None else self.out_proj.bias.device
        dtype = dtype if dtype is not None else self.out_proj.bias.dtype
        rates = len(self.aggregators)
        backbones = [self.branch_backbone(i) for i in range(rates)]
        if self.full_backbone is not None:
            backbones.append(self.full_backbone)
        return SeRpEntState(
            t=torch.zeros(rates, batch, dtype=torch.float64, device=device),
            held=torch.zeros(rates, batch, self.d_model, dtype=dtype, device=device),
            aggregator=stack_states([a.allocate_state(batch, device, dtype) for a in self.aggregators]),
            backbone=stack_states([m.allocate_state(batch, device=device, dtype=dtype) for m in backbones]),
            scores=self._allocate_score_states(batch, device, dtype),
        )

    def select_state(self, state: SeRpEntState, index: torch.Tensor) -> SeRpEntState:
        """Rows ``index (B',)`` of a streaming state; ``modules.protocol.select_rows`` calls it."""
        self._check_state(state)
        return state.select(index)

    def _allocate_score_states(
        self, batch: int, device: torch.device | str, dtype: torch.dtype
    ) -> tuple[ScoreState, ...]:
        """Per score slot what the intervals carry from element to element (``ScoreState``): the
        convolution state of the backbone whose selectivity scores, and for bounds ``"mean"``
        ``log Σ e^s`` so far and the count."""
        cfg, slots = self.config, []
        for j in range(self._score_slots()):
            conv = log_sum = n = None
            if cfg.interval_source == "backbone":
                conv = self.branch_backbone(j).allocate_state(batch, device=device, dtype=dtype).conv
            if cfg.interval_bounds == "mean":
                log_sum = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)
                n = torch.zeros(batch, dtype=torch.float64, device=device)
            slots.append(ScoreState(conv, log_sum, n))
        return tuple(slots)

    def step(self, x_t: torch.Tensor, state: SeRpEntState) -> tuple[torch.Tensor, SeRpEntState]:
        """One element ``x_t (B, d_model)`` -> ``y_t (B, d_model)``; returns the new state
        (``ops.serpent_step.serpent_step`` with ``step_weights()``)."""
        self._check_streaming()
        check_float_tensor("x_t", x_t, ndim=2)
        check_module_dtype("x_t", x_t, self)
        check_shape("x_t", x_t, (None, self.d_model))
        check_device("x_t", x_t, self.out_proj.bias.device)
        self._check_state(state, x_t.shape[0])
        return serpent_step(x_t, state, self.step_weights())

    def step_weights(self) -> SeRpEntStepWeights:
        """What ``step`` reads (``ops.serpent_step.SeRpEntStepWeights``). The stacked backbone
        weights of the ``"torch"`` backend are there when every branch crosses at most one grid
        point per element (``Δ ≤ 1``) with plain Mamba backbones and cell aggregation (the causal
        defaults) and no layer to stack is wrapped (an adapter such as a LoRA layer) or hooked;
        the CPU kernel's weights when, besides, gradients are off. Without gradients the weights
        are cached (``_shared.cached_weights``): a changed or replaced parameter, a replaced layer
        or a hook rebuilds them; ``.to()`` and ``train()``/``eval()`` drop them."""
        if torch.is_grad_enabled():
            return self._build_step_weights()
        return cached_weights(self, "_step_weights", [self], self._build_step_weights)

    def _step_score(self, j: int, x_t: torch.Tensor, st: ScoreState) -> tuple[torch.Tensor, ScoreState]:
        """Score slot ``j``'s score ``(B,)`` for ``x_t (B, D)`` and its new state."""
        if self.config.interval_source == "score":
            return self.scores[j](x_t).squeeze(-1), st
        selectivity, conv = self.branch_backbone(j).intervals_step(x_t, st.conv)
        return log_selectivity(selectivity.mean(-1)), dataclasses.replace(st, conv=conv)

    def _step_intervals(self, s: torch.Tensor) -> torch.Tensor:
        return self._intervals(s, *self._rate_factors(s.dtype, s.device))

    def _build_step_weights(self) -> SeRpEntStepWeights:
        cfg, r = self.config, len(self.aggregators)
        device = self.out_proj.bias.device
        weights = SeRpEntStepWeights(
            scores=tuple(functools.partial(self._step_score, j) for j in range(self._score_slots())),
            intervals=self._step_intervals,
            mean_rates=self._rate_factors(torch.float64, device)[0]
            if cfg.interval_bounds == "mean"
            else None,
            grid_inputs=tuple(a.grid_inputs for a in self.aggregators),
            branch_steps=tuple(self.branch_backbone(i).step for i in range(r)),
            full_step=None if self.full_backbone is None else self.full_backbone.step,
            hold=cfg.restore != "scatter",
            merge=self.out_proj,
            gate=self.gate_proj,
        )
        backbones = [self.branch_backbone(i) for i in range(r)]
        backbones += [self.full_backbone] if self.full_backbone is not None else []
        owners = backbones[:1] if cfg.share_backbone else backbones
        if not self._fused_step:
            return weights
        cells = [a.proj for a in self.aggregators] if cfg.cell_proj else []
        if not all(map(plain_linear, cells)):
            return weights
        plain = all(m.plain_layers() for m in owners)
        if not cfg.share_backbone and not plain:
            return weights
        if cfg.share_backbone:
            stacked = backbones[0].step_weights()._replace(kernel=None)
        else:
            stacked = stack_step_weights([m.step_tensors() for m in backbones])
        proj = None
        if cells:
            proj = (
                torch.stack([p.weight.mT for p in cells]),
                torch.stack([p.bias for p in cells]).unsqueeze(1),
            )
        weights = dataclasses.replace(weights, stacked=stacked, cell_proj=proj)
        if torch.is_grad_enabled() or not plain:
            return weights
        cell = (
            None
            if not cells
            else (torch.stack([p.weight for p in cells]), torch.stack([p.bias for p in cells]))
        )
        kernel = kernel_weights([m.step_tensors() for m in owners], cell)
        return dataclasses.replace(weights, kernel=kernel, layer=self._layer_weights())

    def _layer_weights(self) -> LayerWeights | None:
        """The kernel's weights of the rest of the layer (``ops.serpent_step.LayerWeights``), or
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
