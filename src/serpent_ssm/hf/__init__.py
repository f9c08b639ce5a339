"""serpent-ssm models as transformers models (extra ``hf``: ``pip install 'serpent-ssm[hf]'``).

Importing this module registers ``SerpentHFConfig`` (``model_type = "serpent"``) with
``AutoConfig`` and the model classes with ``AutoModel``, ``AutoModelForCausalLM`` and
``AutoModelForSequenceClassification``, so that a folder written by ``save_pretrained`` (ours in
``serpent_ssm.models``, which writes a run's ``best/``, or transformers') or ``serpent export-hf``
loads with ``AutoModelForCausalLM.from_pretrained(folder)`` (offline; without this import, with
``trust_remote_code=True``), its tokenizer with ``AutoTokenizer.from_pretrained(folder)`` (after
``export-hf``), and works with ``generate``, ``Trainer``, peft and lm-evaluation-harness. The core
library never imports it.
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

from serpent_ssm.hf.configuration import SerpentHFConfig  # noqa: E402
from serpent_ssm.hf.export import export_run, to_transformers  # noqa: E402
from serpent_ssm.hf.modeling import (  # noqa: E402
    SerpentCache,
    SerpentForCausalLM,
    SerpentForSequenceClassification,
    SerpentModel,
    SerpentPreTrainedModel,
)
from serpent_ssm.hf.tokenization import byte_tokenizer, token_tokenizer, tokenizer_for  # noqa: E402

AutoConfig.register(SerpentHFConfig.model_type, SerpentHFConfig, exist_ok=True)
AutoModel.register(SerpentHFConfig, SerpentModel, exist_ok=True)
AutoModelForCausalLM.register(SerpentHFConfig, SerpentForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(SerpentHFConfig, SerpentForSequenceClassification, exist_ok=True)

__all__ = [
    "SerpentCache",
    "SerpentForCausalLM",
    "SerpentForSequenceClassification",
    "SerpentHFConfig",
    "SerpentModel",
    "SerpentPreTrainedModel",
    "byte_tokenizer",
    "export_run",
    "to_transformers",
    "token_tokenizer",
    "tokenizer_for",
]


def __getattr__(name: str) -> object:
    """``SerpentConfig``: the name of ``SerpentHFConfig`` before it was renamed (it differed
    from the mixer options' ``SeRpEntConfig`` only in case), still imported by the
    ``serpent_auto.py`` of folders exported then."""
    if name == "SerpentConfig":
        import warnings

        warnings.warn(
            "serpent_ssm.hf.SerpentConfig was renamed SerpentHFConfig; the old name will go",
            FutureWarning,
            stacklevel=2,
        )
        return SerpentHFConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
