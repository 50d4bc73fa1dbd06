"""The quick benchmark: the committed spec results/specs/quick.yaml, run as a sweep."""
from __future__ import annotations

from pathlib import Path

from harness.api.errors import ConfigError, unknown_message
from harness.runs.sweep import SweepResult, load_spec, run_sweep

QUICK_SPEC = Path(__file__).resolve().parents[2] / "results" / "specs" / "quick.yaml"


def run_quick(out_dir: str | Path = "runs/quick", archs: str | list[str] | None = None, steps: int | None = None,
              progress: bool = True, retry_failed: bool = False) -> SweepResult:
    """Run the quick spec (optionally only some architectures, or another training budget; with
    ``retry_failed``, the cells that failed before run again)."""
    if isinstance(archs, str):  # one name, not its letters
        archs = [archs]
    if not QUICK_SPEC.is_file():
        raise ConfigError(f"the quick spec is missing at {QUICK_SPEC}; run lcbench quick from a checkout of lcbench")
    spec = load_spec(QUICK_SPEC)
    if archs:
        known = [m.arch for m in spec.models]
        for arch in archs:
            if arch not in known:
                raise ConfigError(unknown_message("architecture", arch, known, of="the quick spec"))
        spec.models = [m for m in spec.models if m.arch in archs]
    if steps is not None:
        spec.train = {**spec.train, "steps": steps}
    return run_sweep(spec, out_dir, progress=progress, retry_failed=retry_failed)
