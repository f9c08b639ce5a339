"""``serpent analyze informative``: do SeRpEnt's grid points land on the informative positions?

On a task whose informative positions are known (sparse digits: the digits; ``INFORMATIVE_TASKS``),
per SeRpEnt layer and branch (compression rate ``κ``): the share of the branch's valid grid points
that land on an informative position (grid point ``k`` lands on the position the resampler selects
for it, ``index[k]``; ``analysis.intervals.record_resampling``), against the informative
positions' share of the sequence — what a grid that ignores the content would give on average.
``enrichment`` is their ratio (1: no preference; above 1: the grid favours the informative
positions), and ``informative_covered`` the share of informative positions that at least one grid
point selects.

``analyze_informative_run`` measures a run twice: at its ``start`` (the model freshly initialised
with the run's seed, its step-0 weights: ``train.loop.initial_model``) and at its ``end`` (its
``best/`` or ``final/`` model), and writes ``informative.json`` and ``informative.png`` (one bar
chart per layer: sequence share, start and end grid-point shares per branch).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serpent_ssm.analysis.intervals import record_resampling
from serpent_ssm.analysis.resampling import _pyplot, _save
from serpent_ssm.data.sparse_digits import informative_mask
from serpent_ssm.utils.io import atomic_write_text

__all__ = [
    "INFORMATIVE_TASKS",
    "analyze_informative_run",
    "branch_counts",
    "informative_shares",
    "plot_informative",
]


# task -> the informative positions of its inputs: ``(B, L)`` ids -> ``(B, L)`` bool
INFORMATIVE_TASKS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"sparse-digits": informative_mask}


def branch_counts(infos: dict[int, dict[str, Any]], informative: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Count, per ``"layer{i}/rate{κ}"``, the grid points of ``record_resampling``'s ``infos`` on
    ``informative (B, L)`` bool (False at padding).

    Returns per branch ``{"layer", "rate", "grid_points"`` (valid grid points), ``"on_informative"``
    (those whose ``index`` is an informative position), ``"covered"`` (informative positions
    selected by at least one grid point)``}``, plain ints.
    """
    informative = informative.cpu()
    out = {}
    for layer in sorted(infos):
        for branch in infos[layer]["branches"]:
            index, valid = branch["index"].cpu(), branch["valid"].cpu()
            rows = torch.arange(index.shape[0])[:, None].expand_as(index)
            selected = torch.zeros_like(informative)
            selected[rows[valid], index[valid]] = True
            out[f"layer{layer}/rate{branch['rate']:g}"] = {
                "layer": layer,
                "rate": branch["rate"],
                "grid_points": int(valid.sum()),
                "on_informative": int((informative.gather(1, index) & valid).sum()),
                "covered": int((selected & informative).sum()),
            }
    return out


def _shares(counts: dict[str, dict[str, Any]], n_positions: int, n_informative: int) -> dict[str, Any]:
    """The summed counts as shares (see ``informative_shares``)."""
    sequence_share = n_informative / max(n_positions, 1)
    branches = {}
    for key, c in counts.items():
        grid_share = c["on_informative"] / max(c["grid_points"], 1)
        branches[key] = {
            **c,
            "grid_share": grid_share,
            "enrichment": grid_share / sequence_share if sequence_share else None,
            "informative_covered": c["covered"] / max(n_informative, 1),
        }
    return {
        "n_positions": n_positions,
        "n_informative": n_informative,
        "sequence_share": sequence_share,
        "branches": branches,
    }


def informative_shares(
    model: nn.Module,
    inputs: torch.Tensor,
    informative: torch.Tensor,
    mask: torch.Tensor | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Where ``model``'s SeRpEnt grid points land on ``inputs (B, L)`` (or ``(B, L, C)``).

    ``informative (B, L)`` bool marks the informative positions, ``mask (B, L)`` the real ones
    (right padding; None = all real). Sequences are processed ``batch_size`` at a time.
    Returns ``{"n_sequences", "n_positions", "n_informative", "sequence_share" (informative
    share of the real positions), "branches": {"layer{i}/rate{κ}": {"layer", "rate",
    "grid_points", "on_informative", "covered", "grid_share" (on_informative / grid_points),
    "enrichment" (grid_share / sequence_share), "informative_covered" (covered /
    n_informative)}}}`` (plain numbers; counts summed over the sequences).
    """
    if informative.shape != inputs.shape[:2]:
        raise ValueError(
            f"informative: expected a mask of shape {tuple(inputs.shape[:2])}, got {tuple(informative.shape)}"
        )
    informative = informative.bool()
    real = torch.ones_like(informative) if mask is None else mask.bool()
    informative = informative & real
    totals: dict[str, dict[str, Any]] = {}
    for lo in range(0, inputs.shape[0], batch_size):
        part = slice(lo, lo + batch_size)
        infos = record_resampling(model, inputs[part], None if mask is None else mask[part])
        for key, c in branch_counts(infos, informative[part]).items():
            total = totals.setdefault(key, {**c, "grid_points": 0, "on_informative": 0, "covered": 0})
            for field in ("grid_points", "on_informative", "covered"):
                total[field] += c[field]
    result = _shares(totals, int(real.sum()), int(informative.sum()))
    return {"n_sequences": int(inputs.shape[0]), **result}


def _bar_value(result: dict[str, Any], what: str, key: str) -> float:
    """The sequence share, or branch ``key``'s grid-point share at the ``start`` or the ``end``."""
    if what == "sequence":
        return result["end"]["sequence_share"]
    return result[what]["branches"][key]["grid_share"]


def plot_informative(result: dict[str, Any], path: Path) -> Path:
    """One bar chart per SeRpEnt layer of ``analyze_informative_run``'s result: per branch the
    sequence share and the grid-point shares at the start and at the end of the run."""
    plt = _pyplot()
    keys = list(result["end"]["branches"])
    layers = sorted({result["end"]["branches"][k]["layer"] for k in keys})
    fig, axes = plt.subplots(1, len(layers), figsize=(1.5 + 1.6 * len(keys), 3.6), squeeze=False)
    bars = (("sequence", "#999999"), ("start", "#9ecae1"), ("end", "#08519c"))
    for ax, layer in zip(axes[0], layers, strict=True):
        names = [k for k in keys if result["end"]["branches"][k]["layer"] == layer]
        for j, (what, color) in enumerate(bars):
            values = [_bar_value(result, what, k) for k in names]
            xs = [i + (j - 1) * 0.27 for i in range(len(names))]
            label = "share of the sequence" if what == "sequence" else f"grid points ({what})"
            ax.bar(xs, values, width=0.27, color=color, label=label)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([f"κ={result['end']['branches'][k]['rate']:g}" for k in names])
        ax.set_title(f"SeRpEnt layer {layer}", fontsize=9)
        ax.set_ylabel("share on informative positions")
        ax.set_ylim(0.0, ax.get_ylim()[1] * 1.25)  # headroom for the legend above the bars
    axes[0][0].legend(fontsize=7, loc="upper center", ncol=3)
    fig.suptitle(
        f"{result['task']}: grid points on informative positions ({result['n']} sequences)", fontsize=9
    )
    return _save(fig, path, 100)


def _fresh_model(cfg) -> nn.Module:
    """The run's step-0 model, built without touching the caller's random state."""
    from serpent_ssm.train.loop import initial_model

    with torch.random.fork_rng(devices=[]):
        return initial_model(cfg)


def _run_inputs(cfg, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of the run's ``split``, right-padded: ``inputs (B, L)``, ``mask (B, L)``."""
    from serpent_ssm.data.collate import pad_sequences
    from serpent_ssm.train.tasks import load_task

    data = getattr(load_task(cfg.data), split)
    return pad_sequences([torch.as_tensor(data[i][0]) for i in range(min(n, len(data)))])


def analyze_informative_run(
    run_dir: str | Path, n: int = 256, split: str = "val", which: str = "best", out: str | Path | None = None
) -> list[Path]:
    """``informative_shares`` of a SeRpEnt run at its start and its end (``which``: ``best`` or
    ``final``) on the first ``n`` sequences of its ``split``; writes ``informative.json``
    (``{"task", "split", "which", "n", "start", "end"}``) and ``informative.png`` (with
    matplotlib) into ``out`` (default: the run directory) and returns their paths. Only runs of
    a task in ``INFORMATIVE_TASKS`` are accepted."""
    from serpent_ssm.models import from_pretrained
    from serpent_ssm.train.run_files import read_run_config

    if n < 1:
        raise ValueError(f"--n: expected a positive integer, got {n}")
    run = Path(run_dir)
    cfg = read_run_config(run)
    if cfg.data.task not in INFORMATIVE_TASKS:
        raise ValueError(
            f"run_dir: expected a run of a task with known informative positions "
            f"({', '.join(INFORMATIVE_TASKS)}), got a run of {cfg.data.task!r}"
        )
    end = from_pretrained(run / which)
    inputs, mask = _run_inputs(cfg, split, n)
    informative = INFORMATIVE_TASKS[cfg.data.task](inputs)
    result: dict[str, Any] = {"task": cfg.data.task, "split": split, "which": which, "n": len(inputs)}
    for name, model in (("start", _fresh_model(cfg)), ("end", end)):
        result[name] = informative_shares(model, inputs, informative, mask)
    folder = Path(out or run)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "informative.json"
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    paths = [path]
    try:
        paths.append(plot_informative(result, folder / "informative.png"))
    except ModuleNotFoundError as e:
        print(f"no figure: {e}")
    return paths
