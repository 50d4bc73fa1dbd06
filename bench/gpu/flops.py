"""Training FLOPs per token, and the GPU peaks that model FLOPs utilisation (MFU) divides by.

FLOPs per trained token = 6 N + 12 L_attn d k̄ (the PaLM paper's accounting, causal):

- ``6 N``: a multiply-add (2 FLOPs) per parameter and token forward, twice that backward, with
  N = the non-embedding parameters plus the LM head's V x d matmul (an embedding lookup is no
  arithmetic; the head's matmul is, tied or not: at 125M with a 128K vocabulary it is more than
  half of all the model's FLOPs);
- ``12 L_attn d k̄``: the score (QKᵀ) and value (PV) matmuls, 2 x 2 d FLOPs per visible key
  forward and three times that with backward, in every softmax-attention layer, k̄ being the
  mean number of keys a query sees: (T + 1) / 2 for causal attention over T tokens, fewer for a
  sliding window W (min(t, W) at position t).

Not counted, so the MFU of these is a lower bound on how busy the GPU is: Mamba 2's and Gated
DeltaNet's state updates and short convolutions (well under 1% of 6 N at 125M), and TTT-E2E's
inner-loop gradient steps on its prime MLPs (its second-order outer backward included).

Peaks are NVIDIA's dense bf16 Tensor Core figures (no sparsity; the data sheets print twice
these, with sparsity): H100 SXM 989 TFLOP/s, H200 SXM the same chip and clocks (989), H100 NVL and
H200 NVL (PCIe cards at a lower power) 835, H100 PCIe 756. Both H200s have 141 GB: only the name
tells them apart.
"""
from __future__ import annotations

from baselines.attention import AttentionConfig
from harness.api.interface import LCModel, ModelConfig

# (substring of torch.cuda.get_device_name(), dense bf16 FLOP/s); first match wins.
PEAK_BF16_FLOPS = (("H200 NVL", 835e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
                   ("H100", 989e12))


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU by name; None when the name is not in the table."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def attention_layers(config: ModelConfig) -> tuple[int, int]:
    """(softmax-attention layers, their window; 0 = full causal): every block of full_attention,
    swa and ttt_e2e (its suffix blocks attend in the same window); none for the recurrent mixers."""
    if isinstance(config, AttentionConfig):
        return config.n_layers, config.window
    return 0, 0


def mean_keys(seq_len: int, window: int) -> float:
    """Mean over positions t = 1..T of the keys position t sees: min(t, W), or t without a window."""
    if not window or window >= seq_len:
        return (seq_len + 1) / 2
    inside = window * (window + 1) / 2  # positions 1..W see t keys
    return (inside + (seq_len - window) * window) / seq_len


def matmul_params(model: LCModel) -> int:
    """N of 6 N: non-embedding parameters plus the LM head's matmul (V x d)."""
    return model.num_params(non_embedding=True) + model.config.vocab_size * model.config.d_model


def train_flops_per_token(model: LCModel, seq_len: int) -> float:
    layers, window = attention_layers(model.config)
    return 6 * matmul_params(model) + 12 * layers * model.config.d_model * mean_keys(seq_len, window)
