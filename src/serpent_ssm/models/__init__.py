"""Models built from the mixers (docs/design.md, "Models"), their config and their files.

- ``ModelConfig`` (``models.config``): the typed architecture config; ``build_model``
  (``models.build``) makes the model it describes.
- ``SequenceClassifier``, ``RetrievalClassifier`` (``models.classifier``) and ``CausalLM``
  (``models.lm``); ``make_mixer_factory`` and ``MODEL_NAMES`` (``models.mixers``).
- ``save_pretrained`` / ``from_pretrained`` (``models.io``): ``config.json`` +
  ``model.safetensors``; ``from_mamba_checkpoint`` / ``serpent_from_mamba``
  (``models.pretrained``): pretrained Mamba language models from transformers or mamba_ssm.

Imports point one way: mixers -> config -> classifier, lm -> build -> io -> pretrained.
"""

from serpent_ssm.models.build import build_model, count_parameters
from serpent_ssm.models.classifier import RetrievalClassifier, SequenceClassifier, SequenceEncoder
from serpent_ssm.models.config import FORMAT_VERSION, ModelConfig, migrate
from serpent_ssm.models.io import from_pretrained, load_state_checked, save_pretrained
from serpent_ssm.models.lm import CausalLM
from serpent_ssm.models.mixers import MODEL_NAMES, make_mixer_factory
from serpent_ssm.models.pretrained import from_mamba_checkpoint, serpent_from_mamba

__all__ = [
    "FORMAT_VERSION",
    "MODEL_NAMES",
    "CausalLM",
    "ModelConfig",
    "RetrievalClassifier",
    "SequenceClassifier",
    "SequenceEncoder",
    "build_model",
    "count_parameters",
    "from_mamba_checkpoint",
    "from_pretrained",
    "load_state_checked",
    "migrate",
    "make_mixer_factory",
    "save_pretrained",
    "serpent_from_mamba",
]
