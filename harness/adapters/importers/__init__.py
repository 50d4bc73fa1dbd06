"""Pretrained weights from other code bases into our architectures.

- :func:`import_pretrained`: a local Hugging Face-format folder — transformers' Llama
  (``full_attention``), flash-linear-attention's Gated DeltaNet (``gated_deltanet``), Mamba 2 as
  transformers / flash-linear-attention save it, or mamba-ssm's own layout (``mamba2``).
- :func:`import_ttt_e2e`: a parameter tree of the official TTT-E2E JAX code (``ttt_e2e``).

Each importer reads the source's config into ours, maps every one of our tensors to the source
tensor it comes from, and fails with :class:`ImportMismatchError` naming each missing, mismatched
or unused tensor. With an output folder the result is an ordinary lcbench checkpoint, plus the
source's tokenizer under ``tokenizer/`` and ``import.json`` (what was imported from where).
"""
from __future__ import annotations

from harness.adapters.importers.common import (
    ImportedCheckpointWarning,
    ImportMismatchError,
    assign_weights,
    save_imported,
)
from harness.adapters.importers.hf import FORMATS, detect_format, import_pretrained
from harness.adapters.importers.ttt_e2e import import_ttt_e2e

__all__ = ["FORMATS", "ImportedCheckpointWarning", "ImportMismatchError", "assign_weights", "detect_format",
           "import_pretrained", "import_ttt_e2e", "save_imported"]
