"""Run provenance for ``run.json``: git commit, package versions, device, command line, and a
hash of the settings that define a run."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from harness.api.machine import CPU_CAPABILITY
from harness.api.results import RUN_JSON, atomic_write, json_default
from harness.api.timing import cpu_count, own_cpus


def git_commit(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """{'commit': sha or None, 'dirty': bool or None} of the repository holding ``path`` (a folder,
    or a file that must be tracked there); by default this module's own file, so a copy installed
    into an ignored folder of a checkout (its .venv) is not credited with that checkout's HEAD.
    A dirty checkout adds 'diff': a hash of its uncommitted changes to tracked files, so that two
    uncommitted states of one commit are told apart."""
    target = Path(path if path is not None else __file__).resolve()
    cwd = target if target.is_dir() else target.parent
    unknown: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return unknown
        if not target.is_dir():
            tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "--", target.name], cwd=cwd,
                                     capture_output=True, text=True, timeout=10)
            if tracked.returncode != 0:
                return unknown
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
        found = {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
        if found["dirty"]:
            diff = subprocess.run(["git", "diff", "HEAD", "--binary", "--no-ext-diff", "--no-color"], cwd=cwd,
                                  capture_output=True, timeout=60)
            if diff.returncode == 0:
                found["diff"] = hashlib.sha256(diff.stdout).hexdigest()[:12]
        return found
    except (OSError, subprocess.SubprocessError):
        return unknown


# Distribution names, as metadata.version knows them: every package of the kernel and lm-eval
# extras (they decide numbers), and faiss (ttt_neighbors' index=faiss). fla's kernels ship as
# ``fla-core`` (what the extras install); ``flash-linear-attention`` (fla-core plus fla's model zoo)
# is recorded when present.
PACKAGES = ("lcbench", "torch", "numpy", "pandas", "pyarrow", "safetensors", "triton",
            "fla-core", "flash-linear-attention", "mamba-ssm", "einops", "liger-kernel",
            "lm-eval", "transformers", "tokenizers", "accelerate", "faiss-cpu", "faiss-gpu")


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo; platform.processor() is often empty there)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        # the CPUs the run could use (a job pinned to 8 of a host's 128 cores ran on 8)
        "cpu_count": cpu_count(own_cpus()),
        "torch_threads": torch.get_num_threads(),
        # what picks the CPU kernels, so their speed and rounding: the SIMD level ATen dispatches to
        # (AVX2, AVX512; ATEN_CPU_CAPABILITY may lower it), and whether MKL and oneDNN are there to
        # serve matmuls and convolutions
        CPU_CAPABILITY: torch.backends.cpu.get_cpu_capability(),
        "mkl": torch.backends.mkl.is_available(),
        "onednn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
    }
    cuda = device is not None and str(device).startswith("cuda")
    # the GPU the run used ("auto" or None: the one it would pick); none for a CPU run, even on a
    # machine that has one
    if (cuda or device is None or str(device) == "auto") and torch.cuda.is_available():
        index = torch.device(device).index if cuda else None
        index = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(index)
        info.update(gpu=props.name, gpu_memory_bytes=int(props.total_memory), cuda=torch.version.cuda,
                    gpu_count=torch.cuda.device_count())
    return info


def device_record(device: str | None) -> dict[str, Any]:
    """The device a run used, by name, with :func:`device_info` of it (what run.json and each
    sweep cell record keep)."""
    return {"name": device, **device_info(device)}


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object (the settings that define a run)."""
    text = json.dumps(obj, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def invocation(argv: Sequence[str] | None = None) -> list[str]:
    """``argv`` (default: this process's) as a reader reruns it from any checkout: lcbench's own
    entry points, whose ``argv[0]`` is an absolute path (the console script's install path, and
    ``harness/cli.py`` under ``python -m harness.cli``), become ``lcbench``; the arguments stay as
    given (a path relative to the folder it ran in stays relative)."""
    argv = [str(a) for a in (sys.argv if argv is None else argv)]
    first = Path(argv[0]) if argv else Path()
    if first.name == "lcbench" or first.parts[-2:] == ("harness", "cli.py"):
        return ["lcbench", *argv[1:]]
    return argv


def run_metadata(seed: int | None = None, command: Sequence[str] | str | None = None, device: str | None = None,
                 git: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Provenance for ``run.json``: git commit, package versions, device, command line (default:
    this process's, :func:`invocation`), seed, time, and whatever else is given (task, options,
    model config); ``config_hash`` hashes the seed and the extra settings. ``git``:
    :func:`git_commit` read when the run started (default: now)."""
    if command is None:
        command = invocation()
    settings = {"seed": seed, **extra}
    return {
        **settings,
        "config_hash": config_hash(settings),
        # quoted as a shell would need it: a path with a space must read back as one argument
        "command": command if isinstance(command, str) else shlex.join(map(str, command)),
        "git": dict(git) if git is not None else git_commit(),
        "packages": package_versions(),
        "device": device_record(device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_run_json(run_dir: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    return atomic_write(Path(run_dir) / RUN_JSON,
                        lambda f: f.write(json.dumps(meta, indent=2, default=json_default, sort_keys=False) + "\n"))


def read_run_json(run_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(run_dir) / RUN_JSON).read_text(encoding="utf-8"))
