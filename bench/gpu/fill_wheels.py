"""Fill the wheel folder the GPU kit installs from (the GPU machine has no network):

    python -m bench.gpu.fill_wheels [--dest .whl] [--limit-mib 32]

Run it on a CPU machine with network, in this project's environment (mamba-ssm's build imports
torch). It

- downloads fla-core, flash-linear-attention and liger-kernel (TTT-E2E's ``inner_loss="liger"``),
  pure-Python wheels, for CPython 3.12 on x86-64 Linux (what the GPU machine runs);
- builds mamba-ssm as a pure-Python wheel without its CUDA extension (``MAMBA_FORCE_BUILD=TRUE
  MAMBA_SKIP_CUDA_BUILD=TRUE``): lcbench uses only its Triton SSD kernels, and
  ``baselines/mamba2.py`` stands in for the missing Mamba-1 extension at import;
- checks the folder: every pinned distribution once (two versions would stop the install),
  each wheel installable on CPython 3.12 x86-64 Linux, and the folder well under the 64 MiB that
  one device call carries, the checkout included (both sizes are printed).

Everything else the kit needs (torch 2.11, triton 3.6, einops, transformers, pandas, pytest ...)
is on the GPU machine already. Put the folder in ``.git/info/exclude`` or .gitignore (``/.whl/``
is) and name it in the device call's ``carry``.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
from packaging.utils import canonicalize_name, parse_wheel_filename

from bench.gpu.config import ROOT, SOURCE_FILE
from harness.runs.provenance import git_commit

# pytest-timeout: without it a hung GPU test holds the gpu_tests step until the step's own limit
PINS = {"fla-core": "0.6.0", "flash-linear-attention": "0.6.0", "mamba-ssm": "2.3.2.post1", "liger-kernel": "0.8.5",
        "pytest-timeout": "2.4.0"}
BUILT_HERE = ("mamba-ssm",)  # the rest are downloaded as they are
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
INTERPRETERS, ABIS = {"py3", "py312", "cp312"}, {"none", "abi3", "cp312"}
CARRY_LIMIT_MIB = 64  # what one device call carries: the checkout plus the carried folders
MIB = 2**20


def runs_on_gpu_machine(filename: str) -> bool:
    """Whether a wheel installs on CPython 3.12, x86-64 Linux (pure Python, or manylinux x86-64)."""
    _, _, _, tags = parse_wheel_filename(filename)
    return any(t.interpreter in INTERPRETERS and t.abi in ABIS
               and (t.platform == "any" or (t.platform.startswith("manylinux") and t.platform.endswith("_x86_64")))
               for t in tags)


def check_folder(dest: Path, pins: dict[str, str], limit_mib: float) -> list[str]:
    """Everything wrong with the wheel folder (empty when it is ready)."""
    problems = []
    wheels = sorted(dest.glob("*.whl"))
    by_name: dict[str, list[str]] = {}
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        by_name.setdefault(name, []).append(str(version))
        if not runs_on_gpu_machine(wheel.name):
            problems.append(f"{wheel.name} does not install on CPython 3.12 x86-64 Linux")
    for name, versions in by_name.items():
        if len(versions) > 1:
            problems.append(f"{name} is there in {len(versions)} versions ({', '.join(versions)}): keep one")
    for name, version in pins.items():
        found = by_name.get(canonicalize_name(name), [])
        if version not in found:
            problems.append(f"{name}=={version} is missing" + (f" (found {', '.join(found)})" if found else ""))
    total = sum(w.stat().st_size for w in wheels) / MIB
    if total > limit_mib:
        problems.append(f"the wheels weigh {total:.1f} MiB, over the {limit_mib:g} MiB limit")
    return problems


def travelling_files(root: Path = ROOT) -> list[str]:
    """What a device call sends besides carried folders: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return [f for f in listed if f and (root / f).is_file()]


def checkout_mib(root: Path = ROOT) -> float:
    return sum((root / f).stat().st_size for f in travelling_files(root)) / MIB


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def fill(dest: Path, pins: dict[str, str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in dest.glob("*.whl"):  # one version of each pinned distribution
        if parse_wheel_filename(wheel.name)[0] in {canonicalize_name(n) for n in pins}:
            wheel.unlink()
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    download = [f"{n}=={v}" for n, v in pins.items() if n not in BUILT_HERE]
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
        *platforms, "--dest", str(dest), *download)
    env = {**os.environ, "MAMBA_FORCE_BUILD": "TRUE", "MAMBA_SKIP_CUDA_BUILD": "TRUE"}
    for name in BUILT_HERE:
        pip("wheel", "--no-build-isolation", "--no-deps", "--wheel-dir", str(dest), f"{name}=={pins[name]}", env=env)


@click.command()
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=ROOT / ".whl", show_default=True)
@click.option("--limit-mib", type=float, default=32.0, show_default=True,
              help="Most the wheels may weigh: well under the 64 MiB a device call carries, checkout included.")
@click.option("--check-only", is_flag=True, help="Check the folder without downloading or building.")
def main(dest: Path, limit_mib: float, check_only: bool) -> None:
    """Fill (and check) the wheel folder for the GPU kit."""
    if not check_only:
        fill(dest, PINS)
    for wheel in sorted(dest.glob("*.whl")):
        print(f"{wheel.stat().st_size / MIB:8.2f} MiB  {wheel.name}")
    wheels = sum(w.stat().st_size for w in dest.glob("*.whl")) / MIB
    tree = checkout_mib()
    print(f"wheels {wheels:.2f} MiB + checkout {tree:.2f} MiB = {wheels + tree:.2f} MiB of the {CARRY_LIMIT_MIB} MiB "
          "a device call carries")
    problems = check_folder(dest, PINS, limit_mib)
    if wheels + tree > CARRY_LIMIT_MIB:
        problems.append(f"wheels and checkout together exceed {CARRY_LIMIT_MIB} MiB")
    if problems:
        raise click.ClickException("; ".join(problems))
    write_source(dest)
    print("ready")


def write_source(dest: Path) -> None:
    """Record in ``dest`` the commit (and whether the tree had uncommitted edits) it was filled for,
    and a digest of every file a device call sends, so that the GPU machine (no git there) can tell
    whether its checkout is still that commit's."""
    commit = git_commit(ROOT)
    record = {"commit": commit["commit"], "dirty": commit["dirty"],
              "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "files": {f: file_digest(ROOT / f) for f in travelling_files(ROOT)}}
    (dest / SOURCE_FILE).write_text(json.dumps(record))


if __name__ == "__main__":
    main()
