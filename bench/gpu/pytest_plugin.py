"""pytest plugin of the GPU kit (``-p bench.gpu.pytest_plugin``, loaded by the ``gpu_tests`` step).

Every selected test is planned in the kit's ledger, marked running when it starts, and its outcome
recorded as soon as it is known, so a run stopped part-way still says which tests passed, failed or
never ran, and a pytest that died names the test it died in. A file that fails to collect is a
failed item. A test that fails with a CUDA error that breaks the process's CUDA context (an
illegal memory access) stops the run, so that the tests after it run in a new process. What a test
measured (``record_property``, e.g. an error beside its tolerance) is that record's message. A test that
would start with less than the kit's per-test minimum left before the step's deadline is skipped
with that reason. Outside the kit (no ledger in the environment) it does nothing.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.gpu.ledger import BROKEN_CUDA_CONTEXT, RUNNING, Ledger

LEDGER_ENV = "LCBENCH_KIT_LEDGER"
DEADLINE_ENV = "LCBENCH_KIT_DEADLINE"
MIN_TEST_ENV = "LCBENCH_KIT_MIN_TEST_S"
STEP = "gpu_tests"
_session: list[pytest.Session] = []  # this run's, for stopping it


def _ledger() -> Ledger | None:
    path = os.environ.get(LEDGER_ENV)
    return Ledger(Path(path), STEP) if path else None


def pytest_collection_finish(session: pytest.Session) -> None:
    ledger = _ledger()
    if ledger is not None:
        ledger.plan(item.nodeid for item in session.items)
        _session[:] = [session]


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A file that fails to collect (an import error) is a failed item: its tests are not selected,
    and nothing else would say they are missing."""
    ledger = _ledger()
    if ledger is not None and report.failed:
        ledger.record(report.nodeid or "(collection)", "failed", message=f"collection error: {_reason(report)}")


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    ledger = _ledger()
    if ledger is not None:  # still planned, now running: if pytest dies here, this test is why
        ledger.record(nodeid, "planned", message=RUNNING)


def pytest_runtest_setup(item: pytest.Item) -> None:
    left = float(os.environ.get(DEADLINE_ENV, "inf")) - time.time()
    need = float(os.environ.get(MIN_TEST_ENV, "0"))
    if left < need:
        pytest.skip(f"GPU kit: {max(left, 0):.0f} s left of this step's time, a test is given {need:.0f} s")


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    lines = report.longreprtext.splitlines()
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return " | ".join(errors[:3]) if errors else (lines[-1] if lines else "")


def _measured(report: pytest.TestReport) -> str:
    return "; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.user_properties)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    ledger = _ledger()
    decisive = report.when == "call" or (report.when == "setup" and not report.passed) or report.failed
    if ledger is None or not decisive:
        return
    status = "ok" if report.passed else "skipped" if report.skipped else "failed"
    message = _measured(report) if report.passed else " | ".join(filter(None, [_reason(report), _measured(report)]))
    ledger.record(report.nodeid, status, report.duration, message)
    if report.failed and BROKEN_CUDA_CONTEXT.search(report.longreprtext) and _session:
        # stop here: the kit runs the tests not yet run in a new process (bench.gpu.gpu_tests)
        _session[0].shouldstop = f"a CUDA error that breaks this process's CUDA context, in {report.nodeid}"
