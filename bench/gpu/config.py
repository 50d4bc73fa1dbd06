"""What one GPU-kit run does: a dataclass that serialises to JSON, so the orchestrator and every
step's worker process read the same settings (``kit.json`` in the work folder).

:meth:`KitConfig.gpu` is the real run (one H100/H200, bf16, paper sizes); :meth:`KitConfig.dry_run`
is the same code path shrunk to seconds on a CPU (tiny presets, fp32, torch reference kernels,
short contexts), which CI runs.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.api.errors import ConfigError, unknown_message

ROOT = Path(__file__).resolve().parents[2]  # the checkout: steps run here, relative paths start here
CONFIG_FILE = "kit.json"
# in the wheel folder: the checkout's commit when bench.gpu.fill_wheels declared it ready. The device
# machine gets a copy of the tree without .git, so the summary names the commit from there.
SOURCE_FILE = "source.json"
LEDGER_FILE = "ledger.jsonl"
ARCHS = ("full_attention", "swa", "mamba2", "gated_deltanet", "ttt_e2e")
# Run order. A step's time limit is its weight's share of the time still left when it starts,
# so time a fast step leaves over goes to the later ones; the last step gets all that is left.
STEP_WEIGHTS = {
    "install": 1.0,          # GPU extras from the wheel folder, and this checkout
    "environment": 1.0,      # nvidia-smi, package versions, which kernel each architecture picks
    "gpu_tests": 4.0,        # pytest -m gpu: correctness first
    "latency": 3.0,          # five architectures at the base size on the latency grid
    "throughput": 2.0,       # training tokens/s and MFU at the base size
    "ttt_speed": 1.5,        # bench.gpu.ttt_speed, where present
    "latency_large": 1.0,    # the large size at the longest context, with what is left
}
STEPS = tuple(STEP_WEIGHTS)


@dataclass
class KitConfig:
    budget_s: float = 480.0  # the whole run, bundling included
    reserve_s: float = 15.0  # kept back for the summary and the output folder
    write_every_s: float = 30.0  # the output folder is rewritten this often while a step runs
    dry_run: bool = False
    wheels: str | None = None  # folder of .whl files to install offline (None: install none)
    steps: list[str] = field(default_factory=lambda: list(STEPS))
    device: str = "cuda"
    dtype: str = "bf16"  # latency: parameter dtype; training: autocast dtype (parameters fp32)
    backend: str | None = None  # force a mixer backend (None: each model's "auto")
    archs: list[str] = field(default_factory=lambda: list(ARCHS))
    latency_spec: str = "results/specs/latency_gpu.yaml"
    size: str = "125m"  # which of the spec's models (by preset) the latency/throughput steps take
    large_size: str = "760m"
    run_preset: str | None = None  # build the selected models at this preset instead (dry run: tiny)
    contexts: list[int] = field(default_factory=lambda: [8192, 32768, 131072])
    large_contexts: list[int] = field(default_factory=lambda: [131072])
    # over the spec's task options: one warm-up call (it compiles) and 3 timed ones leave time for 128K
    latency_options: dict[str, Any] = field(default_factory=lambda: {"warmup": 1, "repeats": 3})
    train_seq_len: int = 8192
    train_batch_size: int = 1
    train_warmup_steps: int = 2  # untimed: kernel compilation and autotuning happen here
    train_steps: int = 5
    peak_tflops: float | None = None  # None: from the GPU's name (see bench.gpu.flops)
    torch_threads: int = 0  # torch's CPU threads in every step (OMP_NUM_THREADS; 0: leave as set)
    test_timeout_s: int = 90  # per GPU test (pytest-timeout travels with the wheels): under the step's share
    min_test_s: float = 20.0  # a GPU test starts only with this much of the step's time left
    min_item_s: float = 5.0  # a measurement starts only with this much left (before any estimate)

    def __post_init__(self) -> None:
        if self.budget_s <= self.reserve_s:
            raise ConfigError(f"budget_s={self.budget_s} must exceed the {self.reserve_s} s kept for the output folder")
        for name in self.steps:
            if name not in STEP_WEIGHTS:
                raise ConfigError(unknown_message("GPU-kit step", name, STEPS))
        for name in self.archs:
            if name not in ARCHS:
                raise ConfigError(unknown_message("architecture", name, ARCHS))
        self.steps = [s for s in STEPS if s in self.steps]  # always in run order

    @classmethod
    def gpu(cls, **changes: Any) -> "KitConfig":
        return cls(**changes)

    @classmethod
    def dry(cls, **changes: Any) -> "KitConfig":
        """The same steps on a CPU in about a minute: tiny models, fp32, reference kernels, short contexts."""
        small = dict(
            dry_run=True, device="cpu", dtype="fp32", backend="torch", run_preset="tiny",
            contexts=[64, 128], large_contexts=[128],
            latency_options=dict(warmup=0, repeats=2, decode_tokens=2, resamples=50),
            train_seq_len=128, train_warmup_steps=1, train_steps=2,
            torch_threads=1, test_timeout_s=120, min_test_s=0.0, min_item_s=0.0,
        )
        return cls(**{**small, **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "KitConfig":
        return cls(**json.loads(path.read_text()))
