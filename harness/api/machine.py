"""Machine records (the device records run.json and each sweep cell record keep) in words, one
name per machine whose timings compare: a device and its GPU, or its CPU model, the cores the run
could use and ATen's CPU capability (AVX2 or AVX-512 kernels: another speed and other rounding)."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

# the device record's field for torch.backends.cpu.get_cpu_capability(); records written before
# it was recorded lack it
CPU_CAPABILITY = "cpu_capability"


def machine_name(machine: Mapping[str, Any]) -> str:
    """``cuda (NVIDIA H100 80GB HBM3)``, ``cpu (AMD EPYC, 2 cores, ATen AVX2)``: a device record in words."""
    cores = f"{machine['cpu_count']} cores" if machine.get("cpu_count") else ""
    kernels = f"ATen {machine[CPU_CAPABILITY]}" if machine.get(CPU_CAPABILITY) else ""
    what = machine.get("gpu") or ", ".join(x for x in (machine.get("cpu"), cores, kernels) if x)
    name = machine.get("name") or "an unnamed device"
    return f"{name} ({what})" if what else str(name)


def machine_names(machines: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each record's :func:`machine_name`. A record that names no CPU capability (written before
    records did) is named as the records of the same machine otherwise that name one, when they
    all name the same: a sweep resumed by a newer lcbench ran on one machine, not two. Beside
    records of two capabilities it could be either, and keeps its own name."""
    def rest(m: Mapping[str, Any]) -> tuple:
        return m.get("name"), m.get("gpu"), m.get("cpu"), m.get("cpu_count")

    seen: dict[tuple, set[str]] = defaultdict(set)
    for m in machines:
        if m.get(CPU_CAPABILITY):
            seen[rest(m)].add(m[CPU_CAPABILITY])
    return [machine_name({**m, CPU_CAPABILITY: next(iter(seen[rest(m)]))})
            if not m.get(CPU_CAPABILITY) and len(seen[rest(m)]) == 1 else machine_name(m) for m in machines]
