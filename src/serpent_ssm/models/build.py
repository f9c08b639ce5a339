"""``build_model(config)``: the model a ``ModelConfig`` describes, freshly initialised."""

from __future__ import annotations

from torch import nn

from serpent_ssm.models.classifier import RetrievalClassifier, SequenceClassifier
from serpent_ssm.models.config import ModelConfig
from serpent_ssm.models.lm import CausalLM
from serpent_ssm.models.mixers import make_mixer_factory

__all__ = ["build_model", "count_parameters"]


def build_model(config: ModelConfig) -> nn.Module:
    """The model described by ``config`` (freshly initialised); ``model.config`` is set to the
    resolved config (``ModelConfig.resolved()``), which is what ``save_pretrained`` writes."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config: expected a ModelConfig, got {type(config).__name__}")
    config = config.resolved()
    make_mixer = make_mixer_factory(
        config.name,
        config.d_model,
        causal=config.causal,
        backbone_kwargs=config.backbone,
        serpent_kwargs=config.serpent,
    )
    if config.head == "lm":
        if config.vocab_size is None:
            raise ValueError("model.vocab_size: expected the vocabulary size of the language model, got None")
        model: nn.Module = CausalLM(
            make_mixer,
            config.vocab_size,
            config.d_model,
            config.n_layers,
            norm=config.norm,
            norm_eps=config.norm_eps,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
            tie_embeddings=config.tie_embeddings,
        )
    else:
        cls = RetrievalClassifier if config.head == "retrieval" else SequenceClassifier
        model = cls(
            make_mixer,
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
    """Number of parameters of ``model`` (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
