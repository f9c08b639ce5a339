"""Our models in the transformers layout: ``to_transformers(model)`` wraps a model built by
``build_model`` (same tensors), ``export_run(run_dir, out)`` writes a training run's saved model
as a folder that ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` and
``AutoTokenizer`` load (``config.json`` with ``model_type: "serpent"``, ``model.safetensors``,
and the tokenizer of the run's vocabulary when it has one)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from serpent_ssm.hf.configuration import SerpentConfig
from serpent_ssm.hf.modeling import (
    SerpentForCausalLM,
    SerpentForSequenceClassification,
    SerpentPreTrainedModel,
)
from serpent_ssm.hf.tokenization import tokenizer_for
from serpent_ssm.models.config import ModelConfig

__all__ = ["export_run", "to_transformers"]


def to_transformers(model: nn.Module) -> SerpentPreTrainedModel:
    """The transformers model (``SerpentForCausalLM`` or ``SerpentForSequenceClassification``)
    holding a copy of ``model``'s weights; ``model`` must come from ``build_model`` or
    ``from_pretrained`` (it carries its ``ModelConfig``)."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError("model: expected a model built by build_model (with a ModelConfig), got one without")
    if config.head == "retrieval":
        raise ValueError(
            "model: expected a language model or a classifier, got a retrieval (two-tower) model"
        )
    cls = SerpentForCausalLM if config.head == "lm" else SerpentForSequenceClassification
    wrapped = cls(SerpentConfig.from_model_config(config))
    wrapped.model.load_state_dict(model.state_dict())
    return wrapped.eval()


def export_run(run_dir: str | Path, out: str | Path, which: str = "best") -> Path:
    """Write ``run_dir/which`` (``best`` or ``final``) in the transformers layout into ``out``,
    with the tokenizer of the run's ``vocab.json`` when it has one (token and byte tasks)."""
    from serpent_ssm.data.vocab import Vocab
    from serpent_ssm.models import from_pretrained

    run_dir, out = Path(run_dir), Path(out)
    source = run_dir / which
    if not source.is_dir():
        raise ValueError(f"run_dir: expected a training run with a {which!r} folder, got {run_dir}")
    model = to_transformers(from_pretrained(source))
    model.save_pretrained(out)
    vocab_file = run_dir / "vocab.json"
    if vocab_file.is_file():
        tokenizer_for(Vocab.load(vocab_file)).save_pretrained(out)
    return out
