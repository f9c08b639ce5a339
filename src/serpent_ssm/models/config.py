"""One dataclass config for every model, ``build_model``, and the Hugging Face-style layout.

``save_pretrained(model, dir)`` writes ``config.json`` + ``model.safetensors``;
``from_pretrained(dir)`` rebuilds the model from the config and loads the weights (safetensors:
no code runs on load; works offline). ``safetensors`` is imported lazily (extra ``[train]``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serpent_ssm.models.classifier import (
    MODEL_NAMES,
    RetrievalClassifier,
    SequenceClassifier,
    make_mixer_factory,
)
from serpent_ssm.modules.serpent import SeRpEnt, SeRpEntConfig

__all__ = [
    "HEADS",
    "ModelConfig",
    "build_model",
    "count_parameters",
    "from_pretrained",
    "save_pretrained",
]

HEADS = ("classify", "retrieval", "lm")
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
_SERPENT_FIELDS = {f.name for f in dataclasses.fields(SeRpEntConfig)} - {
    "d_model",
    "backbone",
    "backbone_kwargs",
}


@dataclass
class ModelConfig:
    """Everything that defines a model's architecture (not its training).

    ``name``: mamba, s4d, serpent-mamba, serpent-s4d. ``head``: ``classify`` (SequenceClassifier),
    ``retrieval`` (two towers) or ``lm`` (CausalLM; always causal). Inputs: ``vocab_size`` for
    token ids, or ``d_input`` for float features (1 for pixels). ``backbone``: keyword arguments
    of the Mamba/S4D mixer (``d_state``, ``expand``, ...). ``serpent``: fields of
    ``SeRpEntConfig`` (``rates``, ``window``, ...), for the serpent-* names only.
    ``causal=False`` makes the backbones bidirectional. ``norm_eps`` and ``tie_embeddings``
    apply to the language model (``head="lm"``).
    """

    name: str = "mamba"
    head: str = "classify"
    d_model: int = 64
    n_layers: int = 2
    n_classes: int = 10
    vocab_size: int | None = None
    d_input: int | None = None
    norm: str = "rms"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    mlp_ratio: float = 0.0
    dropout: float = 0.0
    causal: bool = False
    backbone: dict[str, Any] = field(default_factory=dict)
    serpent: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"model.name: expected one of {', '.join(MODEL_NAMES)}, got {self.name!r}")
        if self.head not in HEADS:
            raise ValueError(f"model.head: expected one of {', '.join(HEADS)}, got {self.head!r}")
        unknown = sorted(set(self.serpent) - _SERPENT_FIELDS)
        if unknown:
            raise ValueError(
                f"model.serpent.{unknown[0]}: unknown key, "
                f"expected one of {', '.join(sorted(_SERPENT_FIELDS))}"
            )
        if self.serpent and not self.name.startswith("serpent-"):
            raise ValueError(f"model.serpent: only for the serpent-* models, got it with name {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model.{unknown[0]}: unknown key, expected one of {', '.join(sorted(known))}")
        return cls(**d)


def build_model(config: ModelConfig) -> nn.Module:
    """The model described by ``config`` (freshly initialised); ``model.config`` is set."""
    serpent = dict(config.serpent)
    if "rates" in serpent:
        serpent["rates"] = tuple(serpent["rates"])
    if config.head == "lm":
        from serpent_ssm.models.lm import CausalLM

        if config.vocab_size is None:
            raise ValueError("model.vocab_size: expected the vocabulary size of the language model, got None")
        model = CausalLM(
            config.name,
            config.vocab_size,
            config.d_model,
            config.n_layers,
            norm=config.norm,
            norm_eps=config.norm_eps,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
            backbone=config.backbone,
            serpent=serpent,
            tie_embeddings=config.tie_embeddings,
        )
        model.config = config
        return model
    factory = make_mixer_factory(
        config.name,
        config.d_model,
        causal=config.causal,
        backbone_kwargs=config.backbone,
        serpent_kwargs=serpent,
    )
    cls = RetrievalClassifier if config.head == "retrieval" else SequenceClassifier
    model = cls(
        factory,
        config.d_model,
        config.n_layers,
        config.n_classes,
        vocab_size=config.vocab_size,
        d_input=config.d_input,
        norm=config.norm,
        mlp_ratio=config.mlp_ratio,
        dropout=config.dropout,
    )
    model.config = config
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ModuleNotFoundError(
            "saving and loading models needs safetensors: pip install 'serpent-ssm[train]'"
        ) from None
    return safetensors.torch


def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path``: readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: st.save_file(state, tmp, metadata={"format": "pt"}))
    record = config.to_dict()
    mixer = next((m for m in model.modules() if isinstance(m, SeRpEnt)), None)
    if mixer is not None:  # every SeRpEnt option as resolved, so that a later default cannot change it
        resolved = mixer.config.to_dict()
        options = {k: resolved[k] for k in sorted(_SERPENT_FIELDS - {"causal"})}
        record["serpent"] = options | record["serpent"]
    text = json.dumps(record, indent=1) + "\n"
    _atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


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
    try:
        config = ModelConfig.from_dict(json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{cfg_path}: not a model config: {exc}") from None
    model = build_model(config)
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
