"""Evaluation of a model on a split: classifiers (``evaluate``) and language models (``evaluate_lm``,
bits per byte over a byte stream); ``evaluate_split`` picks the one a task needs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from serpent_ssm.data.collate import pad_collate
from serpent_ssm.data.vocab import BYTE_VOCAB
from serpent_ssm.train.batches import _forward, _to
from serpent_ssm.train.config import DataConfig
from serpent_ssm.train.tasks import TaskData

__all__ = ["evaluate", "evaluate_lm", "evaluate_split"]


def _step(model: nn.Module, ids_t: torch.Tensor, state: list) -> torch.Tensor:
    """``model.step`` that updates ``state`` (a list) in place and returns the logits ``(B, V)``."""
    logits, state[:] = model.step(ids_t, state)
    return logits


@torch.no_grad()
def evaluate_lm(
    model: nn.Module, stream: torch.Tensor, seq_len: int, batch_size: int, device="cpu", exact: bool = True
) -> dict:
    """Next-byte loss, bits per byte, perplexity and accuracy over a byte stream ``(T,)`` uint8.

    The stream is cut into ``batch_size`` contiguous rows ``(rows, T // rows)`` scored in
    parallel, window by window (``seq_len`` bytes). What ``model.state_support`` declares decides
    how the recurrent state crosses windows: ``forward_state`` (every model of this library:
    Mamba, S4D and causal SeRpEnt): ``forward`` carries it from each window to the next, so every
    byte is predicted from all the bytes before it in its row, and ``exact`` changes nothing.
    A model of mixers without it (a user's backbone) is scored, with ``exact=True``, through
    ``step()`` (one position at a time: slow; needs ``step``), and with ``exact=False`` each
    window in parallel after the previous window as left context, so every byte sees at least
    ``seq_len`` bytes before it. At most ``batch_size - 1`` bytes at the end are not scored.
    """
    if stream.dtype != torch.uint8 or stream.dim() != 1 or len(stream) < 2:
        raise ValueError(
            f"stream: expected a (T,) uint8 tensor of at least 2 bytes to score, "
            f"got {stream.dtype} of shape {tuple(stream.shape)}"
        )
    support = model.state_support
    carry = support.forward_state
    if exact and not carry and not support.step:
        raise ValueError(f"model.state_support: expected step or forward_state for exact=True, got {support}")
    model.eval()
    ids = BYTE_VOCAB.encode_bytes(stream.cpu().numpy().tobytes())
    rows = max(1, min(batch_size, len(ids) - 1))
    per = (len(ids) - 1) // rows
    x = ids[: rows * per].view(rows, per).to(device)
    y = ids[1 : rows * per + 1].view(rows, per).to(device)
    state = None if carry or not exact else model.allocate_state(rows)
    nll, correct = 0.0, 0
    for start in range(0, per, seq_len):
        xi, yi = x[:, start : start + seq_len], y[:, start : start + seq_len]
        if carry:
            logits, state = model(xi, state=state, return_state=True)
        elif exact:
            logits = torch.stack([_step(model, xi[:, t], state) for t in range(xi.shape[1])], 1)
        else:
            lo = max(0, start - seq_len)
            logits = model(x[:, lo : start + xi.shape[1]])[:, start - lo :]
        nll += float(F.cross_entropy(logits.flatten(0, 1).float(), yi.flatten(), reduction="sum"))
        correct += int((logits.argmax(-1) == yi).sum())
    model.train()
    n = rows * per
    loss = nll / n
    # ids are bytes here, so a token is a byte: perplexity per token = exp(loss)
    return {
        "loss": loss,
        "bits_per_byte": loss / math.log(2),
        "perplexity": math.exp(loss),
        "accuracy": correct / n,
        "n": n,
    }


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device="cpu") -> dict[str, float]:
    """Mean cross-entropy and accuracy over the whole ``dataset`` (``pad_collate`` batches)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=pad_collate)
    total = correct = 0
    loss_sum = 0.0
    for batch in loader:
        batch = _to(batch, device)
        logits = _forward(model, batch)
        loss_sum += float(F.cross_entropy(logits.float(), batch["labels"], reduction="sum"))
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    model.train()
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1), "n": total}


def evaluate_split(
    model: nn.Module, task: TaskData, split: str, data: DataConfig, device="cpu", exact: bool = True
) -> dict[str, float]:
    """``evaluate_lm`` (language models; ``exact`` as there) or ``evaluate`` on ``task``'s
    ``split`` ("train", "val" or "test"), batched as ``data`` says."""
    dataset = getattr(task, split)
    if task.spec.is_lm:
        return evaluate_lm(model, dataset, data.seq_len, data.eval_batch_size, device, exact=exact)
    return evaluate(model, dataset, data.eval_batch_size, device)
