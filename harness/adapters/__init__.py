"""Other ecosystems: lm-evaluation-harness, Hugging Face tokenizers, checkpoint importers."""
