"""TTT-E2E: end-to-end test-time training for long context (arXiv 2512.23675).

A sliding-window transformer whose last quarter of blocks (the *suffix*) each carry an extra
"prime" SwiGLU MLP, between attention and the block's own MLP::

    h = h + PostNorm(Attn(PreNorm(h)))        # sliding window
    h = h + PostNorm(PrimeMLP(PreNorm(h)))    # fast weights: trained while reading
    h = h + PostNorm(MLP(PreNorm(h)))

Reading a sequence (``forward``, ``token_losses``, ``prefill``, ``decode_step`` all do this):

1. embed, and run the prefix blocks once over the whole sequence;
2. cut it into mini-batches of ``mini_batch_size`` tokens; for each, in order:
   a. run the suffix with the current fast weights: these outputs are the model's outputs;
   b. if a later mini-batch exists, take one inner step on the fast weights of every sequence
      separately: the mini-batch's mean next-token loss (its last target is the first token of
      the next mini-batch, as in the official code, where targets are the inputs shifted by one),
      its gradient with respect to the fast weights only, clipped to a global norm per sequence,
      times the inner learning rate. No output ever sees its own mini-batch's update.
   The suffix's window of keys/values carries from one mini-batch to the next.

Training differentiates the loss through the whole inner loop (second order by default), so the
initial fast weights and everything else are meta-learned; each mini-batch step is recomputed in
the backward pass (``torch.utils.checkpoint``), so activations do not pile up per mini-batch.

Decoding feeds one token at a time; when a token starts a new mini-batch, the finished one is
re-read once (its suffix inputs are kept in the state) to take its inner step, then the token is
read with the new weights: prefill + decode reproduce ``forward``.

The GPU path is the same code: per-sequence fast weights ``[B, ...]`` with batched matmuls, the
inner loop's clipping and update in tensor ops, nothing read back to the host per mini-batch.

Fast paths at inference (issue 17), each its own config field so a benchmark can measure each
alone and all together; every one is tested against the reference step (``_step``):

- ``inner_loss``: the LM head + cross-entropy of the inner step and its gradient w.r.t. the
  suffix output only (no LM-head weight gradient): ``reference`` (autograd over the full logits),
  ``chunked`` (baselines/linear_cross_entropy.py), ``liger`` (Liger Kernel, when installed);
- ``inner_step``: the steady-state step (full mini-batch, full window of context) run as one
  function of tensors, gradient by ``torch.func.vjp``: ``eager``, ``compile`` (torch.compile,
  compiled once), ``cudagraph`` (captured once, replayed), ``compile+cudagraph``;
- ``fast_weight_dtype``: ``float32`` keeps the fast weights (and their update) in fp32 while the
  matmuls run in the model's dtype (bf16), as the official code's fp32 state and bf16 compute;
- ``prefix_backend``: the prefix blocks' attention kernel (``flex``: one FlexAttention call per
  block over the whole sequence), apart from the suffix's.

With ``inner_loss`` or ``inner_step`` off the reference (or under ``torch.inference_mode``, which
has no autograd), inference runs every step through one function of tensors (``_inference_step``,
its suffix attention on sdpa); training always runs the reference step, which the outer loss
differentiates through.
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from baselines.attention import (
    ATTENTION_BACKENDS,
    FLEX,
    PAPER_SIZES,
    TINY,
    Attention,
    AttentionConfig,
    AttentionLM,
    RingKVCache,
    allow_static_recompiles,
    paper_presets,
    resolve_backend,
)
from baselines.backbone import Block, SwiGLU, make_norm
from baselines.cuda_graph import CapturedFunction
from baselines.linear_cross_entropy import LIGER, liger_grad, linear_cross_entropy
from harness.api.errors import ConfigError, check_choice
from harness.api.kernels import Kernel, KernelChoice
from harness.api.interface import check_continues, check_tokens, next_token_nll
from harness.api.recipe import DEFAULT_RECIPE, warmup_length
from harness.api.registry import register_model

INNER_MODES = ("second_order", "first_order", "off_in_training")
FAST_WEIGHTS = {"prime": ("prime",), "mlp": ("mlp",), "prime+mlp": ("prime", "mlp")}
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
INNER_LOSSES = ("auto", "reference", "chunked", "liger")
INNER_STEPS = ("eager", "compile", "cudagraph", "compile+cudagraph")
FAST_WEIGHT_DTYPES = ("auto", "model", "float32")
PREFIX_BACKENDS = ("same", *ATTENTION_BACKENDS)
DEFAULT_SUFFIX_FRACTION = 0.25  # the paper: the last quarter of the blocks
COMPILE_OPTIONS: dict[str, Any] = {"dynamic": False}  # torch.compile's, for the steady-state inner step


def _cuda_graph_step(name: str, fallback: str) -> Kernel:
    return Kernel("ttt_e2e inner_step", name, lambda: CapturedFunction, install="PyTorch with CUDA", fallback=fallback,
                  packages=("torch",))


# The inner steps replayed as CUDA graphs, declared as kernels: a run on another device refuses
# them before any work (they failed at its first steady inner step, after the model had trained).
CUDA_GRAPH_STEPS = (_cuda_graph_step("cudagraph", "eager"), _cuda_graph_step("compile+cudagraph", "compile"))


class NoInnerStepWarning(UserWarning):
    """Training sequences that fit in one mini-batch: the inner loop never steps, nothing is meta-learned."""


@dataclass
class TTTConfig(AttentionConfig):
    window: int = 256
    suffix_fraction: float = DEFAULT_SUFFIX_FRACTION  # the last quarter of the blocks carry fast weights
    suffix_blocks: int = 0  # > 0: exactly this many last blocks (a suffix_fraction that disagrees is refused)
    prime_mlp: bool = True  # the extra SwiGLU MLP in every suffix block
    fast_weights: str = "prime"  # which suffix MLPs learn at test time: prime | mlp | prime+mlp
    mini_batch_size: int = 1024
    inner_lr: float = 1.0
    inner_lr_init: float = 0.1  # inner lr at the first outer step, warming up to inner_lr
    inner_lr_warmup: float = 0.1  # fraction of outer steps to warm up over; 0 = none (extension)
    inner_clip: float = 1.0  # global gradient-norm clip per sequence; 0 = none
    inner_mode: str = "second_order"  # second_order | first_order | off_in_training
    checkpoint_inner: bool = True  # recompute each mini-batch step in the backward pass
    # Inference fast paths (see the module docstring); "auto" picks the fast one on CUDA only.
    inner_loss: str = "auto"  # reference | chunked | liger; auto: chunked on CUDA
    inner_step: str = "eager"  # eager | compile | cudagraph | compile+cudagraph
    # compile_inner (a bool until inner_step replaced it) torch-compiled the inference step.
    retired_fields = {"compile_inner": lambda on: {"inner_step": "compile" if on else "eager"}}
    fast_weight_dtype: str = "auto"  # model | float32; auto: float32 on CUDA
    prefix_backend: str = "same"  # the prefix blocks' attention backend; same: ``backend``
    # Targets equal to this token leave the inner and the outer loss (masked means), as in the
    # official code, which trains on packed documents that each start with BOS; -1: none (the
    # byte tokenizer has no BOS). Reported per-token losses keep every target.
    bos_token_id: int = -1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("inner_mode", self.inner_mode, INNER_MODES)
        check_choice("fast_weights", self.fast_weights, FAST_WEIGHTS)
        check_choice("inner_loss", self.inner_loss, INNER_LOSSES)
        check_choice("inner_step", self.inner_step, INNER_STEPS)
        check_choice("fast_weight_dtype", self.fast_weight_dtype, FAST_WEIGHT_DTYPES)
        check_choice("prefix_backend", self.prefix_backend, PREFIX_BACKENDS)
        if self.window <= 0:
            raise ConfigError(f"ttt_e2e needs a sliding window > 0, got window={self.window}")
        if self.mini_batch_size <= 0:
            raise ConfigError(f"mini_batch_size must be positive, got {self.mini_batch_size}")
        if not 0 < self.suffix_fraction <= 1:
            raise ConfigError(f"suffix_fraction must be in (0, 1], got {self.suffix_fraction}")
        if not 0 <= self.suffix_blocks <= self.n_layers:
            raise ConfigError(f"suffix_blocks={self.suffix_blocks} must be in [0, n_layers={self.n_layers}]")
        by_fraction = self.suffix_blocks_by_fraction
        if self.suffix_blocks and self.suffix_fraction != DEFAULT_SUFFIX_FRACTION and self.suffix_blocks != by_fraction:
            # both were set and the count would silently win
            raise ConfigError(f"suffix_blocks={self.suffix_blocks} and suffix_fraction={self.suffix_fraction} "
                              f"({by_fraction} of {self.n_layers} blocks) disagree; set one of them")
        if "prime" in FAST_WEIGHTS[self.fast_weights] and not self.prime_mlp:
            raise ConfigError(f"fast_weights={self.fast_weights!r} needs prime_mlp=True")
        for name in ("inner_lr", "inner_lr_init", "inner_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.inner_lr_warmup <= 1:
            raise ConfigError(f"inner_lr_warmup is a fraction of the outer steps, got {self.inner_lr_warmup}")
        if not -1 <= self.bos_token_id < self.vocab_size:
            raise ConfigError(f"bos_token_id={self.bos_token_id} must be a token id below "
                              f"vocab_size={self.vocab_size}, or -1 for none")

    @property
    def suffix_blocks_by_fraction(self) -> int:
        return max(1, round(self.n_layers * self.suffix_fraction))

    @property
    def n_suffix(self) -> int:
        return self.suffix_blocks or self.suffix_blocks_by_fraction

    def inner_lr_at(self, step: int, total_steps: int, recipe: str = DEFAULT_RECIPE) -> float:
        """The official warm-up: linear from inner_lr_init to inner_lr over the first steps, as many
        as the training ``recipe`` rounds the fraction to (:func:`harness.api.recipe.warmup_length`)."""
        warmup = warmup_length(recipe, self.inner_lr_warmup, total_steps, inner=True)
        if warmup <= 0:
            return self.inner_lr
        progress = (step + 1) / warmup
        if progress >= 1:  # inner_lr itself: init + (lr - init) can round off it (0.03 + 0.27 != 0.3)
            return self.inner_lr
        return self.inner_lr_init + (self.inner_lr - self.inner_lr_init) * progress


# ---------------------------------------------------------------------------------------------
# Pieces of the inner loop


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` in x's dtype (fp32 fast weights, bf16 compute) with a shared weight
    ``[out, in]`` or one per sequence ``[B, out, in]``."""
    w = w.to(x.dtype)
    return F.linear(x, w) if w.dim() == 2 else torch.bmm(x, w.transpose(1, 2))


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    return linear(F.silu(linear(x, gate)) * linear(x, up), down)


def clip_per_sequence(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """Scale each sequence's gradients (dim 0) to global norm <= max_norm, as optax's
    clip_by_global_norm does for one sequence; tensor ops only (no host sync)."""
    if max_norm <= 0:
        return grads
    wide = torch.promote_types(grads[0].dtype, torch.float32)
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1, dtype=wide) for g in grads])
    scale = max_norm / torch.linalg.vector_norm(norms, dim=0).clamp(min=max_norm)  # [B]
    return [g * scale.view(-1, *[1] * (g.dim() - 1)).to(g.dtype) for g in grads]


def masked_mean(nll: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Each sequence's mean of ``nll [B, T]`` over its valid targets ``[B, T]`` (all when None);
    0 where none is valid, as the official loss (loss.py) gives."""
    if valid is None:
        return nll.mean(1)
    return torch.where(valid, nll, 0).sum(1) / valid.sum(1).clamp(min=1)


def _tail(t: torch.Tensor, n: int) -> torch.Tensor:
    """The last n positions (dim -2) of ``t``; all of them when there are fewer."""
    return t[..., max(t.size(-2) - n, 0) :, :]


# ---------------------------------------------------------------------------------------------
# Blocks


class SuffixAttention(Attention):
    """Attention that takes its past keys/values as tensors and returns the new ones, so the
    inner loop can re-read a mini-batch against the exact context it saw."""

    def attend(self, x, past_k, past_v, start_pos: int | torch.Tensor, backend: str):
        q, k, v = self.project(x, start_pos)
        keys = k if past_k is None else torch.cat([past_k, k], -2)
        values = v if past_v is None else torch.cat([past_v, v], -2)
        # the mask depends on relative positions only: count them from the first key
        return self.mix(q, keys, values, keys.size(-2) - k.size(-2), 0, backend), k, v


class PrimeBlock(Block):
    """A suffix block: attention, then the prime MLP (with its own pre/post norms), then the MLP.
    ``forward`` uses the static weights (the plain swa+prime model); ``forward_chunk`` takes
    per-sequence fast weights for some of its MLPs."""

    def __init__(self, config: TTTConfig, mixer: nn.Module):
        super().__init__(config, mixer)
        self.mlp_names = ("prime", "mlp") if config.prime_mlp else ("mlp",)
        if config.prime_mlp:
            self.prime_norm = make_norm(config)
            self.prime = SwiGLU(config.d_model, config.mlp_hidden)
            self.prime_post_norm = make_norm(config, post=True)

    def mlps(self, x: torch.Tensor, fast: dict[str, list[torch.Tensor]] | None = None) -> torch.Tensor:
        for name in self.mlp_names:
            norm, mlp, post = getattr(self, f"{name}_norm"), getattr(self, name), getattr(self, f"{name}_post_norm")
            weights = fast.get(name) if fast else None
            x = x + post(swiglu(norm(x), *weights) if weights else mlp(norm(x)))
        return x

    def forward(self, x, cache, start_pos: int, need_cache: bool, fast: dict[str, list[torch.Tensor]] | None = None):
        h, cache = self.mixer(self.mixer_norm(x), cache, start_pos, need_cache)
        return self.mlps(x + self.mixer_post_norm(h), fast), cache

    def forward_chunk(self, x, past_k, past_v, start_pos: int | torch.Tensor, fast: dict[str, list[torch.Tensor]],
                      backend: str):
        h, k, v = self.mixer.attend(self.mixer_norm(x), past_k, past_v, start_pos, backend)
        return self.mlps(x + self.mixer_post_norm(h), fast), k, v


@dataclass
class TTTState:
    """Generation state. The current mini-batch (the one holding position ``pos - 1``) has read
    ``n_pending`` tokens; its suffix inputs and tokens are kept for its inner step, in buffers of
    one mini-batch that a decode step writes in place (a concatenation per token copied all of
    them). ``state_bytes`` counts the buffers whole: the memory holds them whole, so the state's
    size stays flat across a mini-batch, as the ring caches' does."""

    pos: int
    prefix: list[Any]  # the prefix blocks' window caches
    suffix: list[RingKVCache]  # per suffix block: keys/values of the last window-1+mini_batch positions
    fast: list[torch.Tensor]  # the current mini-batch's fast weights, [B, ...] each
    pending_x: torch.Tensor  # [B, mini_batch, D]: the first n_pending hold the mini-batch's suffix inputs
    pending_tokens: torch.Tensor  # [B, mini_batch], likewise its tokens
    conv_tail: torch.Tensor | None = None  # the input convolution's last inputs (None without one)

    @property
    def n_pending(self) -> int:
        """Tokens of the current mini-batch read so far (mini-batches start at multiples of its size)."""
        return (self.pos - 1) % self.pending_x.size(1) + 1


# ---------------------------------------------------------------------------------------------
# The model

# Normal-MLP widths of the official TTT-E2E configs: narrower than the baselines' so that the
# prime MLPs keep the parameter count matched (notes/ttt_e2e.md).
TTT_MLP_HIDDEN = {"125m": 1664, "350m": 2304, "760m": 3328, "1.3b": 4352}
assert set(TTT_MLP_HIDDEN) == set(PAPER_SIZES)


def _presets() -> dict[str, dict[str, Any]]:
    # tiny: 4 blocks (1 suffix) with 5 MLPs of width 304 ~ 4 MLPs of 384 in full_attention's tiny.
    presets = paper_presets({**TINY, "window": 256, "mlp_hidden": 304, "mini_batch_size": 64},
                            window=8192, mini_batch_size=1024)
    for name, width in TTT_MLP_HIDDEN.items():
        presets[name]["mlp_hidden"] = width
    return presets


@register_model("ttt_e2e")
class TTTE2ELM(AttentionLM):
    """Sliding-window transformer whose suffix blocks' prime MLPs learn at test time."""

    config_class = TTTConfig
    presets = _presets()
    kernels = (FLEX, LIGER, *CUDA_GRAPH_STEPS)  # the prefix's attention; the inner loss; the inner step

    def __init__(self, config: TTTConfig):
        if not isinstance(config, TTTConfig):
            raise ConfigError(f"ttt_e2e needs a TTTConfig, got {type(config).__name__}")
        self.n_prefix = config.n_layers - config.n_suffix
        super().__init__(config)
        # (suffix block, MLP name) of every fast MLP, in the order of the flat fast-weight list
        self.fast_layout = [(s, name) for s in range(config.n_suffix) for name in FAST_WEIGHTS[config.fast_weights]]
        self.inner_lr_now = config.inner_lr  # set from the outer step by on_train_step
        self._steady_steps: dict[str, Any] = {}  # inner_step -> the compiled or captured step

    @classmethod
    def kernel_choices(cls, config: TTTConfig) -> dict[str, KernelChoice]:
        return {**super().kernel_choices(config), "prefix_backend": KernelChoice(config.prefix_backend, PREFIX_BACKENDS),
                "inner_loss": KernelChoice(config.inner_loss, INNER_LOSSES),
                "inner_step": KernelChoice(config.inner_step, INNER_STEPS)}

    def make_mixer(self, layer_idx: int) -> nn.Module:
        c = self.config
        if layer_idx >= self.n_prefix:
            return SuffixAttention(c)
        if c.prefix_backend == "same":
            return Attention(c)
        return Attention(c.replace(backend=c.prefix_backend), backend_setting="prefix_backend")

    def make_block(self, layer_idx: int) -> nn.Module:
        if layer_idx >= self.n_prefix:
            return PrimeBlock(self.config, self.make_mixer(layer_idx))
        return super().make_block(layer_idx)

    @property
    def prefix_blocks(self) -> nn.ModuleList:
        return self.blocks[: self.n_prefix]

    @property
    def suffix_blocks(self) -> nn.ModuleList:
        return self.blocks[self.n_prefix :]

    def shard_units(self) -> list[nn.Module]:
        # suffix blocks run through forward_chunk and their fast weights are read by the model
        # itself: they stay in the model's own unit, gathered for its whole forward
        return list(self.prefix_blocks)

    # -- fast weights ------------------------------------------------------------------------

    def fast_parameter_names(self) -> list[str]:
        """The parameters the inner loop trains (their values are the meta-learned initialisation)."""
        return [f"blocks.{self.n_prefix + s}.{name}.{proj}.weight"
                for s, name in self.fast_layout for proj in PROJECTIONS]

    def fast_parameters(self) -> list[nn.Parameter]:
        return [getattr(getattr(self.suffix_blocks[s], name), proj).weight
                for s, name in self.fast_layout for proj in PROJECTIONS]

    def initial_fast_weights(self, batch: int) -> list[torch.Tensor]:
        """One copy per sequence (an expanded view: gradients flow back to the parameters), in
        the fast-weight dtype."""
        return [p.to(self.fast_dtype(p)).unsqueeze(0).expand(batch, *p.shape) for p in self.fast_parameters()]

    def fast_dtype(self, param: torch.Tensor) -> torch.dtype:
        choice = self.config.fast_weight_dtype
        if choice == "auto":
            choice = "float32" if param.device.type == "cuda" else "model"
        return torch.promote_types(param.dtype, torch.float32) if choice == "float32" else param.dtype

    def _fast_inference(self, device: torch.device) -> bool:
        """Whether inference (without gradients) takes ``_fast_step``: a fast path is on."""
        return self.inner_loss_method(device) != "reference" or self.config.inner_step != "eager"

    def backend_on(self, device: torch.device) -> str:
        """The prefix blocks' attention backend, and after a ``+`` the suffix blocks' at inference
        where it differs (``_inference_step`` runs sdpa: flex has no torch.func rules)."""
        c = self.config
        prefix = resolve_backend(c.backend if c.prefix_backend == "same" else c.prefix_backend, c.window, device)
        if self._fast_inference(device):
            suffix = "torch" if c.backend == "torch" else "sdpa"
        else:
            suffix = resolve_backend(c.backend, c.window, device)
        return prefix if prefix == suffix else f"{prefix}+{suffix}"

    def inner_loss_method(self, device: torch.device) -> str:
        if self.config.inner_loss == "auto":
            return "chunked" if device.type == "cuda" else "reference"
        return self.config.inner_loss

    def _by_block(self, fast: list[torch.Tensor]) -> list[dict[str, list[torch.Tensor]]]:
        blocks: list[dict[str, list[torch.Tensor]]] = [{} for _ in range(self.config.n_suffix)]
        for i, (s, name) in enumerate(self.fast_layout):
            blocks[s][name] = fast[3 * i : 3 * i + 3]
        return blocks

    def loss_mask(self, targets: torch.Tensor) -> torch.Tensor | None:
        """Which targets count in the inner and outer losses (None: all)."""
        return None if self.config.bos_token_id < 0 else targets != self.config.bos_token_id

    def inner_loss_weights(self, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """d(inner loss)/d(each target's NLL): the inner loss sums each sequence's masked mean."""
        valid = self.loss_mask(targets)
        if valid is None:
            return torch.full(targets.shape, 1 / targets.size(1), dtype=dtype, device=targets.device)
        return valid.to(dtype) / valid.sum(1, keepdim=True).clamp(min=1)

    def on_train_step(self, step: int, total_steps: int, recipe: str = DEFAULT_RECIPE) -> None:
        """Called by the trainer before each outer step: the inner-lr warm-up (derived, not saved)."""
        self.inner_lr_now = self.config.inner_lr_at(step, total_steps, recipe)

    # -- the interface -----------------------------------------------------------------------

    def _static(self) -> bool:
        return self.training and self.config.inner_mode == "off_in_training"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._static():
            return self.forward_static(tokens)
        return self._read(tokens, "logits")[0]

    def forward_static(self, tokens: torch.Tensor) -> torch.Tensor:
        """The plain swa+prime model: no updates (what ``off_in_training`` trains)."""
        return super().forward(tokens)

    def token_losses(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._static() or (tokens.dim() == 2 and tokens.size(1) == 1):  # one token: no targets, [B, 0]
            return super().token_losses(tokens)
        return self._read(tokens, "nll")[0]

    def training_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """The official outer loss: the mean over sequences and mini-batches of each mini-batch's
        masked mean (the plain mean when nothing is masked)."""
        self._warn_if_no_inner_step(tokens.size(-1))
        valid = self.loss_mask(tokens[:, 1:])
        if valid is None:
            return super().training_loss(tokens)
        nll = self.token_losses(tokens)
        nll = nll.to(torch.promote_types(nll.dtype, torch.float32))
        b = self.config.mini_batch_size
        return torch.stack([masked_mean(n, v) for n, v in zip(nll.split(b, 1), valid.split(b, 1))], 1).mean()

    def _warn_if_no_inner_step(self, length: int) -> None:
        """Training on sequences whose inputs (all but the last token) fit in one mini-batch runs no
        inner step: the outer loss is the static model's, and no initialisation is meta-learned."""
        b = self.config.mini_batch_size
        if self.training and torch.is_grad_enabled() and not self._static() and length - 1 <= b:
            warnings.warn(f"ttt_e2e trains on sequences of {length} tokens, whose {length - 1} inputs fit in one "
                          f"mini-batch of mini_batch_size={b}: the inner loop takes no step, so training meta-learns "
                          f"nothing (it trains the static model); use a seq_len of at least {b + 2}, a smaller "
                          "mini_batch_size, or inner_mode=off_in_training to train the static model on purpose",
                          NoInnerStepWarning, stacklevel=3)

    def forward_chunk(self, tokens: torch.Tensor, state: TTTState | None) -> tuple[torch.Tensor, TTTState]:
        return self._read(tokens, "logits", state, need_state=True)

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, TTTState]:
        return self._read(tokens, "last", need_state=True)

    def decode_step(self, state: TTTState, token: torch.Tensor) -> tuple[torch.Tensor, TTTState]:
        return self._read(token.view(-1, 1), "last", state, need_state=True)

    # -- reading a sequence ------------------------------------------------------------------

    def _read(self, tokens, out: str, state: TTTState | None = None, need_state: bool = False):
        """Read ``tokens`` (continuing ``state``), updating the fast weights as it goes. ``out``:
        "logits" [B, T, V], "last" [B, V], or "nll" [B, T - 1], for which the last token serves
        only as the last target (the first ``n_in`` = T - 1 tokens are read)."""
        check_tokens(tokens, None if state is None else state.pending_tokens.size(0), self.config.vocab_size)
        for ring in [] if state is None else state.suffix:  # they grow in place, as the prefix's caches
            check_continues(ring.end_pos, state.pos)
        tokens = tokens.long()  # int32 ids too: the inner losses' targets index the logits
        c, b = self.config, self.config.mini_batch_size
        B, n_in = tokens.size(0), tokens.size(1) - (out == "nll")
        read_start = 0 if state is None else state.pos  # position of tokens[:, 0]
        read_end = read_start + n_in

        # 1. the prefix, once over all new tokens
        x, conv_tail = self.embed_tokens(tokens[:, :n_in], None if state is None else state.conv_tail)
        prefix_caches = [None] * self.n_prefix if state is None else state.prefix
        new_prefix = []
        for block, cache in zip(self.prefix_blocks, prefix_caches):
            x, cache = block(x, cache, read_start, need_state)
            new_prefix.append(cache)

        if state is not None and n_in == 1 and out != "nll" and state.n_pending < b and not torch.is_grad_enabled():
            return self._decode_in_place(x, tokens, state, new_prefix, conv_tail, out)

        # 2. the suffix, mini-batch by mini-batch. The timeline starts at the current mini-batch
        # (position timeline_start): its tokens read earlier (pending, from the state), then the new ones.
        if state is None:
            timeline_start, fast = read_start, self.initial_fast_weights(B)
            hist_k: list[list[torch.Tensor]] = [[] for _ in self.suffix_blocks]
            hist_v: list[list[torch.Tensor]] = [[] for _ in self.suffix_blocks]
            all_x, all_tokens = x, tokens
        else:
            timeline_start, fast = read_start - state.n_pending, state.fast
            kv = [ring.keys_values() for ring in state.suffix]
            hist_k, hist_v = [[k] for k, _ in kv], [[v] for _, v in kv]
            all_x = torch.cat([state.pending_x[:, : state.n_pending], x], 1)
            all_tokens = torch.cat([state.pending_tokens[:, : state.n_pending], tokens], 1)
        new_k: list[list[torch.Tensor]] = [[] for _ in self.suffix_blocks]
        new_v: list[list[torch.Tensor]] = [[] for _ in self.suffix_blocks]
        keep = c.window - 1 + b  # keys a later re-read of the current mini-batch may need
        lr = self.inner_lr_now  # a Python float: nothing to copy to the device
        step = self._step_function(out, x.device)
        outs, last = [], None
        for mb_start in range(timeline_start, read_end, b):  # timeline_start is a mini-batch start
            mb_end = min(mb_start + b, read_end)
            update = mb_end == mb_start + b and mb_end < read_end  # full, and a later mini-batch needs its update
            # the step reads from the mini-batch start when it updates (re-reading the pending
            # tokens), else only the new tokens
            step_start = mb_start if update else max(mb_start, read_start)
            # the step's first positions that an earlier call read: already in hist (hidden from
            # the step's context), and their outputs are not reported again
            already_read = max(read_start - step_start, 0)
            want_logits = out == "logits" or (out == "last" and mb_end == read_end)
            lo, hi = step_start - timeline_start, mb_end - timeline_start  # the step's slice of the timeline
            targets = all_tokens[:, lo + 1 : hi + 1] if update or out == "nll" else None
            logits, nll, new_fast, ks, vs = step(
                x=all_x[:, lo:hi], targets=targets, start_pos=step_start,
                # copies of hist: a checkpoint re-runs the step with these very arguments later
                hist_k=[list(h) for h in hist_k], hist_v=[list(h) for h in hist_v], already_read=already_read,
                fast=fast, lr=lr, update=update, want_logits=want_logits,
            )
            if out == "logits" and mb_end > step_start + already_read:
                outs.append(logits[:, already_read:])
            elif out == "nll":
                outs.append(nll[:, already_read:])
            elif want_logits:
                last = logits[:, -1]
            for s in range(len(self.suffix_blocks)):
                for hist, new, t in ((hist_k[s], new_k[s], ks[s]), (hist_v[s], new_v[s], vs[s])):
                    if t.size(-2) > already_read:
                        hist.append(t[..., already_read:, :])
                        new.append(t[..., already_read:, :])
                    while len(hist) > 1 and sum(h.size(-2) for h in hist[1:]) >= keep:
                        hist.pop(0)
            if update:
                fast = new_fast
        result = last if out == "last" else torch.cat(outs, 1)
        if not need_state:
            return result, None

        last_mb_start = (read_end - 1) // b * b  # start of the mini-batch holding the last position
        if state is None:
            rings = [
                RingKVCache(keep, torch.cat(hk, -2), torch.cat(hv, -2), read_end) for hk, hv in zip(hist_k, hist_v)
            ]
        else:
            rings = state.suffix
            for ring, nk, nv in zip(rings, new_k, new_v):
                ring.append(torch.cat(nk, -2), torch.cat(nv, -2))
        # copies into buffers of their own, not views: a view keeps the whole prefill's [B, T, D]
        # alive in the state (192 MiB at 125M/128K), which state_bytes does not see and clone_state copies whole
        pending = slice(last_mb_start - timeline_start, read_end - timeline_start)
        pending_x, pending_tokens = all_x.new_zeros(B, b, all_x.size(-1)), all_tokens.new_zeros(B, b)
        pending_x[:, : read_end - last_mb_start] = all_x[:, pending]
        pending_tokens[:, : read_end - last_mb_start] = all_tokens[:, pending]
        return result, TTTState(read_end, new_prefix, rings, fast, pending_x, pending_tokens, conv_tail)

    def _decode_in_place(self, x, tokens, state: TTTState, prefix: list[Any], conv_tail, out: str):
        """A decode step inside the current mini-batch (no inner step due), without gradients:
        each suffix block appends its key to its ring and attends to the ring's own buffers, as
        the prefix's blocks do. Gathering the ring in position order and concatenating the new
        key copied each suffix block's window twice per token (``_read``'s general path, which
        the steps that end a mini-batch still take: once per mini-batch)."""
        h = x
        for block, ring, fast in zip(self.suffix_blocks, state.suffix, self._by_block(state.fast)):
            h, _ = block(h, ring, state.pos, True, fast)
        logits = self.lm_head(self.norm(h))
        state.pending_x[:, state.n_pending] = x[:, 0]  # in place, as the rings: the state continues once
        state.pending_tokens[:, state.n_pending] = tokens[:, 0]
        new_state = TTTState(state.pos + 1, prefix, state.suffix, state.fast, state.pending_x, state.pending_tokens,
                             conv_tail)
        return (logits[:, -1] if out == "last" else logits), new_state

    def _step_function(self, out: str, device: torch.device):
        """What ``_read`` calls per mini-batch: the reference step (recomputed in the backward
        pass if an outer backward is coming and checkpoint_inner), or, at inference with any fast
        path on or under ``torch.inference_mode``, ``_fast_step``."""
        c = self.config
        if not torch.is_grad_enabled():
            # inference mode has no autograd for the reference step's torch.autograd.grad to
            # enable; torch.func's vjp, which _fast_step uses, runs there
            if self._fast_inference(device) or torch.is_inference_mode_enabled():
                return partial(self._fast_step, want_nll=out == "nll", last_only=out == "last")
            return partial(self._step, create_graph=False)
        create_graph = c.inner_mode == "second_order"
        if c.checkpoint_inner:
            return partial(checkpoint, self._step, create_graph=create_graph, use_reentrant=False)
        return partial(self._step, create_graph=create_graph)

    def _step(self, x, targets, start_pos: int, hist_k, hist_v, already_read: int, fast, lr, update: bool,
              create_graph: bool, want_logits: bool):
        """One mini-batch (or part of one) at positions start_pos..: suffix outputs with the given
        fast weights, then, if ``update``, one inner SGD step. Its first ``already_read``
        positions were read by an earlier call (their keys are the last ones in ``hist``).
        Returns (logits | None, nll | None, fast weights after, per-block keys, per-block values)."""
        track = torch.is_grad_enabled()
        if track:
            weights = [w if w.requires_grad else w.detach().requires_grad_() for w in fast]
        else:
            weights = [w.detach().requires_grad_(update) for w in fast]
        # sdpa's fused kernels and flex have no double backward; its math kernel has
        backend = resolve_backend(self.config.backend, self.config.window, x.device)
        if create_graph and backend != "torch":
            backend = "sdpa"
        kernels = sdpa_kernel([SDPBackend.MATH]) if create_graph else nullcontext()
        with torch.enable_grad() if update else nullcontext(), kernels:
            past_k = [self._context(h, already_read) for h in hist_k]
            past_v = [self._context(h, already_read) for h in hist_v]
            h, ks, vs = self._suffix(x, start_pos, past_k, past_v, weights, backend)
            logits = self.lm_head(h)
            nll = None
            if targets is not None:
                nll = next_token_nll(logits, targets)
            new_fast = fast
            if update:
                # sum over sequences of each one's mean loss: each sequence gets its own gradient
                loss = masked_mean(nll, self.loss_mask(targets)).sum()
                grads = torch.autograd.grad(loss, weights, create_graph=create_graph, retain_graph=track)
                grads = clip_per_sequence(list(grads), self.config.inner_clip)
                with torch.set_grad_enabled(track):
                    new_fast = [w - lr * g for w, g in zip(weights, grads)]
        if not track:
            logits, nll = logits.detach(), None if nll is None else nll.detach()
            ks, vs = [k.detach() for k in ks], [v.detach() for v in vs]
        return (logits if want_logits else None), nll, new_fast, ks, vs

    def _fast_step(self, x, targets, start_pos: int, hist_k, hist_v, already_read: int, fast, lr: float,
                   update: bool, want_logits: bool, want_nll: bool, last_only: bool):
        """The reference step's inputs and outputs, at inference, by ``_inference_step``: compiled
        or captured (``inner_step``) in the steady state, where every step has the same shapes,
        eager before it (the window filling up) and at the ends of a read."""
        past_k = [self._context(h, already_read) for h in hist_k]
        past_v = [self._context(h, already_read) for h in hist_v]
        logits = "none" if not want_logits else "last" if last_only else "all"
        steady = update and already_read == 0 and all(p is not None and p.size(-2) == self.config.window - 1
                                                      for p in past_k)
        run = self._inference_step
        if steady:  # one compiled or captured step serves all: same shapes and strides, position on the device
            run = self._steady_step()
            x, targets = x.contiguous(), targets.contiguous()
            past_k, past_v = [p.contiguous() for p in past_k], [p.contiguous() for p in past_v]
            start_pos = torch.full((), start_pos, dtype=torch.long, device=x.device)
        return run(x=x, targets=targets, start_pos=start_pos, past_k=past_k, past_v=past_v, fast=fast, lr=lr,
                   update=update, logits=logits, want_nll=want_nll)

    def _steady_step(self):
        mode = self.config.inner_step
        if mode not in self._steady_steps:
            step = self._inference_step
            if "compile" in mode:
                allow_static_recompiles()  # every model and kind of output compiles this one method
                step = torch.compile(step, **COMPILE_OPTIONS)
            if "cudagraph" in mode:
                step = CapturedFunction(step)
            self._steady_steps[mode] = step
        return self._steady_steps[mode]

    def _inference_step(self, x, targets, start_pos: int | torch.Tensor, past_k, past_v, fast, lr: float,
                        update: bool, logits: str, want_nll: bool):
        """One inner step at inference as a function of tensors (for torch.compile and CUDA
        graphs): the suffix with the given fast weights, its outputs (``logits``: "all", "last"
        or "none"), and, if ``update``, one inner SGD step whose gradient w.r.t. the fast weights
        comes from ``torch.func.vjp`` and the head's gradient w.r.t. the suffix output from
        ``inner_loss``. Returns what ``_step`` returns (nll only if ``want_nll``)."""
        backend = "torch" if self.config.backend == "torch" else "sdpa"  # flex has no torch.func rules

        def suffix(weights):
            h, ks, vs = self._suffix(x, start_pos, past_k, past_v, weights, backend)
            return h, (ks, vs)

        if update:
            h, pullback, (ks, vs) = torch.func.vjp(suffix, fast, has_aux=True)
        else:
            h, (ks, vs) = suffix(fast)
        nll = grad_h = all_logits = None
        if targets is not None:
            nll, grad_h, all_logits = self._head_loss(h, targets, update, want_nll, keep_logits=logits == "all")
        new_fast = fast
        if update:
            (grads,) = pullback(grad_h)
            grads = clip_per_sequence(list(grads), self.config.inner_clip)
            new_fast = [w - lr * g for w, g in zip(fast, grads)]
        if logits == "all" and all_logits is None:
            all_logits = self.lm_head(h)
        out = all_logits if logits == "all" else self.lm_head(h[:, -1:]) if logits == "last" else None
        return out, nll if want_nll else None, new_fast, ks, vs

    def _head_loss(self, h, targets, update: bool, want_nll: bool, keep_logits: bool):
        """(per-token NLL, the inner loss's gradient w.r.t. ``h`` if ``update``, logits if
        ``keep_logits``) of the LM head over the suffix output ``h``, by ``inner_loss``."""
        weight, method = self.lm_head.weight, self.inner_loss_method(h.device)
        coef = self.inner_loss_weights(targets, torch.promote_types(h.dtype, torch.float32)) if update else None
        if method == "chunked":
            return linear_cross_entropy(h, weight, targets, coef, keep_logits)
        if method == "liger" and update:
            grad_h = liger_grad(h, weight, targets, self.loss_mask(targets))
            nll = logits = None
            if want_nll or keep_logits:  # Liger returns neither: one more pass over the head
                nll, _, logits = linear_cross_entropy(h, weight, targets, keep_logits=keep_logits)
            return nll, grad_h, logits
        # the reference: autograd over the whole [tokens, vocab] logits

        def head(h_):
            logits = self.lm_head(h_)
            return next_token_nll(logits, targets), logits

        if update:
            nll, pullback, logits = torch.func.vjp(head, h, has_aux=True)
            return nll, pullback(coef)[0], logits if keep_logits else None
        nll, logits = head(h)
        return nll, None, logits if keep_logits else None

    def _context(self, hist: list[torch.Tensor], already_read: int) -> torch.Tensor | None:
        """What a step's queries see before its own positions: the last window-1 keys (or
        values) of ``hist`` before its first ``already_read`` positions (the last ones in hist)."""
        if not hist:
            return None
        past = torch.cat(hist, -2) if len(hist) > 1 else hist[0]
        return _tail(past[..., : past.size(-2) - already_read, :], self.config.window - 1)

    def _suffix(self, x, start_pos: int | torch.Tensor, past_k, past_v, weights, backend: str):
        """Final-normed suffix outputs of ``x`` (positions start_pos..) attending to each block's
        ``past`` keys/values first, and each block's keys/values of ``x``."""
        ks, vs = [], []
        for block, fast, pk, pv in zip(self.suffix_blocks, self._by_block(weights), past_k, past_v):
            x, k, v = block.forward_chunk(x, pk, pv, start_pos, fast, backend)
            ks.append(k)
            vs.append(v)
        return self.norm(x), ks, vs
