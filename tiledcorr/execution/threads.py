"""How many CPU threads a call uses: ``torch.get_num_threads()``, fewer while other processes keep the cores busy.

A call is hundreds of parallel regions (matmuls, copies), and each region
ends at a barrier: when other processes hold the cores, a thread of ours that
the kernel has descheduled stalls the whole region for a scheduler tick. On
the 2-core development machine, with two busy PyTorch processes beside it, a
patch-31 forward and backward took 14x its quiet time on two threads and 2.6x
on one (``matmul`` itself: 3.9x). So while the machine is oversubscribed a
call runs on the cores that are free, at least one, and gives the user's
setting back afterwards; ``torch.set_num_threads`` stays the one knob (the
most threads a call uses).

"Busy" is Linux's count of runnable threads (``/proc/loadavg``), read at most
every :data:`READING_TTL` seconds, the smaller of the last two readings: a
load must last that long to count (another process's OpenMP threads spin for
a fraction of a millisecond after each of its parallel regions). It counts
our own threads too, so the others are taken as what exceeds
``torch.get_num_threads()``: a quiet machine never looks busy; other
processes are seen once they exceed our share. Elsewhere (no ``/proc``)
nothing changes.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")

#: Seconds a reading of the runnable threads is reused.
READING_TTL = 0.05

#: The last two readings, ``(time, runnable threads)``, the newest last.
_readings: list[tuple[float, int]] = []


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_CORES = _cores()


def runnable_threads() -> int:
    """Threads the kernel could run, machine-wide, ours included, over the last ``READING_TTL`` or more.

    The smaller of the last two readings (0 where Linux does not say).
    """
    global _readings
    now = time.monotonic()
    if not _readings or now - _readings[-1][0] > READING_TTL:
        try:
            with open("/proc/loadavg") as f:
                count = int(f.read().split()[3].partition("/")[0])
        except (OSError, ValueError, IndexError):
            count = 0
        _readings = [*_readings[-1:], (now, count)]
    return min(count for _, count in _readings)


def threads_for_call(wanted: int) -> int:
    """The threads a call should use, at most ``wanted`` (the user's ``torch.get_num_threads()``).

    ``cores - others``, at least one, where ``others`` are the runnable
    threads beyond ``wanted`` (ours, at most).
    """
    if wanted <= 1:
        return wanted
    others = max(0, runnable_threads() - wanted)
    return max(1, min(wanted, _CORES - others))


def on_free_cores(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on :func:`threads_for_call` threads, then the user's setting back."""
    wanted = torch.get_num_threads()
    use = threads_for_call(wanted)
    if use == wanted:
        return fn(*args)
    torch.set_num_threads(use)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(wanted)
