"""The quick benchmark: tiny models of every registered architecture on the embedded corpus."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import data, registry
from harness.train import TrainConfig, prepare_data, train

QUICK_TRAIN = TrainConfig(steps=150, batch_size=8, seq_len=256, lr=3e-3, eval_every=0, eval_batches=8)


@dataclass
class QuickResult:
    table: pd.DataFrame  # one row per architecture
    out_dir: Path


def run_quick(out_dir: str | Path = "runs/quick", archs: list[str] | None = None,
              train_config: TrainConfig = QUICK_TRAIN, progress: bool = True) -> QuickResult:
    """Train the tiny preset of each architecture with one budget and data; report validation loss."""
    out_dir = Path(out_dir)
    archs = archs or registry.model_names()
    for arch in archs:
        registry.get_model_class(arch)  # fail on a bad name before any training
    training_data = prepare_data(train_config)  # shared: every model sees the same batches
    vocab = data.load_tokenizer(train_config.tokenizer).vocab_size
    rows = []
    for arch in archs:
        config = registry.make_config(arch, "tiny", vocab_size=vocab)
        result = train(config, train_config, out_dir=out_dir / arch, progress=progress, training_data=training_data)
        rows.append({
            "arch": arch,
            "params_non_embedding": result.model.num_params(),
            "steps": result.step,
            "train_tokens": result.step * train_config.tokens_per_step,
            "val_loss": result.val_loss,
            "train_tokens_per_s": result.tokens_per_s,
        })
    return QuickResult(pd.DataFrame(rows), out_dir)
