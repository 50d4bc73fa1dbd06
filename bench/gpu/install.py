"""Step ``install``: the GPU extras from a local wheel folder, and this checkout, into one folder.

The GPU machine has no network: fla-core, flash-linear-attention, mamba-ssm and liger-kernel arrive
as wheels (``bench/gpu/fill_wheels.py`` fills the folder). Both installs go into ``<work>/site`` with
``--no-index --no-deps``, never into the machine's own packages; later steps run with
``PYTHONPATH=<checkout>:<work>/site``. This checkout is installed too, because architectures and
tasks register through its entry points; the checkout itself stays first on the path, so the
code that runs is the code in the tree.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.gpu.clock import Clock
from bench.gpu.config import ROOT, KitConfig
from bench.gpu.ledger import Ledger


def site_dir(work: Path) -> Path:
    return work / "site"


def python_path(work: Path) -> str:
    """PYTHONPATH for the steps after this one: the checkout, then the installed extras."""
    parts = [str(ROOT)]
    if site_dir(work).is_dir():
        parts.append(str(site_dir(work)))
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def pip_install(args: list[str], target: Path, clock: Clock) -> None:
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir",
               "--disable-pip-version-check", "--upgrade", "--target", str(target), *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, timeout=max(1.0, clock.left()))


def install_wheels(wheels: list[Path], site: Path, clock: Clock) -> None:
    """All at once; if that fails, one by one: pip installs none of them when one is bad (another
    platform's, a broken file), and one bad wheel must not cost the GPU run every kernel."""
    try:
        pip_install(["--no-compile", *map(str, wheels)], site, clock)
        return
    except subprocess.CalledProcessError:
        print("installing the wheels together failed: now one by one", flush=True)
    failed = []
    for wheel in wheels:
        try:
            pip_install(["--no-compile", str(wheel)], site, clock)
        except subprocess.CalledProcessError:
            failed.append(wheel.name)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(wheels)} wheels failed to install (see the install log): "
                           f"{', '.join(failed)}; the others are installed")


def run(cfg: KitConfig, work: Path, clock: Clock, ledger: Ledger) -> None:
    site = site_dir(work)
    ledger.plan(["wheels", "lcbench"])
    if cfg.wheels is None:
        ledger.record("wheels", "skipped", message="no wheel folder given (--wheels): kernels only if already installed")
    elif not Path(cfg.wheels).is_dir():  # one GPU slot: the run goes on, with what the machine has
        ledger.record("wheels", "failed", message=f"no folder {cfg.wheels} (not carried to this machine?): the GPU "
                                                  "extras are not installed; kernels only if the machine has them")
    else:
        wheels = sorted(Path(cfg.wheels).glob("*.whl"))
        if wheels:
            ledger.run("wheels", lambda: install_wheels(wheels, site, clock))
        else:
            ledger.record("wheels", "failed", message=f"no .whl files in {cfg.wheels}")
    ledger.run("lcbench", lambda: pip_install(["--no-build-isolation", str(ROOT)], site, clock))
