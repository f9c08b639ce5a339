"""Helpers shared by the tests (imported as ``tests.helpers``)."""

from __future__ import annotations

import dataclasses

import torch


def right_padding_mask(lengths: list[int], length: int) -> torch.Tensor:
    """``(len(lengths), length)`` bool mask with ``lengths[b]`` real elements first in row ``b``."""
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str = ""
) -> None:
    """``torch.testing.assert_close`` with a label naming the compared quantity."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def causal_lm(
    name: str, vocab_size: int, d_model: int, n_layers: int, backbone=None, serpent=None, **kwargs
) -> torch.nn.Module:
    """``CausalLM`` of model ``name`` (``mamba``, ``s4d``, ``serpent-mamba``, ``serpent-s4d``) with
    ``backbone`` and ``serpent`` options; ``kwargs`` go to ``CausalLM`` (``norm``, ``mlp_ratio``, ...)."""
    from serpent_ssm.models import CausalLM, make_mixer_factory

    make_mixer = make_mixer_factory(
        name, d_model, causal=True, backbone_kwargs=backbone, serpent_kwargs=serpent
    )
    return CausalLM(make_mixer, vocab_size, d_model, n_layers, **kwargs)


def wake_branches(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every SeRpEnt mixer in ``model`` a random branch merge (``out_proj``), so that each
    branch shows in the output. A causal mixer with the full branch starts as its backbone
    (``init="backbone"``: the compressed branches have zero weight), which would hide them from
    a test of step = forward, causality or padding; after training they carry weight too."""
    from serpent_ssm.modules import SeRpEnt

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SeRpEnt):
                for p in m.out_proj.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def run_steps(model, x: torch.Tensor) -> torch.Tensor:
    """Feed ``x (B, L, ...)`` (features, or token ids ``(B, L)`` for a language model) through
    ``model.step`` one position at a time; outputs stacked on dim 1."""
    with torch.no_grad():
        state = model.allocate_state(x.shape[0])
        outs = []
        for t in range(x.shape[1]):
            y_t, state = model.step(x[:, t], state)
            outs.append(y_t)
    return torch.stack(outs, 1)


def _state_rows(state, b):
    """Row ``b`` of a recurrent state (a tensor, a typed state or a dict of tensors), as a dict
    of tensors."""
    if dataclasses.is_dataclass(state):
        return {f.name: getattr(state, f.name)[b] for f in dataclasses.fields(state)}
    if isinstance(state, dict):
        return {k: v[b] for k, v in state.items()}
    return {"state": state[b]}


def _mix(model, x, mask, with_state):
    """``(y, state)``: the state only when ``with_state`` (else None)."""
    return model(x, mask=mask, return_state=True) if with_state else (model(x, mask=mask), None)


def assert_padding_invariant(model, x, lengths, rtol, atol, with_state=False):
    """Rows of ``x (B, L, D)`` right-padded to ``lengths`` give their unpadded outputs (and final
    states, with ``with_state``); outputs at padding are 0; an all-padding row keeps a zero state."""
    with torch.no_grad():
        y, state = _mix(model, x, right_padding_mask(lengths, x.shape[1]), with_state)
        for b, n in enumerate(lengths):
            assert torch.count_nonzero(y[b, n:]) == 0
            if n == 0:
                if with_state:
                    assert all(torch.count_nonzero(v) == 0 for v in _state_rows(state, b).values())
                continue
            y_b, state_b = _mix(model, x[b : b + 1, :n], None, with_state)
            assert_close(y[b, :n], y_b[0], rtol, atol, f"row {b} (n={n})")
            if with_state:
                want = _state_rows(state_b, 0)
                for k, v in _state_rows(state, b).items():
                    assert_close(v, want[k], rtol, atol, f"row {b} {k}")


class ShiftedLayer(torch.nn.Module):
    """A layer wrapped as an adapter wraps it (a LoRA layer; here ``inner(x) + 0.5``): a step that
    read ``inner``'s weight instead of calling the wrapper would miss the shift."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + 0.5
