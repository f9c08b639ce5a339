"""Record a model's selective time intervals per position, for comparison with information.

- Mamba mixers (top level of each block): ``Δ_t = softplus(dt_proj(x_t) + bias)``
  (``Mamba.intervals``), averaged over the channels: one ``(B, L)`` array per layer, keyed
  ``"layer{i}"``. Inside a ``Bidirectional`` wrapper (non-causal classifiers) the two directions
  are kept apart, ``"layer{i}/fwd"`` and ``"layer{i}/bwd"``, both in the input's order.
- SeRpEnt mixers: the resampler's intervals of each branch (what decides which elements each
  compression rate keeps): ``(B, L)`` per layer and branch, keyed ``"layer{i}/rate{κ}"``.
- S4D mixers have no input-dependent intervals (``Δ`` is one learned value per channel) and are
  refused.

The model runs once, unchanged; hooks read the intervals on the way: a Mamba mixer is asked for
its ``intervals`` of the input it receives (which recomputes its projections), a SeRpEnt mixer
for its ``return_info`` (which recomputes that mixer's forward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from serpent_ssm.modules import Bidirectional, Mamba, SeRpEnt
from serpent_ssm.utils.sequence import reverse_padded

__all__ = ["record_intervals", "record_resampling", "model_blocks"]


def model_blocks(model: nn.Module) -> nn.ModuleList:
    """The residual blocks of an LM (``model.blocks``) or a classifier (``model.encoder.blocks``)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None and hasattr(model, "encoder"):
        blocks = getattr(model.encoder, "blocks", None)
    if blocks is None:
        raise ValueError(
            f"model: expected a model with .blocks (an LM or a classifier), got {type(model).__name__}"
        )
    return blocks


def _mamba_hook(records: dict, key: str, mixer: Mamba):
    """Record ``mixer.intervals`` of the mixer's input, averaged over the channels: ``(B, L)``."""

    def on_mixer(module, args, kwargs):
        x = args[0]
        mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
        records[key] = module.intervals(x, mask).float().mean(-1).cpu()

    return mixer.register_forward_pre_hook(on_mixer, with_kwargs=True)


@torch.no_grad()
def _run_with_hooks(model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor | None):
    """``(intervals, serpent_info)``: intervals per key ``(B, L)``; SeRpEnt's ``return_info`` per layer."""
    records: dict[str, torch.Tensor] = {}
    infos: dict[int, dict[str, Any]] = {}
    handles = []
    for i, block in enumerate(model_blocks(model)):
        mixer = block.mixer
        if isinstance(mixer, Mamba):
            handles.append(_mamba_hook(records, f"layer{i}", mixer))
        elif isinstance(mixer, Bidirectional) and isinstance(mixer.forward_mixer, Mamba):
            handles.append(_mamba_hook(records, f"layer{i}/fwd", mixer.forward_mixer))
            handles.append(_mamba_hook(records, f"layer{i}/bwd", mixer.backward_mixer))
        elif isinstance(mixer, SeRpEnt):

            def on_serpent(module, inp, kw, out, i=i):
                _, info = module.forward(inp[0], mask=kw.get("mask"), return_info=True)  # no hooks again
                infos[i] = info
                for branch in info["branches"]:
                    records[f"layer{i}/rate{branch['rate']:g}"] = branch["delta"].float().cpu()

            handles.append(mixer.register_forward_hook(on_serpent, with_kwargs=True))
        else:
            inner = getattr(mixer, "forward_mixer", mixer)
            raise ValueError(
                f"blocks[{i}].mixer: expected Mamba or SeRpEnt (S4D has no input-dependent intervals), "
                f"got {type(inner).__name__}"
            )
    was_training = model.training
    try:
        model.eval()
        model(inputs, mask)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for key in [k for k in records if k.endswith("/bwd")]:  # the backward mixer saw reversed rows
        records[key] = reverse_padded(records[key].unsqueeze(-1), mask).squeeze(-1)
    if mask is not None:
        for key in records:
            records[key] = torch.where(mask.cpu(), records[key], torch.zeros((), dtype=records[key].dtype))
    return records, infos


def record_intervals(
    model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Run ``model(inputs, mask)`` and return the intervals of every top-level mixer.

    ``inputs (B, L)`` token ids or ``(B, L, d_input)`` features, ``mask (B, L)`` (right padding).
    The model must have ``blocks`` (an LM) or ``encoder.blocks`` (a classifier) whose mixers are
    ``Mamba``, ``Bidirectional(Mamba)`` or ``SeRpEnt``; values are float32 ``(B, L)`` CPU tensors,
    0 at padding.
    """
    return _run_with_hooks(model, inputs, mask)[0]


def record_resampling(
    model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[int, dict[str, Any]]:
    """What each SeRpEnt layer's resampler did on ``inputs``: ``{layer: {"branches": [...]}}``,
    per branch ``rate``, ``delta (B, L)``, cumulative time ``t (B, L)``, the selected positions
    ``index (B, L')`` with ``valid (B, L')``, and ``counts (B,)`` (``SeRpEnt.forward(return_info=True)``)."""
    infos = _run_with_hooks(model, inputs, mask)[1]
    if not infos:
        raise ValueError(
            "model: expected at least one SeRpEnt mixer, got none (a plain backbone resamples nothing)"
        )
    return infos
