"""Out-of-memory retries: run again with a plan of half the workspace, from scratch."""

from __future__ import annotations

import warnings
from typing import Callable, TypeVar

import torch

from ..errors import MemoryBudgetError
from ..planning.planner import Plan, smaller_plan

T = TypeVar("T")

_warned_retry = False


#: What torch's CPU allocator says when an allocation fails (it raises a plain RuntimeError).
_CPU_OOM_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that an allocation failed: CUDA's ``torch.OutOfMemoryError``,
    the CPU allocator's ``RuntimeError``, or Python's ``MemoryError``."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _CPU_OOM_MESSAGES)


def with_oom_retry(plan: Plan, run: Callable[[Plan], T]) -> T:
    """Run ``run(plan)``; on an out-of-memory error (:func:`is_out_of_memory`, CPU or CUDA),
    halve the workspace and run again.

    ``run`` must start from scratch each time (fresh sinks and accumulators),
    so a retry never leaves part of an earlier attempt in the result.

    Raises:
        MemoryBudgetError: memory ran out even with the smallest plan.
    """
    global _warned_retry
    current = plan
    while True:
        try:
            return run(current)
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(exc):
                raise
            if current.device_type == "cuda":
                torch.cuda.empty_cache()
            smaller = smaller_plan(current)
            if smaller is None or smaller.peak_workspace_bytes >= current.peak_workspace_bytes:
                raise MemoryBudgetError(
                    "out of memory even with the smallest tiling "
                    f"({current.peak_workspace_bytes} bytes of workspace); free memory on the "
                    "device or reduce the problem size"
                ) from exc
            if not _warned_retry:
                warnings.warn(
                    f"tiledcorr: out of memory with {current.peak_workspace_bytes} bytes of "
                    f"workspace; retrying with {smaller.peak_workspace_bytes} bytes (warned once)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _warned_retry = True
            current = smaller
