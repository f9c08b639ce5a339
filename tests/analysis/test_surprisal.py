"""n-gram surprisal and the byte/token alignment of token surprisal (multi-byte UTF-8)."""

from __future__ import annotations

import numpy as np
import pytest

from serpent_ssm.analysis.surprisal import ByteNgram, spread_token_surprisal


def test_ngram_is_a_distribution_and_learns_context():
    text = b"abababababababab" * 20
    model = ByteNgram(order=3).fit(text)
    for ctx in (b"", b"a", b"ab", b"zz"):
        total = sum(model._prob(ctx, b) for b in range(256))
        assert total == pytest.approx(1.0)
    s = model.surprisal(b"abab")
    assert s.shape == (4,) and (s[1:] < 0.5).all() and s[0] > s[1]  # context makes it predictable
    assert model.surprisal(b"abaz")[-1] > 5  # an unseen byte is surprising


def test_spread_over_multibyte_characters():
    text = "né 日本"  # bytes: n(1) é(2) space(1) 日(3) 本(3) = 10
    offsets = [(0, 2), (2, 3), (3, 5)]  # "né", " ", "日本"
    bits = spread_token_surprisal(text, offsets, [6.0, 1.0, 12.0])
    assert bits.shape == (10,)
    np.testing.assert_allclose(bits[:3], 2.0)  # 6 bits over n + é's two bytes
    assert bits[3] == 1.0
    np.testing.assert_allclose(bits[4:], 2.0)  # 12 bits over six bytes
    assert bits.sum() == pytest.approx(19.0)


def test_uncovered_bytes_are_nan_and_bad_offsets_fail():
    bits = spread_token_surprisal("abc", [(1, 3)], [4.0])
    assert np.isnan(bits[0]) and bits[1:].tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match=r"^offsets\[0\]: expected 0 <= start <= end <= 3, got \(2, 5\)$"):
        spread_token_surprisal("abc", [(2, 5)], [1.0])
    with pytest.raises(
        ValueError, match=r"^offsets, token_surprisal: expected one surprisal per token, got 1 and 2$"
    ):
        spread_token_surprisal("abc", [(0, 1)], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^fit: expected the model to be fitted first"):
        ByteNgram().surprisal(b"x")


def test_overlapping_token_spans_add_up():
    # a byte-level BPE cuts "🐍" (4 bytes) into two tokens that both report the whole character
    text = "a🐍"
    bits = spread_token_surprisal(text, [(0, 1), (1, 2), (1, 2)], [1.0, 8.0, 4.0])
    assert bits.shape == (5,) and bits[0] == 1.0
    np.testing.assert_allclose(bits[1:], 3.0)  # (8 + 4) / 4 bytes
    assert bits.sum() == pytest.approx(13.0)  # nothing lost
