"""Checkpoint import: Hugging Face-format folders built offline with random weights load into our
architectures and give the same logits; anything that does not fit is named."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from harness import checkpoint
from harness.importers import ImportMismatchError, import_pretrained
from harness.importers.common import IMPORT_FILE
from tests.conftest import small_model


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
    from harness.hf_tokenizer import export_tokenizer

    export_tokenizer("byte", tmp_path / "hf")  # a tokenizer in the folder travels with the import
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
    from harness.lm_eval_adapter import LcbenchLM

    assert LcbenchLM(checkpoint=str(tmp_path / "ours"), device="cpu").tok.name.endswith("ours/tokenizer")


def test_mamba2_import_reproduces_transformers_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
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
    model = import_pretrained(mamba_ssm_folder(original, tmp_path / "mamba_ssm"))
    assert model.config.ngroups == 2 and model.config.mlp_hidden == 1 and model.config.tie_embeddings
    x = tokens(original.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), atol=1e-6, rtol=1e-6)


def test_real_fla_model_classes_import(tmp_path):
    """With flash-linear-attention installed, its own model classes (random weights, built on CPU)
    import by name and shape; their logits are compared where their forward runs (CUDA)."""
    pytest.importorskip("fla.models", exc_type=ImportError)
    from fla.models import GatedDeltaNetConfig, Mamba2Config
    from transformers import AutoModelForCausalLM

    for name, config in {
        "gdn": GatedDeltaNetConfig(hidden_size=64, num_heads=2, head_dim=16, num_hidden_layers=2, vocab_size=300,
                                   intermediate_size=96),
        "mamba2": Mamba2Config(hidden_size=64, head_dim=16, state_size=8, num_hidden_layers=2, vocab_size=300,
                               n_groups=2, chunk_size=16),
    }.items():
        theirs = AutoModelForCausalLM.from_config(config).eval()
        theirs.save_pretrained(tmp_path / name)
        ours = import_pretrained(tmp_path / name)
        if torch.cuda.is_available():
            x = tokens(300).cuda()
            with torch.no_grad():
                torch.testing.assert_close(ours.cuda()(x), theirs.cuda()(x).logits, atol=2e-3, rtol=2e-3)


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
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot import model_type 'qwen3'; supported: llama"):
        import_pretrained(tmp_path / "biased")
