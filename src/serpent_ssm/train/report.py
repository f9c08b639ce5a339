"""``serpent eval``, ``serpent report`` and ``serpent plot`` over finished run directories.

A run directory (written by ``train``) holds ``config.json`` (``train.run_files``),
``metrics.jsonl``, ``summary.json``, ``best/`` and ``final/`` (``config.json`` +
``model.safetensors``), and after ``serpent eval``, ``eval_<split>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serpent_ssm.models import from_pretrained
from serpent_ssm.train.evaluation import evaluate_split
from serpent_ssm.train.run_files import METRICS, read_metrics_file, read_run_config
from serpent_ssm.train.tasks import load_task

__all__ = [
    "evaluate_run",
    "plot_run",
    "read_metrics",
    "report_table",
]


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ValueError(f"{path}: missing: expected {what} (is this a finished run directory?)")
    return path


SUMMARY_KEYS = ("task", "model", "parameters", "steps", "best_val", "peak_memory_mb", "wall_time_s")


def _read_json(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object in ``path`` with at least ``keys``; a ValueError naming the file otherwise."""
    try:
        record = json.loads(_need(path, what).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected {what}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object ({what}), got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{path}: expected {what} with the key {missing[0]!r}, got keys {sorted(record)}")
    return record


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` records (a torn last line dropped with a warning)."""
    return read_metrics_file(_need(Path(run_dir) / METRICS, "the run's metrics.jsonl"))


def evaluate_run(run_dir: str | Path, split: str = "test", which: str = "best") -> dict[str, Any]:
    """Evaluate the run's ``best`` (or ``final``) model on ``split``; writes ``eval_<split>.json``."""
    run = Path(run_dir)
    if split not in ("train", "val", "test"):
        raise ValueError(f"--split: expected one of train, val, test, got {split!r}")
    cfg = read_run_config(run)
    model = from_pretrained(run / which)
    metrics = evaluate_split(model, load_task(cfg.data), split, cfg.data)
    result = {"split": split, "model": which, **metrics}
    (run / f"eval_{split}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def report_table(run_dirs: list[str | Path]) -> str:
    """A markdown table, one row per run: task, model, parameters, the metric (accuracy, or bits
    per byte for language models) on val (best) and test, speed, memory, time."""
    rows = [
        "| task | model | parameters | steps | metric | best val | test | tokens/s | peak MB | wall s "
        "| run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in map(Path, run_dirs):
        s = _read_json(run / "summary.json", "the run's summary.json", SUMMARY_KEYS)
        test = run / "eval_test.json"
        metric = s.get("metric", "accuracy")
        test_acc = f"{_read_json(test, 'a test score', (metric,))[metric]:.3f}" if test.is_file() else "–"
        speed = f"{s['tokens_per_s']:,.0f}" if s.get("tokens_per_s") else "–"
        rows.append(
            f"| {s['task']} | {s['model']} | {s['parameters']:,} | {s['steps']} | {metric} "
            f"| {s['best_val']:.3f} | {test_acc} | {speed} | {s['peak_memory_mb']:.0f} "
            f"| {s['wall_time_s']:.0f} | {run} |"
        )
    return "\n".join(rows)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Loss and accuracy curves (train and val) as ``loss.png`` and ``accuracy.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ModuleNotFoundError("plots need matplotlib: pip install 'serpent-ssm[plots]'") from None
    run = Path(run_dir)
    records = read_metrics(run)
    out = Path(out) if out else run
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in ("loss", "accuracy"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for split, style in (("train", "-"), ("val", "o-")):
            pts = [(r["step"], r[metric]) for r in records if r["split"] == split and metric in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=split)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(f"{run.name}: {metric}")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out / f"{metric}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
