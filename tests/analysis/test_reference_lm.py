"""The SmolLM2 reference surprisal: byte alignment on real multi-byte text, windowed scoring,
and the messages when its packages or weights are missing. The model tests run where
``serpent-ssm[analysis]`` is installed and ``serpent data fetch smollm2`` has run (CI does both),
and are skipped with the reason otherwise."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from serpent_ssm.analysis import reference_lm
from serpent_ssm.analysis.reference_lm import ReferenceLM, reference_lm_unavailable, resolve_reference

TEXT = "Café naïve — 日本語, emoji 🐍. The cat sat on the mat, and the dog sat on the log."


@pytest.fixture(scope="module")
def smollm2():
    why = reference_lm_unavailable()
    if why is not None:
        pytest.skip(f"SmolLM2 reference unavailable: {why}")
    return ReferenceLM.load()


def test_missing_packages_and_weights_are_named(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        reference_lm.importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name)
    )
    assert reference_lm_unavailable(tmp_path) == (
        "the SmolLM2 reference needs the packages gguf: pip install 'serpent-ssm[analysis]'"
    )
    with pytest.raises(ModuleNotFoundError, match=r"needs the packages gguf"):
        ReferenceLM.load(tmp_path)
    monkeypatch.setattr(reference_lm.importlib.util, "find_spec", lambda name: object())
    why = reference_lm_unavailable(tmp_path)
    assert why.startswith(f"no fetched copy of 'smollm2' in {tmp_path}; run `SERPENT_SSM_DATA_DIR=")
    with pytest.raises(FileNotFoundError, match=r"serpent data fetch smollm2"):
        ReferenceLM.load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^--reference smollm2: no fetched copy of 'smollm2'"):
        resolve_reference("smollm2", tmp_path)


def test_resolve_reference_choices(tmp_path, capsys):
    assert resolve_reference("none") is None and resolve_reference(None) is None
    marker = object()
    assert resolve_reference(marker) is marker
    with pytest.raises(ValueError, match=r"^reference: expected one of auto, smollm2, none, got 'gpt'$"):
        resolve_reference("gpt")
    assert resolve_reference("auto", tmp_path) is None  # nothing fetched there: skipped, said why
    assert capsys.readouterr().out.startswith("skipping the SmolLM2 surprisal: ")


def test_every_byte_gets_its_share_of_the_token_surprisal(smollm2):
    offsets, bits = smollm2.token_surprisal(TEXT)
    assert len(offsets) == len(bits) and (bits >= 0).all() and np.isfinite(bits).all()
    per_byte = smollm2.byte_surprisal(TEXT)
    assert per_byte.shape == (len(TEXT.encode("utf-8")),)
    assert not np.isnan(per_byte).any()  # every byte is covered, multi-byte characters included
    assert per_byte.sum() == pytest.approx(bits.sum())
    np.testing.assert_array_equal(smollm2.byte_surprisal(TEXT.encode("utf-8")), per_byte)
    # predictable continuations cost fewer bits than the text's start
    the_log = TEXT.encode("utf-8").rindex(b"log")
    assert per_byte[the_log:].mean() < per_byte[:10].mean()


def test_windows_keep_half_a_context_and_agree_on_the_first_window(smollm2):
    full = smollm2.token_surprisal(TEXT)[1]
    small = ReferenceLM(smollm2.tokenizer, smollm2.model, context=8).token_surprisal(TEXT)[1]
    assert len(small) == len(full)
    np.testing.assert_allclose(small[:7], full[:7], rtol=1e-4, atol=1e-4)  # same context there
    assert not np.allclose(small[8:], full[8:])  # later tokens lost context


def test_bad_input(smollm2):
    with pytest.raises(ValueError, match=r"^text: expected UTF-8 for the reference model's tokenizer, "):
        smollm2.byte_surprisal(b"ab\xffc")
    with pytest.raises(ValueError, match=r"^context: expected at least 3 tokens, got 2$"):
        ReferenceLM(smollm2.tokenizer, smollm2.model, context=2)
