"""The backbone every architecture shares: embedding -> blocks -> final norm -> LM head.

A block is ``x += PostNorm(Mixer(PreNorm(x)))`` then ``x += PostNorm(MLP(PreNorm(x)))``
("sandwich" norms, as in the official TTT-E2E code; ``sandwich_norm=False`` gives plain
pre-norm). Architectures differ only in the mixer they put in the slot, so a comparison
between them differs in exactly that.

Mixer contract (an ``nn.Module``)::

    mixer(x [B, T, D], cache, start_pos: int, need_cache: bool) -> (y [B, T, D], cache)

With ``input_conv = K > 0``, a short causal depthwise convolution over the embeddings is added
to them before the first block (Zoology's layer-0 convolution: every block then sees the K-1
preceding tokens); its state is the last K-1 embeddings.

``cache`` is None at the start of a sequence, otherwise what the previous call returned;
``start_pos`` is the absolute position of ``x[:, 0]``. A call with T > 1 continues the
sequence exactly as T single-token calls would, so prefill, decode and streamed evaluation
all use one code path. With ``need_cache=False`` a mixer may return None instead.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.short_conv import ShortConv
from harness.api.interface import LCModel, ModelConfig, check_tokens


def without_autocast(op: Callable) -> Callable:
    """Run a reference op with autocast off on its first argument's device: autocast would run
    its matmuls in bf16 where the op promises fp32 (fp64 stays fp64), as ssd_reference does."""

    @functools.wraps(op)
    def run(first: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(first.device.type, enabled=False):
            return op(first, *args, **kwargs)

    return run


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (fp64 stays fp64): bf16 sums of squares lose too much precision.
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    """Llama MLP: down(silu(gate(x)) * up(x)); names match transformers' LlamaMLP."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def make_norm(config: ModelConfig, post: bool = False) -> nn.Module:
    """A pre-norm always; a post-norm only with sandwich norms."""
    if post and not config.sandwich_norm:
        return nn.Identity()
    return RMSNorm(config.d_model, config.norm_eps)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, mixer: nn.Module):
        super().__init__()
        self.mixer_norm = make_norm(config)
        self.mixer = mixer
        self.mixer_post_norm = make_norm(config, post=True)
        self.mlp_norm = make_norm(config)
        self.mlp = SwiGLU(config.d_model, config.mlp_hidden)
        self.mlp_post_norm = make_norm(config, post=True)

    def forward(self, x: torch.Tensor, cache: Any, start_pos: int, need_cache: bool) -> tuple[torch.Tensor, Any]:
        h, cache = self.mixer(self.mixer_norm(x), cache, start_pos, need_cache)
        x = x + self.mixer_post_norm(h)
        x = x + self.mlp_post_norm(self.mlp(self.mlp_norm(x)))
        return x, cache


@dataclass
class BackboneState:
    """Generation state: the position of the next token, one cache per block, and the input
    convolution's last inputs (None without one)."""

    pos: int
    layers: list[Any] = field(default_factory=list)
    conv_tail: torch.Tensor | None = None
    batch: int | None = None  # sequences it holds: a continuation must bring as many


class BackboneLM(LCModel):
    """An LM on the shared backbone. Subclasses implement ``make_mixer(layer_idx)``."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        # Conv1d's own init, U(+-1/sqrt(K)), not init_std's normal: the convolution starts about
        # as strong as the embedding it adds to, so the preceding tokens are visible from step 0.
        self.input_conv = ShortConv(config.d_model, config.input_conv, activation=False) if config.input_conv else None
        self.blocks = nn.ModuleList(self.make_block(i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(self._init_weights)
        self.reset_mixer_parameters()

    def make_mixer(self, layer_idx: int) -> nn.Module:
        raise NotImplementedError

    def make_block(self, layer_idx: int) -> nn.Module:
        return Block(self.config, self.make_mixer(layer_idx))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def reset_mixer_parameters(self) -> None:
        """Mixers with special initialisations (decay rates, dt biases) set them here."""
        for block in self.blocks:
            reset = getattr(block.mixer, "reset_special_parameters", None)
            if reset is not None:
                reset()

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.embed.weight] if self.config.tie_embeddings else [self.embed.weight, self.lm_head.weight]

    def shard_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def embed_tokens(self, tokens: torch.Tensor, conv_tail: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings ``[B, T, D]`` plus the input convolution's output (continuing from
        ``conv_tail``, the previous call's last inputs), and the new tail."""
        x = self.embed(tokens)
        if self.input_conv is None:
            return x, None
        y, conv_tail = self.input_conv(x, conv_tail)
        return x + y, conv_tail

    def hidden_states(
        self, tokens: torch.Tensor, state: BackboneState | None = None, need_state: bool = False
    ) -> tuple[torch.Tensor, BackboneState | None]:
        """Final-normed hidden states ``[B, T, D]`` of ``tokens``, continuing from ``state``."""
        check_tokens(tokens, None if state is None else state.batch, self.embed.num_embeddings)
        start = 0 if state is None else state.pos
        caches = [None] * len(self.blocks) if state is None else state.layers
        x, conv_tail = self.embed_tokens(tokens, None if state is None else state.conv_tail)
        new_caches = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block(x, cache, start, need_state)
            new_caches.append(cache)
        x = self.norm(x)
        return x, (BackboneState(start + tokens.size(1), new_caches, conv_tail, tokens.size(0))
                   if need_state else None)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden_states(tokens)[0])

    def forward_chunk(self, tokens: torch.Tensor, state: BackboneState | None) -> tuple[torch.Tensor, BackboneState]:
        """Logits of a chunk that continues ``state``: streamed evaluation of long documents."""
        x, state = self.hidden_states(tokens, state, need_state=True)
        return self.lm_head(x), state

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, BackboneState]:
        x, state = self.hidden_states(tokens, None, need_state=True)
        return self.lm_head(x[:, -1]), state

    def decode_step(self, state: BackboneState, token: torch.Tensor) -> tuple[torch.Tensor, BackboneState]:
        x, state = self.hidden_states(token.view(-1, 1), state, need_state=True)
        return self.lm_head(x[:, -1]), state
