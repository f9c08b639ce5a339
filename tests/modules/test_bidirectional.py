"""Bidirectional wrapper and the per-row reversal it relies on."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from serpent_ssm.modules import S4D, Bidirectional, Mamba
from serpent_ssm.utils.sequence import reverse_padded

from tests.helpers import assert_close, assert_padding_invariant, right_padding_mask

D_MODEL = 8
MIXERS = {
    "mamba": lambda: Mamba(D_MODEL, d_state=4),
    "s4d": lambda: S4D(D_MODEL, d_state=8),
}


@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=4), extra=st.integers(0, 5))
def test_reverse_padded_reverses_real_elements_only(lengths, extra):
    total = max(lengths) + extra
    x = torch.arange(len(lengths) * total).view(len(lengths), total).float()
    mask = right_padding_mask(lengths, total)
    r = reverse_padded(x, mask)
    for b, n in enumerate(lengths):
        assert torch.equal(r[b, :n], x[b, :n].flip(0))
        assert torch.equal(r[b, n:], x[b, n:])
    assert torch.equal(reverse_padded(r, mask), x)


def test_reverse_without_mask_is_flip():
    x = torch.randn(2, 5, 3)
    assert torch.equal(reverse_padded(x), x.flip(1))


@pytest.mark.parametrize("kind", sorted(MIXERS))
@pytest.mark.parametrize("combine", ["add", "concat"])
def test_equals_forward_plus_reversed_mixer(kind, combine):
    torch.manual_seed(0)
    model = Bidirectional(MIXERS[kind], D_MODEL, combine=combine).eval()
    x = torch.randn(2, 15, D_MODEL)
    with torch.no_grad():
        y_f = model.forward_mixer(x)
        y_b = model.backward_mixer(x.flip(1)).flip(1)
        expected = y_f + y_b if combine == "add" else model.proj(torch.cat([y_f, y_b], -1))
        assert_close(model(x), expected, 1e-6, 1e-6, "output")


@pytest.mark.parametrize("kind", sorted(MIXERS))
@given(
    lengths=st.lists(st.integers(1, 20), min_size=1, max_size=4),
    extra=st.integers(0, 6),
    seed=st.integers(0, 99),
)
def test_padding_invariance(kind, lengths, extra, seed):
    torch.manual_seed(seed)
    model = Bidirectional(MIXERS[kind], D_MODEL).eval()
    x = torch.randn(len(lengths), max(lengths) + extra, D_MODEL)
    assert_padding_invariant(model, x, lengths, 1e-4, 1e-5)


def test_the_reversed_direction_sees_the_future():
    torch.manual_seed(0)
    model = Bidirectional(MIXERS["mamba"], D_MODEL).eval()
    x = torch.randn(1, 10, D_MODEL)
    x2 = x.clone()
    x2[0, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(x)[0, 0], model(x2)[0, 0])


def test_bad_arguments():
    with pytest.raises(ValueError, match=re.escape("combine: expected one of 'add', 'concat', got 'mean'")):
        Bidirectional(MIXERS["mamba"], D_MODEL, combine="mean")
    shared = Mamba(D_MODEL)
    with pytest.raises(ValueError, match=re.escape("make_mixer: expected a new mixer on every call")):
        Bidirectional(lambda: shared, D_MODEL)


def test_intervals_of_both_directions():
    torch.manual_seed(0)
    model = Bidirectional(lambda: Mamba(8, d_state=4), 8)
    x = torch.randn(3, 12, 8)
    mask = right_padding_mask([12, 7, 1], 12)
    with torch.no_grad():
        got = model.intervals(x, mask)
        fwd = model.forward_mixer.intervals(x, mask)
        bwd = reverse_padded(model.backward_mixer.intervals(reverse_padded(x, mask), mask), mask)
    assert got.shape == (3, 12, 2 * model.forward_mixer.d_inner)
    assert torch.equal(got, torch.cat([fwd, bwd], -1))
    assert torch.count_nonzero(got[1, 7:]) == 0


def test_intervals_need_selective_mixers():
    model = Bidirectional(lambda: S4D(8), 8)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "intervals: expected wrapped mixers with selective intervals (such as Mamba), got S4D"
        ),
    ):
        model.intervals(torch.randn(1, 4, 8))
