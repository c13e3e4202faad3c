"""The ``memory_budget`` argument: one function turns every accepted form into bytes."""

from __future__ import annotations

import math
import operator
import re
import time
from typing import Any

import psutil
import torch

from .checks import show
from .errors import ArgumentTypeError, ArgumentValueError, DeviceError

#: Fraction of the device's free memory a ``memory_budget=None`` call may use.
DEFAULT_FRACTION = 0.5

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}
_NUMBER = re.compile(r"^[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?$", re.IGNORECASE)
_SIZE = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]+)$", re.IGNORECASE)

#: The one rule for budgets, in the API and on the command line (``--budget``).
ACCEPTED_FORMS = (
    "None (a fraction {:.0%} of the memory free on the input's device), "
    "an int number of bytes (e.g. 268435456, or the string '268435456'), a size with units "
    "(e.g. '512MiB', '2GB', '1.5GiB'), or a fraction of the free memory in (0, 1] "
    "written with a decimal point (the float 0.25 or the string '0.25')"
).format(DEFAULT_FRACTION)


#: Seconds a reading of the CPU's available memory is reused: reading it (psutil parses
#: /proc/meminfo) cost more than the rest of a small call's planning.
CPU_READING_TTL = 0.05

_cpu_reading = (-math.inf, 0)


def parse_budget(memory_budget: Any) -> tuple[str, Any]:
    """Classify a ``memory_budget`` without reading free memory.

    Returns ``("bytes", n)``, ``("fraction", f)`` or ``("default", None)``
    following the rule of :func:`resolve_budget` (used by the command line to
    check ``--budget`` before any work).

    Raises:
        ArgumentValueError: a valid form out of range, or an ambiguous or unknown string.
        ArgumentTypeError: any other type (bool included).
    """
    if memory_budget is None:
        return "default", None
    if isinstance(memory_budget, bool) or getattr(memory_budget, "dtype", None) == torch.bool:
        raise ArgumentTypeError(f"memory_budget must be {ACCEPTED_FORMS}; got {show(memory_budget)}")
    if isinstance(memory_budget, float):
        return "fraction", _fraction(memory_budget, memory_budget)
    if isinstance(memory_budget, str):
        text = memory_budget.strip()
        if text.isdigit():
            return "bytes", _bytes(int(text), memory_budget)
        if _NUMBER.match(text):
            return "fraction", _fraction(float(text), memory_budget)
        match = _SIZE.match(text)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ArgumentValueError(
                f"memory_budget string {show(memory_budget)} is not a size with units, an integer number of "
                f"bytes or a fraction; accepted forms: {ACCEPTED_FORMS}"
            )
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
        if not 1 <= value < math.inf:
            raise ArgumentValueError(
                f"memory_budget must be at least 1 byte and finite, got {show(memory_budget)}; "
                f"accepted forms: {ACCEPTED_FORMS}"
            )
        return "bytes", int(value)
    if not isinstance(memory_budget, torch.Tensor) or memory_budget.dim() == 0:
        try:
            return "bytes", _bytes(operator.index(memory_budget), memory_budget)
        except TypeError:
            pass
    raise ArgumentTypeError(
        f"memory_budget must be {ACCEPTED_FORMS}; got {show(memory_budget, typed=True)}"
    )


def _bytes(value: int, shown: Any) -> int:
    if value < 1:
        raise ArgumentValueError(
            f"memory_budget as bytes must be a positive int, got {show(shown)}; "
            f"accepted forms: {ACCEPTED_FORMS}"
        )
    return value


def _fraction(value: float, shown: Any) -> float:
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        hint = " (for bytes write an int, or a size with units such as '1.5GiB')" if value > 1 else ""
        raise ArgumentValueError(
            f"memory_budget with a decimal point is a fraction of the free memory in (0, 1], "
            f"got {show(shown)}{hint}; accepted forms: {ACCEPTED_FORMS}"
        )
    return value


def is_relative(memory_budget: Any) -> bool:
    """Whether a (valid) budget depends on the free memory: ``None`` or a fraction."""
    return parse_budget(memory_budget)[0] != "bytes"


def free_memory(device: torch.device | str) -> int:
    """Bytes that tiledcorr could allocate now on ``device``.

    On CUDA: the driver's free memory plus what torch's caching allocator holds
    reserved but unused. On CPU: psutil's available system memory, read at
    most every :data:`CPU_READING_TTL` seconds.

    Raises:
        DeviceError: ``device`` is a CUDA device this machine does not have.
    """
    global _cpu_reading
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device}: no CUDA device is available on this machine; to plan for one from here, "
                "pass an absolute memory_budget such as '8GiB' (None and fractions are of the device's free memory)"
            )
        try:
            free, _total = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise DeviceError(f"device {device} cannot be queried: {exc}") from None
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    now = time.monotonic()
    if now - _cpu_reading[0] > CPU_READING_TTL:
        _cpu_reading = (now, int(psutil.virtual_memory().available))
    return _cpu_reading[1]


def resolve_budget(memory_budget: Any, device: torch.device | str = "cpu") -> int:
    """Normalise ``memory_budget`` to a number of bytes.

    One rule, the same in the API and for the command line's ``--budget``:

    * ``None``: half of the memory free on ``device``;
    * an integer is a number of bytes: ``268435456``, ``numpy.int64(2**28)``
      or the string ``"268435456"``;
    * a size with units is bytes: ``"512MiB"``, ``"2GB"``, ``"1.5GiB"``, ``"100B"``
      (``k``/``m``/``g``/``t`` alone are binary units);
    * a number with a decimal point (or an exponent) is a fraction of the free
      memory in (0, 1]: the float ``0.25`` or the string ``"0.25"``.

    Anything else is refused, in particular ``1.5`` or ``"1.5"`` (neither a
    fraction nor bytes: write ``"1.5GiB"`` or an integer).

    Args:
        memory_budget: one of the forms above (:data:`ACCEPTED_FORMS`).
        device: where the computation runs; used for ``None`` and fractions.

    Returns:
        The budget in bytes (a positive int).

    Raises:
        ArgumentValueError: a value of a valid form but out of range (0, negative,
            NaN, a fraction above 1, an unknown unit, an ambiguous ``"1.5"``);
            the message lists the forms.
        ArgumentTypeError: any other type.
    """
    kind, value = parse_budget(memory_budget)
    if kind == "bytes":
        return value
    fraction = DEFAULT_FRACTION if kind == "default" else value
    return max(1, int(fraction * free_memory(device)))


def format_bytes(n: float) -> str:
    """Human-readable binary size: ``format_bytes(3 * 2**20) == '3.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
