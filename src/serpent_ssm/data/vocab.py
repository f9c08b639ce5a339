"""Fixed vocabularies, saved with a run as JSON and never rebuilt per split.

Two kinds: a closed token list (ListOps) and bytes (every text task). Id 0 is always padding.
Byte-level ids are ``byte + 3`` after ``<pad>=0, <bos>=1, <eos>=2``, so a vocabulary of 259
covers any UTF-8 (or other) text with no tokenizer file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["BYTE_VOCAB", "LISTOPS_VOCAB", "Vocab"]

RESERVED_TOKENS = ("<pad>", "<bos>", "<eos>")


@dataclass(frozen=True)
class Vocab:
    """A fixed vocabulary: ``kind`` is ``"tokens"`` (``tokens`` lists every symbol, id = index)
    or ``"bytes"`` (id = byte + len(RESERVED_TOKENS))."""

    name: str
    kind: str
    tokens: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.kind not in ("tokens", "bytes"):
            raise ValueError(f"kind: expected 'tokens' or 'bytes', got {self.kind!r}")
        if self.kind == "tokens" and (not self.tokens or self.tokens[0] != "<pad>"):
            raise ValueError(f"tokens: expected '<pad>' first, got {self.tokens[:1]!r}")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    @property
    def size(self) -> int:
        return len(RESERVED_TOKENS) + 256 if self.kind == "bytes" else len(self.tokens)

    pad_id = 0

    def encode_tokens(self, tokens: list[str]) -> torch.Tensor:
        """Symbols -> ``(L,)`` int64 ids; raises KeyError naming the first unknown symbol."""
        index = self._index  # type: ignore[attr-defined]
        try:
            return torch.tensor([index[t] for t in tokens], dtype=torch.int64)
        except KeyError as exc:
            raise KeyError(f"unknown token {exc.args[0]!r} (vocabulary {self.name!r})") from None

    def encode_bytes(self, data: bytes) -> torch.Tensor:
        """Bytes -> ``(L,)`` int64 ids ``byte + 3`` (``L`` may be 0)."""
        if not data:
            return torch.empty(0, dtype=torch.int64)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64) + len(RESERVED_TOKENS)

    def decode_bytes(self, ids: torch.Tensor) -> bytes:
        """Inverse of ``encode_bytes``; special ids are dropped."""
        ids = ids[ids >= len(RESERVED_TOKENS)] - len(RESERVED_TOKENS)
        return bytes(ids.to(torch.uint8).tolist())

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(name=d["name"], kind=d["kind"], tokens=tuple(d.get("tokens", ())))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls.from_dict(json.loads(Path(path).read_text()))


BYTE_VOCAB = Vocab("bytes", "bytes")
LISTOPS_VOCAB = Vocab(
    "listops",
    "tokens",
    ("<pad>", "[MIN", "[MAX", "[MED", "[SM", "]", "(", ")", *[str(i) for i in range(10)]),
)
