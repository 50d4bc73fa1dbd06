"""Local Hugging Face-format folders (``config.json`` + safetensors or ``pytorch_model.bin``) into
our architectures.

=================  ==================  ===================================================
format             architecture        source
=================  ==================  ===================================================
``llama``          ``full_attention``  transformers' ``LlamaForCausalLM``
``gated_deltanet`` ``gated_deltanet``  flash-linear-attention's ``GatedDeltaNetForCausalLM``
``mamba2``         ``mamba2``          transformers' / flash-linear-attention's ``Mamba2ForCausalLM``
``mamba_ssm``      ``mamba2``          mamba-ssm's ``MambaLMHeadModel`` with Mamba 2 layers
=================  ==================  ===================================================

The models differ from ours only where a setting says so, and the import sets ours to match:
plain pre-norm blocks (``sandwich_norm=False``), no QK-norm for Llama (``qk_norm=False``), RoPE
theta, KV heads, norm eps and tied embeddings from the config. Llama's RMSNorm (fp32, then
times the weight) and RoPE (half-split rotation) are ours. A pure Mamba 2 block has no MLP; our
block always has one, so the import gives it the smallest MLP (width 1) with zero weights, which
adds exactly nothing. A setting we do not implement (RoPE scaling, biases, hybrid attention
layers, ...) fails the import, naming it, rather than giving a model that computes something else.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from harness.adapters.importers.common import (
    Fill,
    ImportMismatchError,
    Source,
    assign_weights,
    check,
    check_import_out,
    read_json,
    read_weight_file,
    require_values,
    save_imported,
)
from harness.api.device import resolve_dtype
from harness.api.errors import CheckpointError, ConfigError, close_match, unknown_message
from harness.api.interface import LCModel
from harness.api.registry import build_model, config_from_dict
from harness.train.checkpoint import HF_MODEL_TYPE

# ---------------------------------------------------------------------------------------------
# Reading a folder


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder: ``model.safetensors``, sharded safetensors (with
    their index), ``pytorch_model.bin`` or its shards with their index (pickles loaded with
    ``weights_only=True``)."""
    for single, index, shards in (("model.safetensors", "model.safetensors.index.json", "*.safetensors"),
                                  ("pytorch_model.bin", "pytorch_model.bin.index.json", None)):
        if (folder / single).is_file():
            return _read_file(folder / single)
        if (folder / index).is_file():
            return _read_files(folder / shard for shard in sorted(set(read_json(folder / index)["weight_map"].values())))
        if shards and (files := sorted(folder.glob(shards))):
            return _read_files(files)
    present = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(f"{folder} has no weights (model.safetensors, pytorch_model.bin, or either's shards); "
                          f"it holds {present}")


def _read_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return read_weight_file(file, lambda f: safetensors.torch.load_file(str(f)))
    return read_weight_file(file, lambda f: torch.load(f, map_location="cpu", weights_only=True))


def _read_files(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in files:
        out.update(_read_file(file))
    return out


# ---------------------------------------------------------------------------------------------
# Formats


Rules = list[tuple[str, Callable[[re.Match], Source]]]


@dataclass(frozen=True)
class Format:
    name: str
    arch: str
    describe: str
    config: Callable[[dict[str, Any], Mapping[str, torch.Tensor], str], dict[str, Any]]
    rules: Callable[[dict[str, Any]], Rules]  # from our config dict: (our-name regex, source) pairs
    ignore: Callable[[str], bool] = lambda name: False


def _source_finder(rules: Rules) -> Callable[[str], Source | None]:
    compiled = [(re.compile(pattern + r"\Z"), make) for pattern, make in rules]

    def source_of(name: str) -> Source | None:
        for pattern, make in compiled:
            m = pattern.match(name)
            if m:
                return make(m)
        return None

    return source_of


def _rope_theta(hf: Mapping[str, Any], where: str) -> float:
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    check(kind == "default", where, f"RoPE scaling {kind!r} is not implemented by our attention (only plain RoPE)")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


# -- Llama (transformers) -----------------------------------------------------------------------


def llama_config(hf: dict[str, Any], tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, Any]:
    require_values(hf, where, [
        ("hidden_act", "silu", "our MLP is SwiGLU"),
        ("attention_bias", False, "our projections have no biases"),
        ("mlp_bias", False, "our projections have no biases"),
        ("pretraining_tp", (1, None), "tensor-parallel slicing of the projections"),
    ])
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // heads
    check(head_dim * heads == d, where,
          f"head_dim={head_dim} with {heads} heads is not hidden_size={d}: our attention has head_dim = d_model / n_heads")
    return dict(arch="full_attention", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
                n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads, mlp_hidden=hf["intermediate_size"],
                norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=_rope_theta(hf, where),
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qk_norm=False, sandwich_norm=False)


def llama_rules(ours: dict[str, Any]) -> Rules:
    L = "model.layers.{}."
    return [
        (r"embed\.weight", lambda m: "model.embed_tokens.weight"),
        (r"blocks\.(\d+)\.mixer_norm\.weight", lambda m: L.format(m[1]) + "input_layernorm.weight"),
        (r"blocks\.(\d+)\.mixer\.([qkvo]_proj\.weight)", lambda m: L.format(m[1]) + "self_attn." + m[2]),
        (r"blocks\.(\d+)\.mlp_norm\.weight", lambda m: L.format(m[1]) + "post_attention_layernorm.weight"),
        (r"blocks\.(\d+)\.mlp\.((gate|up|down)_proj\.weight)", lambda m: L.format(m[1]) + "mlp." + m[2]),
        (r"norm\.weight", lambda m: "model.norm.weight"),
        (r"lm_head\.weight", lambda m: "lm_head.weight"),
    ]


def llama_ignore(tied: bool) -> Callable[[str], bool]:
    return lambda name: name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight")


# -- Gated DeltaNet (flash-linear-attention) ---------------------------------------------------


def gdn_config(hf: dict[str, Any], tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, Any]:
    require_values(hf, where, [
        ("attn", None, "hybrid models with attention layers are not one architecture here"),
        ("use_gate", True, "our mixer always has the output gate"),
        ("use_short_conv", True, "our mixer always has the short convolutions"),
        ("allow_neg_eigval", False, "our delta rule keeps beta in (0, 1)"),
        ("output_gate_activation", ("swish", "silu"), "our output gate is silu"),
        ("hidden_act", ("swish", "silu"), "our MLP is SwiGLU"),
        ("attnres_block_size", None, "attention-residual mixing is not implemented"),
    ])
    gate = tensors.get("model.layers.0.mlp.gate_proj.weight")
    mlp_hidden = int(gate.shape[0]) if gate is not None else hf.get("intermediate_size")
    check(mlp_hidden is not None, where, "no model.layers.0.mlp.gate_proj.weight and no intermediate_size: MLP width unknown")
    return dict(arch="gated_deltanet", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
                n_layers=hf["num_hidden_layers"], n_heads=hf["num_heads"], head_dim=hf["head_dim"],
                expand_v=float(hf.get("expand_v", 2.0)), num_v_heads=hf.get("num_v_heads") or 0,
                conv_size=hf.get("conv_size", 4), mlp_hidden=mlp_hidden, norm_eps=float(hf.get("norm_eps", 1e-6)),
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)), sandwich_norm=False)


def gdn_rules(ours: dict[str, Any]) -> Rules:
    L = "model.layers.{}."
    return [
        (r"embed\.weight", lambda m: "model.embeddings.weight"),
        (r"blocks\.(\d+)\.mixer_norm\.weight", lambda m: L.format(m[1]) + "attn_norm.weight"),
        (r"blocks\.(\d+)\.mixer\.(.+)", lambda m: L.format(m[1]) + "attn." + m[2]),
        (r"blocks\.(\d+)\.mlp_norm\.weight", lambda m: L.format(m[1]) + "mlp_norm.weight"),
        (r"blocks\.(\d+)\.mlp\.((gate|up|down)_proj\.weight)", lambda m: L.format(m[1]) + "mlp." + m[2]),
        (r"norm\.weight", lambda m: "model.norm.weight"),
        (r"lm_head\.weight", lambda m: "lm_head.weight"),
    ]


# -- Mamba 2 (transformers / flash-linear-attention, and mamba-ssm) -----------------------------

GATED_NORM_EPS = 1e-5  # our Mamba 2 gated norm's eps (mamba-ssm's)
NO_MLP = Fill(0.0, "a Mamba 2 block has no MLP: a zero MLP adds nothing")


def _mamba2_fields(where: str, *, d_model: int, n_layers: int, vocab: int, d_state: int, d_conv: int, expand: Any,
                   headdim: int, ngroups: int, conv_bias: bool, eps: float, tied: bool, chunk: int) -> dict[str, Any]:
    check(float(expand).is_integer(), where, f"expand={expand} must be an integer for our Mamba 2")
    check(math.isclose(eps, GATED_NORM_EPS), where,
          f"norm eps {eps} differs from our Mamba 2 gated norm's fixed eps {GATED_NORM_EPS}")
    return dict(arch="mamba2", vocab_size=vocab, d_model=d_model, n_layers=n_layers, d_state=d_state,
                d_conv=d_conv, expand=int(expand), headdim=headdim, ngroups=ngroups, conv_bias=conv_bias,
                norm_eps=eps, tie_embeddings=tied, chunk_size=chunk, mlp_hidden=1, sandwich_norm=False)


def _json_float(value: Any) -> float:
    """A float from config.json; transformers writes infinity as ``{"__float__": "Infinity"}``."""
    if isinstance(value, Mapping) and "__float__" in value:
        value = value["__float__"]
    return float(value)


def _no_dt_limit(limit: Any) -> bool:
    return limit is None or (_json_float(limit[0]) == 0.0 and math.isinf(_json_float(limit[1])))


def mamba2_config(hf: dict[str, Any], tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, Any]:
    require_values(hf, where, [
        ("use_bias", False, "our in/out projections have no biases"),
        ("rmsnorm", True, "our mixer always has the gated RMSNorm"),
        ("norm_before_gate", False, "our gated norm is rmsnorm(y * silu(z))"),
        ("D_has_hdim", False, "our D is one scalar per head"),
        ("hidden_act", "silu", "our convolution's activation is silu"),
    ])
    limit = hf.get("time_step_limit", hf.get("dt_limit"))
    check(_no_dt_limit(limit), where, f"dt limit {limit} is not implemented (we do not clamp dt)")
    d, expand, headdim = hf["hidden_size"], hf.get("expand", 2), hf["head_dim"]
    if hf.get("num_heads") is not None:
        check(hf["num_heads"] * headdim == expand * d, where,
              f"num_heads={hf['num_heads']} x head_dim={headdim} is not expand x hidden_size = {expand * d}")
    eps = float(hf.get("layer_norm_epsilon", hf.get("norm_eps", 1e-5)))
    return _mamba2_fields(where, d_model=d, n_layers=hf["num_hidden_layers"], vocab=hf["vocab_size"],
                          d_state=hf["state_size"], d_conv=hf.get("conv_kernel", 4), expand=expand, headdim=headdim,
                          ngroups=hf.get("n_groups", 1), conv_bias=bool(hf.get("use_conv_bias", True)), eps=eps,
                          tied=bool(hf.get("tie_word_embeddings", False)), chunk=hf.get("chunk_size", 256))


def mamba_ssm_config(cfg: dict[str, Any], tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, Any]:
    ssm = cfg.get("ssm_cfg") or {}
    check(ssm.get("layer") == "Mamba2", where, f"ssm_cfg.layer={ssm.get('layer')!r}: only Mamba2 layers are supported")
    require_values(cfg, where, [
        ("attn_layer_idx", ((), [], None), "hybrid models with attention layers are not one architecture here"),
        ("d_intermediate", 0, "mamba-ssm blocks with an MLP are not supported yet"),
        ("rms_norm", True, "our block norms are RMSNorm"),
    ])
    require_values(ssm, where, [
        ("bias", False, "our in/out projections have no biases"),
        ("rmsnorm", True, "our mixer always has the gated RMSNorm"),
        ("norm_before_gate", False, "our gated norm is rmsnorm(y * silu(z))"),
        ("D_has_hdim", False, "our D is one scalar per head"),
    ])
    check(_no_dt_limit(ssm.get("dt_limit")), where, f"dt_limit {ssm.get('dt_limit')} is not implemented")
    emb = tensors.get("backbone.embedding.weight")
    check(emb is not None, where, "no backbone.embedding.weight: not a mamba-ssm checkpoint")
    return _mamba2_fields(where, d_model=cfg["d_model"], n_layers=cfg["n_layer"], vocab=int(emb.shape[0]),
                          d_state=ssm.get("d_state", 128), d_conv=ssm.get("d_conv", 4), expand=ssm.get("expand", 2),
                          headdim=ssm.get("headdim", 64), ngroups=ssm.get("ngroups", 1),
                          conv_bias=bool(ssm.get("conv_bias", True)), eps=float(cfg.get("norm_epsilon", 1e-5)),
                          tied=bool(cfg.get("tie_embeddings", True)), chunk=ssm.get("chunk_size", 256))


def _mamba2_rules(embedding: str) -> Callable[[dict[str, Any]], Rules]:
    def rules(ours: dict[str, Any]) -> Rules:
        L = "backbone.layers.{}."
        return [
            (r"embed\.weight", lambda m: embedding),
            (r"blocks\.(\d+)\.mixer_norm\.weight", lambda m: L.format(m[1]) + "norm.weight"),
            (r"blocks\.(\d+)\.mixer\.(.+)", lambda m: L.format(m[1]) + "mixer." + m[2]),
            (r"blocks\.(\d+)\.mlp_norm\.weight", lambda m: Fill(1.0, NO_MLP.why)),
            (r"blocks\.(\d+)\.mlp\.\w+\.weight", lambda m: NO_MLP),
            (r"norm\.weight", lambda m: "backbone.norm_f.weight"),
            (r"lm_head\.weight", lambda m: "lm_head.weight"),
        ]

    return rules


FORMATS: dict[str, Format] = {
    "llama": Format("llama", "full_attention", "transformers LlamaForCausalLM", llama_config, llama_rules),
    "gated_deltanet": Format("gated_deltanet", "gated_deltanet", "flash-linear-attention GatedDeltaNetForCausalLM",
                             gdn_config, gdn_rules),
    "mamba2": Format("mamba2", "mamba2", "transformers / flash-linear-attention Mamba2ForCausalLM", mamba2_config,
                     _mamba2_rules("backbone.embeddings.weight")),
    "mamba_ssm": Format("mamba_ssm", "mamba2", "mamba-ssm MambaLMHeadModel (Mamba2 layers)", mamba_ssm_config,
                        _mamba2_rules("backbone.embedding.weight")),
}


def refuse_sliding_window(hf: Mapping[str, Any], where: str) -> None:
    """A config that limits attention to a window (Mistral's ``sliding_window``) cannot be read as
    any of our formats, whose attention sees the whole context: refuse it by name, whatever the format."""
    window = hf.get("sliding_window")
    if window is not None and hf.get("use_sliding_window", True):
        raise ImportMismatchError(
            f"{where} uses settings our architecture does not implement:\n  - sliding_window={window!r} "
            "(supported: None; importing it as full attention would change every logit past the window)")


def detect_format(config: Mapping[str, Any]) -> str:
    """The format of a folder from its ``config.json``: ``model_type``, or mamba-ssm's fields."""
    model_type = config.get("model_type")
    if model_type in FORMATS:
        return model_type
    if model_type is None and "ssm_cfg" in config and "n_layer" in config:
        return "mamba_ssm"
    if model_type is None and "arch" in config:  # said "cannot import model_type None"
        raise ConfigError(f"the folder is already an lcbench checkpoint (arch {config['arch']!r}): lcbench eval, "
                          "train --resume and export-hf read it as it is; nothing to import")
    if model_type == HF_MODEL_TYPE:  # an export-hf folder: said "cannot import model_type 'lcbench'"
        raise ConfigError(f"the folder is an lcbench export (arch {config.get(HF_MODEL_TYPE, {}).get('arch')!r}), "
                          "which lcbench eval and lm-eval read as a checkpoint as it is; nothing to import")
    known = ", ".join(f"{n} ({f.describe} -> {f.arch})" for n, f in FORMATS.items())
    hint = close_match(str(model_type), FORMATS) if model_type else None
    raise ConfigError(f"cannot import model_type {model_type!r}; supported: {known}"
                      + (f". Did you mean {hint!r}?" if hint else ""))


def import_pretrained(
    source: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    format: str = "auto",
    dtype: str | torch.dtype | None = None,
    backend: str | None = None,
) -> LCModel:
    """Build one of our models from a local Hugging Face-format folder and load its weights.

    ``format``: ``auto`` (from ``config.json``) or a name in :data:`FORMATS`. ``dtype``: the
    model's parameter dtype (default float32). ``backend``: our mixer backend (default ``auto``).
    With ``out_dir``, writes an lcbench checkpoint there (see :func:`save_imported`).
    Raises :class:`ImportMismatchError` naming each missing, mismatched or unrecognised tensor.
    """
    if format != "auto" and format not in FORMATS:  # named before the folder is read
        raise ConfigError(unknown_message("import format", format, ["auto", *FORMATS]))
    if out_dir is not None:
        check_import_out(out_dir)
    param_dtype = resolve_dtype(dtype) if dtype is not None else None
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{str(folder)!r} is not a folder; give a local Hugging Face-format model folder")
    hf = read_json(folder / "config.json")
    name = detect_format(hf) if format == "auto" else format
    fmt = FORMATS[name]
    where = f"{folder} ({fmt.describe})"
    refuse_sliding_window(hf, where)
    tensors = read_tensors(folder)
    try:
        fields = fmt.config(hf, tensors, where)
    except KeyError as exc:  # a field every config of this format has: the folder is another format
        raise ImportMismatchError(f"{where}: config.json has no {exc.args[0]!r}, which every {fmt.describe} config "
                                  f"has; its model_type is {hf.get('model_type')!r} (--format auto reads it)") from None
    if backend is not None:
        fields["backend"] = backend
    model = build_model(config_from_dict(fields))
    if param_dtype is not None:
        model = model.to(param_dtype)
    tied = bool(fields.get("tie_embeddings"))
    ignore = llama_ignore(tied) if name == "llama" else (lambda n: tied and n == "lm_head.weight")
    origin = assign_weights(model, tensors, _source_finder(fmt.rules(fields)), where, ignore)
    model.eval()
    if out_dir is not None:
        save_imported(model, out_dir, {"source": str(folder.resolve()), "format": name, "arch": fmt.arch,
                                       "source_config": hf, "tensors": origin}, tokenizer_from=folder)
    return model
