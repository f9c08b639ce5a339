"""The Hugging Face-style layout of a saved model: ``config.json`` + ``model.safetensors``.

``save_pretrained(model, dir)`` writes both atomically (``utils.io``): the config from the
model's resolved ``ModelConfig`` with its ``format_version``, the weights with safetensors.
``from_pretrained(dir)`` migrates an older config (``models.config.migrate``), rebuilds the
model and loads the weights (safetensors: no code runs on load; works offline).
``safetensors`` is imported lazily (extra ``[train]``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from serpent_ssm.models.build import build_model
from serpent_ssm.models.config import ModelConfig, migrate
from serpent_ssm.utils.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "from_pretrained",
    "load_state_checked",
    "read_config",
    "save_pretrained",
]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ModuleNotFoundError(
            "saving and loading models needs safetensors: pip install 'serpent-ssm[train]'"
        ) from None
    return safetensors.torch


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError("model: expected a model built by build_model (with a ModelConfig), got one without")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    st = _safetensors()
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:  # a tied weight (the LM head): stored once, re-tied on load
            continue
        seen.add(v.data_ptr())
        state[k] = v.detach().contiguous()
    data = st.save(state, metadata={"format": "pt"})
    atomic_write_bytes(directory / WEIGHTS_NAME, lambda f: f.write(data))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config.resolved().to_dict(), indent=1) + "\n")
    return directory


def read_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` in a saved model's ``config.json`` (any released format)."""
    path = Path(path)
    try:
        return ModelConfig.from_dict(migrate(json.loads(path.read_text())))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a model config: {exc}") from None


def from_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved by ``save_pretrained`` in ``directory``.

    Raises ValueError naming the file when the config is unreadable or the weights do not match
    it (missing, unexpected or mis-shaped tensors).
    """
    directory = Path(directory)
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (cfg_path, weights):
        if not path.is_file():
            raise ValueError(
                f"{path}: missing: expected {CONFIG_NAME} and {WEIGHTS_NAME} from save_pretrained"
            )
    model = build_model(read_config(cfg_path))
    try:
        state = _safetensors().load_file(str(weights), device=str(map_location))
    except Exception as exc:  # a truncated or corrupt file
        raise ValueError(f"{weights}: unreadable safetensors file: {exc}") from None
    load_state_checked(model, state, weights)
    return model


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(state)`` with one error naming ``source`` and the first mismatch."""
    own = model.state_dict()
    state = dict(state)
    by_ptr = {own[k].data_ptr(): k for k in own if k in state}
    for k in set(own) - set(state):  # tied weights are saved once
        if own[k].data_ptr() in by_ptr:
            state[k] = state[by_ptr[own[k].data_ptr()]]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        raise ValueError(
            f"{source}: weights do not match the model "
            f"({what}; {len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for k in own:  # the model's own order: the first mismatching tensor is named
        v = state[k]
        if v.shape != own[k].shape:
            raise ValueError(
                f"{source}: tensor {k!r}: expected shape {tuple(own[k].shape)}, got {tuple(v.shape)}"
            )
    model.load_state_dict(state)
