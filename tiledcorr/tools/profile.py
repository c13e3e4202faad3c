"""Profiling the layer on random data: time and peak memory, measured against predicted.

Used by ``tiledcorr profile`` and ``tiledcorr sweep``. One workload is the
forward (or forward and backward) of one correlation on fixed-seed random
inputs, the stored cost volume or a fused reduction (:func:`tiledcorr.correlate_reduce`).
Its peak memory above what existed before the call, minus what the call
returns (the output, and the two input gradients with ``backward``), is the
measured workspace, compared with the plan's predicted workspace (for a
reduction, the plan counts its temporaries too, with generous per-position
terms, so the measurement comes out a little below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from ..budget import format_bytes, free_memory
from ..planning.tiling import Tiling
from ..errors import MemoryBudgetError
from .measure import Measurement, measure
from .naive import naive_correlate, naive_peak_bytes
from ..ops.correlate import correlate
from ..ops.correlate_reduce import correlate_reduce
from ..ops.plan import plan
from ..planning.planner import Plan
from ..reductions import TopK
from .progress import Progress
from ..typing import BudgetLike

#: The correlation parameters and their defaults, as in :func:`tiledcorr.correlate`.
PARAM_DEFAULTS = {"kernel_size": 1, "patch_size": 1, "stride": 1, "padding": 0, "dilation": 1, "dilation_patch": 1}

#: The naive approach runs only when its predicted peak is below this fraction of free memory.
NAIVE_FRACTION = 0.5


@dataclass(frozen=True)
class Problem:
    """One correlation to profile.

    Attributes:
        shape: ``(B, C, H, W)`` of both inputs.
        params: ``kernel_size``, ``patch_size``... as passed to :func:`tiledcorr.correlate`.
        dtype: input dtype.
        device: where it runs.
        backward: profile forward and backward (both input gradients) instead of the forward alone.
        seed: seed of the random inputs.
        reduction: a fused reduction of :func:`tiledcorr.correlate_reduce`
            (``"max"``, ``"argmax"``, ``"softargmax"``, ``"topk"``) instead of the stored volume.
        k: the values ``"topk"`` keeps.
    """

    shape: tuple[int, ...]
    params: Mapping[str, Any]
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    backward: bool = False
    seed: int = 0
    reduction: str | None = None
    k: int | None = None

    def plan(self, memory_budget: BudgetLike) -> Plan:
        """The plan tiledcorr makes for this problem under ``memory_budget``."""
        return plan(self.shape, **self.params, dtype=self.dtype, device=self.device,
                    memory_budget=memory_budget, requires_grad=self.backward, reduction=self.reduction, k=self.k)

    def describe(self) -> str:
        """``"B=4 C=128 96x96, patch 41, float32 on cpu"``: the shape and the parameters not at their defaults."""
        size = "x".join(map(str, self.shape[2:]))
        params = [f"{name.replace('_size', '')} {'x'.join(map(str, value)) if isinstance(value, tuple) else value}"
                  for name, value in self.params.items() if value != PARAM_DEFAULTS.get(name)]
        fused = [] if self.reduction is None else [f"fused {self.reduction}" + (f" k={self.k}" if self.k else "")]
        return ", ".join([f"B={self.shape[0]} C={self.shape[1]} {size}", *params, *fused,
                          f"{str(self.dtype).replace('torch.', '')} on {self.device}"])

    def run(self, input1: torch.Tensor, input2: torch.Tensor, plan_: Plan) -> Any:
        """tiledcorr's call: the cost volume, or the fused reduction's result, under ``plan_``."""
        if self.reduction is None:
            return correlate(input1, input2, **self.params, plan=plan_)
        return correlate_reduce(input1, input2, **self.params, reduction=self.reduction, k=self.k, plan=plan_)

    def result_shape(self, plan_: Plan) -> tuple[int, ...]:
        """Shape of the differentiable result: the volume, or the reduction's values."""
        g = plan_.geometry
        if self.reduction is None:
            return tuple(g.out_shape)
        lead = {"max": (), "argmax": (g.ndim,), "softargmax": (g.ndim,), "topk": (self.k or 1,)}[self.reduction]
        return (g.batch, *lead, *g.out_size)

    def result_bytes(self, plan_: Plan) -> int:
        """Bytes of what the call returns (a top-k returns its values and int64 displacements)."""
        if self.reduction is None:
            return plan_.output_bytes
        elements = math.prod(self.result_shape(plan_))
        if self.reduction == "argmax":
            return elements * 8
        return elements * (self.dtype.itemsize + (8 * plan_.geometry.ndim if self.reduction == "topk" else 0))

    @property
    def input_bytes(self) -> int:
        """Bytes of one input (and of its gradient)."""
        return torch.Size(self.shape).numel() * self.dtype.itemsize


@dataclass(frozen=True)
class Result:
    """Measured time and memory of one implementation on one :class:`Problem`.

    Attributes:
        name: ``"tiledcorr"`` or ``"naive unfold"``.
        measurement: the timings and the measured peak (bytes above the baseline).
        returned_bytes: what the call returns and keeps: the output, plus both
            input gradients with ``backward``.
        predicted_peak_bytes: the prediction of the measured peak.
    """

    name: str
    measurement: Measurement
    returned_bytes: int
    predicted_peak_bytes: int

    @property
    def measured_workspace_bytes(self) -> int:
        return max(0, self.measurement.peak_bytes - self.returned_bytes)

    @property
    def predicted_workspace_bytes(self) -> int:
        return self.predicted_peak_bytes - self.returned_bytes

    def to_dict(self) -> dict[str, Any]:
        m = self.measurement
        return {
            "name": self.name, "times_s": m.times, "median_s": m.median, "min_s": m.spread[0], "max_s": m.spread[1],
            "peak_bytes": m.peak_bytes, "predicted_peak_bytes": self.predicted_peak_bytes,
            "returned_bytes": self.returned_bytes, "measured_workspace_bytes": self.measured_workspace_bytes,
            "predicted_workspace_bytes": self.predicted_workspace_bytes,
        }


def make_inputs(problem: Problem, plan_: Plan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Fixed-seed standard normal inputs and, with ``backward``, a gradient of the output.

    Returns:
        ``input1``, ``input2`` of shape ``problem.shape`` (requiring grad with
        ``backward``) and the output gradient, shaped ``plan_.geometry.out_shape``, or ``None``.
    """
    gen = torch.Generator().manual_seed(problem.seed)
    make = lambda shape: torch.randn(shape, generator=gen).to(problem.device, problem.dtype)  # noqa: E731
    x1, x2 = make(problem.shape), make(problem.shape)
    if not problem.backward:
        return x1, x2, None
    return x1.requires_grad_(), x2.requires_grad_(), make(problem.result_shape(plan_))


def workload(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], problem: Problem, plan_: Plan) -> Callable[[], Any]:
    """The call to time: ``fn(input1, input2)``, then both input gradients with ``backward``.

    The inputs and the output gradient are created here, outside the timed call,
    so they belong to the baseline of the memory measurement.
    """
    x1, x2, grad_out = make_inputs(problem, plan_)
    if grad_out is None:
        return lambda: fn(x1, x2)

    def forward_backward() -> tuple[Any, tuple[torch.Tensor, ...]]:
        out = fn(x1, x2)
        return out, torch.autograd.grad(out.values if isinstance(out, TopK) else out, (x1, x2), grad_out)

    return forward_backward


def returned_bytes(problem: Problem, plan_: Plan) -> int:
    """What one workload call returns: the output (and both input gradients)."""
    return problem.result_bytes(plan_) + (2 * problem.input_bytes if problem.backward else 0)


def predicted_peak_bytes(problem: Problem, plan_: Plan) -> int:
    """tiledcorr's predicted peak: the output plus the largest of the forward and backward phases."""
    if not problem.backward:
        return problem.result_bytes(plan_) + plan_.forward_workspace_bytes
    backward_phase = 2 * problem.input_bytes + plan_.backward_workspace_bytes
    return problem.result_bytes(plan_) + max(plan_.forward_workspace_bytes, backward_phase)


def profile_tiled(problem: Problem, plan_: Plan, *, repeat: int, warmup: int, progress: Progress | None = None) -> Result:
    """Time and peak memory of :func:`tiledcorr.correlate` (or the fused reduction) under ``plan_``."""
    fn = workload(lambda a, b: problem.run(a, b, plan_), problem, plan_)
    return Result("tiledcorr", _measure(fn, problem, repeat, warmup, progress),
                  returned_bytes(problem, plan_), predicted_peak_bytes(problem, plan_))


def naive_skip_reason(problem: Problem, plan_: Plan) -> str | None:
    """Why the naive approach must not run here (it would not fit), or ``None`` if it fits."""
    if problem.reduction is not None:
        return "the naive unfold approach stores the volume: it has no fused reductions"
    if len(problem.shape) != 4:
        return "the naive unfold implementation covers (B, C, H, W) inputs only"
    need = naive_peak_bytes(plan_, backward=problem.backward)
    free = free_memory(problem.device)
    if need > NAIVE_FRACTION * free:
        return (f"predicted peak {format_bytes(need)} is more than {NAIVE_FRACTION:.0%} of the "
                f"{format_bytes(free)} free on {problem.device}")
    return None


def profile_naive(problem: Problem, plan_: Plan, *, repeat: int, warmup: int, progress: Progress | None = None) -> Result:
    """Time and peak memory of :func:`tiledcorr.naive.naive_correlate` (check :func:`naive_skip_reason` first)."""
    fn = workload(lambda a, b: naive_correlate(a, b, **problem.params), problem, plan_)
    predicted = naive_peak_bytes(plan_, backward=problem.backward)
    return Result("naive unfold", _measure(fn, problem, repeat, warmup, progress), returned_bytes(problem, plan_), predicted)


def _measure(fn: Callable[[], Any], problem: Problem, repeat: int, warmup: int, progress: Progress | None) -> Measurement:
    on_run = (lambda _i: progress.advance()) if progress is not None else None
    result = measure(fn, problem.device, repeat=repeat, warmup=warmup, on_run=on_run)
    if progress is not None:
        progress.advance()  # the separate peak-memory run
    return result


def runs_per_measurement(repeat: int, warmup: int) -> int:
    """Calls of the workload per :func:`tiledcorr.measure.measure` (for progress bars)."""
    return warmup + repeat + 1


@dataclass(frozen=True)
class SweepRow:
    """One budget of a sweep: its plan and measurement, or why no plan fits.

    Attributes:
        budget: the budget as the user wrote it (``"64MiB"``, ``"0.25"``).
        plan: the plan made for it (``None`` when the budget is too small).
        result: the measurement (``None`` when the budget is too small).
        same_as: the earlier budget whose plan had the same tiling and whose
            measurement this row reuses, or ``None``.
        error: the planner's message when the budget is too small.
    """

    budget: str
    plan: Plan | None
    result: Result | None
    same_as: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget, "plan": None if self.plan is None else self.plan.to_dict(),
            "result": None if self.result is None else self.result.to_dict(),
            "same_as": self.same_as, "error": self.error,
        }


def sweep(problem: Problem, budgets: Sequence[BudgetLike], *, repeat: int, warmup: int, progress: Progress | None = None) -> list[SweepRow]:
    """Plan and measure ``problem`` under each budget.

    Budgets whose plan has the same tiling as an earlier one run exactly the
    same computation; they reuse that measurement instead of running again.
    """
    rows: list[SweepRow] = []
    measured: dict[Tiling, SweepRow] = {}
    for budget in budgets:
        label = str(budget)
        if progress is not None:
            progress.advance(0, label=label)
        try:
            plan_ = problem.plan(budget)
        except MemoryBudgetError as exc:
            row = SweepRow(label, None, None, error=str(exc))
        else:
            earlier = measured.get(plan_.tiling)
            if earlier is None:
                result = profile_tiled(problem, plan_, repeat=repeat, warmup=warmup, progress=progress)
                row = measured[plan_.tiling] = SweepRow(label, plan_, result)
            else:
                row = SweepRow(label, plan_, earlier.result, same_as=earlier.budget)
        if progress is not None and (row.same_as is not None or row.result is None):
            progress.advance(runs_per_measurement(repeat, warmup))  # the runs it did not need
        rows.append(row)
    return rows
