"""transformers model classes over this library's models (all four names, LM and classifier heads).

``SerpentForCausalLM`` holds a ``CausalLM`` as ``model`` (so its tensors are ``model.`` + ours),
``SerpentForSequenceClassification`` a ``SequenceClassifier``, ``SerpentModel`` either without
its head. transformers' ``generate`` carries our recurrent state in a ``SerpentCache``: the
prompt is prefilled in one pass (``forward`` with the state returned), then each new token goes
through the mixers' ``step()``, and beam search reorders the state with
``CausalLM.select_state``. ``attention_mask`` is our right-padding mask; left padding (what
``generate`` and lm-evaluation-harness make for batches of prompts) is moved to the right for
the pass over the prompt and the outputs moved back, so it works too; a mask with holes
(padding between real tokens) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
    SequenceClassifierOutput,
)

from serpent_ssm.hf.configuration import SerpentHFConfig
from serpent_ssm.models.build import build_model
from serpent_ssm.models.io import AUTO_FILE, AUTO_MAP, AUTO_SOURCE, KEY_PREFIX
from serpent_ssm.models.lm import CausalLM

__all__ = [
    "SerpentCache",
    "SerpentForCausalLM",
    "SerpentForSequenceClassification",
    "SerpentModel",
    "SerpentPreTrainedModel",
]


class SerpentCache:
    """The recurrent state of a ``SerpentForCausalLM`` as transformers' ``generate`` carries it:
    ``layers`` (one state per block, a fixed size whatever the tokens seen) and ``seen`` (how
    many positions went in). Not a transformers ``Cache``: it has the few attributes
    ``generate`` reads, and ``reorder_cache`` for beam search."""

    is_compileable = False
    is_croppable = False

    def __init__(self, lm: CausalLM, layers: list[Any], seen: int = 0) -> None:
        self._lm, self.layers, self.seen = lm, layers, seen
        self._is_user_defined = False

    @property
    def is_linear(self) -> list[bool]:
        return [True] * len(self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """Keep rows ``beam_idx (B,)`` (in place), as beam search asks after each step."""
        self.layers = self._lm.select_state(self.layers, beam_idx.long())


def _to_right_padding(
    x: torch.Tensor, attention_mask: torch.Tensor | None, with_state: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``x (B, L, ...)`` with transformers' ``attention_mask (B, L)`` (1 = real) -> ``x`` right-padded,
    our mask (None when nothing is padding) and, for left padding, the shifts that moved each
    row (``_undo_shift`` moves outputs back), else None."""
    if attention_mask is None:
        return x, None, None
    real = attention_mask.to(torch.bool)
    if real.shape != x.shape[:2]:
        raise ValueError(
            f"attention_mask: expected shape {tuple(x.shape[:2])} like input_ids, got {tuple(real.shape)}"
        )
    if bool(real.all()):
        return x, None, None
    length = real.shape[1]
    lengths = real.sum(1)
    positions = torch.arange(length, device=real.device)
    if torch.equal(real, positions < lengths[:, None]):
        return x, real, None
    if not torch.equal(real, positions >= (length - lengths)[:, None]):
        raise ValueError(
            "attention_mask: expected each row's real tokens together at one end (right padding, or "
            "left padding as generate makes), got a row with padding between real tokens"
        )
    if with_state:
        raise ValueError(
            "attention_mask: left padding is only supported at the start of a sequence (the prompt); "
            "with a cache, pad on the right"
        )
    shift = length - lengths
    index = (positions[None] + shift[:, None]) % length  # row b: real tokens first
    rolled = x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))
    return rolled, positions[None] < lengths[:, None], shift


def _undo_shift(y: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Outputs ``y (B, L, ...)`` of a row moved by ``_to_right_padding`` back to its positions."""
    if shift is None:
        return y
    length = y.shape[1]
    index = (torch.arange(length, device=y.device)[None] - shift[:, None]) % length
    return y.gather(1, index.view(*index.shape, *([1] * (y.dim() - 2))).expand_as(y))


class SerpentPreTrainedModel(PreTrainedModel):
    """The shared part of the serpent-ssm transformers classes."""

    config_class = SerpentHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _is_stateful = True
    _no_split_modules = ["Block"]

    def _init_weights(self, module: nn.Module) -> None:
        """Give ``module``'s tensors that transformers did not load (missing from the checkpoint,
        or of another shape with ``ignore_mismatched_sizes``) the values ``build_model`` gives
        them: the library's modules initialise themselves in their constructors, so these are
        copied from a freshly built model of this config (built once per ``initialize_weights``,
        only when a tensor needs it). The buffers that are not saved are recomputed by the module
        itself (``reset_buffers``: transformers' loader leaves them empty). A module outside the
        model (a resized embedding) gets the initialisation of its kind in our models."""
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            reset()
        skip = set(getattr(module, "_non_persistent_buffers_set", ())) if callable(reset) else set()
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        todo = [
            (n, t)
            for n, t in tensors
            if t is not None and n not in skip and not getattr(t, "_is_hf_initialized", False)
        ]
        if not todo:
            return
        fresh = self._fresh_module(module)
        if fresh is None or any(_shape(fresh, n) != t.shape for n, t in todo):
            _init_like_ours(module)
            return
        with torch.no_grad():
            for n, t in todo:
                t.copy_(getattr(fresh, n))

    def initialize_weights(self) -> None:
        """transformers' ``initialize_weights``, sharing one freshly built model among the
        modules whose tensors need values (``_init_weights``)."""
        self.__dict__["_init_cache"] = {}
        try:
            super().initialize_weights()
        finally:
            self.__dict__.pop("_init_cache", None)

    def _fresh_module(self, module: nn.Module) -> nn.Module | None:
        """The module at ``module``'s place in a freshly built model of this config (None when
        ``module`` is not part of this model)."""
        cache = self.__dict__.get("_init_cache", {})  # outside initialize_weights: for this call
        if "names" not in cache:
            cache["names"] = {id(m): name for name, m in self.named_modules()}
        name = cache["names"].get(id(module))
        if name == KEY_PREFIX.rstrip("."):
            path = ""
        elif name is not None and name.startswith(KEY_PREFIX):
            path = name.removeprefix(KEY_PREFIX)
        else:
            return None
        if "model" not in cache:
            with torch.device("cpu"):
                cache["model"] = build_model(self.config.model_config())
        try:
            return cache["model"].get_submodule(path)
        except AttributeError:
            return None

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``save_pretrained``, plus ``auto_map`` in ``config.json`` and the module it
        names (``serpent_auto.py``, imports only), so that the folder also loads with
        ``trust_remote_code=True`` where ``serpent_ssm.hf`` was not imported."""
        self.config.auto_map = dict(AUTO_MAP)
        out = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            (Path(save_directory) / AUTO_FILE).write_text(AUTO_SOURCE)
        return out

    def _build(self, config: SerpentHFConfig, heads: tuple[str, ...]) -> nn.Module:
        model_config = config.model_config()
        if model_config.head not in heads:
            raise ValueError(
                f"config.head: expected {' or '.join(map(repr, heads))} for {type(self).__name__}, "
                f"got {model_config.head!r}"
            )
        model = build_model(model_config)
        if not any(p.is_meta for p in model.parameters()):  # built with values, not for loading
            for m in model.modules():  # so post_init does not initialise it a second time
                m._is_hf_initialized = True
        return model


class SerpentForCausalLM(SerpentPreTrainedModel, GenerationMixin):
    """A serpent-ssm language model (``head: lm``) for transformers: ``input_ids (B, L)`` ->
    ``CausalLMOutputWithPast`` (``logits (B, L, vocab)``, ``loss`` when ``labels`` are given,
    ``cache``: the recurrent state after the input)."""

    _tied_weights_keys = {"model.head.weight": "model.embedding.weight"}

    def __init__(self, config: SerpentHFConfig) -> None:
        super().__init__(config)
        self.model = self._build(config, ("lm",))
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # our state is not a transformers Cache
        return False

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embedding = value

    def get_output_embeddings(self) -> nn.Module:
        return self.model.head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.model.head = value

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        cache: SerpentCache | None = None,
        attention_mask: torch.Tensor | None = None,
        is_first_iteration: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        inputs = super().prepare_inputs_for_generation(
            input_ids,
            cache=cache,
            attention_mask=attention_mask,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if cache is not None and not is_first_iteration:  # the state holds the prompt's padding
            inputs["attention_mask"] = None
        return inputs

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: SerpentCache | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """``input_ids (B, L)`` int64, ``attention_mask (B, L)`` (1 = real; right or left padding),
        ``cache`` (from an earlier call) to continue a sequence, ``labels (B, L)`` (-100 = ignored;
        shifted inside, as transformers' LMs do)."""
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("input_ids: expected token ids (inputs_embeds is not supported), got none")
        if cache is not None and not isinstance(cache, SerpentCache):
            raise ValueError(
                f"cache: expected the SerpentCache of an earlier call, got {type(cache).__name__}"
            )
        use_cache = self.config.use_cache if use_cache is None else use_cache
        state = None if cache is None else cache.layers
        ids, mask, shift = _to_right_padding(input_ids, attention_mask, state is not None)
        new_state = None
        if state is not None and ids.shape[1] == 1 and mask is None:  # a decoding step
            logits, new_state = self.model.step(ids[:, 0], state)
            logits = logits.unsqueeze(1)
        elif state is not None or use_cache:
            logits, new_state = self.model(ids, mask=mask, state=state, return_state=True)
        else:
            logits = self.model(ids, mask=mask)
        logits = _undo_shift(logits, shift)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        loss = None
        if labels is not None:
            vocab = self.config.vocab_size
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=vocab, **kwargs)
        if new_state is not None and use_cache:
            if cache is None:
                cache = SerpentCache(self.model, new_state)
            else:
                cache.layers = new_state
            cache.seen += input_ids.shape[1]
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)

    @classmethod
    def from_mamba(cls, path: str | Path, serpent: bool | dict[str, Any] = False) -> SerpentForCausalLM:
        """A Mamba LM checkpoint (transformers' ``MambaForCausalLM`` or mamba_ssm's layout, as
        ``models.pretrained`` reads it) as our ``mamba`` LM with the same logits, or, with
        ``serpent`` (True or SeRpEnt options), as a ``serpent-mamba`` LM warm-started from it
        (``serpent_from_mamba``)."""
        from serpent_ssm.models.pretrained import from_mamba_checkpoint, serpent_from_mamba

        if serpent is False:
            lm = from_mamba_checkpoint(path)
        else:
            lm = serpent_from_mamba(path, serpent=None if serpent is True else serpent)
        model = cls(SerpentHFConfig.from_model_config(lm.config))
        model.model.load_state_dict(lm.state_dict())
        return model.eval()


class SerpentForSequenceClassification(SerpentPreTrainedModel):
    """A serpent-ssm classifier (``head: classify``) for transformers: ``input_ids (B, L)`` (token
    models) or ``input_values (B, L[, d_input])`` (feature models, e.g. pixels) ->
    ``SequenceClassifierOutput`` (``logits (B, num_labels)``, ``loss`` with ``labels (B,)``)."""

    def __init__(self, config: SerpentHFConfig) -> None:
        super().__init__(config)
        self.model = self._build(config, ("classify",))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.encoder.encoder

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        inputs = _classifier_inputs(self.config, input_ids, input_values)
        inputs, mask, _ = _to_right_padding(inputs, attention_mask, False)  # pooled: no way back needed
        logits = self.model(inputs, mask)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _shape(module: nn.Module, name: str) -> torch.Size | None:
    tensor = getattr(module, name, None)
    return tensor.shape if isinstance(tensor, torch.Tensor) else None


def _init_like_ours(module: nn.Module) -> None:
    """The initialisation our models give a module of ``module``'s kind: an embedding as
    ``CausalLM``'s (normal, std 0.02), else the module's own ``reset_parameters``."""
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    elif callable(getattr(module, "reset_parameters", None)):
        module.reset_parameters()


class SerpentModel(SerpentPreTrainedModel):
    """A serpent-ssm model without its head: a language model gives its final normalised hidden
    states (``last_hidden_state (B, L, d_model)``), a classifier its pooled encoding
    (``pooler_output (B, d_model)``)."""

    def __init__(self, config: SerpentHFConfig) -> None:
        super().__init__(config)
        self.model = self._build(config, ("lm", "classify"))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embedding if isinstance(self.model, CausalLM) else self.model.encoder.encoder

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        if isinstance(self.model, CausalLM):
            if input_ids is None:
                raise ValueError("input_ids: expected token ids, got none")
            ids, mask, shift = _to_right_padding(input_ids, attention_mask, False)
            hidden = _undo_shift(self.model.features(ids, mask), shift)
            return BaseModelOutputWithPooling(last_hidden_state=hidden)
        inputs = _classifier_inputs(self.config, input_ids, input_values)
        inputs, mask, _ = _to_right_padding(inputs, attention_mask, False)
        return BaseModelOutputWithPooling(pooler_output=self.model.encoder(inputs, mask))


def _classifier_inputs(
    config: SerpentHFConfig, input_ids: torch.Tensor | None, input_values: torch.Tensor | None
) -> torch.Tensor:
    """The classifier's input: token ids for a vocabulary model, float features otherwise."""
    if config.vocab_size is not None:
        if input_ids is None:
            raise ValueError("input_ids: expected token ids for a model with a vocabulary, got none")
        return input_ids
    if input_values is None:
        raise ValueError(
            f"input_values: expected float features (B, L[, {config.d_input}]) for a model without a "
            "vocabulary, got none"
        )
    return input_values
