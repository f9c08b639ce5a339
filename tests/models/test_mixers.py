"""``make_mixer(layer_idx)``: the one mixer factory of every model, decided by the layer index alone."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from serpent_ssm.models import (
    CausalLM,
    ModelConfig,
    RetrievalClassifier,
    SequenceClassifier,
    build_model,
    make_mixer_factory,
)
from serpent_ssm.modules import Bidirectional, Mamba, SeRpEnt

D = 8


def _mixers(model: nn.Module) -> list[nn.Module]:
    blocks = model.blocks if isinstance(model, CausalLM) else model.encoder.blocks
    return [block.mixer for block in blocks]


@pytest.mark.parametrize("causal", [False, True])
def test_layers_are_decided_by_the_index_not_the_call_order(causal):
    """With ``layers``, SeRpEnt at those indices and the plain backbone elsewhere, whatever the
    order and number of calls: one factory serves any number of models."""
    make_mixer = make_mixer_factory("serpent-mamba", D, causal=causal, serpent_kwargs={"layers": [1, 3]})
    plain = Mamba if causal else Bidirectional
    assert [type(make_mixer(i)) for i in (3, 0, 3, 1, 2, 2)] == [
        SeRpEnt,
        plain,
        SeRpEnt,
        SeRpEnt,
        plain,
        plain,
    ]
    models = (
        [CausalLM(make_mixer, 20, D, 4) for _ in range(2)]
        if causal
        else [SequenceClassifier(make_mixer, D, 4, 3, vocab_size=20) for _ in range(2)]
    )
    for model in models:
        assert [type(m) for m in _mixers(model)] == [plain, SeRpEnt, plain, SeRpEnt]


@pytest.mark.parametrize("name", ["mamba", "serpent-s4d"])
def test_every_layer_alike_without_layers(name):
    make_mixer = make_mixer_factory(name, D, causal=True)
    first, later = make_mixer(0), make_mixer(5)
    assert type(first) is type(later) and first is not later
    assert first.state_dict().keys() == later.state_dict().keys()


@pytest.mark.parametrize("head", ["lm", "classify", "retrieval"])
def test_models_call_make_mixer_with_each_layer_index_in_order(head):
    calls = []
    inner = make_mixer_factory("mamba", D, causal=head == "lm")

    def make_mixer(layer_idx):
        calls.append(layer_idx)
        return inner(layer_idx)

    if head == "lm":
        CausalLM(make_mixer, 20, D, 3)
    else:
        cls = RetrievalClassifier if head == "retrieval" else SequenceClassifier
        cls(make_mixer, D, 3, 2, vocab_size=20)
    assert calls == [0, 1, 2]


@pytest.mark.parametrize("head", ["lm", "classify"])
def test_build_model_is_the_model_of_its_factory(head):
    """``build_model`` passes ``make_mixer_factory`` of the config to the model: the same module
    names, parameter keys and (same seed) weights as building the model by hand."""
    inputs = {"vocab_size": 20} if head == "lm" else {"d_input": 1, "n_classes": 3}
    serpent = {"layers": [0, 2]}
    cfg = ModelConfig(name="serpent-mamba", head=head, d_model=D, n_layers=3, serpent=serpent, **inputs)
    torch.manual_seed(0)
    built = build_model(cfg)
    torch.manual_seed(0)
    make_mixer = make_mixer_factory(
        "serpent-mamba", D, causal=head == "lm", serpent_kwargs=cfg.resolved().serpent
    )
    if head == "lm":
        by_hand = CausalLM(make_mixer, 20, D, 3)
    else:
        by_hand = SequenceClassifier(make_mixer, D, 3, 3, d_input=1)
    want, got = by_hand.state_dict(), built.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_factory_without_the_index_still_works_with_a_warning():
    with pytest.warns(
        FutureWarning, match=re.escape("make_mixer: a factory without arguments is deprecated")
    ):
        model = SequenceClassifier(lambda: Mamba(D, d_state=4), D, 2, 3, vocab_size=10)
    assert [type(m) for m in _mixers(model)] == [Mamba, Mamba]
    with pytest.warns(FutureWarning):
        lm = CausalLM(lambda: Mamba(D, d_state=4), 10, D, 2)
    assert lm(torch.randint(0, 10, (2, 5))).shape == (2, 5, 10)


def test_clear_errors():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "make_mixer: expected a callable make_mixer(layer_idx) -> mixer, got the model name 'mamba'"
        ),
    ):
        CausalLM("mamba", 20, D, 2)
    with pytest.raises(
        ValueError, match=re.escape("make_mixer: expected a callable make_mixer(layer_idx) -> mixer, got int")
    ):
        SequenceClassifier(3, D, 2, 3, vocab_size=10)
    make_mixer = make_mixer_factory("serpent-mamba", D, serpent_kwargs={"layers": [1]})
    with pytest.raises(TypeError, match="layer_idx"):
        make_mixer()
    for bad in (-1, 1.0, True):
        with pytest.raises(
            ValueError,
            match=re.escape(f"layer_idx: expected the block's index, an integer >= 0, got {bad!r}"),
        ):
            make_mixer(bad)
