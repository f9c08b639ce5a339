"""Tokenizers that transformers loads from a saved folder (``AutoTokenizer.from_pretrained``)
without remote code, with our ids exactly.

- ``byte_tokenizer()``: the byte vocabulary (``data.vocab.BYTE_VOCAB``): ``<pad>=0, <bos>=1,
  <eos>=2``, then one id per UTF-8 byte, ``byte + 3``. A ``tokenizers`` BPE model with no merges
  over the 256 characters of the byte-level alphabet: the byte-level pre-tokenizer (without its
  word-splitting regex) turns each byte into one character, BPE emits one id per character, and
  the byte-level decoder maps them back. Text that spells a special token (``"<eos>"``) stays
  bytes (``split_special_tokens``). ``decode`` returns text: invalid UTF-8 becomes U+FFFD there;
  ``BYTE_VOCAB.decode_bytes`` gives the exact bytes.
- ``token_tokenizer(vocab)``: a closed token list (ListOps): one id per whitespace-separated
  symbol, as ``Vocab.encode_tokens``.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from serpent_ssm.data.vocab import RESERVED_TOKENS, Vocab

__all__ = ["byte_tokenizer", "token_tokenizer", "tokenizer_for"]

_NO_LIMIT = 1 << 30  # recurrent models have no context limit


def _byte_alphabet() -> dict[int, str]:
    """The byte-level alphabet of GPT-2 and ``tokenizers.pre_tokenizers.ByteLevel``: byte -> one
    printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """The byte vocabulary as a transformers tokenizer (259 ids; see the module doc)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(RESERVED_TOKENS)}
    vocab.update({c: b + len(RESERVED_TOKENS) for b, c in _byte_alphabet().items()})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in RESERVED_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        split_special_tokens=True,
        model_max_length=_NO_LIMIT,
    )


def token_tokenizer(vocab: Vocab) -> PreTrainedTokenizerFast:
    """A closed token vocabulary (``kind="tokens"``) as a transformers tokenizer: whitespace-
    separated symbols, ids as ``vocab.encode_tokens``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if vocab.kind != "tokens":
        raise ValueError(f"vocab: expected a token vocabulary (kind 'tokens'), got kind {vocab.kind!r}")
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", model_max_length=_NO_LIMIT)


def tokenizer_for(vocab: Vocab) -> PreTrainedTokenizerFast:
    """The transformers tokenizer of one of our vocabularies."""
    return byte_tokenizer() if vocab.kind == "bytes" else token_tokenizer(vocab)
