"""Step ``gpu_tests``: ``pytest -m gpu``, every test's outcome streamed to the kit's ledger (by
:mod:`bench.gpu.pytest_plugin`) and a JUnit XML report beside it. Tests run one after another
(one GPU; compiled kernels are cached for the steps that follow), each with a time limit where
pytest-timeout is installed; a test is skipped, and says so, when too little of the step's time
is left for it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from bench.gpu import pytest_plugin
from bench.gpu.clock import Clock
from bench.gpu.config import ROOT, KitConfig
from bench.gpu.ledger import RUNNING, STEP_ITEM, Ledger, read

JUNIT = "gpu_tests.xml"


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


def command(cfg: KitConfig, junit: Path, targets: list[str]) -> list[str]:
    # a file that fails to collect must not stop the others (pytest stopped the whole run there);
    # test ids relative to the checkout, where pytest runs, so a run after a crash can name them
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider", f"--rootdir={ROOT}",
           "--continue-on-collection-errors", "-p", pytest_plugin.__name__, f"--junitxml={junit}", *targets]
    if has_pytest_timeout():
        cmd.append(f"--timeout={cfg.test_timeout_s}")
    return cmd


def exit_status(code: int) -> str:
    """pytest's exit status in words: a signal's name, or pytest's own name for it."""
    if code < 0:
        return f"exit status {code} ({signal.Signals(-code).name})"
    try:
        return f"exit status {code} ({pytest.ExitCode(code).name})"
    except ValueError:
        return f"exit status {code}"


def unfinished(ledger: Ledger) -> pd.DataFrame:
    table = read(ledger.path)
    return table[(table["step"] == ledger.step) & (table["status"] == "planned") & (table["item"] != STEP_ITEM)]


def finished(ledger: Ledger) -> int:
    table = read(ledger.path)
    return int(((table["step"] == ledger.step) & ~table["status"].isin(["planned"])).sum())


def run(cfg: KitConfig, work: Path, clock: Clock, ledger: Ledger) -> None:
    """``pytest -m gpu``. If pytest ends with tests not yet run (it died: a segfault, the OOM
    killer, a hung test's thread timeout; or it stopped after a CUDA error that breaks its CUDA
    context), the test it died in is recorded failed and pytest runs again on the rest, while a
    test's minimum time is left: one crash no longer takes every later test with it."""
    env = {**os.environ, pytest_plugin.LEDGER_ENV: str(ledger.path), pytest_plugin.DEADLINE_ENV: repr(clock.deadline),
           pytest_plugin.MIN_TEST_ENV: str(cfg.min_test_s)}
    targets = gpu_test_files()
    while True:
        before = finished(ledger)
        cmd = command(cfg, work / JUNIT, targets)  # a pytest that died wrote none: the report is the last run's
        print("$", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, cwd=ROOT, env=env, timeout=max(1.0, clock.left()))
        if done.returncode == pytest.ExitCode.NO_TESTS_COLLECTED:
            raise RuntimeError(f"pytest selected no GPU test ({exit_status(done.returncode)}; see the gpu_tests log)")
        left = unfinished(ledger)
        if left.empty and done.returncode in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            return
        for item in left[left["message"] == RUNNING]["item"]:
            ledger.record(item, "failed", message=f"pytest died in this test: {exit_status(done.returncode)}")
        if finished(ledger) == before:  # no test ended: running again would end the same way
            raise RuntimeError(f"pytest ended with {exit_status(done.returncode)} (see the gpu_tests log)")
        targets = unfinished(ledger)["item"].tolist()
        print(f"pytest ended with {exit_status(done.returncode)}; {len(targets)} test(s) not yet run", flush=True)
        if not targets or not clock.fits(max(cfg.min_test_s, 1.0)):
            return  # what is left stays planned: the kit records it as unfinished
