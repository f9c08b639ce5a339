"""``SerpentHFConfig``: a transformers config (``model_type = "serpent"``) that holds one
``ModelConfig`` of this library, field by field.

The fields are ``ModelConfig``'s (``model_name`` for its ``name``; ``tie_word_embeddings`` for
``tie_embeddings``, the name transformers reads; ``num_labels`` for ``n_classes``) plus what
transformers and its tools read: the special token ids, ``use_cache`` and
``max_position_embeddings`` (None: no limit; lm-evaluation-harness falls back to the
tokenizer's ``model_max_length``). Every architecture field is checked on construction by
``ModelConfig`` itself, so a bad value fails with the same message as in a run config
(``model.serpent.rates: ...``). The names and the reading of a ``config.json`` are those of
``models.io`` (``config_record``, ``model_record``), which writes the same file without
transformers: the library's ``save_pretrained`` and this config read each other's files.

A ``config.json`` in the library's own layout of 0.1.0-0.4.0 (a run's ``best/`` saved then: no
``model_type``, ``ModelConfig``'s names) is read too, through ``model_record`` and its migrations.

The class was called ``SerpentConfig`` (one letter case away from the mixer options'
``SeRpEntConfig``); ``serpent_ssm.hf.SerpentConfig`` still names it, with a warning, for the
``serpent_auto.py`` that folders exported before the rename carry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from serpent_ssm.models.config import FORMAT_VERSION, ModelConfig
from serpent_ssm.models.io import FILE_NAMES, MODEL_TYPE, config_record, model_record

__all__ = ["SerpentHFConfig"]

# ModelConfig's fields under the names of this config (n_classes: num_labels, a property of
# transformers' config kept in id2label)
RENAMED = {**FILE_NAMES, "n_classes": "num_labels"}
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


class SerpentHFConfig(PretrainedConfig):
    """A serpent-ssm model for transformers. ``SerpentHFConfig.from_model_config(cfg)`` wraps a
    ``ModelConfig``; ``config.model_config()`` gives it back (resolved)."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        model_name: str = "serpent-mamba",
        head: str = "lm",
        d_model: int = 64,
        n_layers: int = 2,
        vocab_size: int | None = 259,
        d_input: int | None = None,
        norm: str = "rms",
        norm_eps: float = 1e-5,
        mlp_ratio: float = 0.0,
        dropout: float = 0.0,
        causal: bool | None = None,
        backbone: dict[str, Any] | None = None,
        serpent: dict[str, Any] | None = None,
        format_version: str = FORMAT_VERSION,
        tie_word_embeddings: bool = True,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        use_cache: bool = True,
        max_position_embeddings: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.model_name = model_name
        self.head = head
        self.d_model = d_model
        self.n_layers = n_layers
        self.vocab_size = vocab_size
        self.d_input = d_input
        self.norm = norm
        self.norm_eps = norm_eps
        self.mlp_ratio = mlp_ratio
        self.dropout = dropout
        self.causal = causal
        self.backbone = backbone
        self.serpent = serpent
        self.format_version = format_version
        self.tie_word_embeddings = tie_word_embeddings
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.use_cache = use_cache
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)
        if head == "lm":
            self.num_labels = 2  # unused by a language model; transformers' default
        # every architecture field checked now, with ModelConfig's messages, and the defaults that
        # depend on the mode written out: a later change of a default cannot change a saved model
        resolved = self.model_config().to_dict()
        self.causal, self.backbone = resolved["causal"], resolved["backbone"]
        self.serpent = resolved["serpent"]
        self.format_version = resolved["format_version"]  # the fields are today's format now

    @property
    def hidden_size(self) -> int:
        """``d_model``, under the name transformers' tools look for."""
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        """``n_layers``, under the name transformers' tools look for."""
        return self.n_layers

    def model_config(self) -> ModelConfig:
        """The ``ModelConfig`` these fields describe, resolved (what ``build_model`` builds)."""
        record = {"model_type": MODEL_TYPE, "format_version": self.format_version}
        record.update((RENAMED.get(k, k), getattr(self, RENAMED.get(k, k))) for k in MODEL_FIELDS)
        return ModelConfig.from_dict(model_record(record)).resolved()

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs: Any) -> SerpentHFConfig:
        """Wrap ``config`` (resolved first, so a later change of a default cannot change it)."""
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config: expected a ModelConfig, got {type(config).__name__}")
        d = config.resolved().to_dict()
        if d["head"] == "lm":
            del d["n_classes"]
        return cls(**{**{RENAMED.get(k, k): v for k, v in d.items()}, **kwargs})

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """transformers' ``from_dict``, refusing the config of another model type with a clear
        error (transformers itself only warns), and reading the library's own layout of
        0.1.0-0.4.0 (no ``model_type``; ``name``, ``tie_embeddings``, ``n_classes``)."""
        model_type = config_dict.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            hint = (
                " (a transformers Mamba checkpoint: SerpentForCausalLM.from_mamba(path))"
                if model_type == "mamba"
                else ""
            )
            raise ValueError(
                f"config.json: expected model_type {MODEL_TYPE!r} (a serpent-ssm model saved by "
                f"save_pretrained or `serpent export-hf`), got {model_type!r}{hint}"
            )
        if "model_type" not in config_dict and "name" in config_dict:  # the library's layout then
            try:
                config_dict = config_record(ModelConfig.from_dict(model_record(config_dict)))
            except ValueError as exc:
                raise ValueError(f"config.json: not a model config: {exc}") from None
        return super().from_dict(config_dict, **kwargs)
