"""S4D: the diagonal structured state space model (Gu, Gupta, Goel, Ré, 2022).

Per channel ``h`` the continuous system ``x' = A x + B u, y = 2 Re(C x) + D u`` has a diagonal
complex ``A`` with ``N/2`` modes (conjugate pairs folded into the factor 2), S4D-Lin
initialisation ``A_n = -1/2 + iπn``, zero-order-hold discretisation with a learned step
``Δ_h``, and is applied to a length-``L`` sequence as a causal convolution with the kernel::

    K_l = 2 Re( sum_n C_n (exp(ΔA_n) - 1) / A_n · exp(ΔA_n · l) )     (Vandermonde)

computed by FFT in ``O(L log L)`` (in float64, for causality: see ``S4D._convolve``). The same
system runs recurrently in ``step()``: ``x_t = exp(ΔA) x_{t-1} + (exp(ΔA) - 1)/A · u_t``. The
mixer follows the S4 code base's S4D layer: SSM, ``D`` skip, GELU, dropout, then a
position-wise ``Linear(H, 2H)`` + GLU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from serpent_ssm.modules._shared import empty_sequence_output
from serpent_ssm.modules.protocol import StateSupport
from serpent_ssm.utils.sequence import from_first, zero_padding
from serpent_ssm.utils.validation import (
    check_float_tensor,
    check_mixer_input,
    check_module_dtype,
    check_positive_float,
    check_positive_int,
    check_shape,
)

__all__ = ["S4D"]


class S4D(nn.Module):
    """S4D mixer: ``(B, L, d_model) -> (B, L, d_model)``.

    Args:
        d_model: width ``H`` (independent SSM channels).
        d_state: state size ``N`` (``N/2`` complex modes per channel; must be even).
        dt_min, dt_max: ``Δ`` initialised log-uniform in ``[dt_min, dt_max]``.
        lr: learning-rate hint for the SSM parameters (``log_dt``, ``log_A_real``,
            ``A_imag``), stored as ``param._optim = {"lr": lr, "weight_decay": 0.0}`` as in the S4
            code base; ``None`` leaves them to the optimiser's defaults.
        dropout: dropout after the activation.

    Padding: masked inputs are replaced by zeros before the causal convolution, so outputs at
    real positions of a right-padded row, and the final state, do not depend on the padding,
    whatever it holds; outputs at padding are 0.

    Causality: the FFT convolution runs in float64, so a later value moves earlier outputs by
    ~1e-16 of its size (within float32 round-off up to a ratio of ~1e8; beyond, the leak grows
    with it). A non-finite value at a real position ``p`` leaves the outputs before ``p`` as
    they were and makes those from ``p`` on NaN (docs/design.md, "Numerics at the edges").
    """

    state_support = StateSupport(step=True, forward_state=True)

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        lr: float | None = 1e-3,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
        check_positive_int("d_state", d_state)
        if d_state % 2:
            raise ValueError(f"d_state: expected an even number (N/2 complex modes), got {d_state}")
        self.d_state = d_state
        dt_min = check_positive_float("dt_min", dt_min)
        dt_max = check_positive_float("dt_max", dt_max)
        if dt_max < dt_min:
            raise ValueError(f"dt_max: expected dt_max >= dt_min={dt_min}, got {dt_max}")
        if lr is not None:
            check_positive_float("lr", lr)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        h, n2 = d_model, d_state // 2
        fk = {"device": device, "dtype": dtype}

        log_dt = torch.rand(h, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        c = torch.randn(h, n2, dtype=torch.cfloat, device=device) * math.sqrt(0.5)
        self.log_dt = nn.Parameter(log_dt)
        self.C = nn.Parameter(torch.view_as_real(c))  # (H, N/2, 2): real and imaginary parts
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(h, n2, device=device)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(n2, device=device).float().repeat(h, 1))
        self.D = nn.Parameter(torch.randn(h, device=device))
        for p in (self.log_dt, self.log_A_real, self.A_imag):
            p._no_weight_decay = True
            if lr is not None:
                p._optim = {"lr": lr, "weight_decay": 0.0}
        self.D._no_weight_decay = True

        self.dropout = nn.Dropout(dropout)
        self.out_linear = nn.Linear(h, 2 * h, **fk)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}"

    # ------------------------------------------------------------------ discretisation
    def _discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``dtA (H, N/2)``, ``dB = (exp(dtA) - 1)/A (H, N/2)`` and ``C (H, N/2)``, complex64."""
        dt = torch.exp(self.log_dt.float())
        a = -torch.exp(self.log_A_real.float()) + 1j * self.A_imag.float()
        dta = a * dt.unsqueeze(-1)
        db = torch.expm1(dta) / a
        return dta, db, torch.view_as_complex(self.C.float().contiguous())

    def kernel(self, length: int) -> torch.Tensor:
        """Convolution kernel ``K (H, length)``, real float32."""
        dta, db, c = self._discrete()
        powers = torch.exp(dta.unsqueeze(-1) * torch.arange(length, device=dta.device))  # (H, N/2, L)
        return 2 * torch.einsum("hn,hnl->hl", c * db, powers).real

    # ------------------------------------------------------------------ full sequence
    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Mix a sequence.

        Args:
            x: ``(B, L, d_model)``.
            mask: ``(B, L)`` bool, True = real, right padding.
            state: ``(B, d_model, d_state/2)`` complex SSM state to start from, optional.
            return_state: also return the state after the last real element of each row.
        Returns:
            ``y (B, L, d_model)`` and, when ``return_state``, the new state.
        """
        check_mixer_input(x, mask, self.d_model, self)
        batch, length, _ = x.shape
        if state is not None:
            self._check_state(state, batch)
        if length == 0 or batch == 0:
            return empty_sequence_output(self, x, state, return_state)
        u = zero_padding(x.transpose(1, 2).float(), mask, dim=-1)  # (B, H, L), whatever the padding held
        # a non-finite value at a real position: its channel is NaN from there on, and the FFT
        # sees a zero there instead (it would spread the NaN over the whole row, past included)
        poisoned = from_first(~torch.isfinite(u), dim=-1)
        y = self._convolve(torch.where(poisoned, 0.0, u)) + self.D.float().unsqueeze(-1) * u
        dta, db, c = self._discrete()
        if state is not None:
            # contribution of the initial state: 2 Re(sum_n C_n exp(dtA_n (l + 1)) x0_n)
            steps = torch.arange(1, length + 1, device=x.device)
            powers = torch.exp(dta.unsqueeze(-1) * steps)  # (H, N/2, L)
            y = y + 2 * torch.einsum("hn,bhn,hnl->bhl", c, state, powers).real
        y = torch.where(poisoned, math.nan, y)
        y = self.dropout(F.gelu(y)).transpose(1, 2).to(x.dtype)
        out = zero_padding(F.glu(self.out_linear(y), dim=-1), mask)
        if not return_state:
            return out
        return out, self._final_state(u, mask, dta, db, state)

    def _convolve(self, u: torch.Tensor) -> torch.Tensor:
        """Causal convolution of ``u (B, H, L)`` with the kernel, by FFT: ``(B, H, L)`` float32.

        In float64: an FFT's round-off at every position is relative to the largest value of the
        whole row, so in float32 a value of 1e3 at position 10 already moved outputs 0-9 (of size
        ~1) by 6e-6, and 1e8 by 0.2. In float64 the leak is ~1e-16 of the later value, within
        float32 round-off of the earlier ones up to a ratio of ~1e8 between them (docs/design.md,
        "Numerics at the edges"); it costs ~2.3x the float32 FFT. The kernel stays float32.
        """
        length = u.shape[-1]
        n_fft = 2 * length  # no wrap-around: the circular convolution of 2L equals the linear one
        k = torch.fft.rfft(self.kernel(length).double(), n=n_fft)
        y = torch.fft.irfft(torch.fft.rfft(u.double(), n=n_fft) * k, n=n_fft)[..., :length]
        return y.float()

    def _final_state(self, u, mask, dta, db, state):
        """State after each row's last real element: ``sum_l exp(dtA (n-1-l)) dB u_l + exp(dtA n) x0``.

        ``u (B, H, L)`` is zero at padding (a non-finite value at a real position makes the state
        non-finite); returns ``(B, H, N/2)`` complex64.
        """
        batch, _, length = u.shape
        if mask is not None:  # move each row's real elements to the end (left padding)
            lengths = mask.sum(1)
            idx = (torch.arange(length, device=u.device) + lengths[:, None]) % length
            u = u.gather(2, idx.unsqueeze(1).expand_as(u))
            left = torch.arange(length, device=u.device) >= length - lengths[:, None]  # (B, L)
            u = zero_padding(u, left, dim=-1)
        else:
            lengths = torch.full((batch,), length, device=u.device)
        powers = torch.exp(dta.unsqueeze(-1) * torch.arange(length - 1, -1, -1, device=u.device))
        h = torch.einsum("hnl,bhl->bhn", powers * db.unsqueeze(-1), u.to(powers.dtype))
        if state is not None:
            h = h + torch.exp(dta.unsqueeze(0) * lengths[:, None, None]) * state
        return h

    # ------------------------------------------------------------------ recurrence
    def allocate_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Zero state ``(batch, d_model, d_state/2)`` complex64 (``dtype`` is ignored: always complex)."""
        check_positive_int("batch", batch)
        device = device if device is not None else self.log_dt.device
        return torch.zeros(batch, self.d_model, self.d_state // 2, dtype=torch.cfloat, device=device)

    def _check_state(self, state: object, batch: int) -> None:
        if not isinstance(state, torch.Tensor) or not state.is_complex():
            raise ValueError(
                f"state: expected a complex tensor of shape ({batch}, {self.d_model}, {self.d_state // 2}) "
                f"from allocate_state, got {getattr(state, 'dtype', type(state).__name__)}"
            )
        check_shape("state", state, (batch, self.d_model, self.d_state // 2))

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrent step: ``x_t (B, d_model) -> y_t (B, d_model)``; returns the new state."""
        check_float_tensor("x_t", x_t, ndim=2)
        check_module_dtype("x_t", x_t, self)
        check_shape("x_t", x_t, (None, self.d_model))
        self._check_state(state, x_t.shape[0])
        dta, db, c = self._discrete()
        u = x_t.float()
        h = torch.exp(dta) * state + db * u.unsqueeze(-1)
        y = 2 * (c * h).sum(-1).real + self.D.float() * u
        y = self.dropout(F.gelu(y)).to(x_t.dtype)
        return F.glu(self.out_linear(y), dim=-1), h
