"""Step ``environment``: what the numbers ran on, as one text file: nvidia-smi, Python, the
package versions, the git commit, and which backend ``auto`` picks for each architecture here."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

from bench.gpu.clock import Clock
from bench.gpu.config import CONFIG_FILE, ROOT, SOURCE_FILE, KitConfig
from bench.gpu.fill_wheels import file_digest
from bench.gpu.ledger import Ledger
from harness.runs.provenance import git_commit

PRESET = "125m"  # the size the kit measures first; the backend a config picks does not depend on it

FILE = "environment.txt"
FACTS_FILE = "environment.json"  # the few facts the summary's title needs
PACKAGES = ("lcbench", "torch", "triton", "fla-core", "flash-linear-attention", "mamba-ssm", "liger-kernel",
            "einops", "transformers", "numpy", "pandas", "pyarrow", "pytest", "pytest-timeout")


def nvidia_smi() -> str:
    try:
        full = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        query = subprocess.run(["nvidia-smi", "--format=csv", ("--query-gpu=name,memory.total,driver_version,"
                                "clocks.max.sm,clocks.max.mem,power.limit,pstate,temperature.gpu")],
                               capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "nvidia-smi not found: no NVIDIA driver on this machine"
    return full.stdout + full.stderr + "\n" + query.stdout + query.stderr


def versions() -> str:
    commit = git_commit()
    lines = [f"python {platform.python_version()} ({sys.executable})", f"platform {platform.platform()}",
             f"git commit {commit['commit']}, uncommitted changes: {commit['dirty']}",
             f"torch.version.cuda {torch.version.cuda}",
             f"cudnn {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(f"gpu {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
                     f"{props.major}.{props.minor}, {props.multi_processor_count} SMs")
    for name in PACKAGES:
        try:
            dist = metadata.distribution(name)
            lines.append(f"{name} {dist.version} ({dist.locate_file('')})")
        except metadata.PackageNotFoundError:
            lines.append(f"{name} (not installed)")
    return "\n".join(lines)


def backends(device: torch.device) -> str:
    """Which backend ``auto`` picks for each architecture here (what its result rows' ``backend``
    column will say), then every declared kernel backend and whether it runs (``lcbench list
    --kernels``'s table)."""
    from harness.api import registry
    from harness.api.kernels import kernel_report

    def picked(arch: str) -> str:
        with torch.device("meta"):  # the config decides; no weights are made
            return registry.create_model(arch, PRESET).backend_on(device)

    kernels = kernel_report(registry.model_kernels(), device)
    return "\n".join([
        f"device {device}",
        *(f"{arch} ({PRESET}): auto -> {picked(arch)}" for arch in registry.model_names()),
        *(f"{row['mixer']} backend {row['backend']} (used by {row['used by']}; {row['installed']}): {row['runs here']}"
          for row in kernels),
    ])


def pip_list() -> str:
    done = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=60)
    return done.stdout


def facts(device: torch.device, wheels: str | None = None) -> dict[str, str]:
    """The summary title's facts. Without git (the device machine gets the tree without .git) the
    commit is the one ``bench.gpu.fill_wheels`` recorded in the wheel folder, said to be that."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"
    found = {"device": name, "torch": torch.__version__, "cuda": str(torch.version.cuda)}
    commit, told = git_commit(), ""
    if not commit["commit"] and wheels is not None:
        try:
            recorded = json.loads((Path(wheels) / SOURCE_FILE).read_text())
            filled = {"commit": str(recorded["commit"]), "dirty": bool(recorded.get("dirty"))}
            changed = changed_files(recorded.get("files", {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no record, or not one fill_wheels wrote
            filled = None
        if filled and changed:  # the checkout moved on since the wheels were filled: that commit is not this tree
            return {**found, "git": f"unknown (no git here): {len(changed)} file(s) differ from commit "
                                    f"{filled['commit'][:12]}, the wheels', e.g. {', '.join(changed[:3])}"}
        if filled:
            commit = filled
            told = f" (no git here: the checkout's when the wheels were filled, {recorded.get('at', 'at an unrecorded time')})"
    sha = commit["commit"][:12] if commit["commit"] else "unknown (no git here)"  # cut the sha, not the words
    return {**found, "git": sha + (" (uncommitted changes)" if commit["dirty"] else "") + told}


def changed_files(recorded: dict[str, str], root: Path = ROOT) -> list[str]:
    """The files ``bench.gpu.fill_wheels`` recorded whose content here differs, or that are gone."""
    return [f for f, digest in recorded.items() if not (root / f).is_file() or file_digest(root / f) != digest]


def run(cfg: KitConfig, work: Path, clock: Clock, ledger: Ledger) -> None:
    device = torch.device(cfg.device if cfg.device != "cuda" or torch.cuda.is_available() else "cpu")
    sections: list[tuple[str, Callable[[], str]]] = [
        ("nvidia-smi", nvidia_smi), ("versions", versions), ("backends", lambda: backends(device)),
        ("pip list", pip_list), ("kit config", lambda: (work / CONFIG_FILE).read_text()),
    ]
    ledger.plan(name for name, _ in sections)
    parts = []
    for name, describe in sections:
        text = ledger.run(name, describe)
        parts.append(f"## {name}\n\n{text if text is not None else '(failed: see logs.txt)'}\n")
    (work / FILE).write_text("\n".join(parts))
    (work / FACTS_FILE).write_text(json.dumps(facts(device, cfg.wheels)))
