"""``serpent analyze intervals``: correlate a model's selective intervals with information.

Per position ``t`` of each analysed sequence: the intervals the model computes there
(``record_intervals``: Mamba's Δ per layer, SeRpEnt's per branch) against information signals of
element ``t``:

- ``smollm2_surprisal``: bits of byte ``t`` under SmolLM2-135M, token surprisal spread over the
  token's bytes (text only; needs ``serpent-ssm[analysis]`` and ``serpent data fetch smollm2``);
- ``ngram{k}_surprisal``: bits of symbol ``t`` under an order-``k`` n-gram fitted on a training
  text or the run's training split (symbols: bytes, token ids, or pixels quantised to 256 levels);
- ``model_surprisal``: the language model's own ``-log2 p(x_t | x_<t)`` (LM runs only).

For each (intervals, signal) pair: Pearson and Spearman with bootstrap intervals, the
least-squares slope and R² — and the same on a **shuffled-text control**: the sequences with
their characters (text) or positions (tokens, pixels) permuted, re-run through the model and
re-scored by every signal. Context-driven information survives the shuffle only as
per-symbol frequency, so a relation that holds on real text but drops on shuffled text is one
the intervals learned from context. The first position of each sequence has no context and is
left out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serpent_ssm.analysis.intervals import record_intervals
from serpent_ssm.analysis.reference_lm import resolve_reference
from serpent_ssm.analysis.stats import correlate
from serpent_ssm.analysis.surprisal import ByteNgram
from serpent_ssm.data.vocab import BYTE_VOCAB, Vocab

__all__ = [
    "Sample",
    "samples_from_text",
    "samples_from_dataset",
    "shuffle_sample",
    "analyze_intervals",
    "analyze_run",
    "plot_intervals",
]


@dataclass
class Sample:
    """One analysed sequence: ``inputs (L,)`` token ids or ``(L, C)`` features, ``symbols`` one
    byte per position (what the n-gram scores), ``text`` the decoded string when the positions
    are the UTF-8 bytes of a text (what the reference LM scores), else None."""

    inputs: torch.Tensor
    symbols: bytes
    text: str | None = None


def _symbols(x: torch.Tensor, vocab: Vocab | None) -> tuple[bytes, str | None]:
    if x.is_floating_point():  # pixels in [0, 1] -> 256 levels (first channel)
        first = x if x.dim() == 1 else x[:, 0]
        return bytes((first * 255).round().clamp(0, 255).to(torch.uint8).tolist()), None
    if vocab is not None and vocab.kind == "bytes":
        raw = BYTE_VOCAB.decode_bytes(x)
        if len(raw) != len(x):
            raise ValueError("inputs: expected byte ids only (no BOS/EOS/padding inside a sample)")
        try:
            return raw, raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw, None
    if x.numel() and int(x.max()) > 255:
        raise ValueError(f"inputs: expected token ids below 256 for the n-gram, got {int(x.max())}")
    return bytes(x.to(torch.uint8).tolist()), None


def samples_from_text(text: bytes) -> list[Sample]:
    """One byte-level sample of a text (for LMs and byte-level classifiers)."""
    if len(text) < 4:
        raise ValueError(f"text: expected at least 4 bytes, got {len(text)}")
    ids = BYTE_VOCAB.encode_bytes(text)
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    return [Sample(ids, text, decoded)]


def samples_from_dataset(dataset, n: int, vocab: Vocab | None) -> list[Sample]:
    """The first ``n`` samples of a classification dataset (``(x, label)`` items)."""
    if n < 1:
        raise ValueError(f"samples: expected a positive integer, got {n}")
    out = []
    for i in range(min(n, len(dataset))):
        x = dataset[i][0]
        if isinstance(x, tuple):  # retrieval pairs: the first document
            x = x[0]
        x = torch.as_tensor(x)
        symbols, text = _symbols(x, vocab)
        out.append(Sample(x, symbols, text))
    return out


def shuffle_sample(sample: Sample, rng: np.random.Generator) -> Sample:
    """The control: characters permuted (text, so UTF-8 stays valid) or positions permuted."""
    n = len(sample.symbols)
    if sample.text is not None:  # permute whole characters: a block permutation of byte positions
        sizes = [len(c.encode("utf-8")) for c in sample.text]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        order = rng.permutation(len(sizes))
        perm = np.concatenate([np.arange(starts[j], starts[j] + sizes[j]) for j in order]) if sizes else []
        text = "".join(sample.text[j] for j in order)
    else:
        perm, text = rng.permutation(n), None
    perm_t = torch.as_tensor(np.asarray(perm, dtype=np.int64))
    return Sample(sample.inputs[perm_t], bytes(np.frombuffer(sample.symbols, np.uint8)[perm].tolist()), text)


def _batch(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    from serpent_ssm.data.collate import pad_sequences

    return pad_sequences([s.inputs for s in samples])


def _flatten(values: torch.Tensor | np.ndarray, samples: list[Sample]) -> np.ndarray:
    """``(B, L)`` per-position values -> one array over positions 1..n-1 of every sample."""
    v = np.asarray(values, dtype=np.float64)
    return np.concatenate([v[b, 1 : len(s.symbols)] for b, s in enumerate(samples)])


@torch.no_grad()
def _signals(model, samples, inputs, mask, ngram: ByteNgram, reference) -> dict[str, np.ndarray]:
    signals: dict[str, np.ndarray] = {}
    if reference is not None and all(s.text is not None for s in samples):
        signals[f"{reference.name}_surprisal"] = np.concatenate(
            [reference.byte_surprisal(s.text)[1:] for s in samples]
        )
    ngram_bits = [ngram.surprisal(s.symbols)[1:] for s in samples]
    signals[f"ngram{ngram.order}_surprisal"] = np.concatenate(ngram_bits)
    if getattr(getattr(model, "config", None), "head", None) == "lm":
        logp = torch.log_softmax(model(inputs, mask).float(), -1)  # logits[t] predicts x_{t+1}
        bits = torch.zeros(inputs.shape, dtype=torch.float64)
        bits[:, 1:] = -(logp[:, :-1].gather(2, inputs[:, 1:, None])[..., 0] / math.log(2)).double()
        signals["model_surprisal"] = _flatten(bits, samples)
    return signals


def _measure(model, samples, ngram, reference) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    inputs, mask = _batch(samples)
    if len(samples) == 1:
        mask = None  # one full row: run without a mask, as the model was trained on LM windows
    intervals = {k: _flatten(v, samples) for k, v in record_intervals(model, inputs, mask).items()}
    return intervals, _signals(model, samples, inputs, mask, ngram, reference)


def analyze_intervals(
    model,
    samples: list[Sample] | bytes,
    ngram_train: bytes,
    order: int = 3,
    n_resamples: int = 1000,
    seed: int = 0,
    reference=None,
) -> dict[str, Any]:
    """The correlation report (a JSON-ready dict) of ``model``'s intervals on ``samples`` (or a
    text, as bytes). ``ngram_train``: the symbols the n-gram is fitted on. ``reference``: a
    ``ReferenceLM`` (or any object with ``name`` and ``byte_surprisal(text)``) or None.

    Returns ``{"n_positions", "n_samples", "order", "signals", "intervals": {name: {"mean",
    "std", <signal>: CorrelationReport, <signal>_shuffled_text: CorrelationReport}}}`` plus
    ``"_series"`` (per-position arrays for the plots; not JSON)."""
    if isinstance(samples, (bytes, bytearray)):
        samples = samples_from_text(bytes(samples))
    if not samples:
        raise ValueError("samples: expected at least one sample, got none")
    model.eval()
    ngram = ByteNgram(order).fit(ngram_train)
    intervals, signals = _measure(model, samples, ngram, reference)
    rng = np.random.default_rng(seed)
    shuffled = [shuffle_sample(s, rng) for s in samples]
    intervals_sh, signals_sh = _measure(model, shuffled, ngram, reference)
    result: dict[str, Any] = {
        "n_positions": int(len(next(iter(signals.values())))),
        "n_samples": len(samples),
        "order": order,
        "signals": list(signals),
        "intervals": {},
    }
    for name, x in intervals.items():
        entry: dict[str, Any] = {"mean": float(x.mean()), "std": float(x.std())}
        for sig_name, y in signals.items():
            entry[sig_name] = correlate(x, y, n_resamples, seed=seed).to_dict()
            entry[f"{sig_name}_shuffled_text"] = correlate(
                intervals_sh[name], signals_sh[sig_name], n_resamples, seed=seed
            ).to_dict()
        result["intervals"][name] = entry
    first = len(samples[0].symbols) - 1
    result["_series"] = {  # the first sample's per-position values, for the plots
        "intervals": {k: v[:first] for k, v in intervals.items()},
        "signals": {k: v[:first] for k, v in signals.items()},
        "all_intervals": intervals,
        "all_signals": signals,
        "text": samples[0].text.encode("utf-8")[1:] if samples[0].text is not None else None,
    }
    return result


def _run_data(run: Path):
    """The run's task data and vocabulary (from its ``config.json`` and ``vocab.json``)."""
    from serpent_ssm.train.run_files import RUN_CONFIG, read_run_config
    from serpent_ssm.train.tasks import load_task

    cfg_path = run / RUN_CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: missing: expected the run's config.json (or pass --input)")
    cfg = read_run_config(run)
    task = load_task(cfg.data)
    vocab = Vocab.load(run / "vocab.json") if (run / "vocab.json").is_file() else None
    return task, vocab


def analyze_run(
    run_dir: str | Path,
    text: bytes | None = None,
    ngram_train: bytes | None = None,
    out: str | Path | None = None,
    split: str = "val",
    n_samples: int = 16,
    max_bytes: int = 4096,
    ngram_bytes: int = 4_000_000,
    reference: str | object | None = "none",
    **kw,
) -> Path:
    """``analyze_intervals`` on a run's best model; writes ``intervals_analysis.json`` (+ PNGs).

    ``text``: analyse this text (LMs and byte-level classifiers); otherwise the run's ``split``:
    its first ``max_bytes`` bytes for an LM, its first ``n_samples`` samples for a classifier.
    ``ngram_train``: otherwise the run's training split (its first ``ngram_bytes`` symbols), or
    the text itself when the run's data cannot be loaded. ``reference``: ``"auto"``,
    ``"smollm2"``, ``"none"`` or a loaded reference model (``resolve_reference``); used for text.
    """
    from serpent_ssm.models import from_pretrained

    run = Path(run_dir)
    model = from_pretrained(run / "best")
    head = model.config.head
    if head == "retrieval":
        raise ValueError("run_dir: expected a language-model or classifier run, got a 'retrieval' model")
    byte_level = head == "lm" or model.config.vocab_size == BYTE_VOCAB.size
    if text is not None and not byte_level:
        raise ValueError(
            f"--input: expected a byte-level model (an LM or a byte-vocabulary classifier), "
            f"got a {head!r} model over {model.config.vocab_size or model.config.d_input} inputs"
        )
    task = vocab = None
    if text is None:
        task, vocab = _run_data(run)
    elif ngram_train is None:
        try:
            task, vocab = _run_data(run)
        except (OSError, ValueError) as e:  # no config, or its data is not on this machine
            print(f"n-gram fitted on the input itself: the run's training data is unavailable ({e})")
            ngram_train = text
    if text is not None:
        samples = samples_from_text(text)
    elif head == "lm":
        samples = samples_from_text(lm_split_bytes(task, split, 0, max_bytes))
    else:
        samples = samples_from_dataset(getattr(task, split), n_samples, vocab)
    if ngram_train is None:
        if head == "lm":
            ngram_train = lm_split_bytes(task, "train", 0, ngram_bytes)
        else:
            ngram_train = _classifier_train_symbols(task.train, vocab, ngram_bytes)
    if all(s.text is not None for s in samples):  # the reference LM reads text only
        kw["reference"] = resolve_reference(reference)
    elif reference not in (None, "none", "auto"):
        raise ValueError(
            f"reference: expected text samples for {reference!r}, got {head!r} samples of non-text inputs"
        )
    result = analyze_intervals(model, samples, ngram_train, **kw)
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


def lm_split_bytes(task, split: str, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of a language-modelling task's split (``val``/``test`` are byte
    streams; ``train`` is ``LMWindows``, possibly inside a ``Subset``, over one)."""
    stream = getattr(task, split)
    if split == "train":
        stream = getattr(stream, "data", None)
        if stream is None:  # a Subset (data.limit_train) of LMWindows
            stream = task.train.dataset.data
    return bytes(np.asarray(stream[start:stop], dtype=np.uint8).tobytes())


def _classifier_train_symbols(dataset, vocab, limit: int) -> bytes:
    parts, total = [], 0
    for i in range(len(dataset)):
        x = dataset[i][0]
        x = torch.as_tensor(x[0] if isinstance(x, tuple) else x)
        parts.append(_symbols(x, vocab)[0])
        total += len(parts[-1])
        if total >= limit:
            break
    return b"".join(parts)


def _preferred_signal(names) -> str:
    for prefix in ("smollm2", "ngram", "model"):
        for k in names:
            if k.startswith(prefix):
                return k
    return next(iter(names))


def plot_intervals(series: dict, result: dict, folder: Path, window: int = 200) -> list[Path]:
    """``intervals_scatter.png`` (each interval series against the reference surprisal when
    present, else the n-gram's, with the least-squares line; all positions) and
    ``intervals_along_text.png`` (the first sample's first ``window`` positions)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ModuleNotFoundError("plots need matplotlib: pip install 'serpent-ssm[plots]'") from None
    sig_name = _preferred_signal(series["signals"])
    y_all = series["all_signals"][sig_name]
    names = list(series["intervals"])
    cols = min(len(names), 4)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        x = series["all_intervals"][name]
        r = result["intervals"][name][sig_name]
        r_sh = result["intervals"][name][f"{sig_name}_shuffled_text"]
        ax.scatter(x, y_all, s=3, alpha=0.3)
        xs = np.linspace(x.min(), x.max(), 2)
        ax.plot(xs, r["slope"] * xs + r["intercept"], "r-")
        ax.set_title(
            f"{name}\nρ={r['spearman']:+.2f}, R²={r['r2']:.2f} (shuffled ρ={r_sh['spearman']:+.2f})",
            fontsize=8,
        )
        ax.set_xlabel("interval")
        ax.set_ylabel(f"{sig_name} (bits)", fontsize=7)
    fig.tight_layout()
    scatter = folder / "intervals_scatter.png"
    fig.savefig(scatter, dpi=100)
    plt.close(fig)
    y = series["signals"][sig_name]
    fig, ax = plt.subplots(figsize=(12, 3.5))
    n = min(window, len(y))
    ax.plot(y[:n], "k-", lw=1, label=sig_name)
    ax2 = ax.twinx()
    for name in names:
        x = series["intervals"][name][:n]
        ax2.plot((x - x.mean()) / (x.std() + 1e-12), lw=0.8, label=f"{name} (standardised)")
    if series.get("text") is not None:
        chars = series["text"][:n].decode("utf-8", errors="replace")
        if len(chars) == n:
            ax.set_xticks(range(n))
            ax.set_xticklabels(list(chars), fontsize=5)
    ax.set_ylabel("bits")
    ax2.set_ylabel("interval (standardised)")
    fig.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    along = folder / "intervals_along_text.png"
    fig.savefig(along, dpi=100)
    plt.close(fig)
    return [scatter, along]
