"""serpent-ssm models as transformers models (extra ``hf``: ``pip install 'serpent-ssm[hf]'``).

Importing this module registers ``SerpentConfig`` (``model_type = "serpent"``) with
``AutoConfig`` and the model classes with ``AutoModel``, ``AutoModelForCausalLM`` and
``AutoModelForSequenceClassification``, so that a folder written by ``save_pretrained`` or
``serpent export-hf`` loads with ``AutoModelForCausalLM.from_pretrained(folder)`` (offline), its
tokenizer with ``AutoTokenizer.from_pretrained(folder)``, and works with ``generate``,
``Trainer``, peft and lm-evaluation-harness. The core library never imports it.
"""

from __future__ import annotations

try:
    import transformers
except ImportError:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "serpent_ssm.hf needs transformers (5.0 or later): pip install 'serpent-ssm[hf]'"
    ) from None

if int(transformers.__version__.split(".")[0]) < 5:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        f"serpent_ssm.hf needs transformers 5.0 or later, found {transformers.__version__}: "
        "pip install 'serpent-ssm[hf]'"
    )

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from serpent_ssm.hf.configuration import SerpentConfig  # noqa: E402
from serpent_ssm.hf.export import export_run, to_transformers  # noqa: E402
from serpent_ssm.hf.modeling import (  # noqa: E402
    SerpentCache,
    SerpentForCausalLM,
    SerpentForSequenceClassification,
    SerpentModel,
    SerpentPreTrainedModel,
)
from serpent_ssm.hf.tokenization import byte_tokenizer, token_tokenizer, tokenizer_for  # noqa: E402

AutoConfig.register(SerpentConfig.model_type, SerpentConfig, exist_ok=True)
AutoModel.register(SerpentConfig, SerpentModel, exist_ok=True)
AutoModelForCausalLM.register(SerpentConfig, SerpentForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(SerpentConfig, SerpentForSequenceClassification, exist_ok=True)

__all__ = [
    "SerpentCache",
    "SerpentConfig",
    "SerpentForCausalLM",
    "SerpentForSequenceClassification",
    "SerpentModel",
    "SerpentPreTrainedModel",
    "byte_tokenizer",
    "export_run",
    "to_transformers",
    "token_tokenizer",
    "tokenizer_for",
]
