"""The ``memory_budget`` argument: one function turns every accepted form into bytes."""

from __future__ import annotations

import math
import re
import time
from typing import Any

import psutil
import torch

from .checks import show
from .errors import ArgumentTypeError, ArgumentValueError

#: Fraction of the device's free memory a ``memory_budget=None`` call may use.
DEFAULT_FRACTION = 0.5

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)

ACCEPTED_FORMS = (
    "None (a fraction {:.0%} of the memory free on the input's device), "
    "an int number of bytes (e.g. 268435456), a string with units "
    "(e.g. '512MiB', '2GB', '1.5GiB'), or a float in (0, 1] meaning a "
    "fraction of the free memory"
).format(DEFAULT_FRACTION)


#: Seconds a reading of the CPU's available memory is reused: reading it (psutil parses
#: /proc/meminfo) cost more than the rest of a small call's planning.
CPU_READING_TTL = 0.05

_cpu_reading = (-math.inf, 0)


def free_memory(device: torch.device | str) -> int:
    """Bytes that tiledcorr could allocate now on ``device``.

    On CUDA: the driver's free memory plus what torch's caching allocator holds
    reserved but unused. On CPU: psutil's available system memory, read at
    most every :data:`CPU_READING_TTL` seconds.
    """
    global _cpu_reading
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    now = time.monotonic()
    if now - _cpu_reading[0] > CPU_READING_TTL:
        _cpu_reading = (now, int(psutil.virtual_memory().available))
    return _cpu_reading[1]


def resolve_budget(memory_budget: Any, device: torch.device | str = "cpu") -> int:
    """Normalise ``memory_budget`` to a number of bytes.

    Args:
        memory_budget: one of the forms in :data:`ACCEPTED_FORMS`.
        device: where the computation runs; used for ``None`` and fractions.

    Returns:
        The budget in bytes (a positive int).

    Raises:
        ArgumentValueError: a value of a valid form but out of range (0, negative,
            NaN, a fraction above 1, an unknown unit); the message lists the forms.
        ArgumentTypeError: any other type.
    """
    if memory_budget is None:
        return max(1, int(DEFAULT_FRACTION * free_memory(device)))
    if isinstance(memory_budget, bool):
        raise ArgumentTypeError(f"memory_budget must be {ACCEPTED_FORMS}; got {show(memory_budget)}")
    if isinstance(memory_budget, int):
        if memory_budget <= 0:
            raise ArgumentValueError(
                f"memory_budget must be a positive number of bytes, got {show(memory_budget)}; "
                f"accepted forms: {ACCEPTED_FORMS}"
            )
        return memory_budget
    if isinstance(memory_budget, float):
        if not (math.isfinite(memory_budget) and 0.0 < memory_budget <= 1.0):
            raise ArgumentValueError(
                f"memory_budget as a float is a fraction in (0, 1], got {show(memory_budget)}; "
                f"accepted forms: {ACCEPTED_FORMS}"
            )
        return max(1, int(memory_budget * free_memory(device)))
    if isinstance(memory_budget, str):
        match = _PATTERN.match(memory_budget)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ArgumentValueError(
                f"memory_budget string {show(memory_budget)} is not a size with units; "
                f"accepted forms: {ACCEPTED_FORMS}"
            )
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
        if not 1 <= value < math.inf:
            raise ArgumentValueError(
                f"memory_budget must be at least 1 byte and finite, got {show(memory_budget)}; "
                f"accepted forms: {ACCEPTED_FORMS}"
            )
        return int(value)
    raise ArgumentTypeError(
        f"memory_budget must be {ACCEPTED_FORMS}; got {show(memory_budget, typed=True)}"
    )


def format_bytes(n: float) -> str:
    """Human-readable binary size: ``format_bytes(3 * 2**20) == '3.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
