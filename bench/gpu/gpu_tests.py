"""Step ``gpu_tests``: ``pytest -m gpu``, every test's outcome streamed to the kit's ledger (by
:mod:`bench.gpu.pytest_plugin`) and a JUnit XML report beside it. Tests run one after another
(one GPU; compiled kernels are cached for the steps that follow), each with a time limit where
pytest-timeout is installed; a test is skipped, and says so, when too little of the step's time
is left for it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.gpu import pytest_plugin
from bench.gpu.clock import Clock
from bench.gpu.config import ROOT, KitConfig
from bench.gpu.ledger import Ledger

JUNIT = "gpu_tests.xml"
PYTEST_ALL_PASSED, PYTEST_SOME_FAILED = 0, 1


def has_pytest_timeout() -> bool:
    try:
        metadata.version("pytest-timeout")
    except metadata.PackageNotFoundError:
        return False
    return True


# a decorator line, not a mention: the mark itself, or conftest's kernel_cases, whose CUDA cases carry it
GPU_MARK = re.compile(r"^\s*@(pytest\.mark\.gpu|kernel_cases)\b", re.MULTILINE)
# GPU test files in the order they run: the step's time may end before the last, so the kernel
# equivalence tests (seconds each) come first, then the imported fla / mamba-ssm models beside
# ours, TTT-E2E's fast paths, what compiles flex attention, then the torchrun tests (slowest);
# files not named here follow, in name order.
TEST_FILE_ORDER = ("test_timing.py", "test_gated_deltanet.py", "test_mamba2.py", "test_linear_cross_entropy.py",
                   "test_importers.py", "test_ttt_e2e.py", "test_attention.py", "test_distributed.py")


def gpu_test_files(tests: Path = ROOT / "tests") -> list[str]:
    """The test files that mark any test ``gpu`` (:data:`TEST_FILE_ORDER` first): collecting only
    these spares importing the others (lm-eval's, for one), seconds of the budget; ``-m gpu``
    then selects within them."""
    files = [f for f in sorted(tests.glob("test_*.py")) if GPU_MARK.search(f.read_text(encoding="utf-8"))]
    rank = {name: i for i, name in enumerate(TEST_FILE_ORDER)}
    return [str(f) for f in sorted(files, key=lambda f: rank.get(f.name, len(rank)))]


def command(cfg: KitConfig, work: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
           "-p", pytest_plugin.__name__, f"--junitxml={work / JUNIT}", *gpu_test_files()]
    if has_pytest_timeout():
        cmd.append(f"--timeout={cfg.test_timeout_s}")
    return cmd


def run(cfg: KitConfig, work: Path, clock: Clock, ledger: Ledger) -> None:
    env = {**os.environ, pytest_plugin.LEDGER_ENV: str(ledger.path), pytest_plugin.DEADLINE_ENV: repr(clock.deadline),
           pytest_plugin.MIN_TEST_ENV: str(cfg.min_test_s)}
    cmd = command(cfg, work)
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, timeout=max(1.0, clock.left()))
    if done.returncode not in (PYTEST_ALL_PASSED, PYTEST_SOME_FAILED):  # interrupted, usage error, nothing collected
        raise RuntimeError(f"pytest exited with status {done.returncode} (see the gpu_tests log)")
