"""Measuring time and peak memory of a call, the same way on CPU and CUDA.

CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak stats.

CPU: the process's resident set high-water mark. On Linux it is reset before
the call by writing ``5`` to ``/proc/self/clear_refs``, and glibc is told to
serve every allocation above 64 KiB with its own mapping (``mallopt``), so
freed buffers go back to the system and the high-water mark is the peak of
this call alone; pages of files (shared libraries' code and data) that the
call touches for the first time are subtracted, since they are not memory it
allocated (a process's first call of a kernel faulted in about 10 MiB of
them on the development machine). Elsewhere a thread samples the RSS with psutil. The glibc
setting is applied when this module is imported, so import it before
allocating what is to be measured: buffers allocated earlier may sit in
glibc's heap, whose freed memory stays resident and hides later peaks.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_tuned = False


@dataclass
class Measurement:
    """Times in seconds of each timed run and the peak memory above the baseline.

    Attributes:
        times: wall-clock seconds of each timed run (after warm-up).
        peak_bytes: the largest increase of allocated memory during one run,
            over what was allocated just before it (the result included).
    """

    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) of the timed runs."""
        return min(self.times), max(self.times)


def _tune_malloc() -> None:
    global _malloc_tuned
    if _malloc_tuned:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 65536)
        libc.mallopt(_M_TRIM_THRESHOLD, 65536)
        libc.malloc_trim(0)  # release what the heap kept so far, or the first measured call releases it and reads low
    except OSError:
        pass
    _malloc_tuned = True


_tune_malloc()


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _file_rss() -> int:
    """Resident bytes backed by files (0 on kernels older than 4.5, which do not report it)."""
    try:
        return _proc_status("RssFile")
    except KeyError:
        return 0


def _cpu_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    _tune_malloc()
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base, base_file = _proc_status("VmRSS"), _file_rss()
        result = fn()
        file_pages = max(0, _file_rss() - base_file)
        return result, max(0, _proc_status("VmHWM") - base - file_pages)
    except OSError:
        return _sampled_peak(fn)


def _sampled_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return result, max(0, max(peak[0], process.memory_info().rss) - base)


def _cuda_peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int]:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    return result, torch.cuda.max_memory_allocated(device) - base


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int]:
    """Run ``fn()`` once; return its result and the peak bytes it allocated."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    return _cpu_peak(fn)


def measure(fn: Callable[[], Any], device: torch.device | str = "cpu", *, repeat: int = 5, warmup: int = 1,
            on_run: Callable[[int], None] | None = None) -> Measurement:
    """Median-ready timings of ``fn`` after ``warmup`` untimed runs, and its peak memory.

    The peak is taken on a separate run after the timed ones, so the
    measurement does not slow the timings. CUDA runs are synchronised.

    Args:
        fn: the work; its result is dropped after each run.
        device: where it runs.
        repeat: timed runs.
        warmup: untimed runs first (allocator, kernels, plan cache).
        on_run: called with the index of each finished run (for progress bars).
    """
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    out = Measurement()
    for i in range(warmup + repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            out.times.append(time.perf_counter() - start)
        if on_run is not None:
            on_run(i)
    _, out.peak_bytes = peak_memory(fn, device)
    return out
