"""Tables about what is registered: presets and their parameter counts."""
from __future__ import annotations

import pandas as pd
import torch

from harness.api import registry


def count_params(arch: str, preset: str) -> tuple[int, int]:
    """(non-embedding, total) parameters of a preset, built on the meta device (no memory)."""
    config = registry.make_config(arch, preset)
    with torch.device("meta"):
        model = registry.build_model(config)
    return model.num_params(non_embedding=True), model.num_params(non_embedding=False)


def preset_table(archs: list[str] | None = None) -> pd.DataFrame:
    """One row per (architecture, preset): sizes and parameter counts, presets side by side."""
    rows = []
    for arch in archs or registry.model_names():
        for preset in registry.preset_names(arch):
            config = registry.make_config(arch, preset)
            non_embedding, total = count_params(arch, preset)
            rows.append(
                {
                    "arch": arch,
                    "preset": preset,
                    "layers": config.n_layers,
                    "d_model": config.d_model,
                    "vocab": config.vocab_size,
                    "params_non_embedding": f"{non_embedding / 1e6:,.2f}M",
                    "params_total": f"{total / 1e6:,.2f}M",
                }
            )
    return pd.DataFrame(rows)
