"""The Mamba (S6) mixer (Gu & Dao, 2023), mask-aware, with recurrent stepping.

Parameter names and shapes are those of the public Mamba checkpoints (mamba_ssm's ``Mamba``,
transformers' ``MambaMixer``, mambapy's ``MambaBlock``)::

    in_proj   Linear(d_model -> 2 * d_inner)        x and the gate z
    conv1d    Conv1d(d_inner, d_inner, d_conv, groups=d_inner)  causal, depthwise
    x_proj    Linear(d_inner -> dt_rank + 2 * d_state)          Δ (low rank), B, C
    dt_proj   Linear(dt_rank -> d_inner)            Δ = softplus(dt_proj(·))
    A_log     (d_inner, d_state)                    A = -exp(A_log)
    D         (d_inner,)                            skip
    out_proj  Linear(d_inner -> d_model)

so ``load_state_dict`` of any of those works as is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from serpent_ssm.modules._shared import CachedWeights, cached_weights, empty_sequence_output, plain_linear
from serpent_ssm.modules.protocol import StateSupport
from serpent_ssm.ops.selective_scan import check_backend, selective_scan
from serpent_ssm.ops.serpent_step import MambaStepWeights, MambaTensors, kernel_weights, mamba_step
from serpent_ssm.ops.serpent_step.torch import conv_step
from serpent_ssm.ops.states import MambaState
from serpent_ssm.utils.sequence import zero_padding
from serpent_ssm.utils.validation import (
    check_device,
    check_float_tensor,
    check_mixer_input,
    check_module_dtype,
    check_positive_float,
    check_positive_int,
    check_shape,
)

__all__ = ["Mamba"]


class Mamba(CachedWeights):
    """Mamba (S6) mixer: ``(B, L, d_model) -> (B, L, d_model)``.

    Args:
        d_model: model width ``D``.
        d_state: SSM state size ``N`` per channel.
        d_conv: width of the causal depthwise convolution.
        expand: inner width ``E = expand * d_model``.
        dt_rank: rank of the Δ projection; ``"auto"`` = ``ceil(d_model / 16)``.
        dt_min, dt_max: Δ is initialised log-uniform in ``[dt_min, dt_max]`` (through the
            ``dt_proj`` bias, the inverse softplus of the sample), floored at ``dt_init_floor``.
        dt_init: ``"random"`` (uniform ``dt_proj`` weights of scale ``dt_scale / sqrt(dt_rank)``)
            or ``"constant"``.
        bias, conv_bias: biases of the in/out projections and of the convolution.
        backend: selective-scan backend (see ``serpent_ssm.ops.selective_scan``).

    ``A_log`` and ``D`` carry ``_no_weight_decay = True`` (optimisers built by this library
    honour it, as mamba_ssm's do). ``A_log`` is initialised S4D-real: ``A[:, n] = -(n + 1)``.
    """

    state_support = StateSupport(step=True, forward_state=True)

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        self.d_state = check_positive_int("d_state", d_state)
        self.d_conv = check_positive_int("d_conv", d_conv)
        self.expand = check_positive_int("expand", expand)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        self.dt_rank = check_positive_int("dt_rank", dt_rank)
        dt_min = check_positive_float("dt_min", dt_min)
        dt_max = check_positive_float("dt_max", dt_max)
        if dt_max < dt_min:
            raise ValueError(f"dt_max: expected dt_max >= dt_min={dt_min}, got {dt_max}")
        check_positive_float("dt_scale", dt_scale)
        check_positive_float("dt_init_floor", dt_init_floor)
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init: expected 'random' or 'constant', got {dt_init!r}")
        self.backend = check_backend(backend)
        self.d_inner = self.expand * self.d_model
        fk = {"device": device, "dtype": dtype}
        e, n = self.d_inner, self.d_state

        self.in_proj = nn.Linear(self.d_model, 2 * e, bias=bias, **fk)
        self.conv1d = nn.Conv1d(e, e, self.d_conv, groups=e, padding=self.d_conv - 1, bias=conv_bias, **fk)
        self.x_proj = nn.Linear(e, self.dt_rank + 2 * n, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, e, bias=True, **fk)
        self.out_proj = nn.Linear(e, self.d_model, bias=bias, **fk)

        # Δ initialisation: weights of scale dt_rank^-0.5, bias = softplus^-1(logUniform sample)
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            dt = torch.exp(
                torch.rand(e, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            ).clamp(min=dt_init_floor)
            inv_softplus = dt + torch.log(-torch.expm1(-dt))
            self.dt_proj.bias.copy_(inv_softplus)
        self.dt_proj.bias._no_reinit = True

        a = torch.arange(1, n + 1, dtype=torch.float32, device=device).repeat(e, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(e, device=device))
        self.D._no_weight_decay = True

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"expand={self.expand}, dt_rank={self.dt_rank}, backend={self.backend!r}"
        )

    # ------------------------------------------------------------------ full sequence
    def _project(
        self, x: torch.Tensor, conv: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The projections in front of the scan, for ``x (B, L, d_model)`` with ``L >= 1``.

        Returns ``conv_in (B, E, d_conv - 1 + L)`` (the convolution's input: the last inputs
        before it, ``conv (B, E, d_conv - 1)``, or zeros, then the sequence), ``xc (B, E, L)``
        (the scan input ``u``),
        ``z (B, L, E)`` (the gate), ``dt (B, E, L)`` (``dt_proj``'s weight applied, its bias
        not), ``b, c (B, L, N)``.
        """
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = xs.transpose(1, 2)  # (B, E, L)
        if conv is not None:
            prefix = conv.to(xs.dtype)
        else:
            prefix = xs.new_zeros(x.shape[0], self.d_inner, self.d_conv - 1)
        conv_in = torch.cat([prefix, xs], dim=-1)  # (B, E, k - 1 + L)
        xc = F.silu(F.conv1d(conv_in, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner))
        x_dbl = self.x_proj(xc.transpose(1, 2))  # (B, L, R + 2N)
        dt, b, c = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj.weight @ dt.transpose(1, 2)  # (B, E, L); the bias is added by the scan
        return conv_in, xc, z, dt, b, c

    def intervals(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, conv: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The selective intervals ``Δ = softplus(dt_proj(·) + bias)`` that ``forward`` scans with.

        Args:
            x: ``(B, L, d_model)``.
            mask: ``(B, L)`` bool, True = real, right padding; padded positions get ``Δ = 0``
                (no time passes there).
            conv: for a chunk of a longer sequence, the convolution state before it
                (``(B, E, d_conv - 1)``, as in ``allocate_state``/``forward``'s state).
        Returns:
            ``(B, L, d_inner)`` in float32 (float64 for float64 ``x``), from the arguments that
            ``forward`` passes to the scan, as its ``"torch"`` backend computes it; with
            ``conv``, also the convolution state after each row's last real element.
        """
        check_mixer_input(x, mask, self.d_model, self)
        if conv is not None:
            check_shape("conv", conv, (x.shape[0], self.d_inner, self.d_conv - 1))
        cdt = torch.promote_types(x.dtype, torch.float32)  # the scan's compute dtype
        if x.shape[1] == 0:
            empty = x.new_zeros(x.shape[0], 0, self.d_inner, dtype=cdt)
            return empty if conv is None else (empty, conv)
        conv_in, _, _, dt, _, _ = self._project(zero_padding(x, mask), conv)
        delta = F.softplus(dt.to(cdt) + self.dt_proj.bias.float().to(cdt)[:, None])  # (B, E, L)
        delta = zero_padding(delta, mask, dim=-1).transpose(1, 2)
        return delta if conv is None else (delta, self._conv_state(conv_in, mask))

    def _conv_state(self, conv_in: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The last ``d_conv - 1`` inputs up to each row's last real element, ``(B, E, d_conv - 1)``,
        from ``conv_in (B, E, d_conv - 1 + L)`` (``_project``'s)."""
        batch, length = conv_in.shape[0], conv_in.shape[2] - (self.d_conv - 1)
        lengths = mask.sum(1) if mask is not None else torch.full((batch,), length, device=conv_in.device)
        idx = lengths[:, None] + torch.arange(self.d_conv - 1, device=conv_in.device)  # positions in conv_in
        return conv_in.gather(2, idx[:, None, :].expand(batch, self.d_inner, self.d_conv - 1))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: MambaState | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, MambaState]:
        """Mix a sequence.

        Args:
            x: ``(B, L, d_model)``.
            mask: ``(B, L)`` bool, True = real, right padding. Padding lets no time pass and
                no input in, whatever it holds (NaN and Inf included: it is replaced by zeros
                before use); outputs at padded positions are 0.
            state: recurrent state to start from (from ``allocate_state``, ``step`` or a
                previous ``forward(..., return_state=True)``), for chunked processing.
            return_state: also return the state after the last real element of each row.
        Returns:
            ``y (B, L, d_model)``, and the new state when ``return_state``.
        """
        check_mixer_input(x, mask, self.d_model, self)
        batch, length, _ = x.shape
        if state is not None:
            self._check_state(state, batch)
        if length == 0:
            return empty_sequence_output(self, x, state, return_state)
        x = zero_padding(x, mask)  # zeros in, so that no NaN reaches the projections' gradients
        conv_in, xc, z, dt, b, c = self._project(x, None if state is None else state.conv)
        a = -torch.exp(self.A_log.float())
        y, h = selective_scan(
            xc,
            dt,
            a,
            b.transpose(1, 2),
            c.transpose(1, 2),
            self.D.float(),
            z=z.transpose(1, 2),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            mask=mask,
            initial_state=state.ssm if state is not None else None,
            return_final_state=True,
            backend=self.backend,
        )
        out = zero_padding(self.out_proj(y.transpose(1, 2)), mask)
        if not return_state:
            return out
        return out, MambaState(self._conv_state(conv_in, mask), h)

    # ------------------------------------------------------------------ recurrence
    def allocate_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MambaState:
        """Zero state for ``batch`` rows: ``conv (B, E, d_conv - 1)`` and ``ssm (B, E, N)`` float32."""
        check_positive_int("batch", batch)
        device = device if device is not None else self.A_log.device
        dtype = dtype if dtype is not None else self.in_proj.weight.dtype
        return MambaState(
            conv=torch.zeros(batch, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def _check_state(self, state: object, batch: int) -> None:
        if not isinstance(state, MambaState):
            raise ValueError(
                "state: expected a MambaState (from allocate_state, step or forward), "
                f"got {type(state).__name__}"
            )
        check_shape("state.conv", state.conv, (batch, self.d_inner, self.d_conv - 1))
        check_shape("state.ssm", state.ssm, (batch, self.d_inner, self.d_state))
        device = self.A_log.device
        check_device("state.conv", state.conv, device)
        check_device("state.ssm", state.ssm, device)

    def step(self, x_t: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One recurrent step: ``x_t (B, d_model) -> y_t (B, d_model)``; returns the new state
        (``ops.serpent_step.mamba_step``: the CPU kernel where it applies, else torch)."""
        check_float_tensor("x_t", x_t, ndim=2)
        check_module_dtype("x_t", x_t, self)
        check_shape("x_t", x_t, (None, self.d_model))
        check_device("x_t", x_t, self.A_log.device)
        self._check_state(state, x_t.shape[0])
        return mamba_step(x_t, state, self.step_weights())

    def step_tensors(self) -> MambaTensors:
        """The weights as plain tensors (``ops.serpent_step.MambaTensors``), for the CPU kernel."""
        return MambaTensors(
            w_in=self.in_proj.weight,
            b_in=self.in_proj.bias,
            w_conv=self.conv1d.weight[:, 0, :],
            b_conv=self.conv1d.bias,
            w_x=self.x_proj.weight,
            w_dt=self.dt_proj.weight,
            b_dt=self.dt_proj.bias,
            a=-torch.exp(self.A_log.float()),
            d_skip=self.D,
            w_out=self.out_proj.weight,
            b_out=self.out_proj.bias,
            sizes=(self.d_model, self.d_inner, self.d_state, self.d_conv, self.dt_rank),
        )

    def plain_layers(self) -> bool:
        """Whether every projection is a plain ``nn.Linear`` without hooks, so that a fused step
        may read their weights instead of calling them."""
        return all(map(plain_linear, (self.in_proj, self.x_proj, self.dt_proj, self.out_proj)))

    def step_weights(self) -> MambaStepWeights:
        """What one step reads (``ops.serpent_step.MambaStepWeights``): the projection layers
        themselves (whatever wraps them applies) and the parameters (gradients flow through
        them); without gradients, cached (``_shared.cached_weights``) and with the CPU kernel's
        packed copy when the projections are plain layers."""
        if torch.is_grad_enabled():
            return self._build_step_weights(kernel=False)
        return cached_weights(self, "_step_weights", [self], self._build_step_weights)

    def _build_step_weights(self, kernel: bool = True) -> MambaStepWeights:
        return MambaStepWeights(
            in_proj=self.in_proj,
            conv_w=self.conv1d.weight[:, 0, :],
            conv_b=self.conv1d.bias,
            x_proj=self.x_proj,
            dt_proj=self.dt_proj,
            a=-torch.exp(self.A_log.float()),
            d=self.D.float(),
            out_proj=self.out_proj,
            dt_rank=self.dt_rank,
            d_state=self.d_state,
            kernel=kernel_weights([self.step_tensors()]) if kernel and self.plain_layers() else None,
        )

    def intervals_step(self, x_t: torch.Tensor, conv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One element of ``intervals``: ``Δ_t (B, E)`` (its dtype) for ``x_t (B, d_model)`` and the
        convolution state ``conv (B, E, d_conv - 1)`` (``allocate_state(B).conv`` to start);
        returns ``Δ_t`` and the new ``conv``."""
        check_float_tensor("x_t", x_t, ndim=2)
        check_shape("x_t", x_t, (None, self.d_model))
        check_shape("conv", conv, (x_t.shape[0], self.d_inner, self.d_conv - 1))
        xc, _, conv = conv_step(x_t, conv, self.step_weights())
        dt = self.dt_proj.weight @ self.x_proj(xc)[:, : self.dt_rank].unsqueeze(-1)  # (B, E, 1)
        cdt = torch.promote_types(x_t.dtype, torch.float32)  # as ``intervals``
        return F.softplus(dt[..., 0].to(cdt) + self.dt_proj.bias.float().to(cdt)), conv
