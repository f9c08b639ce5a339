"""``serpent analyze intervals``: correlate a language model's intervals with information.

For a text, per byte position ``t``: the intervals the model computes from byte ``t``
(``record_intervals``: Mamba's Δ per layer, SeRpEnt's per branch) against information signals
of byte ``t``: the model's own surprisal ``-log2 p(x_t | x_<t)`` and a byte n-gram's, fitted on
a training text. For each (intervals, signal) pair: Pearson and Spearman with bootstrap
intervals, the least-squares slope and R², and the same on a shuffled signal (the control: a
real relation must vanish there). Position 0 has no context and is left out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serpent_ssm.analysis.intervals import record_intervals
from serpent_ssm.analysis.stats import correlate
from serpent_ssm.analysis.surprisal import ByteNgram
from serpent_ssm.data.vocab import BYTE_VOCAB

__all__ = ["analyze_intervals", "analyze_run", "plot_intervals"]


@torch.no_grad()
def analyze_intervals(
    model,
    text: bytes,
    ngram_train: bytes,
    order: int = 3,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The correlation report (a JSON-ready dict) of ``model``'s intervals on ``text``."""
    if len(text) < 4:
        raise ValueError(f"text: expected at least 4 bytes, got {len(text)}")
    ids = BYTE_VOCAB.encode_bytes(text)[None]  # (1, T)
    intervals = record_intervals(model, ids)
    logits = model(ids)[0]  # (T, V): logits[t] predicts byte t + 1
    logp = torch.log_softmax(logits.float(), -1)
    own = -(logp[:-1].gather(1, ids[0, 1:, None])[:, 0] / math.log(2)).numpy()  # bits of bytes 1..T-1
    ngram = ByteNgram(order).fit(ngram_train).surprisal(text)[1:]
    signals = {"model_surprisal": own, f"ngram{order}_surprisal": ngram}
    rng = np.random.default_rng(seed)
    result: dict[str, Any] = {"n_bytes": len(text), "order": order, "intervals": {}}
    result["_series"] = {  # per-position values for plots (dropped from the JSON)
        "intervals": {k: v[0, 1:].numpy() for k, v in intervals.items()},
        "signals": signals,
        "text": text[1:],
    }
    for name, values in intervals.items():
        x = values[0, 1:].numpy().astype(np.float64)
        entry = {"mean": float(x.mean()), "std": float(x.std())}
        for sig_name, y in signals.items():
            entry[sig_name] = correlate(x, y, n_resamples, seed=seed).to_dict()
            entry[f"{sig_name}_shuffled"] = correlate(x, rng.permutation(y), n_resamples, seed=seed).to_dict()
        result["intervals"][name] = entry
    return result


def analyze_run(
    run_dir: str | Path, text: bytes, ngram_train: bytes, out: str | Path | None = None, **kw
) -> Path:
    """``analyze_intervals`` on a run's best model; writes ``intervals_analysis.json``."""
    from serpent_ssm.models.config import from_pretrained

    model = from_pretrained(Path(run_dir) / "best")
    if getattr(model.config, "head", None) != "lm":
        raise ValueError(f"run_dir: expected a language-model run, got a {model.config.head!r} model")
    result = analyze_intervals(model, text, ngram_train, **kw)
    series = result.pop("_series")
    folder = Path(out or run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "intervals_analysis.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    try:
        plot_intervals(series, result, folder)
    except ModuleNotFoundError:
        pass  # plots need the [plots] extra; the JSON is the result
    return path


def plot_intervals(series: dict, result: dict, folder: Path, window: int = 200) -> list[Path]:
    """``intervals_scatter.png`` (each interval series against the n-gram surprisal, with the
    least-squares line) and ``intervals_along_text.png`` (both along the first ``window`` bytes)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ModuleNotFoundError("plots need matplotlib: pip install 'serpent-ssm[plots]'") from None
    sig_name = next(k for k in series["signals"] if k.startswith("ngram"))
    y = series["signals"][sig_name]
    names = list(series["intervals"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        x = series["intervals"][name]
        r = result["intervals"][name][sig_name]
        ax.scatter(x, y, s=3, alpha=0.3)
        xs = np.linspace(x.min(), x.max(), 2)
        ax.plot(xs, r["slope"] * xs + r["intercept"], "r-")
        ax.set_title(f"{name}\nρ={r['spearman']:+.2f}, R²={r['r2']:.2f}", fontsize=8)
        ax.set_xlabel("interval")
    axes[0][0].set_ylabel(f"{sig_name} (bits)")
    fig.tight_layout()
    scatter = folder / "intervals_scatter.png"
    fig.savefig(scatter, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(12, 3.5))
    n = min(window, len(y))
    ax.plot(y[:n], "k-", lw=1, label=sig_name)
    ax2 = ax.twinx()
    for name in names:
        x = series["intervals"][name][:n]
        ax2.plot((x - x.mean()) / (x.std() + 1e-12), lw=0.8, label=f"{name} (standardised)")
    chars = series["text"][:n].decode("utf-8", errors="replace")
    if len(chars) == n:
        ax.set_xticks(range(n))
        ax.set_xticklabels(list(chars), fontsize=5)
    ax.set_ylabel("bits")
    fig.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    along = folder / "intervals_along_text.png"
    fig.savefig(along, dpi=100)
    plt.close(fig)
    return [scatter, along]
