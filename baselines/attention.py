"""Causal softmax attention with RoPE and QK-norm: ``full_attention`` and ``swa``.

Backends of the same math (``AttentionConfig.backend``):

- ``torch``: the reference, a masked softmax over the whole score matrix.
- ``sdpa``: PyTorch's fused ``scaled_dot_product_attention``; sliding windows run it on
  query chunks against only the keys they can see, so memory stays O(T * (chunk + W)).
- ``flex``: FlexAttention with a sliding-window block mask (a real windowed kernel; GPU).

``auto`` picks flex for windows on CUDA when it imports, otherwise sdpa.

Decode keeps a KV cache: a growing buffer for full attention, a ring buffer of the last W
positions for swa, so swa's decode memory and time do not grow with context.
"""
from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.backbone import BackboneLM, RMSNorm, without_autocast
from harness.api.errors import BackendUnavailableError, ConfigError, check_choice, divisors
from harness.api.interface import ModelConfig, check_continues
from harness.api.kernels import Kernel, pick_backend
from harness.api.registry import register_model

ATTENTION_BACKENDS = ("auto", "torch", "sdpa", "flex")
QUERY_CHUNK = 1024  # query block of the chunked sdpa path for sliding windows
CACHED_MASK_ELEMENTS = 1 << 24  # sdpa masks up to 16 MiB (bool) are built once and kept
KV_GROWTH_MIN = 16  # positions a full KV cache grows by at least (a short prompt's cache grows rarely)


@dataclass
class AttentionConfig(ModelConfig):
    n_kv_heads: int = 0  # 0 = same as n_heads; fewer gives grouped-query attention
    window: int = 0  # sliding window in tokens (keys a query sees, itself included); 0 = full
    qk_norm: bool = True  # RMSNorm over each head's q and k before RoPE (TTT-E2E's code)
    rope_theta: float = 500000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"choose n_heads among {divisors(self.d_model)}"
            )
        check_choice("attention backend", self.backend, ATTENTION_BACKENDS)
        kv = self.kv_heads
        if kv <= 0 or self.n_heads % kv:
            raise ConfigError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}; choose among "
                              f"{[0, *divisors(self.n_heads)]} (0: as many as n_heads)")
        if self.window < 0:
            raise ConfigError(f"window={self.window} must be >= 0 (0 means full attention)")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.rope_theta <= 0:  # inf rotation frequencies: NaN logits
            raise ConfigError(f"rope_theta={self.rope_theta} must be > 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


def _cache_outside_compile(cached: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``cached`` (an ``lru_cache``) in eager code, its plain function while torch.compile traces:
    Dynamo skips the cache anyway (the tensor is built inside the graph) and warns that it does."""
    return cached.__wrapped__ if torch.compiler.is_compiling() else cached


# ---------------------------------------------------------------------------------------------
# RoPE


@lru_cache(maxsize=32)
def _inv_freq(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim))


def apply_rope(x: torch.Tensor, start_pos: int | torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate ``x [B, H, T, Dh]`` for positions start_pos.. (Llama's half-split layout). A 0-d
    tensor ``start_pos`` keeps the position on the device (a compiled or captured step)."""
    T, Dh = x.size(-2), x.size(-1)
    pos = torch.arange(T, device=x.device, dtype=torch.float64) + start_pos
    angles = torch.outer(pos, _cache_outside_compile(_inv_freq)(Dh, theta, x.device))
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype)
    x1, x2 = x[..., : Dh // 2], x[..., Dh // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


# ---------------------------------------------------------------------------------------------
# The attention op: queries at positions q_start.., keys at k_start.. (contiguous).


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """[Tq, Tk] bool: key j is visible to query i iff j <= i and i - j < window (0 = no window)."""
    diff = q_pos[:, None] - k_pos[None, :]
    mask = diff >= 0
    if window:
        mask &= diff < window
    return mask


@without_autocast
def masked_attention(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the keys ``mask [Tq, Tk]`` allows, in fp32 (fp64 stays fp64). Grouped query
    heads are queries of their key head (q ``[B, H, Tq, Dh]``, k and v ``[B, KV, Tk, Dh]``):
    no copy of the keys per query head."""
    B, H, Tq, Dh = q.shape
    KV, Tk = k.size(1), k.size(-2)
    dtype = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(dtype).reshape(B, KV, H // KV * Tq, Dh) @ k.to(dtype).transpose(-1, -2)) / math.sqrt(Dh)
    scores = scores.view(B, KV, H // KV, Tq, Tk).masked_fill(~mask, float("-inf")).view(B, KV, -1, Tk)
    return (scores.softmax(-1) @ v.to(dtype)).view(B, H, Tq, Dh).to(q.dtype)


def attention_reference(q, k, v, q_start: int, k_start: int, window: int) -> torch.Tensor:
    """Masked softmax over the whole score matrix."""
    q_pos = torch.arange(q_start, q_start + q.size(-2), device=q.device)
    k_pos = torch.arange(k_start, k_start + k.size(-2), device=q.device)
    return masked_attention(q, k, v, visible(q_pos, k_pos, window))


def _relative_mask(q_len: int, k_len: int, offset: int, window: int, device: torch.device) -> torch.Tensor:
    """``visible`` for queries at ``offset``.. and keys at 0..: it depends on positions' differences only."""
    return visible(torch.arange(offset, offset + q_len, device=device), torch.arange(k_len, device=device), window)


_cached_relative_mask = lru_cache(maxsize=8)(_relative_mask)


def sdpa_mask(q_len: int, k_len: int, offset: int, window: int, device: torch.device) -> torch.Tensor:
    """The [q_len, k_len] bool mask of queries ``offset`` positions after the first key.

    Every query chunk of a long sliding-window prefill (and every full TTT-E2E mini-batch) asks
    for the same mask: building it each time took a quarter of SWA's CPU prefill (int64
    differences over [1024, 3072]), a cost full attention's causal path never pays. Masks up to
    :data:`CACHED_MASK_ELEMENTS` are kept; a larger one (a long full-attention continuation) is
    built each time rather than held."""
    if q_len * k_len <= CACHED_MASK_ELEMENTS:
        return _cache_outside_compile(_cached_relative_mask)(q_len, k_len, offset, window, device)
    return _relative_mask(q_len, k_len, offset, window, device)


def sdpa_one_query(q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    """sdpa for one query per head (a decode step), ``mask [1, Tk]`` or None (every key). Grouped
    query heads become queries of their key head: repeating keys and values copied the layer's
    whole cache at every step. Any kernel runs this (enable_gqa only some), and on the CPU it beat
    enable_gqa (32K keys, 4 query heads a key head: 1.6 vs 14.7 ms at best, torch 2.13)."""
    B, H, _, Dh = q.shape
    return F.scaled_dot_product_attention(q.reshape(B, k.size(1), -1, Dh), k, v, attn_mask=mask).view(B, H, 1, Dh)


def attention_sdpa(q, k, v, q_start: int, k_start: int, window: int) -> torch.Tensor:
    Tq, Tk = q.size(-2), k.size(-2)
    if Tq == 1:  # a decode step; one that sees every key (a full cache, a full ring) needs no mask
        every_key = q_start - k_start == Tk - 1 and (not window or Tk <= window)
        return sdpa_one_query(q, k, v, None if every_key else sdpa_mask(1, Tk, q_start - k_start, window, q.device))
    if k.size(1) != q.size(1):
        # grouped heads, once for all query chunks: not enable_gqa, which CUDA's memory-efficient
        # kernel (fp32) lacks, so sdpa would fall back to its math kernel and a whole score matrix
        k, v = (t.repeat_interleave(q.size(1) // k.size(1), 1) for t in (k, v))
    return _attention_sdpa(q, k, v, q_start, k_start, window)


def _attention_sdpa(q, k, v, q_start: int, k_start: int, window: int) -> torch.Tensor:
    Tq, Tk = q.size(-2), k.size(-2)
    if not window and q_start == k_start and Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if not window or Tq <= QUERY_CHUNK:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask(Tq, Tk, q_start - k_start, window, q.device))
    outputs = []
    for qs in range(0, Tq, QUERY_CHUNK):
        qe = min(qs + QUERY_CHUNK, Tq)
        # keys this chunk can see: positions [q_start+qs-window+1, q_start+qe)
        ks = max(0, q_start + qs - window + 1 - k_start)
        ke = q_start + qe - k_start
        outputs.append(_attention_sdpa(q[..., qs:qe, :], k[..., ks:ke, :], v[..., ks:ke, :], q_start + qs, k_start + ks, window))
    return torch.cat(outputs, dim=-2)


def _import_flex() -> Any:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return types.SimpleNamespace(create_block_mask=create_block_mask, flex_attention=flex_attention)


FLEX = Kernel("attention", "flex", _import_flex, install="PyTorch >= 2.5 with CUDA", fallback="sdpa",
              packages=("torch", "triton"))


# Query x key positions above which the block mask is built by a compiled create_block_mask: the
# eager one materialises the whole [q_len, k_len] mask and its int64 intermediates (137 GB at 128K).
DENSE_MASK_LIMIT = 1 << 24


# flex, its mask builder and TTT-E2E's steady inner step are compiled for static shapes: every
# (query length, key length, mask), and every kind of model, is one more compilation of the same
# function. A GPU run passes more of those than dynamo's default limit of 8 (swa and ttt_e2e at
# 8K/32K/128K, TTT-E2E's window filling mini-batch by mini-batch, decode; the GPU tests' models),
# past which dynamo silently runs the function eagerly: flex unfused, the whole score matrix (an
# out-of-memory at 128K); a "compiled" inner step that is not.
STATIC_RECOMPILE_LIMIT = 256


def allow_static_recompiles() -> None:
    """Room for :data:`STATIC_RECOMPILE_LIMIT` compilations per function (per process; raised, never lowered)."""
    import torch._dynamo  # torch.compile imports it too; here for its config

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, STATIC_RECOMPILE_LIMIT)


def _compile_static(fn: Callable[..., Any]) -> Callable[..., Any]:
    allow_static_recompiles()
    return torch.compile(fn, dynamic=False)


@lru_cache(maxsize=1)
def _compiled_create_block_mask():
    return _compile_static(FLEX.imported()[0].create_block_mask)  # static, as flex_attention's


@lru_cache(maxsize=64)
def _flex_block_mask(q_len: int, k_len: int, offset: int, window: int, device: str):
    def mask_mod(b, h, q_idx, kv_idx):
        diff = q_idx + offset - kv_idx
        keep = diff >= 0
        return keep & (diff < window) if window else keep

    create = FLEX.ops(torch.device(device)).create_block_mask
    if q_len * k_len > DENSE_MASK_LIMIT:
        create = _compiled_create_block_mask()
    return create(mask_mod, None, None, q_len, k_len, device=device)


@lru_cache(maxsize=1)
def _compiled_flex():
    return _compile_static(FLEX.imported()[0].flex_attention)


def attention_flex(q, k, v, q_start: int, k_start: int, window: int) -> torch.Tensor:
    FLEX.ops(q.device)  # raises, saying why, where flex cannot run
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        # as autocast does for sdpa (flex_attention is no autocast op in every release): under
        # fp32 parameters, QK-norm's weights leave q and k in fp32 beside a bf16 v, which flex
        # rejects or runs in fp32
        dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    mask = _flex_block_mask(q.size(-2), k.size(-2), q_start - k_start, window, str(q.device))
    return _compiled_flex()(q, k, v, block_mask=mask, enable_gqa=k.size(1) != q.size(1))  # grouped heads in place


ATTENTION_OPS = {"torch": attention_reference, "sdpa": attention_sdpa, "flex": attention_flex}


def attention_slots(q, k, v, visible_slots: torch.Tensor, backend: str) -> torch.Tensor:
    """A decode step's one query per head against keys in any order (a ring buffer's slots),
    those where ``visible_slots [Tk]``. flex runs it on sdpa: its block mask would change, and
    compile again, at every step, and one query has no blocks for flex to skip."""
    mask = visible_slots[None]
    return masked_attention(q, k, v, mask) if backend == "torch" else sdpa_one_query(q, k, v, mask)


def resolve_backend(backend: str, window: int, device: torch.device) -> str:
    return pick_backend(backend, [FLEX] if window else [], device, fallback="sdpa")


# ---------------------------------------------------------------------------------------------
# KV caches


class KVCache:
    """Full attention: keys/values of every past position, in a buffer that grows by an eighth
    (at least :data:`KV_GROWTH_MIN` positions) when full: amortised O(1) appends, and a long
    prompt's cache never holds much more than its keys (doubling held twice a 128K prompt's)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v, self.length = k, v, k.size(-2)

    @property
    def end_pos(self) -> int:
        """The position after the last cached one (the cache starts at position 0)."""
        return self.length

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        need = self.length + k.size(-2)
        if need > self.k.size(-2):
            capacity = need + max(need // 8, KV_GROWTH_MIN)
            self.k, self.v = (self._grow(t, capacity) for t in (self.k, self.v))
        self.k[..., self.length : need, :] = k
        self.v[..., self.length : need, :] = v
        self.length = need

    def _grow(self, t: torch.Tensor, capacity: int) -> torch.Tensor:
        new = t.new_empty(*t.shape[:-2], capacity, t.size(-1))
        new[..., : self.length, :] = t[..., : self.length, :]
        return new

    def keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[..., : self.length, :], self.v[..., : self.length, :]

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v]


class RingKVCache:
    """Sliding window: the last ``window`` positions; position p lives in slot p % window."""

    def __init__(self, window: int, k: torch.Tensor, v: torch.Tensor, end_pos: int):
        B, H, _, Dh = k.shape
        self.window, self.end_pos = window, end_pos - k.size(-2)
        self.k = k.new_zeros(B, H, window, Dh)
        self.v = v.new_zeros(B, H, window, Dh)
        self.append(k, v)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        T = k.size(-2)
        if T > self.window:
            self.end_pos += T - self.window
            k, v, T = k[..., -self.window :, :], v[..., -self.window :, :], self.window
        slots = torch.arange(self.end_pos, self.end_pos + T, device=k.device) % self.window
        self.k[..., slots, :] = k
        self.v[..., slots, :] = v
        self.end_pos += T

    def visible_slots(self, window: int) -> torch.Tensor | None:
        """[slots] bool: the slots whose keys the newest position sees through a ``window``
        (itself included), or None for all of them (a full ring of exactly ``window`` slots).
        Slot s holds the key ``(end_pos - 1 - s) % slots`` positions back; slots never written
        (a ring not yet full) are more positions back than there are."""
        if window == self.window <= self.end_pos:
            return None
        back = (self.end_pos - 1 - torch.arange(self.window, device=self.k.device)) % self.window
        return back < min(window, self.end_pos)

    def keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached keys in position order (the oldest first)."""
        n = min(self.end_pos, self.window)
        start = self.end_pos - n
        slots = torch.arange(start, self.end_pos, device=self.k.device) % self.window
        return self.k[..., slots, :], self.v[..., slots, :]

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v]


# ---------------------------------------------------------------------------------------------
# The mixer


class Attention(nn.Module):
    """Llama-style attention (q/k/v/o_proj), optional QK-norm, RoPE, optional sliding window."""

    def __init__(self, config: AttentionConfig, backend_setting: str = "backend"):
        super().__init__()
        self.config = config
        self.backend_setting = backend_setting  # the config field that chose ``config.backend``, for refusals
        D, H, KV, Dh = config.d_model, config.n_heads, config.kv_heads, config.head_dim
        self.q_proj = nn.Linear(D, H * Dh, bias=False)
        self.k_proj = nn.Linear(D, KV * Dh, bias=False)
        self.v_proj = nn.Linear(D, KV * Dh, bias=False)
        self.o_proj = nn.Linear(H * Dh, D, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(Dh, config.norm_eps)
            self.k_norm = RMSNorm(Dh, config.norm_eps)

    def project(self, x: torch.Tensor, start_pos: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, T, Dh], and k, v [B, KV, T, Dh] with norm and RoPE applied."""
        c = self.config
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, start_pos, c.rope_theta), apply_rope(k, start_pos, c.rope_theta), v

    def forward(self, x: torch.Tensor, cache: Any, start_pos: int, need_cache: bool) -> tuple[torch.Tensor, Any]:
        c = self.config
        q, k, v = self.project(x, start_pos)
        if cache is None:
            keys, values, k_start = k, v, start_pos
            if need_cache:
                cache = RingKVCache(c.window, k, v, start_pos + x.size(1)) if c.window else KVCache(k, v)
        else:
            check_continues(cache.end_pos, start_pos)
            # Append, then attend to the buffer itself: gathering and concatenating copied the layer's
            # whole cache at every decode step (on CPU, width 144: full attention's decode 2x slower at
            # 32K, SWA's 1.8x with a 2K window). A ring holds its keys out of position order, which
            # softmax attention does not mind; the slots the query does not see are masked (a ring
            # not yet full, or TTT-E2E's suffix ring, longer than the window). Not under autograd: a
            # view saved for backward would be written in place by the next append.
            ring_step = isinstance(cache, RingKVCache) and x.size(1) == 1
            if not torch.is_grad_enabled() and (isinstance(cache, KVCache) or ring_step):
                cache.append(k, v)
                if ring_step:
                    return self.attend_ring(q, cache, start_pos), (cache if need_cache else None)
                keys, values = cache.keys_values()
            else:
                past_k, past_v = cache.keys_values()
                keys, values = torch.cat([past_k, k], -2), torch.cat([past_v, v], -2)
                cache.append(k, v)
            k_start = start_pos + x.size(1) - keys.size(-2)
        backend = resolve_backend(c.backend, c.window, x.device)
        return self.mix(q, keys, values, start_pos, k_start, backend), (cache if need_cache else None)

    def attend_ring(self, q: torch.Tensor, ring: RingKVCache, start_pos: int) -> torch.Tensor:
        """The query of the position just appended to ``ring`` against the ring's own buffers."""
        backend = resolve_backend(self.config.backend, self.config.window, q.device)
        visible = ring.visible_slots(self.config.window)
        if visible is None:  # every slot: any backend, positions as if in order
            return self.mix(q, ring.k, ring.v, start_pos, start_pos + 1 - ring.window, backend)
        return self.project_out(attention_slots(q, ring.k, ring.v, visible, backend))

    def mix(self, q, keys, values, start_pos: int, k_start: int, backend: str) -> torch.Tensor:
        """Attend queries (positions start_pos..) to keys/values (k_start..); project out."""
        try:
            out = ATTENTION_OPS[backend](q, keys, values, start_pos, k_start, self.config.window)
        except BackendUnavailableError:  # flex's own check names `backend`: name the field that chose flex here
            raise BackendUnavailableError(FLEX.refusal(q.device, self.backend_setting)) from None
        return self.project_out(out)

    def project_out(self, out: torch.Tensor) -> torch.Tensor:
        """[B, H, T, Dh] attention outputs -> [B, T, D]."""
        return self.o_proj(out.transpose(1, 2).reshape(out.size(0), out.size(2), -1))


class AttentionLM(BackboneLM):
    config_class = AttentionConfig
    kernels = (FLEX,)
    backends = ATTENTION_BACKENDS

    def make_mixer(self, layer_idx: int) -> nn.Module:
        return Attention(self.config)

    def backend_on(self, device: torch.device) -> str:
        return resolve_backend(self.config.backend, self.config.window, device)


# Sizes follow the official TTT-E2E configs (layers / hidden / heads / MLP width); vocab is the
# Llama-3 tokenizer's at paper scale and bytes at tiny scale.
PAPER_SIZES: dict[str, dict[str, Any]] = {
    "125m": dict(n_layers=12, d_model=768, n_heads=12, mlp_hidden=2048),
    "350m": dict(n_layers=24, d_model=1024, n_heads=16, mlp_hidden=2816),
    "760m": dict(n_layers=24, d_model=1536, n_heads=16, mlp_hidden=4096),
    "1.3b": dict(n_layers=24, d_model=2048, n_heads=32, mlp_hidden=5376),
}
LLAMA3_VOCAB = 128256


def paper_presets(tiny: dict[str, Any], **extra: Any) -> dict[str, dict[str, Any]]:
    presets = {"tiny": {**tiny}}
    for name, size in PAPER_SIZES.items():
        presets[name] = {**size, "vocab_size": LLAMA3_VOCAB, **extra}
    return presets


TINY = dict(n_layers=4, d_model=128, n_heads=4, mlp_hidden=384, vocab_size=256, rope_theta=10000.0)


@register_model("full_attention")
class FullAttentionLM(AttentionLM):
    """Llama-style transformer with causal softmax attention over the whole context."""

    presets = paper_presets(TINY)

    def __init__(self, config: AttentionConfig):
        if config.window:
            raise ConfigError(f"full_attention has no window (got window={config.window}); use arch 'swa'")
        super().__init__(config)


@register_model("swa")
class SlidingWindowLM(AttentionLM):
    """The same transformer with sliding-window attention: TTT-E2E's backbone with TTT off."""

    presets = paper_presets({**TINY, "window": 256}, window=8192)

    def __init__(self, config: AttentionConfig):
        if not config.window:
            raise ConfigError("swa needs a window > 0 (tokens each query sees); use arch 'full_attention' for none")
        super().__init__(config)
