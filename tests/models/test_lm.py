"""The causal LM: step() = forward(), chunked state carry, generation, bad input."""

from __future__ import annotations

import re

import pytest
import torch

from serpent_ssm.models import MODEL_NAMES
from serpent_ssm.modules import Block, StateSupport, state_support
from serpent_ssm.utils.memory import peak_memory_mb, reset_peak_memory

from tests.helpers import causal_lm, run_steps, wake_branches


def _lm(name, vocab=50, d=16, layers=2, seed=0):
    torch.manual_seed(seed)
    lm = causal_lm(name, vocab, d, layers, mlp_ratio=1.0 if name.endswith("s4d") else 0.0).eval()
    return wake_branches(lm, seed)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_step_equals_forward_and_head_is_tied(name):
    lm = _lm(name)
    ids = torch.randint(0, 50, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = lm(ids)
    assert full.shape == (2, 30, 50)
    torch.testing.assert_close(run_steps(lm, ids), full, rtol=1e-4, atol=1e-4)
    assert lm.head.weight is lm.embedding.weight


@pytest.mark.parametrize("name", ["mamba", "s4d"])
def test_forward_carries_state_across_windows(name):
    lm = _lm(name)
    ids = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = lm(ids)
        a, st = lm(ids[:, :17], return_state=True)
        b, st = lm(ids[:, 17:], state=st, return_state=True)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-4, atol=1e-4)
    assert lm.state_support == StateSupport(step=True, forward_state=True)


def test_serpent_forward_carries_its_state():
    """Every model name declares both (tests/modules/test_serpent_chunks.py checks the values)."""
    lm = _lm("serpent-mamba")
    assert lm.state_support == StateSupport(step=True, forward_state=True)
    logits, state = lm(torch.zeros(1, 4, dtype=torch.long), return_state=True)
    assert logits.shape == (1, 4, lm.vocab_size) and len(state) == len(lm.blocks)


class _PlainMixer(torch.nn.Module):
    """A user-written mixer that declares nothing: forward only."""

    def forward(self, x, mask=None):
        return x * 0.5


class _TypeErrorMixer(_PlainMixer):
    """Declares forward_state; a TypeError raised inside it must surface as itself."""

    state_support = StateSupport(step=False, forward_state=True)

    def forward(self, x, mask=None, state=None, return_state=False):
        raise TypeError("a bug inside the mixer")


def test_state_protocol_is_asked_not_guessed():
    assert state_support(_PlainMixer()) == StateSupport()
    block = Block(4, _PlainMixer())
    with pytest.raises(ValueError, match=r"^state: _PlainMixer\.forward carries no state across calls"):
        block(torch.zeros(1, 3, 4), return_state=True)
    assert block(torch.zeros(1, 3, 4)).shape == (1, 3, 4)
    with pytest.raises(TypeError, match="a bug inside the mixer"):  # not relabelled
        Block(4, _TypeErrorMixer())(torch.zeros(1, 3, 4), return_state=True)
    lm = _lm("mamba")
    lm.blocks[0].mixer = _PlainMixer()
    assert lm.state_support == StateSupport()
    with pytest.raises(ValueError, match=r"^model: expected mixers that support step\(\)"):
        lm.generate(torch.zeros(3, dtype=torch.long), 2)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_greedy_generation_equals_repeated_full_forwards(name):
    lm = _lm(name)
    prompt = torch.tensor([[3, 14, 15, 9, 26], [5, 3, 5, 8, 9]])
    out = lm.generate(prompt, max_new_tokens=12, temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(12):
            ids = torch.cat([ids, lm(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    assert torch.equal(lm.generate(prompt[0], 12, temperature=0), ids[0])  # (L,) in, (L + n,) out


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    lm = _lm("mamba")
    prompt = torch.tensor([1, 2, 3])
    a = lm.generate(prompt, 20, temperature=5.0, seed=7)  # untrained: flatten its peaked softmax
    assert torch.equal(a, lm.generate(prompt, 20, temperature=5.0, seed=7))
    assert not torch.equal(a, lm.generate(prompt, 20, temperature=5.0, seed=8))
    greedy = lm.generate(prompt, 20, temperature=0)
    assert torch.equal(lm.generate(prompt, 20, temperature=0.7, top_k=1, seed=3), greedy)
    assert torch.equal(lm.generate(prompt, 20, temperature=0.7, top_p=1e-6, seed=3), greedy)


def _state_bytes(state):
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_state_bytes(v) for v in state)
    return 0


@pytest.mark.parametrize("name", ["mamba", "serpent-mamba"])
def test_generation_memory_does_not_grow_with_tokens(name):
    lm = _lm(name, vocab=259, d=32)
    prompt = torch.tensor([[10, 20, 30]])
    state = lm.allocate_state(1)
    size0 = _state_bytes(state)
    with torch.no_grad():
        for t in range(300):
            _, state = lm.step(torch.tensor([t % 259]), state)
    assert _state_bytes(state) == size0  # the recurrent state has a fixed size
    lm.generate(prompt, 50, temperature=0)  # warm-up
    peaks = {}
    for n in (200, 2000):
        reset_peak_memory("cpu")
        lm.generate(prompt, n, temperature=1.0, seed=0)
        peaks[n] = peak_memory_mb("cpu")
    assert peaks[2000] <= 1.10 * peaks[200], peaks


def test_bad_input():
    lm = _lm("mamba")
    with pytest.raises(ValueError, match=r"^prompt_ids: expected ids in \[0, 50\), got 50$"):
        lm.generate(torch.tensor([1, 50]), 3)
    with pytest.raises(
        ValueError, match=re.escape("prompt_ids: expected a non-empty (L,) or (B, L) tensor, got shape (0,)")
    ):
        lm.generate(torch.zeros(0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"^ids: expected an int64 tensor of token ids, got torch.float32$"):
        lm(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"^top_p: expected a probability in \(0, 1\], got 1.5$"):
        lm.generate(torch.tensor([1]), 3, top_p=1.5)


@pytest.mark.parametrize("name", ["mamba", "serpent-s4d"])
def test_lm_save_and_load_keeps_the_tied_head(tmp_path, name):
    from serpent_ssm.models import ModelConfig, build_model, from_pretrained, save_pretrained

    lm = build_model(ModelConfig(name=name, head="lm", d_model=16, n_layers=1, vocab_size=40, causal=True))
    save_pretrained(lm, tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), lm.eval()(ids))
    assert loaded.head.weight is loaded.embedding.weight
