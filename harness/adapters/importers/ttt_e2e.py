"""Checkpoints of the official TTT-E2E code (github test-time-training/e2e, JAX/Equinox) into our
``ttt_e2e`` (or, for its full-attention / SWA twins, ``full_attention`` / ``swa``).

The official trainer saves ``model.weights()`` with orbax (``<run>/<step>/model_weights``): a
tree of the Equinox modules' array fields. Under ``language_model``::

    model.wte.weight                                   [V, D]
    model.h.blocks.seq_modeling_block.w{q,k,v,o}.weight [L, D, D]   (x @ W: [in, out])
    model.h.blocks.seq_modeling_block.{q,k}_norm.weight [L, Dh]
    model.h.blocks.feed_forward.w{1,3}.weight          [L, D, F]   (w1 gate, w3 up)
    model.h.blocks.feed_forward.w2.weight              [L, F, D]   (down)
    model.h.blocks.{seq,ffn}_norm.weight, {seq,ffn}_post_norm.weight   [L, D]
    model.h.prime_storage.feed_forward_prime.w{1,2,3}.weight  [S, ...]  (suffix block s = L - S + s)
    model.h.prime_storage.ffn_prime_{norm,post_norm}.weight   [S, D]
    model.ln_f.weight                                  [D]
    lm_head.weight                                     [D, V]   (absent with tied embeddings)

plus the sliding-window attention's initial KV-cache state (``kv_cache_index.init``, zeros),
which carries no weights and is skipped. Blocks are stacked along the first axis (``jax.vmap``).

Two differences need more than renaming. Linear weights are ``[in, out]`` (ours ``[out, in]``).
And the official RoPE rotates interleaved pairs (x[2i], x[2i+1]) while ours rotates the halves
(x[i], x[i + Dh/2]) as Llama does: the rows of ``wq``/``wk`` (and the QK-norm gains, which act
before RoPE) are permuted within each head, evens first, so our attention computes the same
scores.

The weights do not say everything: RoPE theta, window, mini-batch size, norm eps and the inner
optimiser live in the run's Hydra config. Give it (``config=``: the run's ``.hydra/config.yaml``,
an experiment YAML, or a dict with ``model`` / ``training`` sections); what it leaves out takes
the official experiments' values (:data:`OFFICIAL_DEFAULTS`; ``bos_token_id``, whose targets leave
the losses, what the official code would use: see :func:`official_bos_token_id`), and
``import.json`` lists which. The inner-lr warm-up (``ilr_init`` over ``ilr_warmup_steps``) matters
only to further training: the official evaluation (``eval_mode``) sets the step past any warm-up
and so steps with the whole ``optimizer_inner.lr``, as our model does when no trainer drives it.
Whether the model learns at test time is the config's too: ``train_mode: meta`` with
``suffix_len`` blocks is ``ttt_e2e`` even without prime MLPs (the inner loop then trains the
blocks' own MLPs, as ``spec_inner`` says), and ``train_mode: pretrain`` runs no inner loop.

Reading orbax needs ``orbax-checkpoint`` (and so JAX). A tree flattened to ``.npz`` or
``.safetensors`` (keys as above, dot-joined, with or without the ``language_model.`` prefix) needs
neither.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import yaml

from harness.adapters.importers.common import (
    From,
    ImportedCheckpointWarning,
    ImportMismatchError,
    Source,
    assign_weights,
    check,
    check_import_out,
    check_tokenizer_folder,
    read_weight_file,
    save_imported,
)
from harness.api.errors import CheckpointError, ConfigError
from harness.api.interface import LCModel
from harness.api.registry import build_model, config_from_dict

# What the official experiment configs set (configs/experiment/*/…-e2e-*.yaml, configs/model/*.yaml).
OFFICIAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"rope_theta": 500000.0, "sliding_window_size": 8192, "mini_batch_size": 1024, "rms_norm_eps": 1e-6,
              "qk_norm": True, "pre_norm": True, "post_norm": True, "seq_modeling_block": "SWA"},
    "training": {"spec_inner": ["language_model.**.suffix_blocks.feed_forward_prime.**"], "ilr_init": 0.1,
                 "ilr_warmup_steps": 0, "total_steps": 1,
                 "optimizer_inner": {"optimizer_type": "sgd", "lr": 1.0, "clip_gradient": 1.0}},
}

# bos_token_id when the config lacks it: the official model configs' (Llama 3) and ttt/config.py's default
LLAMA3_VOCAB, LLAMA3_BOS, CONFIG_DEFAULT_BOS = 128256, 128000, 1

ROOT = "language_model."
B = "model.h.blocks."
P = "model.h.prime_storage."
IGNORED = re.compile(r"(.*\.)?(kv_cache_index|chunk_index|step_index)\.init(\.\d+)?")
POST_NORMS = ("seq_post_norm.weight", "ffn_post_norm.weight", "ffn_prime_post_norm.weight")


# ---------------------------------------------------------------------------------------------
# Reading the parameter tree


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists of arrays -> {dot.joined.path: array}."""
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    elif tree is None:
        return {}
    else:
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def _orbax_item_dir(path: Path) -> Path:
    """The orbax item folder holding the weights: ``path`` itself, its ``model_weights``, or the
    latest step's ``model_weights`` under a CheckpointManager root."""
    if (path / "model_weights").is_dir():  # a step folder of the CheckpointManager
        return path / "model_weights"
    if (path / "_METADATA").is_file():  # the item folder itself
        return path
    steps = sorted((int(p.name), p) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if steps and (steps[-1][1] / "model_weights").is_dir():
        return steps[-1][1] / "model_weights"
    raise CheckpointError(f"{path} is not an orbax checkpoint of the official TTT-E2E code "
                          "(no _METADATA, model_weights/ or step folders); give the run folder, a step "
                          "folder, its model_weights folder, or a .npz/.safetensors of the flattened tree")


def read_orbax(path: Path) -> dict[str, np.ndarray]:
    item = _orbax_item_dir(path)  # a folder that is no orbax checkpoint is named first, orbax or not
    try:
        import jax
        import orbax.checkpoint as ocp
    except ImportError:
        raise ConfigError("reading an orbax checkpoint needs the 'orbax-checkpoint' package (it brings JAX); "
                          "pip install orbax-checkpoint, or convert the tree to .npz where JAX is installed") from None
    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(item)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    # Restore every leaf as a host numpy array: the saved shardings name devices this machine may lack.
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    return flatten(checkpointer.restore(item, restore_args=restore_args))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k.replace("/", "."): npz[k] for k in npz.files}


def read_tree(source: str | os.PathLike) -> dict[str, np.ndarray]:
    """The official parameter tree, flattened: from an orbax folder, ``.npz`` or ``.safetensors``."""
    path = Path(source).expanduser()
    if not path.exists():
        raise CheckpointError(f"no TTT-E2E checkpoint at {str(path)!r}")
    if path.is_dir():
        tree = read_orbax(path)
    elif path.suffix == ".npz":
        tree = read_weight_file(path, _read_npz)
    elif path.suffix == ".safetensors":
        # through torch, which reads bfloat16 (numpy alone cannot, and the official tree holds
        # some: the SWA's KV-cache init is in the compute dtype)
        tree = {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
                for k, v in read_weight_file(path, lambda f: safetensors.torch.load_file(str(f))).items()}
    else:
        raise CheckpointError(f"{path}: expected an orbax checkpoint folder, a .npz or a .safetensors file")
    # Paths relative to the CausalLM (``language_model.``), whatever the root the tree was saved from.
    out = {}
    for key, value in tree.items():
        at = key.find(ROOT)
        out[key[at + len(ROOT):] if at >= 0 else key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Config


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _absent(defaults: Mapping[str, Any], given: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of ``defaults`` that ``given`` lacks, down to the leaves of the sections it
    has (an optimizer_inner without clip_gradient lacks training.optimizer_inner.clip_gradient)."""
    out = []
    for key, value in defaults.items():
        if key not in given:
            out.append(f"{prefix}{key}")
        elif isinstance(value, Mapping) and isinstance(given[key], Mapping):
            out += _absent(value, given[key], f"{prefix}{key}.")
    return out


def load_official_config(config: str | os.PathLike | Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """(official config with ``model`` and ``training`` sections, the settings taken from
    :data:`OFFICIAL_DEFAULTS` because ``config`` lacks them)."""
    if config is None:
        given: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        given = dict(config)
    else:
        try:
            given = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the official config {str(config)!r}: {exc}") from exc
    if not isinstance(given, Mapping):
        raise ConfigError(f"the official config {str(config)!r} holds a {type(given).__name__}, not settings "
                          "(give the run's .hydra/config.yaml or a mapping with model / training sections)")
    if not ({"model", "training"} & set(given)):
        given = {"model": given}  # a bare model section
    for section in OFFICIAL_DEFAULTS:
        if not isinstance(given.get(section) or {}, Mapping):
            raise ConfigError(f"the official config {str(config)!r}: its {section} section is a "
                              f"{type(given[section]).__name__}, not a mapping of settings")
    defaulted = _absent(OFFICIAL_DEFAULTS, {s: given.get(s) or {} for s in OFFICIAL_DEFAULTS})
    merged = {s: _deep_merge(OFFICIAL_DEFAULTS[s], given.get(s) or {}) for s in OFFICIAL_DEFAULTS}
    return merged, defaulted


def _number(official: Mapping[str, Any], name: str, kind: type = float, default: Any = None) -> Any:
    """The setting at dotted path ``name`` (``training.optimizer_inner.lr``) as ``kind``; absent or
    null: ``default`` where there is one."""
    *parents, key = name.split(".")
    section: Any = official
    for part in parents:
        section = section.get(part) or {}
    value = section.get(key)
    if value is None and default is not None:
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        hint = " (an unresolved Hydra interpolation: give the resolved config)" if "${" in str(value) else ""
        raise ConfigError(f"official config {name}={value!r} is not a number{hint}") from None


def official_bos_token_id(model: Mapping[str, Any], vocab_size: int) -> int:
    """The token whose targets the official loader masks (``tokens[1:] != bos_token_id``).
    Absent from the config: what the official code would have used, Llama 3's ``<|begin_of_text|>``
    for its vocabulary (every configs/model/*.yaml) and ``ModelConfig``'s default otherwise;
    null: none (-1)."""
    if "bos_token_id" not in model:
        return LLAMA3_BOS if vocab_size == LLAMA3_VOCAB else CONFIG_DEFAULT_BOS
    return _number({"model": model}, "model.bos_token_id", int, -1)


def _fast_weights(spec_inner: list[str], where: str) -> str:
    names = set()
    for spec in spec_inner:
        if "feed_forward_prime" in spec:
            names.add("prime")
        elif "feed_forward" in spec:
            names.add("mlp")
        else:
            raise ImportMismatchError(f"{where}: inner-parameter spec {spec!r} is not one of our fast-weight sets "
                                      "(the suffix blocks' feed_forward_prime and/or feed_forward)")
    return "prime+mlp" if names == {"prime", "mlp"} else names.pop()


def _check_stated_sizes(model: Mapping[str, Any], from_weights: Mapping[str, Any], where: str) -> None:
    """The sizes come from the weights, everything else from the config: a config that states other
    sizes is another run's (or the tree lost its LM head), and its settings would be misapplied."""
    bad = [f"{key}={model[key]!r} (the weights: {value!r}"
           + (", no lm_head.weight" if key == "tie_word_embeddings" and value else "") + ")"
           for key, value in from_weights.items() if model.get(key) is not None and model[key] != value]
    check(not bad, where, f"the config states other sizes than the weights hold: {', '.join(bad)}; "
                          "give the run's own .hydra/config.yaml")


def our_config(tree: Mapping[str, np.ndarray], official: dict[str, Any], where: str) -> dict[str, Any]:
    model, training = official["model"], official["training"]
    for key in ("model.wte.weight", B + "seq_modeling_block.wq.weight", B + "seq_modeling_block.q_norm.weight",
                B + "feed_forward.w1.weight"):
        check(key in tree, where, f"no {key}: not a parameter tree of the official TTT-E2E model "
                                  f"(found e.g. {sorted(tree)[:5]})")
    vocab, d = tree["model.wte.weight"].shape
    layers, _, mlp_hidden = tree[B + "feed_forward.w1.weight"].shape
    head_dim = tree[B + "seq_modeling_block.q_norm.weight"].shape[-1]
    check(d % head_dim == 0, where, f"hidden size {d} is not a multiple of the head size {head_dim}")
    heads = d // head_dim
    if model.get("num_attention_heads") is not None:
        check(model["num_attention_heads"] == heads, where,
              f"config num_attention_heads={model['num_attention_heads']} but the QK-norm weights give {heads} heads")
    tied = "lm_head.weight" not in tree
    _check_stated_sizes(model, {"vocab_size": vocab, "hidden_size": d, "num_hidden_layers": layers,
                                "intermediate_size": mlp_hidden, "tie_word_embeddings": tied}, where)
    check(bool(model["pre_norm"]), where, "pre_norm=False is not implemented (our blocks always pre-normalise)")
    prime = P + "feed_forward_prime.w1.weight" in tree
    block = model["seq_modeling_block"]
    # train_mode: "meta" runs the inner loop over the suffix blocks' inner parameters (prime MLPs or
    # the blocks' own MLPs), "pretrain" none; absent: as the weights say (prime MLPs: meta)
    mode = training.get("train_mode")
    check(mode in (None, "meta", "pretrain"), where, f"train_mode={mode!r} is not one of the official meta, pretrain")
    n_suffix = _number(official, "model.suffix_len", int, 0)
    if prime:
        stored = int(tree[P + "feed_forward_prime.w1.weight"].shape[0])
        check(model.get("suffix_len") is None or n_suffix == stored, where,
              f"config suffix_len={n_suffix} but the weights hold {stored} prime MLPs")
        n_suffix = stored
    fields = dict(vocab_size=int(vocab), d_model=int(d), n_layers=int(layers), n_heads=int(heads),
                  mlp_hidden=int(mlp_hidden), norm_eps=_number(official, "model.rms_norm_eps"),
                  rope_theta=_number(official, "model.rope_theta"), qk_norm=bool(model["qk_norm"]),
                  sandwich_norm=bool(model["post_norm"]), tie_embeddings=tied)
    if prime or (mode == "meta" and n_suffix > 0):
        check(block == "SWA", where, f"test-time training with seq_modeling_block={block!r}: our ttt_e2e is SWA-based")
        opt = training["optimizer_inner"]
        check(opt.get("optimizer_type", "sgd") == "sgd", where,
              f"inner optimizer {opt.get('optimizer_type')!r}: our inner loop is SGD")
        fast = "prime" if mode == "pretrain" else _fast_weights(list(training["spec_inner"]), where)
        check(prime or "prime" not in fast, where, f"inner parameters {list(training['spec_inner'])} name prime MLPs, "
                                                   "which the weights do not hold")
        warmup = _number(official, "training.ilr_warmup_steps", int, 0)
        total = _number(official, "training.total_steps", int, 1)
        # pretrain mode trains the prime MLPs as ordinary weights: no inner step, so none here either
        lr = 0.0 if mode == "pretrain" else _number(official, "training.optimizer_inner.lr", float, 1.0)
        return dict(arch="ttt_e2e", **fields, window=_number(official, "model.sliding_window_size", int),
                    suffix_blocks=n_suffix, mini_batch_size=_number(official, "model.mini_batch_size", int),
                    prime_mlp=prime, fast_weights=fast, inner_lr=lr,
                    inner_clip=_number(official, "training.optimizer_inner.clip_gradient", float, 0.0),
                    inner_lr_init=lr if mode == "pretrain" else _number(official, "training.ilr_init", float, lr),
                    inner_lr_warmup=min(1.0, warmup / max(total, 1)),
                    bos_token_id=official_bos_token_id(model, int(vocab)))  # its targets leave the losses
    if block == "self_attention":
        return dict(arch="full_attention", **fields)
    return dict(arch="swa", **fields, window=_number(official, "model.sliding_window_size", int))


# ---------------------------------------------------------------------------------------------
# Tensors


def rope_permutation(head_dim: int) -> torch.Tensor:
    """Our index j of a head's q/k holds official index perm[j]: evens (pair firsts), then odds."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _to_torch(array: Any) -> torch.Tensor:
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16 (JAX installed)
        array = array.astype(np.float32)
    elif array.dtype.kind == "V" and array.dtype.itemsize == 2:
        # ml_dtypes' bfloat16 saved to .npz and read without ml_dtypes: raw 2-byte values, the
        # upper half of a float32's bits
        array = (np.ascontiguousarray(array).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif array.dtype.kind not in "fiu":
        raise CheckpointError(f"an array of dtype {array.dtype} is not a float tensor lcbench can read")
    return torch.from_numpy(np.ascontiguousarray(array))


def _layer(i: int, transpose: bool = False, rope_heads: int = 0):
    """Take layer ``i`` of a stacked tensor; transpose [in, out] -> [out, in]; for wq/wk (and the
    QK-norm gains) permute each head's rows from interleaved to half-split RoPE order."""

    def transform(stacked: Any) -> torch.Tensor:
        t = _to_torch(stacked[i])
        if transpose:
            t = t.T
        if rope_heads:
            rows = t.shape[0]
            perm = rope_permutation(rows // rope_heads)
            t = t.reshape(rope_heads, rows // rope_heads, *t.shape[1:])[:, perm].reshape(rows, *t.shape[1:])
        return t.contiguous()

    return transform


def _rules(fields: dict[str, Any]) -> list[tuple[re.Pattern, Any]]:
    layers, heads = fields["n_layers"], fields["n_heads"]
    n_suffix = fields.get("suffix_blocks", 0)
    attn = B + "seq_modeling_block."
    proj = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
    norms = {"mixer_norm": "seq_norm", "mixer_post_norm": "seq_post_norm", "mlp_norm": "ffn_norm",
             "mlp_post_norm": "ffn_post_norm"}

    def block(m: re.Match) -> Source | None:
        i, rest = int(m[1]), m[2]
        s = i - (layers - n_suffix)  # index into prime_storage for suffix blocks
        if rest.startswith("mixer.") and rest.endswith("_proj.weight"):
            w = "w" + rest[len("mixer.")]
            rope = heads if w in ("wq", "wk") else 0
            return From(attn + f"{w}.weight", _layer(i, transpose=True, rope_heads=rope), f"layer {i}")
        if rest in ("mixer.q_norm.weight", "mixer.k_norm.weight"):
            name = rest.split(".")[1]
            return From(attn + f"{name}.weight", _layer(i, rope_heads=1), f"layer {i}, RoPE order")
        if rest.split(".")[0] in norms:
            return From(B + f"{norms[rest.split('.')[0]]}.weight", _layer(i), f"layer {i}")
        mm = re.fullmatch(r"(mlp|prime)\.(\w+)\.weight", rest)
        if mm and mm[2] in proj:
            if mm[1] == "mlp":
                return From(B + f"feed_forward.{proj[mm[2]]}.weight", _layer(i, transpose=True), f"layer {i}")
            return From(P + f"feed_forward_prime.{proj[mm[2]]}.weight", _layer(s, transpose=True), f"suffix {s}")
        if rest in ("prime_norm.weight", "prime_post_norm.weight"):
            name = "ffn_prime_norm" if rest == "prime_norm.weight" else "ffn_prime_post_norm"
            return From(P + f"{name}.weight", _layer(s), f"suffix {s}")
        return None

    return [
        (re.compile(r"embed\.weight"), lambda m: From("model.wte.weight", _to_torch)),
        (re.compile(r"norm\.weight"), lambda m: From("model.ln_f.weight", _to_torch)),
        (re.compile(r"lm_head\.weight"), lambda m: From("lm_head.weight", lambda t: _to_torch(t).T.contiguous())),
        (re.compile(r"blocks\.(\d+)\.(.+)"), block),
    ]


def assign_official(model: LCModel, tree: Mapping[str, Any], where: str) -> dict[str, str]:
    """Set ``model``'s weights from a flattened official tree (see the module docstring)."""
    fields = model.config.to_dict()
    rules = _rules(fields)

    def source_of(name: str) -> Source | None:
        for pattern, make in rules:
            m = pattern.fullmatch(name)
            if m:
                return make(m)
        return None

    # the official modules always hold their QK-norm and post-norm gains, used only when the config says so
    unused_gains = (*(() if model.config.qk_norm else ("q_norm.weight", "k_norm.weight")),
                    *(() if model.config.sandwich_norm else POST_NORMS))

    def ignore(n: str) -> bool:
        return bool(IGNORED.fullmatch(n)) or n.endswith(unused_gains)

    return assign_weights(model, tree, source_of, where, ignore)


def import_ttt_e2e(
    source: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    tokenizer: str | os.PathLike | None = None,
    backend: str | None = None,
) -> LCModel:
    """Build our model from an official TTT-E2E checkpoint (orbax folder, ``.npz`` or
    ``.safetensors`` of the flattened tree) and its Hydra config; see the module docstring.
    ``tokenizer``: a local Hugging Face tokenizer folder (the official runs use Llama 3's) to copy
    beside the checkpoint. Raises :class:`ImportMismatchError` naming every tensor that does not fit."""
    if tokenizer is not None:
        check_tokenizer_folder(tokenizer)
    if out_dir is not None:
        check_import_out(out_dir)
    tree = read_tree(source)
    official, defaulted = load_official_config(config)
    where = f"{source} (official TTT-E2E)"
    fields = our_config(tree, official, where)
    if fields["arch"] == "ttt_e2e" and "bos_token_id" not in official["model"]:
        defaulted.append(f"model.bos_token_id (took {fields['bos_token_id']})")
    if defaulted:
        given = "no official config given" if config is None else (
            "the given config lacks them" if isinstance(config, Mapping) else f"{str(config)!r} lacks them")
        warnings.warn(f"{given}: took the official experiments' values for {', '.join(defaulted)}; a run that "
                      "changed them needs its .hydra/config.yaml (--config)", ImportedCheckpointWarning, stacklevel=2)
    if backend is not None:
        fields["backend"] = backend
    model = build_model(config_from_dict(fields))
    origin = assign_official(model, tree, where)
    model.eval()
    if out_dir is not None:
        save_imported(model, out_dir, {"source": str(Path(source).resolve()), "format": "ttt_e2e_official",
                                       "arch": fields["arch"], "official_config": official,
                                       "config_defaults_used": defaulted, "tensors": origin},
                      tokenizer_from=tokenizer)
    return model
