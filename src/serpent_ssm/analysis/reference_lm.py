"""Surprisal of every byte of a text under a pretrained reference language model: SmolLM2-135M.

The weights (a 93 MB GGUF file, Apache-2.0) come from ``serpent data fetch smollm2`` (docs/data.md);
they are read with transformers + gguf + accelerate, offline (``HF_HUB_OFFLINE=1``), and
dequantised to float32 (~25 s to load on 2 cores). Install the readers with
``pip install 'serpent-ssm[analysis]'``.

Token ``i``'s surprisal ``-log2 p(token_i | tokens_<i)`` is spread evenly over the UTF-8 bytes of
its characters (``spread_token_surprisal``); the first token is scored after the tokenizer's
BOS/EOS token, so every byte gets a value.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serpent_ssm.analysis.surprisal import spread_token_surprisal

__all__ = ["ReferenceLM", "reference_lm_unavailable", "resolve_reference", "REFERENCE_PACKAGES"]

REFERENCE_PACKAGES = ("transformers", "gguf", "accelerate")
INSTALL_HINT = "pip install 'serpent-ssm[analysis]'"


def _missing_packages() -> list[str]:
    return [p for p in REFERENCE_PACKAGES if importlib.util.find_spec(p) is None]


def reference_lm_unavailable(cache_dir: str | Path | None = None) -> str | None:
    """Why SmolLM2 cannot be loaded here (missing packages or weights), or None when it can."""
    from serpent_ssm.data.fetch import fetched_path, missing_message

    missing = _missing_packages()
    if missing:
        return f"the SmolLM2 reference needs the packages {', '.join(missing)}: {INSTALL_HINT}"
    if fetched_path("smollm2", cache_dir) is None:
        return missing_message("smollm2", cache_dir)
    return None


class ReferenceLM:
    """SmolLM2-135M-Instruct as a byte-surprisal oracle.

    ``ReferenceLM.load()`` reads the fetched weights; ``byte_surprisal(text)`` returns
    ``(len(text.encode("utf-8")),)`` bits. ``context`` caps the tokens the model sees at once:
    longer texts are scored in windows that each keep the previous ``context // 2`` tokens as
    context (so every token after the first window has at least that much context).
    """

    name = "smollm2"

    def __init__(self, tokenizer: Any, model: torch.nn.Module, context: int = 1024):
        if context < 3:
            raise ValueError(f"context: expected at least 3 tokens, got {context}")
        self.tokenizer, self.model, self.context = tokenizer, model.eval(), context

    @classmethod
    def load(cls, cache_dir: str | Path | None = None, context: int = 1024) -> ReferenceLM:
        """Load the fetched SmolLM2 (raises ``ModuleNotFoundError`` or ``FileNotFoundError`` with
        what to run when the packages or the weights are missing)."""
        from serpent_ssm.data.fetch import fetched_path
        from serpent_ssm.data.fetch_sources import SMOLLM2_GGUF

        why = reference_lm_unavailable(cache_dir)
        if why is not None:
            raise (ModuleNotFoundError if _missing_packages() else FileNotFoundError)(why)
        folder = fetched_path("smollm2", cache_dir)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        return cls(tokenizer, model, context)

    @torch.no_grad()
    def token_surprisal(self, text: str) -> tuple[list[tuple[int, int]], np.ndarray]:
        """Character offsets ``[(start, end)]`` of the tokens of ``text`` and their surprisal in
        bits, ``(n_tokens,)``."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [tuple(map(int, o)) for o in enc["offset_mapping"]]
        start_id = self.tokenizer.bos_token_id
        if start_id is None:
            start_id = self.tokenizer.eos_token_id
        seq = torch.tensor([start_id, *ids])
        bits = np.empty(len(ids))
        keep = self.context // 2
        pos = 0  # next token (index into ids) to score
        while pos < len(ids):
            lo = max(0, pos - keep)  # window over seq: seq[lo : hi + 1] predicts ids[lo : hi]
            hi = min(len(ids), lo + self.context - 1)
            window = seq[lo : hi + 1][None]
            logits = self.model(window).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(1, window[0, 1:, None])[:, 0]
            bits[pos:hi] = (-logp[pos - lo :] / math.log(2)).numpy()
            pos = hi
        return offsets, bits

    def byte_surprisal(self, text: str | bytes) -> np.ndarray:
        """``(n_bytes,)`` bits per UTF-8 byte of ``text`` (bytes must be valid UTF-8)."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    "text: expected UTF-8 for the reference model's tokenizer, "
                    f"got an invalid byte at {e.start}"
                ) from None
        offsets, bits = self.token_surprisal(text)
        return spread_token_surprisal(text, offsets, bits)


def resolve_reference(choice: str | object | None, cache_dir: str | Path | None = None):
    """The reference model for ``--reference``: ``"none"``/None -> None; ``"smollm2"`` -> SmolLM2
    (raises when unavailable); ``"auto"`` -> SmolLM2 when available, else None with a printed
    reason; any other object is returned as it is (e.g. a loaded ``ReferenceLM``)."""
    if choice is None or choice == "none":
        return None
    if not isinstance(choice, str):
        return choice
    if choice not in ("auto", "smollm2"):
        raise ValueError(f"reference: expected one of auto, smollm2, none, got {choice!r}")
    why = reference_lm_unavailable(cache_dir)
    if why is not None:
        if choice == "smollm2":
            error = ModuleNotFoundError if _missing_packages() else FileNotFoundError
            raise error(f"--reference smollm2: {why}")
        print(f"skipping the SmolLM2 surprisal: {why}")
        return None
    t0 = time.perf_counter()
    reference = ReferenceLM.load(cache_dir)
    print(f"loaded SmolLM2-135M in {time.perf_counter() - t0:.0f} s")
    return reference
