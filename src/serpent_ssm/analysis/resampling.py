"""``serpent analyze resampling``: what SeRpEnt's resampler does to one sample.

For one SeRpEnt layer and every branch (compression rate ``κ``): the intervals ``Δ_l``, the
cumulative time ``t_l = Σ_{j<=l} Δ_j`` (rescaled to ``ceil(κ·n)`` in non-causal mode) and the
positions the grid selects (grid point ``k`` takes the first element with ``t_l >= k``). Drawn as

- ``resampling_curves.png``: intervals and cumulative time along the sequence, selected positions
  marked;
- text and token sequences: ``resampling_text.png``, the characters (or tokens) shaded by their
  interval, one panel per branch, the selected ones boxed;
- square pixel sequences (images): ``resampling_image.png``, the image and per branch a heat map
  of the intervals over the pixels with the selected pixels dotted.

``resampling.json`` holds the numbers behind the figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serpent_ssm.analysis.intervals import record_resampling
from serpent_ssm.analysis.report import Sample, samples_from_dataset, samples_from_text
from serpent_ssm.data.vocab import Vocab

__all__ = ["resampling_view", "plot_resampling", "analyze_resampling_run"]


def resampling_view(model, sample: Sample, layer: int | None = None) -> dict[str, Any]:
    """Per branch of SeRpEnt layer ``layer`` (default: the first SeRpEnt layer) on ``sample``:
    ``{"layer", "n", "branches": [{"rate", "delta" (n,), "t" (n,), "selected" (count,), "count"}]}``
    (plain lists; ``selected`` may repeat a position when several grid points fall in one
    interval)."""
    infos = record_resampling(model, sample.inputs[None])
    if layer is None:
        layer = min(infos)
    if layer not in infos:
        raise ValueError(f"layer: expected one of the SeRpEnt layers {sorted(infos)}, got {layer}")
    n = len(sample.inputs)
    branches = []
    for b in infos[layer]["branches"]:
        count = int(b["counts"][0])
        selected = b["index"][0][b["valid"][0]].tolist()
        branches.append(
            {
                "rate": b["rate"],
                "count": count,
                "delta": b["delta"][0].float().tolist(),
                "t": b["t"][0].float().tolist(),
                "selected": selected,
            }
        )
    return {"layer": layer, "n": n, "branches": branches}


def _labels(sample: Sample, vocab: Vocab | None) -> list[str]:
    """One printable label per position: characters (at their first byte), tokens, or ''."""
    if sample.text is not None:
        out: list[str] = []
        for c in sample.text:
            size = len(c.encode("utf-8"))
            shown = {"\n": "⏎", "\t": "→", " ": "␣"}.get(c, c if c.isprintable() else "·")
            out += [shown] + [""] * (size - 1)
        return out
    if vocab is not None and vocab.kind == "tokens" and not sample.inputs.is_floating_point():
        return [vocab.tokens[int(i)] for i in sample.inputs]
    if sample.inputs.is_floating_point():
        return []
    return [chr(b) if 32 <= b < 127 else "·" for b in sample.symbols]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ModuleNotFoundError("plots need matplotlib: pip install 'serpent-ssm[plots]'") from None
    return plt


def _save(fig, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def plot_resampling(
    view: dict[str, Any], sample: Sample, folder: Path, vocab: Vocab | None = None, max_positions: int = 480
) -> list[Path]:
    """Write the figures described in the module docstring into ``folder``; returns their paths."""
    n = min(view["n"], max_positions)
    paths = [_plot_curves(view, n, folder)]
    side = math.isqrt(view["n"])
    if sample.inputs.is_floating_point() and side * side == view["n"]:
        return [*paths, _plot_image(view, sample, side, folder)]
    labels = _labels(sample, vocab)[:n]
    if labels:
        paths.append(_plot_text(view, labels, folder))
    return paths


def _plot_curves(view: dict[str, Any], n: int, folder: Path) -> Path:
    """Intervals and cumulative time of the first ``n`` positions, selected ones dotted."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 5), sharex=True)
    for br in view["branches"]:
        delta, t = np.asarray(br["delta"][:n]), np.asarray(br["t"][:n])
        sel = sorted({p for p in br["selected"] if p < n})
        (line,) = ax1.plot(delta, lw=0.8, label=f"κ={br['rate']:g} ({br['count']} selected of {view['n']})")
        ax1.plot(sel, delta[sel], "o", ms=2.5, color=line.get_color())
        ax2.plot(t, lw=0.8, color=line.get_color())
        ax2.plot(sel, t[sel], "o", ms=2.5, color=line.get_color())
    ax1.set_ylabel("interval Δ")
    ax2.set_ylabel("cumulative time t")
    ax2.set_xlabel("position (dots: selected by a grid point)")
    ax1.legend(fontsize=7)
    ax1.set_title(f"SeRpEnt layer {view['layer']}: intervals and selected positions", fontsize=9)
    return _save(fig, folder / "resampling_curves.png", 100)


def _plot_image(view: dict[str, Any], sample: Sample, side: int, folder: Path) -> Path:
    """A square image and, per branch, its interval heat map with the selected pixels dotted."""
    plt = _pyplot()
    branches = view["branches"]
    cols = len(branches) + 1
    fig, axes = plt.subplots(1, cols, figsize=(3 * cols, 3.2))
    axes[0].imshow(sample.inputs.reshape(side, side, -1)[..., 0].numpy(), cmap="gray")
    axes[0].set_title("input", fontsize=8)
    for ax, br in zip(axes[1:], branches, strict=True):
        im = ax.imshow(np.asarray(br["delta"]).reshape(side, side), cmap="magma")
        sel = np.unique(br["selected"])
        ax.plot(sel % side, sel // side, "c.", ms=2)
        ax.set_title(f"κ={br['rate']:g}: Δ, {len(sel)} pixels selected", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, folder / "resampling_image.png", 100)


def _plot_text(view: dict[str, Any], labels: list[str], folder: Path, per_line: int = 80) -> Path:
    """Characters or tokens shaded by interval, per branch, selected ones boxed."""
    from matplotlib import colormaps

    plt = _pyplot()
    branches = view["branches"]
    lines = math.ceil(len(labels) / per_line)
    fig, axes = plt.subplots(
        len(branches), 1, figsize=(12, 0.32 * lines * len(branches) + 0.5 * len(branches)), squeeze=False
    )
    cmap = colormaps["YlOrRd"]
    for ax, br in zip(axes[:, 0], branches, strict=True):
        delta = np.asarray(br["delta"][: len(labels)])
        lo, hi = float(delta.min()), float(delta.max())
        sel = set(br["selected"])
        for p, label in enumerate(labels):
            x, y = p % per_line, -(p // per_line)
            shade = (delta[p] - lo) / (hi - lo) if hi > lo else 0.5
            ax.add_patch(plt.Rectangle((x, y - 0.5), 1, 0.9, color=cmap(0.1 + 0.8 * shade), lw=0))
            if p in sel:
                ax.add_patch(plt.Rectangle((x, y - 0.5), 1, 0.9, fill=False, ec="blue", lw=0.8))
            if label:
                ax.text(x + 0.5, y - 0.05, label[:3], ha="center", va="center", fontsize=6)
        ax.set_xlim(0, per_line)
        ax.set_ylim(-lines + 0.3, 0.6)
        ax.axis("off")
        ax.set_title(
            f"κ={br['rate']:g}: shade = interval ({lo:.3g} … {hi:.3g}); boxed = selected "
            f"({len(sel)} of {len(labels)} shown)",
            fontsize=8,
            loc="left",
        )
    return _save(fig, folder / "resampling_text.png", 110)


def analyze_resampling_run(
    run_dir: str | Path,
    text: bytes | None = None,
    split: str = "val",
    index: int = 0,
    layer: int | None = None,
    out: str | Path | None = None,
    max_bytes: int = 480,
) -> list[Path]:
    """The resampling view of a SeRpEnt run's best model on ``text`` or on sample ``index`` of the
    run's ``split`` (an LM: ``max_bytes`` bytes from byte ``index * max_bytes``). Writes
    ``resampling.json`` and the PNGs into ``out`` (default: the run directory)."""
    from serpent_ssm.analysis.report import _run_data, lm_split_bytes
    from serpent_ssm.models import from_pretrained

    run = Path(run_dir)
    model = from_pretrained(run / "best")
    vocab = Vocab.load(run / "vocab.json") if (run / "vocab.json").is_file() else None
    if text is not None:
        sample = samples_from_text(text)[0]
    else:
        task, vocab = _run_data(run)
        data = getattr(task, split)
        if model.config.head == "lm":
            chunk = lm_split_bytes(task, split, index * max_bytes, (index + 1) * max_bytes)
            sample = samples_from_text(chunk)[0]
        else:
            if not 0 <= index < len(data):
                raise ValueError(f"--index: expected 0 <= index < {len(data)} ({split} samples), got {index}")
            sample = samples_from_dataset(torch.utils.data.Subset(data, [index]), 1, vocab)[0]
    view = resampling_view(model, sample, layer)
    folder = Path(out or run)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "resampling.json"
    path.write_text(json.dumps(view) + "\n")
    paths = [path]
    try:
        paths += plot_resampling(view, sample, folder, vocab)
    except ModuleNotFoundError as e:
        print(f"no figures: {e}")
    return paths
