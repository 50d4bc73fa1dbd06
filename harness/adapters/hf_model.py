"""An lcbench model behind transformers' ``AutoModelForCausalLM``.

:func:`harness.adapters.hf_export.export_hf` writes a folder whose ``modeling_lcbench.py`` imports
these two classes, so ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``
builds the lcbench model from the registry and loads its weights, in any process where lcbench is
installed.

``forward`` without a cache is the model's own ``forward`` (same logits, bit for bit).
``generate()`` (greedy, sampling, any logits processor of transformers) runs on the model's own
``prefill`` + ``decode_step``: the decoding state travels in :class:`LcbenchCache`, so recurrent
states and TTT-E2E's test-time updates continue while it generates, as in lcbench's own decoding.
Sequences are read without padding: a batch must hold sequences of one length (lm-eval's
``batch_size=1``, the default); a zero in ``attention_mask`` is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from harness.api.errors import ConfigError
from harness.api.registry import build_model, config_from_dict
from harness.train.checkpoint import HF_MODEL_TYPE


class LcbenchConfig(PretrainedConfig):
    """transformers' config holding the lcbench model config (``lcbench``, the checkpoint's
    ``config.json``) beside the fields transformers reads."""

    model_type = HF_MODEL_TYPE

    def __init__(self, lcbench: dict[str, Any] | None = None, **kwargs: Any):
        self.lcbench = dict(lcbench or {})
        kwargs["tie_word_embeddings"] = False  # the lcbench model ties its own weights
        kwargs.setdefault("vocab_size", self.lcbench.get("vocab_size"))
        super().__init__(**kwargs)


class LcbenchCache:
    """The lcbench decoding state between ``generate()`` steps."""

    is_compileable = False

    def __init__(self, state: Any, length: int):
        self.state = state
        self.length = length

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length


@dataclass
class LcbenchOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: LcbenchCache | None = None


class LcbenchForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = LcbenchConfig
    base_model_prefix = "model"  # the tensors' prefix in the export, harness.train.checkpoint.HF_PREFIX
    _is_stateful = True  # no assisted decoding: a state cannot be rewound

    def __init__(self, config: LcbenchConfig):
        super().__init__(config)
        self.model = build_model(config_from_dict(dict(config.lcbench)))
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """The lcbench model initialises itself; loaded weights replace it."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our state is not a key/value cache

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: LcbenchCache | None = None, use_cache: bool | None = None,
                labels: torch.Tensor | None = None, **unused: Any) -> LcbenchOutput:
        """Logits ``[B, T, V]``; with ``use_cache`` (generation), the last position's logits and
        the state after ``input_ids``; with a ``cache``, one decode step on the last token."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ConfigError("lcbench models read sequences without padding; give sequences of one length "
                              "(batch_size=1) and no zeros in attention_mask")
        if isinstance(cache, LcbenchCache):
            logits, state = self.model.decode_step(cache.state, input_ids[:, -1])
            return LcbenchOutput(logits=logits[:, None], cache=LcbenchCache(state, cache.length + 1))
        if use_cache:
            last, state = self.model.prefill(input_ids)
            return LcbenchOutput(logits=last[:, None], cache=LcbenchCache(state, input_ids.shape[1]))
        logits = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return LcbenchOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, cache: LcbenchCache | None = None,
                                      attention_mask: torch.Tensor | None = None, **unused: Any) -> dict[str, Any]:
        if isinstance(cache, LcbenchCache):
            return {"input_ids": input_ids[:, -1:], "cache": cache}
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": True}
