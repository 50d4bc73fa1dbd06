"""Mamba 2 (SSD, arXiv 2405.21060) as the mixer of the shared backbone: ``mamba2``.

The mixer is mamba-ssm's ``Mamba2`` module, with the same parameter names and shapes so its
checkpoints load: ``in_proj`` (outputs z, x, B, C, dt in that order), ``conv1d`` (depthwise,
causal, over x, B, C, with bias), ``dt_bias``, ``A_log``, ``D`` (one per head), ``norm.weight``
(gated RMSNorm ``rmsnorm(y * silu(z)) * w`` in groups of ``d_inner // ngroups``, eps 1e-5) and
``out_proj``. Head h reads the B/C group ``h // (nheads // ngroups)``.

Backends of the same math (``Mamba2Config.backend``):

- ``torch``: the chunked SSD of ``baselines/ssd_reference.py`` (quadratic inside a chunk,
  recurrent across chunks) for sequences, one recurrent step for decode. Runs anywhere.
- ``mamba_ssm``: mamba-ssm's Triton kernels, ``mamba_chunk_scan_combined`` for sequences and
  ``selective_state_update`` for decode (CUDA).
- ``fla``: flash-linear-attention's ``chunk_simple_gla`` / ``fused_recurrent_simple_gla``:
  SSD is scalar-gated linear attention with q = C, k = B, v = x * dt, log gate A * dt, scale 1
  (CUDA). It runs ``chunk_size`` 16, 32 or 64: fla takes any power of 2, but its kernels hold a
  chunk-by-chunk tile per program and were checked here at 64, their default, only. For another
  chunk_size (the default 256, mamba-ssm's) it runs 64, says so once, and the run records it.

``auto`` picks mamba_ssm, then fla, on CUDA when they import, otherwise torch. Decode carries
``Mamba2Cache``: the SSM state ``[B, H, P, N]`` in fp32 and the conv's last ``d_conv - 1``
inputs, so memory and time per token stay constant.

Sizes. The Mamba papers match a Transformer's size by parameter count at equal width, changing
the number of layers and keeping the mixer's published shape (expand 2, d_state 128, head dim
64, one B/C group). Here the mixer replaces attention inside the shared block, which keeps its
SwiGLU MLP; with expand 2 the mixer has about 6.4 d^2 parameters against attention's 4 d^2, so
the same parameter budget buys fewer blocks: 10 instead of 12 at 125m, 20 instead of 24 at
350m-1.3b, within 2% of full_attention's non-embedding count at every size. The alternative,
keeping the depth with expand 1, would halve the recurrent state that long-context recall
depends on, and depart from every released Mamba 2. ``tiny`` (CPU) follows the same rule:
3 blocks of d_model 128 against full_attention's 4.
"""
from __future__ import annotations

import inspect
import math
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from baselines.attention import LLAMA3_VOCAB, PAPER_SIZES
from baselines.backbone import BackboneLM
from baselines.short_conv import ShortConv
from baselines.ssd_reference import ssd_chunked, ssd_step, upcast
from harness.api.errors import ConfigError, check_choice, divisors
from harness.api.interface import ModelConfig, check_continues
from harness.api.kernels import Kernel, chunk_settings, pick_backend
from harness.api.registry import register_model

MAMBA2_BACKENDS = ("auto", "torch", "mamba_ssm", "fla")
GATED_NORM_EPS = 1e-5  # mamba-ssm's RMSNormGated


@dataclass
class Mamba2Config(ModelConfig):
    """Mixer fields use mamba-ssm's names and defaults. ``n_heads`` is derived, not set: the
    mixer has ``expand * d_model // headdim`` heads (mamba-ssm's ``nheads``), and a given value
    that disagrees is refused (it was once accepted and ignored)."""

    # 1 only until __post_init__ derives it (the base class first checks it is a positive int)
    n_heads: int = field(default=1, init=False, metadata={
        "derived": "n_heads = expand * d_model // headdim: change headdim for another head count; a "
                   "config.json saved before n_heads was derived may hold an ignored value: delete it there"})
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256  # SSD chunk (mamba-ssm's default); fla takes 16/32/64 (module docstring)
    conv_bias: bool = True
    A_init_min: float = 1.0  # A = -U(A_init_min, A_init_max) per head
    A_init_max: float = 16.0
    dt_min: float = 0.001  # dt initialised log-uniform in [dt_min, dt_max], floored
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mamba2 backend", self.backend, MAMBA2_BACKENDS)
        self.check_positive_ints("d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size")
        if self.d_inner % self.headdim:
            raise ConfigError(f"expand * d_model = {self.d_inner} is not divisible by headdim={self.headdim}; "
                              f"choose headdim among {divisors(self.d_inner)}")
        if self.nheads % self.ngroups:
            raise ConfigError(f"ngroups={self.ngroups} must divide the number of heads ({self.nheads}); "
                              f"choose among {divisors(self.nheads)}")
        if not 0 < self.A_init_min <= self.A_init_max:
            raise ConfigError(f"need 0 < A_init_min <= A_init_max, got {self.A_init_min}, {self.A_init_max}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        self.n_heads = self.nheads

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim


# ---------------------------------------------------------------------------------------------
# Backends. Each sequence op maps (x [b, T, H, P], raw dt [b, T, H], A [H], B, C [b, T, G, N],
# D [H], dt_bias [H], chunk_size, initial_state [b, H, P, N] or None, need_state) to
# (y [b, T, H, P], final state or None); each step op maps (state, x [b, H, P], raw dt [b, H],
# A, B, C [b, G, N], D, dt_bias) to (y [b, H, P], new state). dt = softplus(raw dt + dt_bias).


def _dt(dt: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    dt = upcast(dt)
    return F.softplus(dt + dt_bias.to(dt.dtype))


def ssd_torch(x, dt, A, B, C, D, dt_bias, chunk_size, initial_state, need_state):
    return ssd_chunked(x, _dt(dt, dt_bias), A, B, C, chunk_size, D=D, initial_state=initial_state)


def step_torch(state, x, dt, A, B, C, D, dt_bias):
    return ssd_step(state, x, _dt(dt, dt_bias), A, B, C, D)


def ssd_mamba_ssm(x, dt, A, B, C, D, dt_bias, chunk_size, initial_state, need_state):
    ops = MAMBA_SSM.ops(x.device)
    out = ops.mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, initial_states=initial_state,
        dt_softplus=True, return_final_states=need_state,
    )
    return out if need_state else (out, None)


def step_mamba_ssm(state, x, dt, A, B, C, D, dt_bias):
    """``selective_state_update`` updates ``state`` in place (and returns it as the new one).
    It has no backward, so a step that needs gradients runs the sequence kernel on one token."""
    if torch.is_grad_enabled():
        y, state = ssd_mamba_ssm(x[:, None], dt[:, None], A, B[:, None], C[:, None], D, dt_bias, 64, state, True)
        return y[:, 0], state
    H, P, N = state.shape[1:]
    y = MAMBA_SSM.ops(x.device).selective_state_update(
        state, x, dt[..., None].expand(-1, -1, P), A[:, None, None].expand(H, P, N), B, C,
        D=D[:, None].expand(H, P), dt_bias=dt_bias[:, None].expand(H, P), dt_softplus=True,
    )
    return y, state


def _as_gla(x, dt, A, B, C, dt_bias):
    """SSD as scalar-gated linear attention: q = C, k = B (per head), v = x * dt, g = A * dt."""
    R = x.size(2) // B.size(2)
    dt = _dt(dt, dt_bias)
    q, k = C.repeat_interleave(R, dim=2), B.repeat_interleave(R, dim=2)
    return q, k, (x.float() * dt[..., None]).to(x.dtype), dt * A


def ssd_fla(x, dt, A, B, C, D, dt_bias, chunk_size, initial_state, need_state):
    q, k, v, g = _as_gla(x, dt, A, B, C, dt_bias)
    y, state = FLA.ops(x.device).chunk_simple_gla(
        q, k, v, g=g, scale=1.0, initial_state=initial_state, output_final_state=need_state, state_v_first=True,
        **FLA.chunk_kwargs(chunk_size),
    )
    return _add_skip(y, x, D), state


def step_fla(state, x, dt, A, B, C, D, dt_bias):
    q, k, v, g = _as_gla(x[:, None], dt[:, None], A, B[:, None], C[:, None], dt_bias)
    y, state = FLA.ops(x.device).fused_recurrent_simple_gla(
        q, k, v, g=g, scale=1.0, initial_state=state, output_final_state=True, state_v_first=True
    )
    return _add_skip(y[:, 0], x, D), state


def _add_skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """``y + D * x`` in fp32 (mamba-ssm adds the skip inside its kernels)."""
    return (y.float() + x.float() * D.float()[:, None]).to(x.dtype)


SSD_OPS: dict[str, Callable] = {"torch": ssd_torch, "mamba_ssm": ssd_mamba_ssm, "fla": ssd_fla}
STEP_OPS: dict[str, Callable] = {"torch": step_torch, "mamba_ssm": step_mamba_ssm, "fla": step_fla}


def _import_mamba_ssm() -> Any:
    import mamba_ssm  # noqa: F401 - the package's __init__ first, even beside submodules another import left
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return types.SimpleNamespace(
        mamba_chunk_scan_combined=mamba_chunk_scan_combined, selective_state_update=selective_state_update
    )


def _import_fla() -> Any:
    from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

    for fn in (chunk_simple_gla, fused_recurrent_simple_gla):  # older releases would ignore it in **kwargs
        if "state_v_first" not in inspect.signature(fn).parameters:
            raise ImportError(f"fla.ops.simple_gla.{fn.__name__} takes no state_v_first; fla-core >= 0.6 is needed")
    return types.SimpleNamespace(chunk_simple_gla=chunk_simple_gla, fused_recurrent_simple_gla=fused_recurrent_simple_gla)


def _selective_scan_placeholder() -> types.ModuleType:
    module = types.ModuleType("selective_scan_cuda")

    def __getattr__(name: str) -> Any:
        raise AttributeError(
            f"selective_scan_cuda.{name}: mamba-ssm's Mamba-1 CUDA extension is not built; lcbench put this "
            "placeholder in its place so that mamba-ssm's Triton SSD kernels (Mamba 2) could be imported"
        )

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module


def _import_mamba_ssm_with_placeholder() -> Any:
    """mamba-ssm <= 2.3.2 imports its compiled Mamba-1 scan from the package __init__, even for
    the pure-Triton SSD kernels; a build without it (MAMBA_SKIP_CUDA_BUILD) then cannot import
    them. A placeholder module stands in for the extension Mamba 2 never uses."""
    try:
        return _import_mamba_ssm()
    except ModuleNotFoundError as exc:
        if exc.name != "selective_scan_cuda" or "selective_scan_cuda" in sys.modules:
            raise
    # the failed __init__ left submodules loaded without their package: the retry would import
    # beside them and never run the package's __init__, leaving `import mamba_ssm.models` to fail
    for name in [n for n in sys.modules if n.split(".")[0] == "mamba_ssm"]:
        del sys.modules[name]
    sys.modules["selective_scan_cuda"] = _selective_scan_placeholder()
    try:
        return _import_mamba_ssm()
    except BaseException:
        del sys.modules["selective_scan_cuda"]
        raise


MAMBA_SSM = Kernel(
    "mamba2", "mamba_ssm", _import_mamba_ssm_with_placeholder, fallback="torch",
    install="MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE pip install --no-build-isolation mamba-ssm",
    packages=("mamba-ssm", "triton"),
)
FLA = Kernel("mamba2", "fla", _import_fla, install="pip install fla-core triton", fallback="torch",
             packages=("fla-core", "triton"), chunk_sizes=(16, 32, 64))
KERNELS = (MAMBA_SSM, FLA)  # in the order "auto" prefers them


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs: ``auto`` -> the first kernel backend that works here, else torch."""
    return pick_backend(backend, KERNELS, device, fallback="torch")


# ---------------------------------------------------------------------------------------------
# The mixer


@dataclass
class Mamba2Cache:
    """Decode state of one layer after position ``end_pos - 1``: ``ssm [B, H, P, N]`` (fp32) and
    ``conv [B, d_conv - 1, C]``, the conv's last inputs. The mamba_ssm backend updates ``ssm`` in
    place while decoding (as a KV cache grows in place), and this cache's ``end_pos`` with it;
    copy the state (``clone_state``) to branch a generation."""

    conv: torch.Tensor
    ssm: torch.Tensor
    end_pos: int


class GatedRMSNorm(nn.Module):
    """``rmsnorm(x * silu(z)) * weight`` over groups of ``group_size`` channels, in fp32
    (mamba-ssm's ``RMSNormGated`` with ``norm_before_gate=False``)."""

    def __init__(self, dim: int, group_size: int, eps: float = GATED_NORM_EPS):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = upcast(x) * F.silu(upcast(z))
        groups = y.unflatten(-1, (-1, self.group_size))
        y = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        return (y * self.weight.to(y.dtype)).to(x.dtype)


class Mamba2Mixer(nn.Module):
    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = c = config
        H, G, N = c.nheads, c.ngroups, c.d_state
        self.conv_dim = c.d_inner + 2 * G * N
        self.in_proj = nn.Linear(c.d_model, c.d_inner + self.conv_dim + H, bias=False)  # z, x, B, C, dt
        self.conv1d = ShortConv(self.conv_dim, c.d_conv, bias=c.conv_bias)  # silu(conv) over x, B, C
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log = nn.Parameter(torch.empty(H))
        self.D = nn.Parameter(torch.empty(H))
        self.norm = GatedRMSNorm(c.d_inner, c.d_inner // G)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=False)
        self.reset_special_parameters()

    @torch.no_grad()
    def reset_special_parameters(self) -> None:
        """mamba-ssm's initialisation: A ~ U(1, 16); dt log-uniform in [dt_min, dt_max], floored,
        stored as its inverse softplus in dt_bias; D = 1. Not weight-decayed (``_no_weight_decay``)."""
        c = self.config
        H = c.nheads
        self.A_log.copy_(torch.empty(H, device=self.A_log.device).uniform_(c.A_init_min, c.A_init_max).log())
        log_dt = torch.rand(H, device=self.dt_bias.device) * (math.log(c.dt_max) - math.log(c.dt_min))
        dt = (log_dt + math.log(c.dt_min)).exp().clamp(min=c.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.D.fill_(1.0)
        for p in (self.A_log, self.dt_bias, self.D):
            p._no_weight_decay = True

    def forward(self, x: torch.Tensor, cache: Mamba2Cache | None, start_pos: int, need_cache: bool) -> tuple[torch.Tensor, Any]:
        c = self.config
        b, T, _ = x.shape
        H, P, G, N = c.nheads, c.headdim, c.ngroups, c.d_state
        z, xBC, dt = self.in_proj(x).split([c.d_inner, self.conv_dim, H], dim=-1)
        xBC, conv_tail = self.conv1d(xBC, None if cache is None else cache.conv)
        xs, B, C = xBC.split([c.d_inner, G * N, G * N], dim=-1)
        xs, B, C = xs.unflatten(-1, (H, P)), B.unflatten(-1, (G, N)), C.unflatten(-1, (G, N))
        A = -torch.exp(upcast(self.A_log))  # fp32 even in a bf16 model
        backend = resolve_backend(c.backend, x.device)
        if cache is not None:
            check_continues(cache.end_pos, start_pos)
        if T == 1 and cache is not None:
            y, state = STEP_OPS[backend](cache.ssm, xs[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], self.D, self.dt_bias)
            y = y[:, None]
        else:
            initial = None if cache is None else cache.ssm
            y, state = SSD_OPS[backend](xs, dt, A, B, C, self.D, self.dt_bias, c.chunk_size, initial, need_cache)
        y = self.out_proj(self.norm(y.reshape(b, T, c.d_inner), z))
        if cache is not None and state is cache.ssm:  # updated in place: the old cache has moved on too
            cache.end_pos = start_pos + T
        return y, (Mamba2Cache(conv_tail, state, start_pos + T) if need_cache else None)


# ---------------------------------------------------------------------------------------------
# The model

# Blocks per size, chosen so non-embedding parameters match full_attention's (module docstring).
MAMBA2_LAYERS = {"125m": 10, "350m": 20, "760m": 20, "1.3b": 20}
TINY = dict(n_layers=3, d_model=128, mlp_hidden=384, vocab_size=256, headdim=32, chunk_size=64)


@register_model("mamba2")
class Mamba2LM(BackboneLM):
    """The shared backbone with Mamba 2 (SSD) mixers in place of attention."""

    config_class = Mamba2Config
    kernels = KERNELS
    backends = MAMBA2_BACKENDS
    presets = {
        "tiny": TINY,
        **{
            name: dict(n_layers=MAMBA2_LAYERS[name], d_model=size["d_model"], mlp_hidden=size["mlp_hidden"], vocab_size=LLAMA3_VOCAB)
            for name, size in PAPER_SIZES.items()
        },
    }

    def make_mixer(self, layer_idx: int) -> nn.Module:
        return Mamba2Mixer(self.config)

    def backend_on(self, device: torch.device) -> str:
        return resolve_backend(self.config.backend, device)

    def kernel_settings(self, device: torch.device) -> dict[str, Any]:
        return chunk_settings(self.kernels, self.backend_on(device), self.config.chunk_size)
