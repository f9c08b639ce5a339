"""Causal language model: embedding -> causal pre-norm blocks -> norm -> tied head (docs/design.md, "Models").

Byte level by default (``BYTE_VOCAB``: 259 ids = 3 specials + 256 bytes); any vocabulary size
when a tokenizer is used. The mixer of each block comes from ``make_mixer(layer_idx)``, as for the
classifiers; every model name works through ``make_mixer_factory(name, d_model, causal=True)``
(``mamba``, ``s4d``, ``serpent-mamba``, ``serpent-s4d``: causal mixers throughout), and
``build_model`` builds one from a ``ModelConfig``.

``generate`` decodes with the mixers' ``step()``: the recurrent state has a fixed size, so
memory does not grow with the number of generated tokens, and the result equals greedy decoding
by repeated full forward passes (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from serpent_ssm.models.mixers import layer_factory
from serpent_ssm.modules.block import Block, make_norm
from serpent_ssm.modules.protocol import StateSupport
from serpent_ssm.utils.validation import check_positive_int

__all__ = ["CausalLM"]


class CausalLM(nn.Module):
    """``ids (B, L)`` int64 -> next-token logits ``(B, L, vocab_size)``.

    Args:
        make_mixer: ``make_mixer(layer_idx) -> nn.Module``, the (causal) mixer of block
            ``layer_idx``, e.g. ``make_mixer_factory("serpent-mamba", d_model, causal=True)``.
        vocab_size: number of token ids (259 for bytes).
        d_model, n_layers, norm, mlp_ratio, dropout: as ``SequenceClassifier``; ``norm_eps`` the
            epsilon of every norm.
        tie_embeddings: the output head shares the embedding matrix (default).
    """

    def __init__(
        self,
        make_mixer: Callable[[int], nn.Module],
        vocab_size: int,
        d_model: int,
        n_layers: int,
        norm: str = "rms",
        norm_eps: float = 1e-5,
        mlp_ratio: float = 0.0,
        dropout: float = 0.0,
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        make_mixer = layer_factory(make_mixer)
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        check_positive_int("n_layers", n_layers)
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(
            self.embedding.weight, std=0.02
        )  # as GPT-2 and Mamba's LMs: a tied head starts near uniform
        self.blocks = nn.ModuleList(
            Block(d_model, make_mixer(i), norm=norm, norm_eps=norm_eps, mlp_ratio=mlp_ratio, dropout=dropout)
            for i in range(n_layers)
        )
        self.norm = make_norm(norm, d_model, norm_eps)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embedding.weight

    def _check_ids(self, ids: torch.Tensor, name: str = "ids") -> None:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"{name}: expected an int64 tensor of token ids, got {getattr(ids, 'dtype', type(ids))}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0].item()
            raise ValueError(f"{name}: expected ids in [0, {self.vocab_size}), got {bad}")

    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: list[Any] | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[Any]]:
        """``ids (B, L)`` (right-padded with ``mask (B, L)``) -> logits ``(B, L, vocab_size)``.

        ``state``/``return_state`` carry the recurrent state from one call to the next, so a
        long text can be processed window by window, where ``state_support.forward_state``
        (every model name: Mamba, S4D and causal SeRpEnt carry their state through ``forward``).
        """
        out = self.features(ids, mask, state, return_state)
        if not return_state and state is None:
            return self.head(out)
        return self.head(out[0]), out[1]

    def features(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        state: list[Any] | None = None,
        return_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[Any]]:
        """``forward`` without the head: the final normalised hidden states ``(B, L, d_model)``
        (and the state, as ``forward``)."""
        self._check_ids(ids)
        h = self.embedding(ids)
        if state is None and not return_state:
            for block in self.blocks:
                h = block(h, mask=mask)
            return self.norm(h)
        states = state if state is not None else [None] * len(self.blocks)
        new_state = []
        for block, st in zip(self.blocks, states, strict=True):
            h, st = block(h, mask=mask, state=st, return_state=True)
            new_state.append(st)
        return self.norm(h), new_state

    @property
    def state_support(self) -> StateSupport:
        """What every block's mixer supports (``modules.protocol``)."""
        support = StateSupport(step=True, forward_state=True)
        for block in self.blocks:
            support = support & block.state_support
        return support

    def allocate_state(self, batch: int, device=None, dtype=None) -> list[Any]:
        """One recurrent state per block (fixed size: it does not grow with the tokens seen)."""
        device = device if device is not None else self.embedding.weight.device
        return [blk.allocate_state(batch, device=device, dtype=dtype) for blk in self.blocks]

    def select_state(self, state: list[Any], index: torch.Tensor) -> list[Any]:
        """Rows ``index (B',)`` int64 of a state (beam search reorders its beams with it)."""
        return [blk.select_state(st, index) for blk, st in zip(self.blocks, state, strict=True)]

    def step(self, ids_t: torch.Tensor, state: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        """One token per row: ``ids_t (B,)`` -> logits ``(B, vocab_size)`` and the new state."""
        h = self.embedding(ids_t)
        new_state = []
        for blk, st in zip(self.blocks, state, strict=True):
            h, st = blk.step(h, st)
            new_state.append(st)
        return self.head(self.norm(h)), new_state

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Continue ``prompt_ids (L,)`` or ``(B, L)``; returns prompt + continuation, same rank.

        ``temperature=0`` is greedy decoding; otherwise sampling from the softmax at
        ``temperature``, restricted to the ``top_k`` most likely ids and/or the smallest set
        whose probability reaches ``top_p``, with a generator seeded by ``seed``.
        """
        squeeze = prompt_ids.dim() == 1
        ids = prompt_ids[None] if squeeze else prompt_ids
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(
                f"prompt_ids: expected a non-empty (L,) or (B, L) tensor, got shape {tuple(prompt_ids.shape)}"
            )
        self._check_ids(ids, "prompt_ids")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected a non-negative integer, got {max_new_tokens}")
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature: expected a finite number >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k: expected a positive integer, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p: expected a probability in (0, 1], got {top_p}")
        if not self.state_support.step:
            raise ValueError(
                "model: expected mixers that support step() (modules.protocol) to generate, "
                "got some that do not"
            )
        was_training = self.training
        self.eval()
        gen = torch.Generator(device=ids.device)
        if seed is not None:
            gen.manual_seed(seed)
        if self.state_support.forward_state:  # the prompt in one parallel pass
            logits, state = self(ids, return_state=True)
            logits = logits[:, -1]
        else:  # a mixer whose forward takes no state: the prompt goes through the recurrence
            state = self.allocate_state(ids.shape[0])
            for t in range(ids.shape[1]):
                logits, state = self.step(ids[:, t], state)
        out = [ids]
        for _ in range(max_new_tokens):
            nxt = _choose(logits, temperature, top_k, top_p, gen)
            out.append(nxt[:, None])
            logits, state = self.step(nxt, state)
        self.train(was_training)
        result = torch.cat(out, dim=1)
        return result[0] if squeeze else result


def _choose(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, gen
) -> torch.Tensor:
    """Next ids ``(B,)`` from ``logits (B, V)``."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()
    # the gaps to the best id, scaled: softmax is shift-invariant, and a tiny temperature then gives
    # 0 for the best ids and -inf for the rest (greedy) instead of overflowing to inf - inf = NaN
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
