"""A description of the machine, saved next to every timing and memory figure."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import psutil
import torch


def _cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine() -> dict[str, Any]:
    """What a timing depends on: CPU, cores, memory, library versions, threads, GPU.

    Returns:
        A JSON-serialisable dict: ``cpu``, ``logical_cores``, ``physical_cores``,
        ``usable_cores`` (the process's CPU affinity), ``memory_total_bytes``,
        ``platform``, ``python``, ``torch``, ``torch_threads``,
        ``torch_interop_threads``, ``cuda`` (torch's CUDA version or ``None``) and
        ``cuda_device`` (the current device's name and total memory, or ``None``).
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cuda_device = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        cuda_device = {"name": props.name, "memory_total_bytes": props.total_memory}
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable,
        "memory_total_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.version.cuda,
        "cuda_device": cuda_device,
    }
