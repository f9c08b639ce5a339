"""Record a model's selective time intervals per position, for comparison with information.

- Mamba mixers (top level of each block): ``Δ_t = softplus(dt_proj(x_t) + bias)``, averaged over
  the channels: one ``(B, L)`` array per layer, keyed ``"layer{i}"``.
- SeRpEnt mixers: the resampler's intervals of each branch (what decides which elements each
  compression rate keeps): ``(B, L)`` per layer and branch, keyed ``"layer{i}/rate{κ}"``.

The model runs once, unchanged; hooks read the intervals on the way (a SeRpEnt mixer is asked
for its ``return_info`` in its hook, which recomputes that mixer's forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from serpent_ssm.modules import Mamba, SeRpEnt

__all__ = ["record_intervals"]


@torch.no_grad()
def record_intervals(model: nn.Module, *args, **kwargs) -> dict[str, torch.Tensor]:
    """Run ``model(*args, **kwargs)`` and return the intervals of every top-level mixer.

    The model must have ``blocks`` whose ``mixer`` is a ``Mamba`` or a ``SeRpEnt`` (our LMs and
    causal classifiers); values are float32 ``(B, L)`` tensors on the CPU.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None and hasattr(model, "encoder"):
        blocks = getattr(model.encoder, "blocks", None)
    if blocks is None:
        raise ValueError(
            f"model: expected a model with .blocks (an LM or a classifier), got {type(model).__name__}"
        )
    records: dict[str, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(blocks):
        mixer = block.mixer
        if isinstance(mixer, Mamba):

            def on_x_proj(module, inp, out, i=i, mixer=mixer):
                dt = out[..., : mixer.dt_rank] @ mixer.dt_proj.weight.T + mixer.dt_proj.bias  # (B, L, E)
                records[f"layer{i}"] = F.softplus(dt.float()).mean(-1).cpu()

            handles.append(mixer.x_proj.register_forward_hook(on_x_proj))
        elif isinstance(mixer, SeRpEnt):

            def on_serpent(module, inp, kw, out, i=i):
                _, info = module.forward(inp[0], mask=kw.get("mask"), return_info=True)  # no hooks again
                for branch in info["branches"]:
                    records[f"layer{i}/rate{branch['rate']:g}"] = branch["delta"].float().cpu()

            handles.append(mixer.register_forward_hook(on_serpent, with_kwargs=True))
        else:
            raise ValueError(f"blocks[{i}].mixer: expected Mamba or SeRpEnt, got {type(mixer).__name__}")
    try:
        model.eval()
        model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return records
