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

__all__ = ["analyze_intervals"]


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
    path = Path(out or run_dir) / "intervals_analysis.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path
