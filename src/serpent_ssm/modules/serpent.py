"""The SeRpEnt mixer: selective resampling over any backbone (SPEC.md §2).

Each branch ``r`` with compression rate ``κ_r``:

1. intervals ``Δ_l = κ_r · 2σ(w·x_l + b)`` (``interval_bounds="ours"``; ``"paper"``:
   ``κ_r + (1 − κ_r)σ(·)`` in ``[κ_r, 1]``; ``"fixed"``: ``Δ ≡ κ_r``), 0 on padding;
2. times ``t = cumsum(Δ)`` (non-causal: rescaled so that each row has exactly ``ceil(κ_r n)``
   grid points; causal: ``floor(t_n)`` of them);
3. grid point ``k`` selects ``l_k = min{l : t_l >= k}``;
4. aggregation into the grid point: ``aggregate="cell"`` (default) pools every element into the
   grid cells ``(k − 1, k]`` its interval overlaps, weighted by the overlap; ``"linear"`` (the
   paper's figure) and ``"kernel"`` aggregate a window of ``K`` elements around ``l_k`` (causal:
   ``l_k`` and its ``K − 1`` predecessors; non-causal: centred) with the Gaussian RBF features
   of the offsets ``k − t_j`` (one linear map of the concatenation, or a continuous filter
   ``Σ_j g(φ(δ_kj)) ⊙ V x_j``);
5. the branch backbone runs on the compressed sequence (bidirectional by default when
   non-causal);
6. the output is restored to length ``L`` (``"hold"``: causal default; ``"interp"``: linear in
   time, non-causal default; ``"scatter"``);

and ``y = W_o · concat_r(ŷ^r)`` (with the plain backbone on the full sequence as one more branch
when ``include_full_branch``, the causal default), optionally gated per position (``gate=True``:
``y ⊙ 2σ(W_g x + b_g)``). The surrounding residual block adds the skip connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from serpent_ssm.modules.bidirectional import Bidirectional
from serpent_ssm.modules.mamba import Mamba
from serpent_ssm.modules.s4d import S4D
from serpent_ssm.ops import resample as rs
from serpent_ssm.utils.validation import check_float_tensor, check_mixer_input, check_shape

__all__ = ["SeRpEnt", "SeRpEntConfig", "BACKBONES"]

BACKBONES: dict[str, type[nn.Module]] = {"mamba": Mamba, "s4d": S4D}
AGGREGATES = ("linear", "kernel", "cell")
INTERVAL_BOUNDS = ("ours", "paper", "fixed")
INITS = ("identity", "default")


@dataclass
class SeRpEntConfig:
    """Every option of the SeRpEnt mixer, validated on construction.

    Attributes:
        d_model: width ``D``.
        backbone: ``"mamba"``, ``"s4d"``, or a factory ``() -> mixer`` following the mixer
            protocol (``forward(x, mask=None)``; ``allocate_state``/``step`` for streaming).
        backbone_kwargs: keyword arguments of the named backbone (besides ``d_model``).
        rates: compression rates ``κ_r`` in ``(0, 1]``, one branch each [paper: 0.5, 0.3, 0.2].
        window: ``K`` elements aggregated per grid point [paper: 3].
        n_bases: ``M`` Gaussian bases of the time offsets [ours: 16].
        causal: causal (language modelling, streaming) or non-causal (classification).
        aggregate: ``"cell"`` [ours, default]: every element pooled into the grid cells its
            interval overlaps, weighted by the overlap (``ops.resample.cell_pool``; no element
            is dropped; ``window`` and ``n_bases`` unused); ``"linear"`` [paper's figure]: one
            linear map of the window of ``K`` elements and their RBF time features; ``"kernel"``
            [ours]: a continuous filter over that window. ``"cell"`` is the default because it
            learns where the figure's design does not (docs/design.md, learning parity).
        restore: ``"hold"``, ``"interp"`` or ``"scatter"``; None = ``"hold"`` when causal,
            ``"interp"`` otherwise. ``"interp"`` reads the next grid point, so it is refused in
            causal mode.
        interval_bounds: ``"ours"`` (``Δ ∈ (0, 2κ)``), ``"paper"`` (``Δ ∈ [κ, 1]``) or
            ``"fixed"`` (``Δ ≡ κ``, no learned intervals; for ablations and the identity limit).
        share_intervals: one score network for all branches [ours] or one per branch.
        include_full_branch: add a ``κ = 1`` branch, the plain backbone on the full sequence;
            None = True when causal, False otherwise [ours, from the ablations: without it a
            causal LM learns only what the current element alone predicts, because ``"hold"``
            refreshes a position's branch outputs only when a grid point falls on it;
            docs/design.md, "Ablations and defaults"].
        gate: multiply the output by a per-position gate ``2σ(W_g x_l + b_g)`` [ours]: a path
            from each element to its own output that does not wait for a grid point (in causal
            mode ``"hold"`` gives position ``l`` the output of the latest grid point, computed
            before ``l`` unless ``l`` crossed it); ablated in docs/design.md, off by default.
        bidirectional: wrap each backbone in ``Bidirectional``; None = ``not causal``.
        init: ``"identity"`` (the aggregation passes the selected element through and the
            output averages the branches and the gate starts at 1, so the mixer starts close to
            its backbone; SPEC §7)
            or ``"default"`` (PyTorch's default initialisation everywhere).
        trim_buffer: cut each compressed buffer to the batch's largest count instead of its
            static bound (``ceil(2κL)`` in causal mode, twice the usual count): the backbones
            then process about ``Σκ·L`` elements instead of ``2Σκ·L``. Outputs are the same;
            shapes become data-dependent (set False for static shapes, e.g. for export).
    """

    d_model: int
    backbone: str | Callable[[], nn.Module] = "mamba"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    rates: Sequence[float] = (0.5, 0.3, 0.2)
    window: int = 3
    n_bases: int = 16
    causal: bool = False
    aggregate: str = "cell"
    restore: str | None = None
    interval_bounds: str = "ours"
    share_intervals: bool = True
    include_full_branch: bool | None = None
    gate: bool = False
    bidirectional: bool | None = None
    init: str = "identity"
    trim_buffer: bool = True

    def __post_init__(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.d_model) or self.d_model < 1:
            raise ValueError(f"d_model: expected a positive integer, got {self.d_model!r}")
        if isinstance(self.backbone, str):
            if self.backbone not in BACKBONES:
                names = ", ".join(map(repr, BACKBONES))
                raise ValueError(f"backbone: expected one of {names} or a factory, got {self.backbone!r}")
        elif not callable(self.backbone):
            raise ValueError(
                f"backbone: expected a name or a callable factory, got {type(self.backbone).__name__}"
            )
        if not isinstance(self.backbone_kwargs, dict):
            raise ValueError(f"backbone_kwargs: expected a dict, got {type(self.backbone_kwargs).__name__}")
        if (
            isinstance(self.rates, (int, float))
            or not isinstance(self.rates, Sequence)
            or len(self.rates) == 0
        ):
            raise ValueError(f"rates: expected a non-empty sequence of rates in (0, 1], got {self.rates!r}")
        for r in self.rates:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 < r <= 1.0):
                raise ValueError(f"rates: expected every rate in (0, 1], got {r!r} in {tuple(self.rates)}")
        self.rates = tuple(float(r) for r in self.rates)
        if not is_int(self.window) or self.window < 1:
            raise ValueError(f"window: expected an integer >= 1, got {self.window!r}")
        if not is_int(self.n_bases) or self.n_bases < 1:
            raise ValueError(f"n_bases: expected an integer >= 1, got {self.n_bases!r}")
        if self.include_full_branch is None:
            self.include_full_branch = self.causal is True
        for flag in ("causal", "share_intervals", "include_full_branch", "gate", "trim_buffer"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag}: expected True or False, got {getattr(self, flag)!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(
                f"aggregate: expected one of {', '.join(map(repr, AGGREGATES))}, got {self.aggregate!r}"
            )
        if self.restore is None:
            self.restore = "hold" if self.causal else "interp"
        if self.restore not in rs.RESTORES:
            raise ValueError(
                f"restore: expected one of {', '.join(map(repr, rs.RESTORES))}, got {self.restore!r}"
            )
        if self.causal and self.restore == "interp":
            raise ValueError(
                "restore: expected 'hold' or 'scatter' in causal mode, got 'interp' "
                "(it reads the next grid point, which lies in the future)"
            )
        if self.interval_bounds not in INTERVAL_BOUNDS:
            names = ", ".join(map(repr, INTERVAL_BOUNDS))
            raise ValueError(f"interval_bounds: expected one of {names}, got {self.interval_bounds!r}")
        if self.bidirectional is None:
            self.bidirectional = not self.causal
        if self.causal and self.bidirectional:
            raise ValueError(
                "bidirectional: expected False in causal mode, got True (it would read the future)"
            )
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(map(repr, INITS))}, got {self.init!r}")

    def delta_max(self, rate: float) -> float:
        """Upper bound of the intervals of a branch with rate ``rate``."""
        return {"ours": 2.0 * rate, "paper": 1.0, "fixed": rate}[self.interval_bounds]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (a factory backbone is shown by its name)."""
        d = asdict(self)
        if not isinstance(self.backbone, str):
            d["backbone"] = getattr(self.backbone, "__name__", repr(self.backbone))
        d["rates"] = list(self.rates)
        return d


class _Aggregator(nn.Module):
    """Window of ``K`` neighbours ``(B, L', K, D)`` + RBF features ``(B, L', K, M)`` -> ``(B, L', D)``."""

    def __init__(self, d: int, window: int, n_bases: int, kind: str, center_slot: int, init: str) -> None:
        super().__init__()
        self.kind, self.window, self.d, self.n_bases = kind, window, d, n_bases
        if kind == "cell":
            self.proj = nn.Linear(d, d)
            if init == "identity":
                with torch.no_grad():
                    self.proj.weight.copy_(torch.eye(d))
                    self.proj.bias.zero_()
        elif kind == "linear":
            self.proj = nn.Linear(window * (d + n_bases), d)
            if init == "identity":
                with torch.no_grad():
                    w = torch.zeros(d, window, d + n_bases)
                    w[:, center_slot, :d] = torch.eye(d)
                    w[:, :, d:] = torch.randn(d, window, n_bases) * 0.02
                    self.proj.weight.copy_(w.view(d, -1))
                    self.proj.bias.zero_()
        else:
            self.filter = nn.Linear(n_bases, d)  # g: RBF features -> per-channel weight
            self.value = nn.Linear(d, d, bias=False)  # V
            if init == "identity":
                with torch.no_grad():
                    self.value.weight.copy_(torch.eye(d))
                    self.filter.weight.normal_(0.0, 0.02)
                    self.filter.bias.fill_(1.0 / window)

    def forward(
        self, xw: torch.Tensor, phi: torch.Tensor | None = None, ok: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.kind == "cell":  # xw is already the pooled cell (B, L', D)
            return self.proj(xw)
        if self.kind == "linear":
            feats = torch.cat([xw, phi], dim=-1)  # (B, L', K, D + M)
            return self.proj(feats.flatten(-2))
        gate = self.filter(phi) * ok.unsqueeze(-1).to(phi.dtype)  # (B, L', K, D)
        return (gate * self.value(xw)).sum(-2)


def _where_state(cond: torch.Tensor, new: Any, old: Any) -> Any:
    """Per-row select between two recurrent states of the same structure (tensors, dicts, tuples)."""
    if isinstance(new, torch.Tensor):
        c = cond.view(-1, *([1] * (new.dim() - 1)))
        return torch.where(c, new, old)
    if isinstance(new, dict):
        return {k: _where_state(cond, new[k], old[k]) for k in new}
    if isinstance(new, (tuple, list)):
        return type(new)(_where_state(cond, n, o) for n, o in zip(new, old, strict=True))
    raise ValueError(f"state: expected tensors, dicts or tuples of tensors, got {type(new).__name__}")


class SeRpEnt(nn.Module):
    """SeRpEnt mixer ``(B, L, d_model) -> (B, L, d_model)``; options as in ``SeRpEntConfig``.

    ``forward(x, mask=None, return_info=False)``. Rows that are all padding give zero output.
    In causal mode, ``allocate_state(batch)`` and ``step(x_t, state)`` stream one element at a
    time with constant memory: per branch the running time, the backbone's recurrent state, the
    held output, and either the open cell's pooled input (``aggregate="cell"``) or the last ``K``
    inputs and their times (window aggregations).
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
        n_scores = 1 if cfg.share_intervals else len(cfg.rates)
        self.scores = nn.ModuleList(nn.Linear(d, 1) for _ in range(n_scores))
        for s in self.scores:
            nn.init.zeros_(s.bias)
        offsets = rs.window_offsets(cfg.window, cfg.causal)
        center_slot = offsets.index(0)
        self.aggregators = nn.ModuleList(
            _Aggregator(d, cfg.window, cfg.n_bases, cfg.aggregate, center_slot, cfg.init) for _ in cfg.rates
        )
        self.backbones = nn.ModuleList(self._make_backbone() for _ in cfg.rates)
        self.full_backbone = self._make_backbone() if cfg.include_full_branch else None
        n_branches = len(cfg.rates) + int(cfg.include_full_branch)
        self.out_proj = nn.Linear(n_branches * d, d)
        if cfg.init == "identity":
            with torch.no_grad():
                self.out_proj.weight.copy_(torch.eye(d).repeat(1, n_branches) / n_branches)
                self.out_proj.bias.zero_()
        self.gate_proj = nn.Linear(d, d) if cfg.gate else None
        if self.gate_proj is not None and cfg.init == "identity":
            nn.init.zeros_(self.gate_proj.weight)
            nn.init.zeros_(self.gate_proj.bias)
        # RBF centres over the offsets δ = k - t_j a window can reach: the selected element lies
        # in (-Δmax, 0]; a neighbour r places before it up to r·Δmax above, one r places after
        # it (non-causal) down to -(r + 1)·Δmax.
        before, after = -offsets[0], offsets[-1]
        self._rbf_sigmas: list[float] = []
        for i, rate in enumerate(cfg.rates if cfg.aggregate != "cell" else ()):
            dmax = cfg.delta_max(rate)
            centers, sigma = rs.rbf_centers(cfg.n_bases, -(after + 1) * dmax, before * dmax)
            self.register_buffer(f"rbf_centers_{i}", centers, persistent=False)
            self._rbf_sigmas.append(sigma)

    @classmethod
    def from_config(cls, config: SeRpEntConfig) -> SeRpEnt:
        """Build from a validated ``SeRpEntConfig``."""
        return cls(config.d_model, config=config)

    def _make_backbone(self) -> nn.Module:
        cfg = self.config

        def one() -> nn.Module:
            if isinstance(cfg.backbone, str):
                return BACKBONES[cfg.backbone](cfg.d_model, **cfg.backbone_kwargs)
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
            f"interval_bounds={c.interval_bounds!r}, full_branch={c.include_full_branch}, gate={c.gate}"
        )

    # ------------------------------------------------------------------ intervals
    def _score(self, x: torch.Tensor, branch: int) -> torch.Tensor:
        """Scalar score per position ``(...,)`` for ``x (..., D)``."""
        net = self.scores[0 if self.config.share_intervals else branch]
        return net(x).squeeze(-1)

    def _intervals(self, s: torch.Tensor, rate: float) -> torch.Tensor:
        bounds = self.config.interval_bounds
        if bounds == "ours":
            return 2.0 * rate * torch.sigmoid(s)
        if bounds == "paper":
            return rate + (1.0 - rate) * torch.sigmoid(s)
        return torch.full_like(s, rate)

    def _gated(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y ⊙ 2σ(W_g x + b_g)`` with ``gate=True``, else ``y``; shapes ``(..., D)``."""
        return y if self.gate_proj is None else y * (2.0 * torch.sigmoid(self.gate_proj(x)))

    def _rbf(self, offsets: torch.Tensor, branch: int) -> torch.Tensor:
        centers = getattr(self, f"rbf_centers_{branch}")
        return rs.rbf_features(offsets, centers, self._rbf_sigmas[branch])

    # ------------------------------------------------------------------ full sequence
    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_info: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """Mix ``x (B, L, d_model)`` with optional right-padding ``mask (B, L)``.

        Returns ``y (B, L, d_model)`` (0 at padding) and, with ``return_info``, a dict with
        ``"branches"``: per branch ``rate``, ``delta (B, L)``, ``t (B, L)``, ``index (B, L')``,
        ``valid (B, L')``, ``counts (B,)``.
        """
        check_mixer_input(x, mask, self.d_model)
        cfg = self.config
        b, length, d = x.shape
        info: dict[str, Any] = {"branches": []}
        if length == 0:
            y = x.new_zeros(b, 0, d)
            return (y, info) if return_info else y
        lengths = mask.sum(1) if mask is not None else torch.full((b,), length, device=x.device)
        xm = x * mask.unsqueeze(-1).to(x.dtype) if mask is not None else x
        outs = []
        shared = self._score(xm, 0) if cfg.share_intervals else None
        for i, rate in enumerate(cfg.rates):
            s = shared if shared is not None else self._score(xm, i)
            delta = self._intervals(s, rate)
            t, counts = rs.intervals_to_times(delta, mask, rate, cfg.causal)  # masks Δ itself
            buffer = rs.compressed_length(rate, length, cfg.causal, cfg.delta_max(rate))
            counts = counts.clamp(max=buffer)
            if cfg.trim_buffer:  # slots past the batch's largest count are padding in every row
                buffer = max(1, min(buffer, int(counts.max())))
            index, valid = rs.select_grid(t.detach(), counts, lengths, buffer)
            if cfg.aggregate == "cell":
                xc = self.aggregators[i](rs.cell_pool(xm, t, counts, buffer, mask))
            else:
                xw, offsets, ok = rs.gather_windows(xm, t, index, valid, lengths, cfg.window, cfg.causal)
                phi = self._rbf(offsets, i) * ok.unsqueeze(-1).to(xw.dtype)
                xc = self.aggregators[i](xw, phi.to(xw.dtype), ok)
            xc = xc * valid.unsqueeze(-1).to(xc.dtype)
            yc = self.backbones[i](xc, mask=valid)
            outs.append(rs.restore(yc, t, counts, index, valid, mask, cfg.restore))
            if return_info:
                if mask is not None:
                    delta = delta * mask.to(delta.dtype)
                info["branches"].append(
                    {"rate": rate, "delta": delta, "t": t, "index": index, "valid": valid, "counts": counts}
                )
        if self.full_backbone is not None:
            outs.append(self.full_backbone(xm, mask=mask))
        y = self._gated(self.out_proj(torch.cat(outs, dim=-1)), xm)
        if mask is not None:
            y = y * mask.unsqueeze(-1).to(y.dtype)
        return (y, info) if return_info else y

    # ------------------------------------------------------------------ streaming
    def _check_streaming(self) -> None:
        if not self.config.causal:
            raise ValueError("step: expected a causal SeRpEnt (causal=True), got a non-causal one")

    def allocate_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, Any]:
        """Streaming state for ``batch`` rows (causal mode only)."""
        self._check_streaming()
        device = device if device is not None else self.out_proj.weight.device
        dtype = dtype if dtype is not None else self.out_proj.weight.dtype
        k, d = self.config.window, self.d_model
        branches = []
        for bb in self.backbones:
            st = {
                "t": torch.zeros(batch, dtype=torch.float64, device=device),  # running time
                "held": torch.zeros(batch, d, dtype=dtype, device=device),  # latest backbone output
                "backbone": bb.allocate_state(batch, device=device, dtype=dtype),
            }
            if self.config.aggregate == "cell":  # the open cell's pooled input so far
                st["acc"] = torch.zeros(batch, d, dtype=dtype, device=device)
            else:  # the last K inputs, their times, and how many inputs were seen (up to K matters)
                st["seen"] = torch.zeros(batch, dtype=torch.long, device=device)
                st["x"] = torch.zeros(batch, k, d, dtype=dtype, device=device)
                st["times"] = torch.zeros(batch, k, dtype=torch.float64, device=device)
            branches.append(st)
        state: dict[str, Any] = {"branches": branches}
        if self.full_backbone is not None:
            state["full"] = self.full_backbone.allocate_state(batch, device=device, dtype=dtype)
        return state

    def step(self, x_t: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """One element ``x_t (B, d_model)`` -> ``y_t (B, d_model)``; returns the new state."""
        self._check_streaming()
        check_float_tensor("x_t", x_t, ndim=2)
        check_shape("x_t", x_t, (None, self.d_model))
        if not isinstance(state, dict) or len(state.get("branches", ())) != len(self.backbones):
            raise ValueError(
                "state: expected the dict returned by allocate_state() or step(), got something else"
            )
        cfg = self.config
        cell = cfg.aggregate == "cell"
        outs, new_branches = [], []
        shared = self._score(x_t, 0) if cfg.share_intervals else None
        for i, rate in enumerate(cfg.rates):
            st = state["branches"][i]
            s = shared if shared is not None else self._score(x_t, i)
            t_old = st["t"]
            t_new = t_old + self._intervals(s, rate).double()
            k_old = torch.floor(t_old)
            crossings = (torch.floor(t_new) - k_old).long()  # grid points crossed by this element
            new: dict[str, Any] = {"t": t_new}
            if not cell:
                k_win = cfg.window
                xbuf = torch.cat([st["x"][:, 1:], x_t.unsqueeze(1)], dim=1)
                tbuf = torch.cat([st["times"][:, 1:], t_new.unsqueeze(1)], dim=1)
                seen = st["seen"] + 1
                ok = torch.arange(k_win, device=x_t.device).unsqueeze(0) >= (k_win - seen).unsqueeze(1)
                xw = (xbuf * ok.unsqueeze(-1).to(xbuf.dtype)).unsqueeze(1)  # (B, 1, K, D)
                new.update(seen=seen, x=xbuf, times=tbuf)
            held, bstate = st["held"], st["backbone"]
            scattered = torch.zeros_like(held)
            for j in range(1, int(crossings.max().item()) + 1 if crossings.numel() else 1):
                active = crossings >= j
                if cell:  # close cell k_old + j with this element's share of it
                    c = k_old + j
                    share = (torch.minimum(t_new, c) - torch.maximum(t_old, c - 1)).clamp_min(0.0)
                    pooled = share.to(x_t.dtype).unsqueeze(1) * x_t + (st["acc"] if j == 1 else 0.0)
                    xk = self.aggregators[i](pooled)
                else:
                    offsets = torch.where(ok, (k_old + j).unsqueeze(1) - tbuf, torch.zeros_like(tbuf))
                    phi = (self._rbf(offsets, i) * ok.unsqueeze(-1).to(xw.dtype)).unsqueeze(1)
                    xk = self.aggregators[i](xw, phi.to(xw.dtype), ok.unsqueeze(1))[:, 0]
                yk, new_bstate = self.backbones[i].step(xk, bstate)
                bstate = _where_state(active, new_bstate, bstate)
                held = torch.where(active.unsqueeze(1), yk, held)
                scattered = scattered + yk * active.unsqueeze(1).to(yk.dtype)
            if cell:  # the open cell keeps what is left of this element's interval
                rest = (t_new - torch.maximum(t_old, torch.floor(t_new))).to(x_t.dtype).unsqueeze(1)
                new["acc"] = torch.where((crossings > 0).unsqueeze(1), rest * x_t, st["acc"] + rest * x_t)
            new.update(held=held, backbone=bstate)
            outs.append(held if cfg.restore == "hold" else scattered)
            new_branches.append(new)
        new_state: dict[str, Any] = {"branches": new_branches}
        if self.full_backbone is not None:
            y_full, new_state["full"] = self.full_backbone.step(x_t, state["full"])
            outs.append(y_full)
        return self._gated(self.out_proj(torch.cat(outs, dim=-1)), x_t), new_state
