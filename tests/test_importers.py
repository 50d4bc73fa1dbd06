"""Checkpoint import: Hugging Face-format folders built offline with random weights load into our
architectures and give the same logits; anything that does not fit is named."""
from __future__ import annotations

import inspect
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from harness.adapters.importers import ImportedCheckpointWarning, ImportMismatchError, import_pretrained
from harness.adapters.importers.common import IMPORT_FILE
from harness.train import checkpoint
from tests import triton_interpreter
from tests.conftest import kernel_cases, small_model

# The fixtures here leave settings and tokenizers out on purpose; one test checks the warning.
pytestmark = pytest.mark.filterwarnings("ignore::harness.adapters.importers.ImportedCheckpointWarning")


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Norm gains, D and conv biases away from their 1/0 initial values, so a mix-up shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".D"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("conv1d.bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def tokens(vocab: int, T: int = 40) -> torch.Tensor:
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(1))


def write_folder(path: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    return path


# ---------------------------------------------------------------------------------------------
# Against transformers' own models (their forward runs on CPU)


@pytest.mark.parametrize("tied", [False, True])
def test_llama_import_reproduces_transformers_logits(tmp_path, tied):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                      rope_theta=1234.0, tie_word_embeddings=tied)
    hf = perturb_(transformers.LlamaForCausalLM(config))
    hf.save_pretrained(tmp_path / "hf")
    from harness.adapters.hf_tokenizer import export_tokenizer

    export_tokenizer("byte", tmp_path / "hf")  # a tokenizer in the folder travels with the import
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImportedCheckpointWarning)  # nothing filled in: no warning
        model = import_pretrained(tmp_path / "hf", tmp_path / "ours")
    c = model.config
    assert (c.arch, c.qk_norm, c.sandwich_norm, c.n_kv_heads, c.rope_theta, c.norm_eps, c.tie_embeddings) == \
        ("full_attention", False, False, 2, 1234.0, 1e-5, tied)
    x = tokens(300)
    with torch.no_grad():
        expected = hf(x).logits
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        reloaded = checkpoint.load_model(tmp_path / "ours").eval()
        torch.testing.assert_close(reloaded(x), expected, atol=1e-5, rtol=1e-5)
    record = json.loads((tmp_path / "ours" / IMPORT_FILE).read_text())
    assert record["format"] == "llama" and record["tokenizer"] == "tokenizer"
    assert record["tensors"]["blocks.1.mixer.k_proj.weight"] == "model.layers.1.self_attn.k_proj.weight"
    pytest.importorskip("lm_eval")
    from harness.adapters.lm_eval import LcbenchLM

    assert "ours/tokenizer@" in LcbenchLM(checkpoint=str(tmp_path / "ours"), device="cpu").tok.name


def test_llama_saved_as_sharded_pytorch_bins_imports(tmp_path):
    """transformers' save_pretrained(safe_serialization=False) of a large model writes
    pytorch_model-0000k-of-0000n.bin shards and their index: the import said the folder "has no
    weights"."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, rms_norm_eps=1e-5)
    hf = perturb_(transformers.LlamaForCausalLM(config))
    state = hf.state_dict()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
    (tmp_path / "hf").mkdir()
    config.save_pretrained(tmp_path / "hf")
    for file, keys in shards.items():
        torch.save({k: state[k] for k in keys}, tmp_path / "hf" / file)
    (tmp_path / "hf" / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}))
    model = import_pretrained(tmp_path / "hf")
    x = tokens(300)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-5, rtol=1e-5)


def transformers_own_torch_code(monkeypatch, module) -> None:
    """transformers (>= 5) binds its Mamba 2 scans to mamba-ssm's Triton kernels when mamba-ssm
    imports as ``module`` loads, which it does in a process where lcbench imported mamba-ssm first
    (its placeholder for the Mamba-1 extension): on CPU tensors those need Triton's interpreter,
    set up only by the kernel tests. The reference here is transformers' own torch code."""
    for name, fn in list(vars(module).items()):
        if inspect.isfunction(fn) and fn.__module__ == module.__name__ and hasattr(fn, "__wrapped__"):
            monkeypatch.setattr(module, name, inspect.unwrap(fn))


def test_mamba2_import_reproduces_transformers_logits(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from transformers.models.mamba2 import modeling_mamba2

    transformers_own_torch_code(monkeypatch, modeling_mamba2)
    torch.manual_seed(0)
    config = transformers.Mamba2Config(vocab_size=300, hidden_size=64, num_heads=8, head_dim=16, state_size=8,
                                       num_hidden_layers=2, n_groups=2, chunk_size=16, expand=2)
    hf = perturb_(transformers.Mamba2ForCausalLM(config))
    hf.save_pretrained(tmp_path / "hf")
    model = import_pretrained(tmp_path / "hf")
    assert (model.config.arch, model.config.ngroups, model.config.headdim, model.config.d_state) == ("mamba2", 2, 16, 8)
    x = tokens(300)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)
        # the zero MLP that stands in for the missing one adds exactly nothing
        assert all(b.mlp.down_proj.weight.abs().sum() == 0 for b in model.blocks)


# ---------------------------------------------------------------------------------------------
# flash-linear-attention and mamba-ssm layouts: their forward needs a GPU, so our model is written
# out under their names (mapped by hand here) and must come back with identical logits.


def fla_gdn_folder(model, path: Path) -> Path:
    c = model.config
    tensors = {"model.embeddings.weight": model.embed.weight, "model.norm.weight": model.norm.weight,
               "lm_head.weight": model.lm_head.weight}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        tensors[p + "attn_norm.weight"] = block.mixer_norm.weight
        tensors[p + "mlp_norm.weight"] = block.mlp_norm.weight
        for name in ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj", "g_proj", "o_proj", "q_conv1d", "k_conv1d",
                     "v_conv1d", "o_norm"):
            tensors[p + f"attn.{name}.weight"] = getattr(block.mixer, name).weight
        tensors[p + "attn.A_log"], tensors[p + "attn.dt_bias"] = block.mixer.A_log, block.mixer.dt_bias
        for name in ("gate_proj", "up_proj", "down_proj"):
            tensors[p + f"mlp.{name}.weight"] = getattr(block.mlp, name).weight
    config = {"model_type": "gated_deltanet", "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
              "num_heads": c.n_heads, "head_dim": c.head_dim, "expand_v": c.expand_v, "num_v_heads": None,
              "conv_size": c.conv_size, "norm_eps": c.norm_eps, "vocab_size": c.vocab_size, "hidden_ratio": 4,
              "intermediate_size": c.mlp_hidden, "hidden_act": "swish", "use_gate": True, "use_short_conv": True,
              "allow_neg_eigval": False, "attn": None, "tie_word_embeddings": False, "fuse_norm": True}
    return write_folder(path, config, {k: v.detach() for k, v in tensors.items()})


def mamba_ssm_folder(model, path: Path) -> Path:
    c = model.config
    tensors = {"backbone.embedding.weight": model.embed.weight, "backbone.norm_f.weight": model.norm.weight}
    for i, block in enumerate(model.blocks):
        p = f"backbone.layers.{i}."
        tensors[p + "norm.weight"] = block.mixer_norm.weight
        m = block.mixer
        for name in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "out_proj.weight", "norm.weight"):
            obj, attr = name.split(".")
            tensors[p + "mixer." + name] = getattr(getattr(m, obj), attr)
        for name in ("A_log", "D", "dt_bias"):
            tensors[p + "mixer." + name] = getattr(m, name)
    config = {"d_model": c.d_model, "d_intermediate": 0, "n_layer": c.n_layers, "vocab_size": c.vocab_size,
              "ssm_cfg": {"layer": "Mamba2", "d_state": c.d_state, "headdim": c.headdim, "ngroups": c.ngroups,
                          "expand": c.expand, "d_conv": c.d_conv},
              "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "tie_embeddings": True}
    return write_folder(path, config, {k: v.detach() for k, v in tensors.items()})


def test_gated_deltanet_round_trip_through_fla_layout(tmp_path):
    original = perturb_(small_model("gated_deltanet", sandwich_norm=False, tie_embeddings=False))
    model = import_pretrained(fla_gdn_folder(original, tmp_path / "fla"))
    assert model.config == original.config.replace(init_std=model.config.init_std, chunk_size=model.config.chunk_size)
    for name, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    x = tokens(original.config.vocab_size)
    with torch.no_grad():  # the chunk size of our torch backend differs: float rounding only
        torch.testing.assert_close(model(x), original(x), atol=1e-5, rtol=1e-5)


def test_mamba2_round_trip_through_mamba_ssm_layout(tmp_path):
    original = perturb_(small_model("mamba2", sandwich_norm=False, norm_eps=1e-5, ngroups=2))
    with torch.no_grad():
        for block in original.blocks:  # a Mamba 2 block has no MLP: ours adds zero
            for p in block.mlp.parameters():
                p.zero_()
    folder = mamba_ssm_folder(original, tmp_path / "mamba_ssm")
    model = import_pretrained(folder)
    assert model.config.ngroups == 2 and model.config.mlp_hidden == 1 and model.config.tie_embeddings
    x = tokens(original.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), atol=1e-6, rtol=1e-6)
    # a config without tie_embeddings takes MambaConfig's default, tied (the mutation audit)
    config = json.loads((folder / "config.json").read_text())
    del config["tie_embeddings"]
    (folder / "config.json").write_text(json.dumps(config))
    assert import_pretrained(folder).config.tie_embeddings


def mixers_matter_(model: torch.nn.Module) -> torch.nn.Module:
    """A random model's mixers at initial scale (projections of std 0.02) add too little to its
    logits for a wrong mixer to show (a B/C group mix-up moved fla's Mamba 2 logits by 2e-6):
    projections 10x larger, and norms, D and conv biases away from 1/0."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in ("attn.", "mixer.")) and name.endswith("_proj.weight"):
                p.mul_(10)
    return perturb_(model)


# Relative logit differences: on a GPU TF32 matmuls; on the CPU about 4x the largest measured (GDN 1.2e-6,
# Mamba 2 3.4e-7, mamba-ssm 6.1e-7). A mixer mix-up fails by far: fla's Mamba 2 with two B/C groups
# differs by 5.8e-4, as its torch prefill (its path without mamba-ssm's CUDA kernels) gives head h
# group h % G where mamba-ssm, fla's own decode and ours give h // (H / G): one group here.
KERNEL_MODEL_TOLERANCE = {"cuda": 2e-3, "cpu": 4.5e-6}


@kernel_cases("tol", cuda=[KERNEL_MODEL_TOLERANCE["cuda"]], cpu=[KERNEL_MODEL_TOLERANCE["cpu"]])
def test_real_fla_model_classes_import_and_agree(kernel_device, tol, tmp_path):
    """With flash-linear-attention installed, its own model classes (random weights) import by
    name and shape, and give our logits: on a GPU, and on the CPU with their Triton kernels through
    Triton's interpreter."""
    pytest.importorskip("fla.models", exc_type=ImportError)
    from fla.models import GatedDeltaNetConfig, Mamba2Config
    from transformers import AutoModelForCausalLM

    triton_interpreter.adapt_loaded_modules()  # fla.models' own modules, imported just now
    for name, config in {
        "gdn": GatedDeltaNetConfig(hidden_size=64, num_heads=2, num_v_heads=4, head_dim=16, num_hidden_layers=2,
                                   vocab_size=300, intermediate_size=96),  # two value heads per q/k head
        "mamba2": Mamba2Config(hidden_size=64, head_dim=16, state_size=8, num_hidden_layers=2, vocab_size=300,
                               n_groups=1, chunk_size=16),
    }.items():
        torch.manual_seed(0)
        theirs = mixers_matter_(AutoModelForCausalLM.from_config(config).eval())
        theirs.save_pretrained(tmp_path / name)
        ours = import_pretrained(tmp_path / name)
        x = tokens(300).to(kernel_device)
        with torch.no_grad():
            expected = theirs.to(kernel_device)(x).logits
            got = ours.to(kernel_device)(x)
        assert ((got - expected).norm() / expected.norm()).item() < tol, name


@kernel_cases("tol", cuda=[KERNEL_MODEL_TOLERANCE["cuda"]], cpu=[KERNEL_MODEL_TOLERANCE["cpu"]])
def test_real_mamba_ssm_model_imports_and_agrees(kernel_device, tol, tmp_path):
    """mamba-ssm's own MambaLMHeadModel (Mamba 2 layers, random weights, saved by its
    save_pretrained) imports and gives our logits with two B/C groups, its Triton kernels on a GPU or
    through Triton's interpreter (tolerances above). ``use_mem_eff_path=False``:
    the fused path needs the causal-conv1d CUDA package, which neither machine has."""
    from baselines import mamba2

    reason = mamba2.MAMBA_SSM.unavailable_reason(kernel_device)
    if reason is not None:
        pytest.skip(f"mamba_ssm: {reason}")
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    triton_interpreter.adapt_loaded_modules()  # mamba_ssm.models' own modules, imported just now
    torch.manual_seed(0)
    ssm = {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 16, "use_mem_eff_path": False}
    theirs = mixers_matter_(MambaLMHeadModel(MambaConfig(d_model=64, d_intermediate=0, n_layer=2, vocab_size=256,
                                                         ssm_cfg=ssm, tie_embeddings=True)).eval())
    theirs.save_pretrained(str(tmp_path))
    ours = import_pretrained(tmp_path)
    assert ours.config.ngroups == 2 and ours.config.n_layers == 2
    x = tokens(256).to(kernel_device)
    with torch.no_grad():
        expected = theirs.to(kernel_device)(x).logits
        got = ours.to(kernel_device)(x)
    assert ((got - expected).norm() / expected.norm()).item() < tol


# ---------------------------------------------------------------------------------------------
# What does not fit is named


def test_every_missing_mismatched_and_unknown_tensor_is_named(tmp_path):
    original = small_model("gated_deltanet", sandwich_norm=False, tie_embeddings=False)
    folder = fla_gdn_folder(original, tmp_path / "fla")
    tensors = safetensors.torch.load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.attn.dt_bias"]
    tensors["model.layers.0.attn.q_proj.weight"] = tensors["model.layers.0.attn.q_proj.weight"][:-1]
    tensors["model.layers.0.attn.q_conv1d.bias"] = torch.zeros(3)
    safetensors.torch.save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ImportMismatchError) as err:
        import_pretrained(folder)
    msg = str(err.value)
    assert "missing tensors (1)" in msg and "model.layers.1.attn.dt_bias (for blocks.1.mixer.dt_bias" in msg
    key_dim, d = original.config.n_heads * original.config.head_dim, original.config.d_model
    assert (f"model.layers.0.attn.q_proj.weight: [{key_dim - 1}, {d}] in the source, [{key_dim}, {d}] expected by "
            "blocks.0.mixer.q_proj.weight") in msg
    assert "does not recognise (1)" in msg and "model.layers.0.attn.q_conv1d.bias [3]" in msg


def test_unsupported_settings_are_refused_by_name(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=2, attention_bias=True,
                                      rope_scaling={"rope_type": "linear", "factor": 2.0})
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "biased")
    with pytest.raises(ImportMismatchError, match="attention_bias=True"):
        import_pretrained(tmp_path / "biased")
    cfg = json.loads((tmp_path / "biased" / "config.json").read_text())
    cfg.update(attention_bias=False)
    (tmp_path / "biased" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ImportMismatchError, match="RoPE scaling 'linear'"):
        import_pretrained(tmp_path / "biased")
    cfg.update(model_type="qwen3")
    (tmp_path / "biased" / "config.json").write_text(json.dumps(cfg))
    from harness.api.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot import model_type 'qwen3'; supported: llama"):
        import_pretrained(tmp_path / "biased")


def test_llama_settings_a_config_leaves_out_take_transformers_defaults():
    """A hand-written Llama config.json without rms_norm_eps, rope_theta, tie_word_embeddings or
    num_key_value_heads is read as LlamaConfig reads it (the mutation audit: another default eps
    survived every test, since saved configs always state it)."""
    transformers = pytest.importorskip("transformers")
    from harness.adapters.importers.hf import llama_config

    defaults = transformers.LlamaConfig()
    theta = (getattr(defaults, "rope_parameters", None) or {}).get("rope_theta", getattr(defaults, "rope_theta", None))
    ours = llama_config({"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 100,
                         "intermediate_size": 48}, {}, "here")
    assert (ours["norm_eps"], ours["rope_theta"], ours["tie_embeddings"], ours["n_kv_heads"]) == \
        (defaults.rms_norm_eps, theta, defaults.tie_word_embeddings, 2)


@pytest.mark.parametrize("limit", [[0.0, 0.1], [0.001, {"__float__": "Infinity"}], [0.001, 0.1]])
def test_a_mamba2_dt_limit_is_refused_unless_it_is_none(limit):
    """Either end of a dt limit clamps dt, which our Mamba 2 does not (the mutation audit: refusing
    only limits with both ends set survived every test)."""
    from harness.adapters.importers.hf import mamba2_config

    with pytest.raises(ImportMismatchError, match=r"dt limit .* is not implemented"):
        mamba2_config({"time_step_limit": limit}, {}, "here")


@pytest.mark.parametrize("fmt, key", [("llama", "num_attention_heads"), ("gated_deltanet", "num_heads"),
                                      ("mamba2", "head_dim")])
def test_a_format_whose_fields_the_config_lacks_is_named(tmp_path, fmt, key):
    """--format llama on a Mamba 2 folder gave a bare KeyError: 'num_attention_heads'."""
    folder = write_folder(tmp_path / "other", {"model_type": "other", "hidden_size": 64, "num_hidden_layers": 2,
                                               "vocab_size": 300, "intermediate_size": 96}, {})
    with pytest.raises(ImportMismatchError, match=rf"config.json has no {key!r}, .* model_type is 'other'"):
        import_pretrained(folder, format=fmt)


def test_a_misspelt_format_suggests_the_close_match(tmp_path):
    from harness.api.errors import ConfigError

    folder = write_folder(tmp_path / "llama", {"model_type": "llama"}, {})
    with pytest.raises(ConfigError, match=r"unknown import format 'lama'; valid: auto, gated_deltanet, llama, "
                                          r"mamba2, mamba_ssm\. Did you mean 'llama'\?"):
        import_pretrained(folder, format="lama")


def test_an_lcbench_checkpoint_is_named_as_one_needing_no_import(tmp_path):
    """`lcbench import runs/swa-tiny OUT` said "cannot import model_type None; supported: ..."."""
    from harness.api.errors import ConfigError
    from harness.api.registry import create_model
    from harness.train import checkpoint

    checkpoint.save_checkpoint(tmp_path / "swa-tiny", create_model("swa", "tiny", d_model=32, n_heads=2))
    with pytest.raises(ConfigError, match=r"already an lcbench checkpoint \(arch 'swa'\).*nothing to import"):
        import_pretrained(tmp_path / "swa-tiny", tmp_path / "out")


@pytest.mark.parametrize("fmt", ["llama", "gated_deltanet", "mamba2", "mamba_ssm"])
def test_a_sliding_window_is_refused_under_every_format(tmp_path, fmt):
    """A Mistral folder (sliding_window 16) imported as Llama was read as full attention, silently."""
    from harness.adapters.importers.hf import FORMATS

    assert set(FORMATS) == {"llama", "gated_deltanet", "mamba2", "mamba_ssm"}  # a new format joins this test
    folder = write_folder(tmp_path / "mistral", {"model_type": "mistral", "sliding_window": 16,
                                                 "hidden_size": 32, "num_attention_heads": 2}, {})
    with pytest.raises(ImportMismatchError, match=r"sliding_window=16 \(supported: None"):
        import_pretrained(folder, format=fmt)
    # a window that is switched off (Qwen2's use_sliding_window=false) is not a window
    from harness.adapters.importers.hf import refuse_sliding_window

    refuse_sliding_window({"sliding_window": 16, "use_sliding_window": False}, "here")
    refuse_sliding_window({"sliding_window": None}, "here")


# ---------------------------------------------------------------------------------------------
# The official TTT-E2E code's parameter tree (JAX/Equinox names and shapes; random values)

V, D, L, S, H, F = 256, 64, 4, 1, 4, 96  # vocab, width, blocks, suffix blocks, heads, MLP width
OFFICIAL = {"model": {"rope_theta": 10000.0, "sliding_window_size": 16, "mini_batch_size": 64, "rms_norm_eps": 1e-6},
            "training": {"spec_inner": ["language_model.**.suffix_blocks.feed_forward_prime.**"], "ilr_init": 1.0,
                         "optimizer_inner": {"optimizer_type": "sgd", "lr": 1.0, "clip_gradient": 1.0}}}


def official_tree(seed: int = 0, tied: bool = True, suffix: int = S) -> dict[str, np.ndarray]:
    """What ``MetaModel.weights()`` holds under ``language_model``, flattened (ttt/model/*.py):
    NormalLinear weights are [in, out]; blocks are stacked on axis 0; prime MLPs live in
    ``prime_storage``; the SWA KV-cache's initial state is an (all-zero) array too."""
    rng = np.random.default_rng(seed)
    n = lambda *shape, std=0.05: (rng.standard_normal(shape) * std).astype(np.float32)  # noqa: E731
    g = lambda *shape: (1 + 0.3 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    a, f, p = "model.h.blocks.seq_modeling_block.", "model.h.blocks.feed_forward.", "model.h.prime_storage."
    tree = {"model.wte.weight": n(V, D, std=0.5), "model.ln_f.weight": g(D)}
    for w in ("wq", "wk", "wv", "wo"):
        tree[a + f"{w}.weight"] = n(L, D, D, std=0.2)
    for w in ("q_norm", "k_norm"):
        tree[a + f"{w}.weight"] = g(L, D // H)
    tree[a + "kv_cache_index.init.0"] = np.zeros((L, 16, D), np.float32)
    tree[a + "kv_cache_index.init.1"] = np.zeros((L, 16, D), np.float32)
    tree[f + "w1.weight"], tree[f + "w3.weight"], tree[f + "w2.weight"] = n(L, D, F), n(L, D, F), n(L, F, D)
    for norm in ("seq_norm", "ffn_norm", "seq_post_norm", "ffn_post_norm"):
        tree[f"model.h.blocks.{norm}.weight"] = g(L, D)
    for w, shape in (("w1", (suffix, D, F)), ("w3", (suffix, D, F)), ("w2", (suffix, F, D))):
        tree[p + f"feed_forward_prime.{w}.weight"] = n(*shape)
    tree[p + "ffn_prime_norm.weight"], tree[p + "ffn_prime_post_norm.weight"] = g(suffix, D), g(suffix, D)
    if not tied:
        tree["lm_head.weight"] = n(D, V)
    return tree


def official_static_forward(tree: dict[str, np.ndarray], tokens: torch.Tensor, W: int = 16, *, qk_norm: bool = True,
                            post_norm: bool = True) -> torch.Tensor:
    """The official model's outputs for one sequence read before any inner update, written from
    ttt/model/transformer.py and attention.py (interleaved-pair RoPE, QK-norm, sandwich norms,
    prime MLP after attention in suffix blocks, sliding window of W keys including itself).
    ``qk_norm`` / ``post_norm`` False: the config switches those norms off (their gains stay in the
    tree, unused, as the official modules always hold them)."""
    t = {k: torch.from_numpy(v).double() for k, v in tree.items()}
    eps, theta, Dh = 1e-6, 10000.0, D // H
    n_suffix = len(t.get("model.h.prime_storage.ffn_prime_norm.weight", ()))
    rms = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w  # noqa: E731
    post = rms if post_norm else (lambda x, w: x)  # noqa: E731
    qk = rms if qk_norm else (lambda x, w: x)  # noqa: E731
    swiglu = lambda x, w1, w3, w2: (torch.nn.functional.silu(x @ w1) * (x @ w3)) @ w2  # noqa: E731

    def rope(x):  # apply_rotary_emb: pairs (x[2i], x[2i+1]) as complex numbers, times e^{i pos freq_i}
        T = x.shape[0]
        freqs = 1.0 / theta ** (torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
        angle = torch.outer(torch.arange(T, dtype=torch.float64), freqs)
        pairs = torch.view_as_complex(x.reshape(T, H, Dh // 2, 2).contiguous())
        return torch.view_as_real(pairs * torch.polar(torch.ones_like(angle), angle)[:, None]).reshape(T, H, Dh)

    a, f, p = "model.h.blocks.seq_modeling_block.", "model.h.blocks.feed_forward.", "model.h.prime_storage."
    h = t["model.wte.weight"][tokens]
    T = h.shape[0]
    diff = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    visible = (diff >= 0) & (diff < W)
    for i in range(L):
        x = rms(h, t["model.h.blocks.seq_norm.weight"][i])
        q, k, v = (x @ t[a + f"{w}.weight"][i] for w in ("wq", "wk", "wv"))
        q = rope(qk(q.view(T, H, Dh), t[a + "q_norm.weight"][i]))
        k = rope(qk(k.view(T, H, Dh), t[a + "k_norm.weight"][i]))
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(Dh)
        attn = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        out = torch.einsum("hts,shd->thd", attn, v.view(T, H, Dh)).reshape(T, D) @ t[a + "wo.weight"][i]
        h = h + post(out, t["model.h.blocks.seq_post_norm.weight"][i])
        if i >= L - n_suffix:
            s = i - (L - n_suffix)
            y = swiglu(rms(h, t[p + "ffn_prime_norm.weight"][s]), *(t[p + f"feed_forward_prime.{w}.weight"][s]
                                                                     for w in ("w1", "w3", "w2")))
            h = h + post(y, t[p + "ffn_prime_post_norm.weight"][s])
        y = swiglu(rms(h, t["model.h.blocks.ffn_norm.weight"][i]), *(t[f + f"{w}.weight"][i] for w in ("w1", "w3", "w2")))
        h = h + post(y, t["model.h.blocks.ffn_post_norm.weight"][i])
    h = rms(h, t["model.ln_f.weight"])
    return h @ (t["lm_head.weight"] if "lm_head.weight" in t else t["model.wte.weight"].T)


def hand_mapped(tree: dict[str, np.ndarray]):
    """Our ttt_e2e with the official arrays assigned one by one (transposed; q/k rows and QK-norm
    gains reordered from interleaved to half-split RoPE pairs)."""
    from harness.api.registry import create_model

    S = len(tree["model.h.prime_storage.ffn_prime_norm.weight"])  # noqa: N806 - the tree's suffix blocks
    model = create_model("ttt_e2e", "tiny", d_model=D, n_heads=H, n_layers=L, mlp_hidden=F, suffix_blocks=S,
                         window=16, mini_batch_size=64, rope_theta=10000.0, norm_eps=1e-6, inner_lr_init=1.0,
                         tie_embeddings="lm_head.weight" not in tree,
                         bos_token_id=1)  # the official ModelConfig's default: OFFICIAL does not set it
    Dh = D // H
    order = torch.cat([torch.arange(0, Dh, 2), torch.arange(1, Dh, 2)])
    a, f, p = "model.h.blocks.seq_modeling_block.", "model.h.blocks.feed_forward.", "model.h.prime_storage."
    T = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    with torch.no_grad():
        model.embed.weight.copy_(T(tree["model.wte.weight"]))
        model.norm.weight.copy_(T(tree["model.ln_f.weight"]))
        if "lm_head.weight" in tree:
            model.lm_head.weight.copy_(T(tree["lm_head.weight"]).T)
        for i, block in enumerate(model.blocks):
            for ours, theirs in (("q_proj", "wq"), ("k_proj", "wk")):
                w = T(tree[a + f"{theirs}.weight"][i]).T.reshape(H, Dh, D)[:, order].reshape(D, D)
                getattr(block.mixer, ours).weight.copy_(w)
            block.mixer.v_proj.weight.copy_(T(tree[a + "wv.weight"][i]).T)
            block.mixer.o_proj.weight.copy_(T(tree[a + "wo.weight"][i]).T)
            block.mixer.q_norm.weight.copy_(T(tree[a + "q_norm.weight"][i])[order])
            block.mixer.k_norm.weight.copy_(T(tree[a + "k_norm.weight"][i])[order])
            for ours, theirs in (("mixer_norm", "seq_norm"), ("mixer_post_norm", "seq_post_norm"),
                                 ("mlp_norm", "ffn_norm"), ("mlp_post_norm", "ffn_post_norm")):
                getattr(block, ours).weight.copy_(T(tree[f"model.h.blocks.{theirs}.weight"][i]))
            for ours, theirs in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
                getattr(block.mlp, ours).weight.copy_(T(tree[f + f"{theirs}.weight"][i]).T)
            if i >= L - S:
                s = i - (L - S)
                block.prime_norm.weight.copy_(T(tree[p + "ffn_prime_norm.weight"][s]))
                block.prime_post_norm.weight.copy_(T(tree[p + "ffn_prime_post_norm.weight"][s]))
                for ours, theirs in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
                    getattr(block.prime, ours).weight.copy_(T(tree[p + f"feed_forward_prime.{theirs}.weight"][s]).T)
    return model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_ttt_e2e_official_tree_imports(tmp_path, tied):
    from harness.adapters.importers import import_ttt_e2e

    tree = official_tree(tied=tied)
    np.savez(tmp_path / "official.npz", **tree)
    with pytest.warns(ImportedCheckpointWarning) as caught:  # what the import filled in is said, not just kept
        model = import_ttt_e2e(tmp_path / "official.npz", tmp_path / "ours", config=OFFICIAL)
    said = " ".join(str(w.message) for w in caught)
    assert "the given config lacks them" in said and "model.qk_norm" in said and "model.sliding_window_size" not in said
    assert "no tokenizer given" in said and "as bytes" in said
    c = model.config
    assert (c.arch, c.n_layers, c.n_suffix, c.n_heads, c.mlp_hidden, c.window, c.mini_batch_size, c.qk_norm,
            c.sandwich_norm, c.tie_embeddings, c.fast_weights) == ("ttt_e2e", L, S, H, F, 16, 64, True, True, tied, "prime")
    reference = hand_mapped(tree)
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    x = tokens(V, 40)[:1]
    with torch.no_grad():
        # 40 tokens < one mini-batch of 64: the outputs come before any inner step, i.e. the static
        # model, which the official code's math (written out above) must reproduce
        torch.testing.assert_close(model(x)[0].double(), official_static_forward(tree, x[0]), atol=2e-4, rtol=2e-4)
        # longer than a mini-batch: the inner loop runs, on exactly the hand-mapped weights
        y = tokens(V, 150)
        torch.testing.assert_close(model(y), reference(y), atol=0, rtol=0)
    record = json.loads((tmp_path / "ours" / IMPORT_FILE).read_text())
    assert "model.sliding_window_size" not in record["config_defaults_used"]
    assert "model.qk_norm" in record["config_defaults_used"]  # not given: the official default (True)
    assert torch.equal(checkpoint.load_model(tmp_path / "ours").state_dict()["blocks.3.prime.up_proj.weight"],
                       model.state_dict()["blocks.3.prime.up_proj.weight"])


def test_each_suffix_blocks_prime_mlp_comes_from_its_own_slot_of_the_storage(tmp_path):
    # prime_storage stacks the suffix blocks' prime MLPs in block order: with one suffix block (the
    # test above) an index off by one still read the only slot
    from harness.adapters.importers import import_ttt_e2e

    tree = official_tree(suffix=2)
    np.savez(tmp_path / "official.npz", **tree)
    with pytest.warns(ImportedCheckpointWarning):
        model = import_ttt_e2e(tmp_path / "official.npz", tmp_path / "ours", config=OFFICIAL)
    assert model.config.n_suffix == 2
    for name, value in hand_mapped(tree).state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_official_full_attention_twin_imports(tmp_path):
    """The twin runs (``*-fa-*`` configs: self_attention, no prime MLPs) become full_attention."""
    from harness.adapters.importers import import_ttt_e2e

    tree = {k: v for k, v in official_tree(seed=2).items() if "prime_storage" not in k and "kv_cache" not in k}
    safetensors.numpy.save_file(tree, str(tmp_path / "fa.safetensors"))
    twin = {"model": {**OFFICIAL["model"], "seq_modeling_block": "self_attention"}}
    model = import_ttt_e2e(tmp_path / "fa.safetensors", config=twin)
    assert (model.config.arch, model.config.qk_norm, model.config.sandwich_norm) == ("full_attention", True, True)
    x = tokens(V, 40)[:1]
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0].double(), official_static_forward(tree, x[0], W=10**9), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("switched_off", ["post_norm", "qk_norm"])
@pytest.mark.parametrize("block", ["SWA", "self_attention"])
def test_an_official_run_without_post_or_qk_norms_imports(tmp_path, switched_off, block):
    """The official blocks hold their post-norm (and QK-norm) gains whatever the config says, and
    use them only when post_norm (qk_norm) is on: a run with post_norm: false failed to import,
    its unused gains listed as "tensors this import does not recognise"."""
    from harness.adapters.importers import import_ttt_e2e

    tree = official_tree(seed=6)
    if block == "self_attention":  # the full-attention twin: no prime MLPs
        tree = {k: v for k, v in tree.items() if "prime_storage" not in k and "kv_cache" not in k}
    np.savez(tmp_path / "official.npz", **tree)
    config = {"model": {**OFFICIAL["model"], "seq_modeling_block": block, switched_off: False},
              "training": OFFICIAL["training"]}
    model = import_ttt_e2e(tmp_path / "official.npz", config=config)
    assert (model.config.sandwich_norm, model.config.qk_norm) == (switched_off != "post_norm", switched_off != "qk_norm")
    x = tokens(V, 40)[:1]  # under one mini-batch: the official static math
    expected = official_static_forward(tree, x[0], W=16 if block == "SWA" else 10**9,
                                       **{switched_off: False})
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0].double(), expected, atol=2e-4, rtol=2e-4)


def test_an_official_config_of_another_size_is_refused(tmp_path):
    """The sizes came from the weights and everything else from --config, with the sizes the
    config states unread: another run's config (or a tree flattened without its untied LM head,
    then read as tied) imported without a word."""
    from harness.adapters.importers import import_ttt_e2e

    np.savez(tmp_path / "official.npz", **official_tree(tied=True))
    own = {"vocab_size": V, "hidden_size": D, "num_hidden_layers": L, "num_attention_heads": H,
           "intermediate_size": F, "tie_word_embeddings": True}
    config = {"model": {**OFFICIAL["model"], **own}, "training": OFFICIAL["training"]}
    assert import_ttt_e2e(tmp_path / "official.npz", config=config).config.n_layers == L  # its own: fine
    other = {**config, "model": {**config["model"], "num_hidden_layers": 2 * L, "tie_word_embeddings": False}}
    with pytest.raises(ImportMismatchError) as err:
        import_ttt_e2e(tmp_path / "official.npz", config=other)
    assert f"num_hidden_layers={2 * L} (the weights: {L})" in str(err.value)
    assert "tie_word_embeddings=False (the weights: True, no lm_head.weight)" in str(err.value)


def test_an_inner_optimiser_setting_the_config_leaves_out_is_said(tmp_path):
    """A config whose optimizer_inner gave lr but not clip_gradient took the experiments' clip of
    1.0 without a word (the official code's SGD default is no clipping): only whole sections and
    top-level settings were listed as filled in."""
    from harness.adapters.importers import import_ttt_e2e

    np.savez(tmp_path / "official.npz", **official_tree())
    config = {"model": OFFICIAL["model"],
              "training": {**OFFICIAL["training"], "optimizer_inner": {"optimizer_type": "sgd", "lr": 1.0}}}
    with pytest.warns(ImportedCheckpointWarning) as caught:
        model = import_ttt_e2e(tmp_path / "official.npz", tmp_path / "ours", config=config)
    assert model.config.inner_clip == 1.0
    said = " ".join(str(w.message) for w in caught)
    assert "training.optimizer_inner.clip_gradient" in said and "training.optimizer_inner.lr" not in said
    record = json.loads((tmp_path / "ours" / IMPORT_FILE).read_text())["config_defaults_used"]
    assert "training.optimizer_inner.clip_gradient" in record and "training.optimizer_inner" not in record


@pytest.mark.parametrize("warmup, total, fraction", [(0, 1000, 0.0), (100, 1000, 0.1), (5000, 1000, 1.0)])
def test_the_official_inner_lr_warm_up_becomes_a_fraction_of_the_outer_steps(warmup, total, fraction):
    """The inner lr warms up from ilr_init to optimizer_inner.lr over ilr_warmup_steps of
    total_steps; a warm-up longer than the run spans all of it (the mutation audit: without the
    cap, a fraction of 5 failed the import with a config error; taking inner_lr_init from lr
    survived too, as every test gave both 1.0)."""
    from harness.adapters.importers.ttt_e2e import load_official_config, our_config
    from harness.api.registry import config_from_dict

    official, _ = load_official_config({"model": OFFICIAL["model"], "training": {
        **OFFICIAL["training"], "ilr_init": 0.25, "ilr_warmup_steps": warmup, "total_steps": total}})
    config = config_from_dict(our_config(official_tree(), official, "here"))
    assert (config.inner_lr_init, config.inner_lr) == (0.25, 1.0)
    assert config.inner_lr_warmup == pytest.approx(fraction)



def official_inner_lr(training: dict, step: int) -> np.float32:
    """The official inner SGD's lr at outer step ``step`` (github test-time-training/e2e):
    optimizer_inner.lr times a float32 multiplier, 1 without a warm-up, else (ilr_init + (lr -
    ilr_init) * min(1, (step + 1) / ilr_warmup_steps)) / lr (ttt/model/transformer.py
    get_ilr_multiplier, ttt/optimizers.py make_sgd_optimizer). Training passes the outer step;
    evaluation (eval_mode, ttt/train.py) passes int32 max - 100, past any warm-up."""
    lr, init, warmup = (np.float32(training[k]) for k in ("lr", "ilr_init", "ilr_warmup_steps"))
    if warmup == 0:
        return lr
    progress = np.minimum(np.float32(1), np.float32(step + 1) / warmup)
    return lr * ((init + (lr - init) * progress) / lr)


OFFICIAL_EVAL_STEP = np.iinfo(np.int32).max - 100


@pytest.mark.parametrize("ilr_init, warmup, total, lr", [
    (0.1, 480, 4800, 1.0),  # configs/training/125m/pretrain-8K.yaml with pretrain-125m-e2e.yaml
    (1.0, 0, 120, 1.0),  # configs/training/125m/ext.yaml with ext-125m-e2e-32K.yaml
    (0.03, 100, 1000, 0.3)])  # an lr whose warm-up end rounds off it in float64
def test_an_imported_model_evaluates_with_the_official_eval_time_inner_lr(tmp_path, ilr_init, warmup, total, lr):
    """Evaluating an imported checkpoint runs the inner loop with the lr the official eval_mode
    uses (the whole optimizer_inner.lr: the warm-up is over), and a trainer that goes on with its
    config warms up as the official run did."""
    from harness.adapters.importers import import_ttt_e2e

    np.savez(tmp_path / "official.npz", **official_tree())
    training = {**OFFICIAL["training"], "ilr_init": ilr_init, "ilr_warmup_steps": warmup, "total_steps": total,
                "optimizer_inner": {**OFFICIAL["training"]["optimizer_inner"], "lr": lr}}
    model = import_ttt_e2e(tmp_path / "official.npz", config={"model": OFFICIAL["model"], "training": training})
    schedule = {**training, "lr": lr}
    assert np.float32(model.inner_lr_now) == official_inner_lr(schedule, OFFICIAL_EVAL_STEP)
    assert model.inner_lr_now == lr  # not just to float32's precision
    for step in (0, 1, warmup // 2, max(warmup - 1, 0), warmup, total - 1):
        model.on_train_step(step, total)
        assert model.inner_lr_now == pytest.approx(official_inner_lr(schedule, step), rel=1e-6), step
    assert model.inner_lr_now == lr  # the last outer step: the official end-of-training evaluation's lr

def test_official_train_mode_says_whether_the_import_learns_at_test_time(tmp_path):
    """The official code's train_mode decides the inner loop, not the prime MLPs: a meta run over
    suffix_len blocks without prime MLPs (TTT on the blocks' own MLPs) was imported as a static
    SWA model, and a pretrain run with prime MLPs as a TTT-E2E model that learned at test time."""
    from harness.adapters.importers import import_ttt_e2e

    plain = {k: v for k, v in official_tree(seed=4).items() if "prime_storage" not in k}
    safetensors.numpy.save_file(plain, str(tmp_path / "plain.safetensors"))
    meta = {"model": {**OFFICIAL["model"], "suffix_len": 2, "seq_modeling_block": "SWA"},
            "training": {**OFFICIAL["training"], "train_mode": "meta",
                         "spec_inner": ["language_model.**.suffix_blocks.feed_forward.**"]}}
    model = import_ttt_e2e(tmp_path / "plain.safetensors", config=meta)
    c = model.config
    assert (c.arch, c.prime_mlp, c.fast_weights, c.n_suffix, c.inner_lr) == ("ttt_e2e", False, "mlp", 2, 1.0)
    static = import_ttt_e2e(tmp_path / "plain.safetensors",
                            config={**meta, "training": {**meta["training"], "train_mode": "pretrain"}})
    assert static.config.arch == "swa"
    y = tokens(V, 150)
    with torch.no_grad():
        learned, fixed = model(y), static(y)
    torch.testing.assert_close(learned[:, :64], fixed[:, :64], atol=1e-5, rtol=1e-5)  # before the first step
    assert (learned[:, 64:] - fixed[:, 64:]).abs().max() > 1e-3  # after it: the MLPs learned

    primed = official_tree(seed=5)
    np.savez(tmp_path / "primed.npz", **primed)
    pretrain = {"model": OFFICIAL["model"], "training": {**OFFICIAL["training"], "train_mode": "pretrain"}}
    model = import_ttt_e2e(tmp_path / "primed.npz", config=pretrain)
    assert (model.config.arch, model.config.inner_lr) == ("ttt_e2e", 0.0)
    with torch.no_grad():  # no inner loop: the official static math over every mini-batch
        torch.testing.assert_close(model(y[:1])[0].double(), official_static_forward(primed, y[0]), atol=2e-4, rtol=2e-4)
    with pytest.raises(ImportMismatchError, match="config suffix_len=3 but the weights hold 1 prime MLPs"):
        import_ttt_e2e(tmp_path / "primed.npz", config={**pretrain, "model": {**OFFICIAL["model"], "suffix_len": 3}})
    with pytest.raises(ImportMismatchError, match="name prime MLPs, which the weights do not hold"):
        import_ttt_e2e(tmp_path / "plain.safetensors",
                       config={**meta, "training": {**meta["training"], "spec_inner": OFFICIAL["training"]["spec_inner"]}})


def test_a_flattened_tree_with_bfloat16_arrays_imports_without_ml_dtypes(tmp_path):
    """The official SWA's KV-cache init is bfloat16 (compute dtype), and a tree may be converted in
    bfloat16 to save space. Flattened where JAX is installed, numpy alone reads such arrays as raw
    2-byte voids (.npz) or not at all (.safetensors): the import failed with "setting an array
    element with a sequence" or "data type 'bfloat16' not understood"."""
    from harness.adapters.importers import import_ttt_e2e

    tree = {k: torch.from_numpy(v).bfloat16() for k, v in official_tree(seed=6).items()}
    rounded = {k: v.float().numpy() for k, v in tree.items()}  # the values the import must give
    safetensors.torch.save_file(tree, str(tmp_path / "bf16.safetensors"))
    # what np.savez writes for ml_dtypes' bfloat16: the raw 2-byte values, dtype V2
    np.savez(tmp_path / "bf16.npz", **{k: v.view(torch.int16).numpy().view("V2") for k, v in tree.items()})
    reference = hand_mapped(rounded)
    for source in ("bf16.safetensors", "bf16.npz"):
        model = import_ttt_e2e(tmp_path / source, config=OFFICIAL)
        for name, value in reference.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), (source, name)


def test_ttt_e2e_orbax_checkpoint_imports(tmp_path):
    """The official trainer's own format: an orbax CheckpointManager folder <step>/model_weights."""
    ocp = pytest.importorskip("orbax.checkpoint")
    from harness.adapters.importers import import_ttt_e2e

    flat = official_tree(seed=3)
    nested: dict = {}
    for key, value in flat.items():
        node = nested.setdefault("language_model", {})
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    seq = nested["language_model"]["model"]["h"]["blocks"]["seq_modeling_block"]
    seq["kv_cache_index"]["init"] = [seq["kv_cache_index"]["init"]["0"], seq["kv_cache_index"]["init"]["1"]]
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "run" / "4800" / "model_weights", nested)
    checkpointer.wait_until_finished()
    model = import_ttt_e2e(tmp_path / "run", config=OFFICIAL)
    for name, value in hand_mapped(flat).state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_ttt_e2e_unknown_missing_and_misshapen_tensors_are_named(tmp_path):
    from harness.adapters.importers import import_ttt_e2e

    tree = official_tree()
    del tree["model.h.prime_storage.ffn_prime_post_norm.weight"]
    tree["model.h.blocks.feed_forward.w2.weight"] = tree["model.h.blocks.feed_forward.w2.weight"][:, :-1]
    tree["model.h.blocks.seq_modeling_block.wq.bias"] = np.zeros((L, D), np.float32)
    np.savez(tmp_path / "bad.npz", **tree)
    with pytest.raises(ImportMismatchError) as err:
        import_ttt_e2e(tmp_path / "bad.npz", config=OFFICIAL)
    msg = str(err.value)
    assert "model.h.prime_storage.ffn_prime_post_norm.weight (for blocks.3.prime_post_norm.weight [64])" in msg
    assert f"model.h.blocks.feed_forward.w2.weight layer 0: [{D}, {F - 1}] in the source, [{D}, {F}] expected" in msg
    assert "model.h.blocks.seq_modeling_block.wq.bias [4, 64]" in msg
    with pytest.raises(ImportMismatchError, match="inner optimizer 'adamw'"):
        bad = {"training": {**OFFICIAL["training"], "optimizer_inner": {"optimizer_type": "adamw"}}, "model": OFFICIAL["model"]}
        import_ttt_e2e(tmp_path / "bad.npz", config=bad)


@pytest.mark.parametrize("text, what", [("just some text\n", "the official config .* holds a str"),
                                        ("model:\n  - rope_theta\n", "its model section is a list")])
def test_ttt_e2e_config_that_is_not_settings_is_one_clear_error(tmp_path, text, what):
    """A YAML that is not a mapping of settings (a wrong file given to --config) gave a bare
    AttributeError ('str' object has no attribute 'items')."""
    from harness.adapters.importers import import_ttt_e2e
    from harness.api.errors import ConfigError

    np.savez(tmp_path / "official.npz", **official_tree())
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ConfigError, match=what):
        import_ttt_e2e(tmp_path / "official.npz", config=tmp_path / "run.yaml")


def test_ttt_e2e_tokenizer_folder_without_a_tokenizer_is_refused(tmp_path):
    """--tokenizer pointing at a folder with no tokenizer files was skipped without a word: the
    checkpoint then had no tokenizer, and tasks fell back to bytes on a model of another vocabulary."""
    from harness.adapters.importers import import_ttt_e2e
    from harness.api.errors import ConfigError

    np.savez(tmp_path / "official.npz", **official_tree())
    (tmp_path / "llama3").mkdir()
    (tmp_path / "llama3" / "README.md").write_text("weights only\n")
    with pytest.raises(ConfigError, match=r"llama3' holds no tokenizer \(none of tokenizer.json, .*\); it holds "
                                          r"README.md"):
        import_ttt_e2e(tmp_path / "official.npz", tmp_path / "ours", config=OFFICIAL, tokenizer=tmp_path / "llama3")
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize("section, key, value", [("model", "rope_theta", "${model.base_theta}"),
                                                 ("model", "bos_token_id", "<s>"),
                                                 ("training", "ilr_warmup_steps", "ten")])
def test_ttt_e2e_config_value_that_is_not_a_number_is_named(tmp_path, section, key, value):
    """A Hydra interpolation left unresolved (rope_theta: ${...}) gave a bare ValueError ("could
    not convert string to float"); bos_token_id: null a bare TypeError (it now means none)."""
    from harness.adapters.importers import import_ttt_e2e
    from harness.adapters.importers.ttt_e2e import OFFICIAL_DEFAULTS
    from harness.api.errors import ConfigError

    np.savez(tmp_path / "official.npz", **official_tree())
    config = {s: dict(v) for s, v in OFFICIAL.items()}
    config[section][key] = value
    with pytest.raises(ConfigError, match=rf"official config {section}\.{key}={re.escape(repr(value))} is not a number"):
        import_ttt_e2e(tmp_path / "official.npz", config=config)
    config[section][key] = None if key == "bos_token_id" else OFFICIAL_DEFAULTS[section].get(key, 0)
    assert import_ttt_e2e(tmp_path / "official.npz", config=config).config.bos_token_id == (
        -1 if key == "bos_token_id" else 1)  # null: none; absent: the official ModelConfig's default


def test_ttt_e2e_folder_that_is_not_orbax_is_named_before_orbax_is_needed(tmp_path):
    """An empty folder or an lcbench checkpoint given as the official checkpoint was told to
    install orbax-checkpoint (and JAX), which would only have led to the real error."""
    from harness.adapters.importers import import_ttt_e2e
    from harness.api.errors import CheckpointError

    (tmp_path / "empty").mkdir()
    ours = checkpoint.save_checkpoint(tmp_path / "ours", small_model("swa"))
    for folder in (tmp_path / "empty", ours):
        with pytest.raises(CheckpointError, match="is not an orbax checkpoint of the official TTT-E2E code"):
            import_ttt_e2e(folder, config=OFFICIAL)


# ---------------------------------------------------------------------------------------------
# What a user gives by mistake (walkthrough, session 40)


def tiny_llama_folder(path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_an_import_never_replaces_a_trained_checkpoint(tmp_path):
    """`lcbench import hf-llama runs/swa-tiny` replaced the trained checkpoint there, its optimizer
    state and trainer.json with it, silently; an earlier import there is still replaced."""
    from harness.adapters.importers import import_ttt_e2e
    from harness.api.errors import ConfigError

    source = tiny_llama_folder(tmp_path / "hf")
    trained = checkpoint.save_checkpoint(tmp_path / "trained", small_model("swa"), trainer_state={"step": 3})
    before = sorted(p.name for p in trained.iterdir())
    with pytest.raises(ConfigError, match="already holds a checkpoint that was not imported"):
        import_pretrained(source, trained)
    np.savez(tmp_path / "official.npz", x=np.zeros(2))
    with pytest.raises(ConfigError, match="already holds a checkpoint that was not imported"):
        import_ttt_e2e(tmp_path / "official.npz", trained, config=OFFICIAL)
    assert sorted(p.name for p in trained.iterdir()) == before
    import_pretrained(source, tmp_path / "ours")
    import_pretrained(source, tmp_path / "ours")  # rerunning an import replaces it
    assert (tmp_path / "ours" / IMPORT_FILE).is_file()


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_an_unreadable_weight_file_is_named_not_a_traceback(tmp_path, name):
    """A cut-off or mislabelled weight file raised safetensors' or torch's own error (a traceback
    with exit 1) from `lcbench import` and `lcbench import-ttt-e2e`."""
    from harness.adapters.importers import import_ttt_e2e
    from harness.api.errors import CheckpointError

    folder = tiny_llama_folder(tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    (folder / name).write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(CheckpointError, match=f"{name} cannot be read as weights"):
        import_pretrained(folder, tmp_path / "ours")
    for official in ("official.npz", "official.safetensors"):
        (tmp_path / official).write_bytes(b"garbage\n")
        with pytest.raises(CheckpointError, match=f"{official} cannot be read as weights"):
            import_ttt_e2e(tmp_path / official, config=OFFICIAL)


def test_an_lcbench_export_is_named_as_one_needing_no_import(tmp_path):
    """`lcbench import runs/swa-tiny-hf OUT` (an export-hf folder) said "cannot import model_type 'lcbench'"."""
    from harness.adapters.hf_export import export_hf
    from harness.api.errors import ConfigError

    ours = checkpoint.save_checkpoint(tmp_path / "ours", small_model("swa"))
    export_hf(ours, tmp_path / "hf")
    with pytest.raises(ConfigError, match=r"is an lcbench export \(arch 'swa'\).*nothing to import"):
        import_pretrained(tmp_path / "hf", tmp_path / "out")
