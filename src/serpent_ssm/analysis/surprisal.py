"""Information signals per byte: an n-gram model's surprisal, and a token-level language model's
surprisal spread over the bytes of each token.

Surprisal is in bits: ``-log2 p``. Position ``t`` holds the surprisal of byte ``t`` given the
bytes before it (position 0 is scored with no context).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

__all__ = ["ByteNgram", "spread_token_surprisal"]


class ByteNgram:
    """An interpolated byte n-gram model with additive smoothing, fitted on a training text.

    ``p(b | c) = λ p_ML(b | c) + (1 - λ) p(b | c[1:])`` recursively down to the add-``alpha``
    unigram, with ``λ = n(c) / (n(c) + beta)`` (Witten–Bell-like weight from the context count).
    """

    def __init__(self, order: int = 3, alpha: float = 1.0, beta: float = 5.0):
        if order < 1:
            raise ValueError(f"order: expected a positive integer, got {order}")
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha, beta: expected positive numbers, got {alpha}, {beta}")
        self.order, self.alpha, self.beta = order, alpha, beta
        self.counts: list[Counter] = []  # counts[k][(context of length k) + (byte,)]
        self.context_counts: list[Counter] = []

    def fit(self, data: bytes) -> ByteNgram:
        if not data:
            raise ValueError("data: expected a non-empty training text, got 0 bytes")
        self.counts = [Counter() for _ in range(self.order)]
        self.context_counts = [Counter() for _ in range(self.order)]
        for k in range(self.order):
            for i in range(k, len(data)):
                ctx = data[i - k : i]
                self.counts[k][ctx + data[i : i + 1]] += 1
                self.context_counts[k][ctx] += 1
        return self

    def _prob(self, context: bytes, b: int) -> float:
        uni_total = self.context_counts[0][b""]
        p = (self.counts[0][bytes([b])] + self.alpha) / (uni_total + 256 * self.alpha)
        for k in range(1, min(self.order, len(context) + 1)):
            ctx = context[len(context) - k :]
            n_ctx = self.context_counts[k][ctx]
            if n_ctx == 0:
                break
            lam = n_ctx / (n_ctx + self.beta)
            p = lam * self.counts[k][ctx + bytes([b])] / n_ctx + (1 - lam) * p
        return p

    def surprisal(self, data: bytes) -> np.ndarray:
        """``(len(data),)`` bits: ``-log2 p(byte_t | the previous order-1 bytes)``."""
        if not self.counts:
            raise ValueError("fit: expected the model to be fitted first, got an unfitted ByteNgram")
        out = np.empty(len(data), dtype=np.float64)
        for t in range(len(data)):
            out[t] = -np.log2(self._prob(data[max(0, t - self.order + 1) : t], data[t]))
        return out


def spread_token_surprisal(
    text: str, offsets: list[tuple[int, int]], token_surprisal: np.ndarray
) -> np.ndarray:
    """Spread each token's surprisal evenly over the UTF-8 bytes of its characters.

    ``offsets[i] = (start, end)`` are character offsets of token ``i`` in ``text`` (what
    tokenizers return); ``token_surprisal[i]`` is its surprisal in bits. Returns ``(n_bytes,)``
    bits per byte of ``text.encode("utf-8")``; bytes no token covers get NaN. Tokens whose spans
    overlap (a byte-level tokenizer may cut one multi-byte character into several tokens, each
    reporting the whole character) add up on the shared bytes, so the sum over all bytes equals
    the sum over all tokens.
    """
    token_surprisal = np.asarray(token_surprisal, dtype=np.float64)
    if len(offsets) != len(token_surprisal):
        raise ValueError(
            f"offsets, token_surprisal: expected one surprisal per token, got {len(offsets)} and "
            f"{len(token_surprisal)}"
        )
    # byte offset of every character boundary
    char_bytes = np.fromiter((len(c.encode("utf-8")) for c in text), dtype=np.int64, count=len(text))
    boundary = np.concatenate([[0], np.cumsum(char_bytes)])
    out = np.full(int(boundary[-1]), np.nan)
    for i, (start, end) in enumerate(offsets):
        if not 0 <= start <= end <= len(text):
            raise ValueError(f"offsets[{i}]: expected 0 <= start <= end <= {len(text)}, got ({start}, {end})")
        lo, hi = int(boundary[start]), int(boundary[end])
        if hi > lo:
            out[lo:hi] = np.nan_to_num(out[lo:hi]) + token_surprisal[i] / (hi - lo)
    return out
