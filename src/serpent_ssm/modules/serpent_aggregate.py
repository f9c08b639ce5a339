"""How a SeRpEnt branch turns the elements around a grid point into that grid point's input.

Two aggregators, each owning its parameters, its full-sequence pooling, its streaming state and
its step update, so that the mixer itself has no aggregation fork:

- ``CellAggregator`` (``aggregate="cell"``): every element is pooled into the grid cells
  ``(k − 1, k]`` its interval overlaps, weighted by the overlap (``ops.resample.cell_pool``),
  then mapped by ``proj``. Streaming state: the open cell's pooled input so far.
- ``WindowAggregator`` (``aggregate="linear"`` or ``"kernel"``): the ``K`` elements around the
  selected one (causal: it and its ``K − 1`` predecessors) with the Gaussian RBF features of
  their time offsets ``k − t_j``; ``"linear"`` maps the concatenation with one linear layer,
  ``"kernel"`` applies a continuous filter ``Σ_j g(φ(δ_kj)) ⊙ V x_j``. Streaming state: the
  last ``K`` inputs, their times, and how many inputs were seen.

Full sequence: ``aggregate(x, grid) -> (B, L', D)``, with the branch's resampling in a ``Grid``.
A chunk of a longer causal sequence: ``aggregate_chunk(x, grid, state, t_start, base) ->
((B, L', D), new_state)``, the grid counted from the chunk's first cell, which may already hold
inputs of earlier chunks (``grid.t`` = the global times minus ``base (B,)``, the grid points before
the chunk; ``t_start (B,)`` = where the chunk's time starts in its first cell).
Streaming: ``allocate_state(batch, device, dtype)``, then per element
``grid_inputs(x_t, t_old, t_new, state, n) -> ([x_k (B, D)] * n, new_state)``: the inputs of the
grid points ``floor(t_old) + 1 .. floor(t_old) + n`` (rows that cross fewer get values that the
caller ignores) and the state after the element.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from serpent_ssm.ops import resample as rs
from serpent_ssm.ops.states import CellPoolState, WindowState

__all__ = ["CellAggregator", "Grid", "WindowAggregator", "make_aggregator"]


class Grid(NamedTuple):
    """One branch's resampling of a batch (``ops.resample``): times ``t (B, L)`` float64, grid
    points per row ``counts (B,)``, the selected elements ``index (B, L')`` and which slots are
    real ``valid (B, L')``, real lengths ``lengths (B,)``, the input ``mask (B, L)`` (or None)
    and the buffer length ``L'``."""

    t: torch.Tensor
    counts: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor | None
    buffer: int


class CellAggregator(nn.Module):
    """Overlap-weighted pooling into grid cells, then ``proj: D -> D`` (identity at
    ``init="identity"``; with ``proj=False`` no map at all, and no parameters)."""

    def __init__(self, d: int, init: str, proj: bool = True) -> None:
        super().__init__()
        self.d = d
        self.proj = nn.Linear(d, d) if proj else nn.Identity()
        if init == "identity" and proj:
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(d))
                self.proj.bias.zero_()

    def aggregate(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``x (B, L, D)`` -> grid inputs ``(B, L', D)``: each cell's overlap-weighted sum."""
        return self.proj(rs.cell_pool(x, grid.t, grid.counts, grid.buffer, grid.mask))

    def aggregate_chunk(
        self, x: torch.Tensor, grid: Grid, state: CellPoolState, t_start: torch.Tensor, base: torch.Tensor
    ) -> tuple[torch.Tensor, CellPoolState]:
        """A causal chunk (see module doc): the cells it completes, the first one adding the
        state's open cell, and the new open cell (the cell after the last grid point crossed)."""
        b, d = x.shape[0], self.d
        pooled = rs.cell_pool(x, grid.t, grid.counts + 1, grid.buffer + 1, grid.mask, t_start)
        pooled = torch.cat([pooled[:, :1] + state.acc.unsqueeze(1), pooled[:, 1:]], dim=1)
        open_cell = pooled.gather(1, grid.counts.view(b, 1, 1).expand(b, 1, d))[:, 0]
        return self.proj(pooled[:, : grid.buffer]), CellPoolState(open_cell)

    def allocate_state(self, batch: int, device, dtype) -> CellPoolState:
        """``acc (B, D)``: the open cell's pooled input so far."""
        return CellPoolState(torch.zeros(batch, self.d, dtype=dtype, device=device))

    def grid_inputs(
        self, x_t: torch.Tensor, t_old: torch.Tensor, t_new: torch.Tensor, state: CellPoolState, n: int
    ) -> tuple[list[torch.Tensor], CellPoolState]:
        """Close the cells this element's interval ``(t_old, t_new]`` completes (see module doc)."""
        k_old = torch.floor(t_old)
        inputs = []
        for j in range(1, n + 1):  # cell k_old + j gets this element's share of it
            c = k_old + j
            share = (torch.minimum(t_new, c) - torch.maximum(t_old, c - 1)).clamp_min(0.0)
            pooled = share.to(x_t.dtype).unsqueeze(1) * x_t + (state.acc if j == 1 else 0.0)
            inputs.append(self.proj(pooled))
        crossed = torch.floor(t_new) > k_old
        rest = (t_new - torch.maximum(t_old, torch.floor(t_new))).to(x_t.dtype).unsqueeze(1)
        acc = torch.where(crossed.unsqueeze(1), rest * x_t, state.acc + rest * x_t)
        return inputs, CellPoolState(acc)


class WindowAggregator(nn.Module):
    """A window of ``K`` elements and their RBF time features -> one grid input.

    ``kind="linear"``: ``proj`` maps the concatenation ``(K·(D + M)) -> D``; ``kind="kernel"``:
    ``filter: M -> D`` weighs each element's ``value: D -> D`` by its offset's features.
    ``init="identity"`` passes the selected element through (small random RBF weights).
    """

    def __init__(
        self, d: int, window: int, n_bases: int, kind: str, causal: bool, delta_max: float, init: str
    ) -> None:
        super().__init__()
        self.d, self.kind, self.window, self.causal = d, kind, window, causal
        offsets = rs.window_offsets(window, causal)
        if kind == "linear":
            self.proj = nn.Linear(window * (d + n_bases), d)
            if init == "identity":
                with torch.no_grad():
                    w = torch.zeros(d, window, d + n_bases)
                    w[:, offsets.index(0), :d] = torch.eye(d)
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
        # RBF centres over the offsets δ = k - t_j a window can reach: the selected element lies
        # in (-Δmax, 0]; a neighbour r places before it up to r·Δmax above, one r places after
        # it (non-causal) down to -(r + 1)·Δmax.
        before, after = -offsets[0], offsets[-1]
        self._rbf_span = (n_bases, -(after + 1) * delta_max, before * delta_max)
        centers, self.sigma = rs.rbf_centers(*self._rbf_span)
        self.register_buffer("rbf_centers", centers, persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the RBF centres (a buffer that is not saved: loaders that build the module
        without running its construction, as transformers' ``from_pretrained`` does, call this)."""
        centers, _ = rs.rbf_centers(*self._rbf_span)
        with torch.no_grad():
            self.rbf_centers = centers.to(device=self.rbf_centers.device, dtype=self.rbf_centers.dtype)

    def _map(self, xw: torch.Tensor, offsets: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """Window ``xw (B, L', K, D)``, ``offsets (B, L', K)``, ``ok (B, L', K)`` -> ``(B, L', D)``."""
        phi = rs.rbf_features(offsets, self.rbf_centers, self.sigma) * ok.unsqueeze(-1).to(xw.dtype)
        phi = phi.to(xw.dtype)
        if self.kind == "linear":
            return self.proj(torch.cat([xw, phi], dim=-1).flatten(-2))  # (B, L', K·(D + M))
        weight = self.filter(phi) * ok.unsqueeze(-1).to(phi.dtype)  # (B, L', K, D)
        return (weight * self.value(xw)).sum(-2)

    def aggregate(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """``x (B, L, D)`` -> grid inputs ``(B, L', D)``: the window around each selected element."""
        g = grid
        xw, offsets, ok = rs.gather_windows(x, g.t, g.index, g.valid, g.lengths, self.window, self.causal)
        return self._map(xw, offsets, ok)

    def aggregate_chunk(
        self, x: torch.Tensor, grid: Grid, state: WindowState, t_start: torch.Tensor, base: torch.Tensor
    ) -> tuple[torch.Tensor, WindowState]:
        """A causal chunk (see module doc): each window may reach back into the state's last
        ``K`` inputs (those the row has seen); the new state holds the last ``K`` real inputs."""
        g, k = grid, self.window
        xs = torch.cat([state.x, x], dim=1)  # (B, K + L, D): the state's inputs, then the chunk's
        ts = torch.cat([state.times - base.unsqueeze(1), g.t], dim=1)  # times from ``base``
        index, lengths = g.index + k, g.lengths + k
        xw, offsets, ok = rs.gather_windows(xs, ts, index, g.valid, lengths, k, True)
        neighbour = index.unsqueeze(-1) + torch.tensor(rs.window_offsets(k, True), device=x.device)
        seen = state.seen.clamp(max=k).view(-1, 1, 1)
        ok = ok & (neighbour >= k - seen)  # state slots the row has not filled are not inputs
        xw = torch.where(ok.unsqueeze(-1), xw, 0.0)
        y = self._map(xw, torch.where(ok, offsets, 0.0), ok)
        last = (lengths.unsqueeze(1) - k + torch.arange(k, device=x.device)).clamp_min(0)  # (B, K)
        new_x = xs.gather(1, last.unsqueeze(-1).expand(-1, -1, xs.shape[2]))
        new_t = ts.gather(1, last) + base.unsqueeze(1)
        return y, WindowState(state.seen + g.lengths, new_x, new_t)

    def allocate_state(self, batch: int, device, dtype) -> WindowState:
        """``seen (B,)``, the last ``K`` inputs ``x (B, K, D)`` and their times ``(B, K)`` float64."""
        k, d = self.window, self.d
        return WindowState(
            seen=torch.zeros(batch, dtype=torch.long, device=device),
            x=torch.zeros(batch, k, d, dtype=dtype, device=device),
            times=torch.zeros(batch, k, dtype=torch.float64, device=device),
        )

    def grid_inputs(
        self, x_t: torch.Tensor, t_old: torch.Tensor, t_new: torch.Tensor, state: WindowState, n: int
    ) -> tuple[list[torch.Tensor], WindowState]:
        """The window ending at this element, read at each grid point it crosses (see module doc)."""
        k = self.window
        xbuf = torch.cat([state.x[:, 1:], x_t.unsqueeze(1)], dim=1)
        tbuf = torch.cat([state.times[:, 1:], t_new.unsqueeze(1)], dim=1)
        seen = state.seen + 1
        ok = torch.arange(k, device=x_t.device).unsqueeze(0) >= (k - seen).unsqueeze(1)  # (B, K)
        xw = (xbuf * ok.unsqueeze(-1).to(xbuf.dtype)).unsqueeze(1)  # (B, 1, K, D)
        k_old = torch.floor(t_old)
        inputs = []
        for j in range(1, n + 1):
            offsets = torch.where(ok, (k_old + j).unsqueeze(1) - tbuf, torch.zeros_like(tbuf))
            inputs.append(self._map(xw, offsets.unsqueeze(1), ok.unsqueeze(1))[:, 0])
        return inputs, WindowState(seen, xbuf, tbuf)


def make_aggregator(
    d: int,
    window: int,
    n_bases: int,
    kind: str,
    causal: bool,
    delta_max: float,
    init: str,
    cell_proj: bool = True,
) -> nn.Module:
    """The aggregator of ``aggregate=kind`` (``"cell"``, ``"linear"`` or ``"kernel"``)."""
    if kind == "cell":
        return CellAggregator(d, init, cell_proj)
    return WindowAggregator(d, window, n_bases, kind, causal, delta_max, init)
