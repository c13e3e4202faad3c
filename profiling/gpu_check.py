"""The GPU acceptance run of issue 19: tests, correctness, the C++ sampler, timing and memory in one command.

Stages, in this order, each with a time budget; a stage that fails is recorded
in the JSON with its traceback and the run goes on:

* ``tests``: the CUDA tests (``pytest -k cuda``: the ``cuda``-marked tests and
  every test with ``cuda`` in its id) in a subprocess, results from its JUnit XML.
* ``correctness``: every strategy (the Triton one too where ``triton`` imports)
  x float32, TF32, float16, bfloat16 x a grid of odd, non-square cases (kernel 1
  and 3, stride, padding, dilation, dilation_patch away from their defaults, an
  even patch, budgets forcing several tiles): the forward, both gradients and
  every fused reduction against the float64 CPU references of
  :mod:`tiledcorr.reference`; then the drop-in shims. Errors are
  ``max|out - ref| / max|ref|``, against a tolerance per dtype. A strategy that
  refuses a case (a :class:`tiledcorr.TiledCorrError` from planning) is recorded
  as ``refused``, not as a failure.
* ``memory``: peak memory (``torch.cuda.max_memory_allocated``) of
  ``(4,128,96,96)`` patch 41 at budgets of 64 MiB, 256 MiB and 1 GiB, forward and
  forward+backward, and of the patch-81 argmax, against the plan's prediction.
* ``sampler``: waits for the C++ CUDA sampler that ``profiling/gpu_check.sh``
  builds in the background (``--sampler-status``), imports it and checks it
  against the reference on one case.
* ``timing``: bench.py's six configurations plus ``big``, ``argmax81`` and
  ``tiny``, in float32, bfloat16, float16 and TF32, forward and
  forward+backward: contenders ``tiledcorr:<strategy>``, ``cpp_sampler``,
  ``naive`` (where its estimated peak fits), ``cublas`` (a ``torch.bmm`` of the
  same flops and dtype) and ``copy`` (a copy of the volume's size: the memory
  bandwidth the run got), timed round-robin with CUDA events, median after warm-up.
* ``threads``: the CPU forward of ``flownetc`` at 1, 2, 4, 8 and 16 threads (issue 20).

Writes ``gpu-<device>.json`` and ``gpu-<device>.md`` into ``--out`` (default
``$OUT``, else ``gpu_out/``), after every stage, so a run cut short keeps what it
measured. ``--smoke`` runs the same code on the CPU at tiny sizes (no build,
Triton under ``TRITON_INTERPRET=1``, host-clock timing, no peak memory) in
under a minute; CI runs it through ``tests/test_gpu_check.py``.

Usage::

    bash profiling/gpu_check.sh                      # on the GPU machine (builds the sampler too)
    python profiling/gpu_check.py --smoke --out /tmp/smoke
    python profiling/gpu_check.py --stages correctness,timing --only flownetc,tiny
"""

from __future__ import annotations

import os
import sys

# The Triton interpreter is chosen when triton is imported: set it before anything imports it.
if "--smoke" in sys.argv[1:]:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import re
import statistics
import subprocess
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (profiling/bench.py: the configurations and the step closures)
import tiledcorr  # noqa: E402
from tiledcorr.planning.registry import names as registered_strategies  # noqa: E402
from tiledcorr.tools.machine import describe_machine  # noqa: E402
from tiledcorr.tools.naive import naive_correlate, naive_peak_bytes  # noqa: E402
from tiledcorr.reference import corrtorch_reference, correlate_reference, flownet_reference  # noqa: E402

MiB, GiB = 2**20, 2**30
DTYPES = ("float32", "tf32", "float16", "bfloat16")
#: Timing order: what the targets need first, so a run short of time keeps it.
TIMING_DTYPES = ("float32", "bfloat16", "float16", "tf32")
#: Error tolerance per dtype, relative to the reference's largest magnitude. The
#: reference takes the same (rounded) inputs in float64, so these bound the
#: accumulation and the rounding of the result only.
TOLERANCE = {"float32": 2e-5, "tf32": 3e-3, "float16": 5e-3, "bfloat16": 3e-2}
REDUCTIONS = ("max", "argmax", "softargmax", "topk")
#: Stage budgets in seconds (device run, smoke run).
BUDGETS = {
    "tests": (90, 30), "correctness": (75, 40), "memory": (25, 10), "sampler": (240, 5),
    "timing": (150, 40), "threads": (20, 10),
}
EXTRA_CONFIGS = {
    "big": ((8, 256, 96, 128), dict(patch_size=41)),
    "argmax81": ((4, 128, 192, 256), dict(patch_size=81)),
    "tiny": ((1, 8, 8, 8), dict(patch_size=3)),
}
#: Configurations timed as a fused reduction rather than a stored volume.
REDUCED = {"argmax81": "argmax"}
#: Timing order: cheap first, so the budget cuts the expensive ones.
TIMING_ORDER = ("tiny", "mmtracker", "pwcnet", "kernel3", "flownetc", "large", "larger", "big", "argmax81")


# --------------------------------------------------------------------------- helpers


def slug(name: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia-h200"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def torch_dtype(name: str) -> torch.dtype:
    """The tensor dtype of a row's dtype name (``"tf32"`` is float32 with TF32 matmuls)."""
    return torch.float32 if name == "tf32" else getattr(torch, name)


@contextlib.contextmanager
def precision(name: str) -> Iterator[None]:
    """TF32 matmuls on for the ``"tf32"`` rows only, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|out - ref| / max|ref|`` in float64 on the CPU (inf on a shape mismatch; NaN stays NaN)."""
    if tuple(out.shape) != tuple(ref.shape):
        return math.inf
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.numel() == 0:
        return 0.0
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Budget:
    """Seconds left for a stage."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def spent(self) -> bool:
        return self.left() <= 0


class Clock:
    """Times one call: CUDA events on a GPU, the host clock on the CPU; and measures peaks.

    Both synchronise before the call, so no earlier work is counted.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds one ``fn()`` takes."""
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3

    def peak(self, fn: Callable[[], Any]) -> tuple[float, int | None]:
        """Seconds of one ``fn()`` and the peak bytes it allocated above what was allocated before (None on CPU)."""
        if not self.cuda:
            return self.time(fn), None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seconds = self.time(fn)
        return seconds, torch.cuda.max_memory_allocated() - base


@dataclass
class Timing:
    median_s: float | None = None
    repeats: int = 0
    peak_bytes: int | None = None
    error: str | None = None


def round_robin(contenders: dict[str, Callable[[], Any]], clock: Clock, *, target_s: float, min_repeat: int,
                max_repeat: int, slow_s: float) -> dict[str, Timing]:
    """Median seconds per contender, timed round-robin so all see the same machine state.

    Each contender is warmed up (a second warm-up call also measures its peak,
    unless the first took over ``slow_s``), then gets ``target_s / t`` timed
    calls, clamped to ``[min_repeat, max_repeat]`` (one if slower than
    ``slow_s``); round ``r`` runs every contender with more than ``r`` calls.
    A contender that raises (out of memory, say) is recorded and dropped.
    """
    result = {name: Timing() for name in contenders}
    repeats, times = {}, {name: [] for name in contenders}
    for name, fn in contenders.items():
        try:
            first = clock.time(fn)
            probe, result[name].peak_bytes = (first, None) if first > slow_s else clock.peak(fn)
            repeats[name] = 1 if probe > slow_s else max(min_repeat, min(max_repeat, int(target_s / max(probe, 1e-6))))
        except Exception as exc:  # noqa: BLE001 (recorded; the run goes on)
            result[name].error = short(exc)
            free_cuda()
    for r in range(max(repeats.values(), default=0)):
        for name, n in repeats.items():
            if n > r and result[name].error is None:
                try:
                    times[name].append(clock.time(contenders[name]))
                except Exception as exc:  # noqa: BLE001
                    result[name].error = short(exc)
    for name, t in times.items():
        if t and result[name].error is None:
            result[name].median_s, result[name].repeats = statistics.median(t), len(t)
    return result


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats with 3 significant digits, None as "-"."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v).replace("|", "/")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def strategy_names() -> list[str]:
    """Every registered strategy, plus ``"triton"`` where triton imports (refused if not registered)."""
    names = list(registered_strategies())
    if triton_version() is not None and "triton" not in names:
        names.append("triton")
    return names


def triton_version() -> str | None:
    try:
        import triton
    except Exception:  # noqa: BLE001 (ImportError, or a broken install)
        return None
    return getattr(triton, "__version__", "unknown")


def randn(shape, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    """Standard normal from a seeded CPU generator (the same numbers on every device)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- stage: tests


def stage_tests(ctx: "Run", budget: Budget) -> dict:
    """``pytest -k cuda`` in a subprocess; counts and failures from its JUnit XML."""
    if importlib.util.find_spec("pytest") is None:
        return {"status": "pytest not installed"}
    xml = ctx.out_dir / "pytest-cuda.xml"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests"), "-q", "-k", "cuda", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "-o", "addopts="]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", "60"]
    env = dict(os.environ, GPU_CHECK_INNER="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result: dict[str, Any] = {"command": " ".join(cmd[2:]), "cuda": torch.cuda.is_available()}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=max(5.0, budget.left()))
        result["exit_status"], output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        result["exit_status"], output = "timeout", (exc.stdout or b"") + (exc.stderr or b"")
    output = output.decode(errors="replace")
    result["output_tail"] = output[-3000:]
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        for key in ("tests", "failures", "errors", "skipped"):
            result[key] = int(suite.get(key, 0))
        result["failed"] = [f"{case.get('classname')}::{case.get('name')}: {(bad.get('message') or '')[:200]}"
                            for case in suite.iter("testcase") for bad in case if bad.tag in ("failure", "error")]
    result["status"] = "passed" if result.get("exit_status") in (0, 5) and not result.get("failed") else "failed"
    if not torch.cuda.is_available():
        result["status"] += " (no CUDA: the cuda tests skip)"
    return result


# --------------------------------------------------------------------------- stage: correctness


@dataclass(frozen=True)
class Case:
    """One point of the correctness grid: shapes for the GPU and for ``--smoke``, parameters, tiling."""

    name: str
    shape: tuple[int, ...]
    smoke_shape: tuple[int, ...]
    params: dict
    several_tiles: bool = False


CASES = (
    Case("k1_p5", (3, 7, 13, 11), (2, 3, 7, 9), dict(patch_size=5)),
    Case("k3_all", (2, 5, 17, 14), (1, 3, 9, 11),
         dict(kernel_size=3, patch_size=(3, 4), stride=2, padding=1, dilation=2, dilation_patch=2)),
    Case("k1_even_tiles", (2, 9, 19, 23), (2, 4, 8, 13),
         dict(patch_size=4, stride=(1, 2), padding=(0, 1), dilation_patch=(2, 1)), several_tiles=True),
    Case("k3_p7_tiles", (3, 6, 21, 18), (1, 3, 10, 12), dict(kernel_size=3, patch_size=7, padding=1), several_tiles=True),
)


def forced_plan(shape, params: dict, dtype: torch.dtype, device: torch.device, strategy: str | None, *,
                requires_grad: bool, several_tiles: bool, reduction: str | None = None, k: int | None = None):
    """``tiledcorr.plan`` for ``strategy``; with ``several_tiles``, a budget an eighth of what one tile needs."""
    kw = dict(params, dtype=dtype, device=device, requires_grad=requires_grad, strategy=strategy, reduction=reduction, k=k)
    plan = tiledcorr.plan(shape, **kw)
    if several_tiles and plan.passes == 1:
        try:
            plan = tiledcorr.plan(shape, **kw, memory_budget=max(1, plan.peak_workspace_bytes // 8))
        except tiledcorr.MemoryBudgetError as exc:
            plan = tiledcorr.plan(shape, **kw, memory_budget=exc.minimum_bytes)
    return plan


def displacement_table(patch, dilation_patch) -> torch.Tensor:
    """``(N, 2)`` float64: ``(dy, dx)`` of flat displacement ``j = jh*PW + jw``."""
    (PH, PW), (qH, qW) = pair(patch), pair(dilation_patch)
    jh, jw = torch.meshgrid(torch.arange(PH), torch.arange(PW), indexing="ij")
    return torch.stack([(jh - (PH - 1) // 2) * qH, (jw - (PW - 1) // 2) * qW], -1).reshape(-1, 2).double()


def flat_index(disp: torch.Tensor, dim: int, patch, dilation_patch) -> torch.Tensor:
    """Displacements in pixels (components at ``dim``) -> flat indices ``jh*PW + jw``."""
    (PH, PW), (qH, qW) = pair(patch), pair(dilation_patch)
    dy, dx = disp.cpu().unbind(dim)
    return (dy // qH + (PH - 1) // 2) * PW + (dx // qW + (PW - 1) // 2)


def tie_free(values: torch.Tensor, count: int, gap: float) -> torch.Tensor:
    """``(B, *out)`` bool: positions whose ``count`` largest of ``values`` ``(B, N, *out)`` are all ``gap`` apart.

    A gradient through a max or top-k at a near tie may go to either entry: the
    gradient checks give those positions a zero upstream gradient.
    """
    top = values.detach().topk(min(count, values.shape[1]), 1).values
    if top.shape[1] < 2:
        return torch.ones_like(top[:, 0], dtype=torch.bool)
    return ((top[:, :-1] - top[:, 1:]) > gap).all(1)


class Checker:
    """Collects correctness rows: one per (case, strategy, dtype, check)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, key: dict, check: str, error: float | None, tolerance: float | None, *, status: str | None = None,
            detail: str = "") -> None:
        if status is None:
            status = "pass" if error is not None and error <= tolerance else "fail"  # NaN fails
        self.rows.append(dict(key, check=check, status=status, error=error, tolerance=tolerance, detail=detail))

    def guarded(self, key: dict, part: str, run: Callable[[], None]) -> None:
        """``run()``; an exception becomes an ``error`` row (a failure) and the grid goes on."""
        try:
            run()
        except Exception as exc:  # noqa: BLE001
            self.add(key, part, None, None, status="error", detail=short(exc))
            free_cuda()

    def compare(self, key: dict, check: str, out: torch.Tensor, ref: torch.Tensor, tolerance: float, detail: str = "") -> None:
        dtype_ok = out.dtype in (torch_dtype(key["dtype"]), torch.long)
        self.add(key, check, rel_error(out, ref) if dtype_ok else math.inf, tolerance,
                 detail=detail if dtype_ok else f"dtype {out.dtype}, expected the input's")


def check_volume(chk: Checker, key: dict, fn: Callable, x1, x2, r1, r2, ref_fn: Callable, tol: float, seed: int,
                 detail: str = "") -> None:
    """Forward and both gradients of ``fn(a, b)`` against ``ref_fn(r1, r2)`` (float64, CPU)."""
    ref = ref_fn(r1, r2)
    g = randn(ref.shape, torch.float64, torch.device("cpu"), seed)
    ref_g1, ref_g2 = torch.autograd.grad(ref, (r1, r2), g)
    a, b = x1.detach().requires_grad_(), x2.detach().requires_grad_()
    out = fn(a, b)
    chk.compare(key, "forward", out, ref, tol, detail)
    out.backward(g.to(device=out.device, dtype=out.dtype))
    chk.compare(key, "grad1", a.grad, ref_g1, tol, detail)
    chk.compare(key, "grad2", b.grad, ref_g2, tol, detail)


def check_reductions(chk: Checker, key: dict, case: Case, shape, x1, x2, r1, r2, strategy: str, dtype: torch.dtype,
                     tol: float, seed: int) -> None:
    """Every fused reduction of ``strategy`` against the same reduction of the reference volume."""
    params, device = case.params, x1.device
    ref_volume = correlate_reference(r1, r2, **params)
    volume = ref_volume.flatten(1, 2)  # (B, N, oH, oW)
    scale = float(volume.detach().abs().max())
    disp = displacement_table(params.get("patch_size", 1), params.get("dilation_patch", 1))
    num = volume.shape[1]
    for reduction in REDUCTIONS:
        k = min(4, num) if reduction == "topk" else None
        rkey = dict(key, check_group=reduction)
        temperature = scale / 4
        try:
            plan = forced_plan(shape, params, dtype, device, strategy, requires_grad=reduction != "argmax",
                               several_tiles=case.several_tiles, reduction=reduction, k=k)
        except tiledcorr.TiledCorrError as exc:
            chk.add(rkey, reduction, None, None, status="refused", detail=short(exc))
            continue
        detail = f"{plan.passes} tiles"
        a, b = x1.detach().requires_grad_(), x2.detach().requires_grad_()
        extra = dict(temperature=temperature) if reduction == "softargmax" else {}
        try:
            out = tiledcorr.correlate_reduce(a, b, **params, reduction=reduction, k=k, plan=plan, **extra)
        except Exception as exc:  # noqa: BLE001 (recorded as a failing row)
            chk.add(rkey, reduction, None, None, status="error", detail=short(exc))
            continue
        if reduction == "argmax":
            index = flat_index(out, 1, params.get("patch_size", 1), params.get("dilation_patch", 1))
            gap = volume.amax(1) - volume.gather(1, index.clamp(0, num - 1).unsqueeze(1)).squeeze(1)
            bad = (index < 0) | (index >= num)
            chk.add(rkey, "argmax", math.inf if bad.any() else float(gap.max()) / scale, 2 * tol,
                    detail=detail + ": reference max minus the reference value at the chosen displacement")
            continue
        if reduction == "softargmax":
            weights = torch.softmax(volume / temperature, 1)
            ref = torch.einsum("bnhw,nc->bchw", weights, disp)
            chk.compare(rkey, "softargmax", out, ref, 8 * tol, detail)
            upstream, tol_grad = randn(ref.shape, torch.float64, torch.device("cpu"), seed + 1), 8 * tol
        elif reduction == "max":
            ref = volume.amax(1)
            chk.compare(rkey, "max", out, ref, tol, detail)
            upstream = randn(ref.shape, torch.float64, torch.device("cpu"), seed + 1) * tie_free(volume, 2, 4 * tol * scale)
            tol_grad = tol
        else:  # topk
            values, ref_index = volume.topk(k, 1)
            ref = values
            chk.compare(rkey, "topk", out.values, ref, tol, detail)
            index = flat_index(out.displacements, 2, params.get("patch_size", 1), params.get("dilation_patch", 1))
            chosen = volume.gather(1, index.clamp(0, num - 1))
            chk.add(rkey, "topk.displacements", float((chosen - values).abs().max()) / scale, 2 * tol,
                    detail=detail + ": reference values at the chosen displacements")
            mask = tie_free(volume, k + 1, 4 * tol * scale)
            upstream = randn(ref.shape, torch.float64, torch.device("cpu"), seed + 1) * mask.unsqueeze(1)
            out, tol_grad = out.values, tol
        ref_g1, ref_g2 = torch.autograd.grad(ref, (r1, r2), upstream, retain_graph=True)  # the volume's graph serves every reduction
        out.backward(upstream.to(device=out.device, dtype=out.dtype))
        chk.compare(rkey, f"{reduction}.grad1", a.grad, ref_g1, tol_grad, detail)
        chk.compare(rkey, f"{reduction}.grad2", b.grad, ref_g2, tol_grad, detail)


SHIMS = {
    # name: (module factory, reference on float64 CPU inputs, the case whose shape and seed it uses)
    "SpatialCorrelationSampler": (lambda: tiledcorr.SpatialCorrelationSampler(**CASES[1].params),
                                  lambda r1, r2: correlate_reference(r1, r2, **CASES[1].params)),
    "Correlation": (lambda: tiledcorr.Correlation(pad_size=3, kernel_size=3, max_displacement=4, stride1=2, stride2=2),
                    lambda r1, r2: flownet_reference(r1, r2, 3, 3, 4, 2, 2)),
    "CorrTorch": (lambda: tiledcorr.CorrTorch(pad_size=2, kernel_size=1, max_displacement=2, stride1=1, stride2=1),
                  lambda r1, r2: corrtorch_reference(r1, r2, 2, 2)),
}


def stage_correctness(ctx: "Run", budget: Budget) -> dict:
    chk, device = Checker(), ctx.device
    strategies = strategy_names()
    for d, dtype_name in enumerate(DTYPES):
        dtype, tol = torch_dtype(dtype_name), TOLERANCE[dtype_name]
        with precision(dtype_name):
            for c, case in enumerate(CASES):
                shape = case.smoke_shape if ctx.smoke else case.shape
                seed = 1000 * d + 10 * c
                x1, x2 = randn(shape, dtype, device, seed), randn(shape, dtype, device, seed + 1)
                # The reference sees the same rounded values, in float64 on the CPU.
                r1, r2 = (x.detach().double().cpu().requires_grad_() for x in (x1, x2))
                for strategy in strategies:
                    key = dict(case=case.name, strategy=strategy, dtype=dtype_name, check_group="volume")
                    if budget.spent():
                        chk.add(key, "all", None, None, status="skipped", detail="stage budget spent")
                        continue
                    # The interpreter is slow (float32's case 1 and its reductions took 20 s of the grid's 88 on a
                    # 2-core VM, 2026-12-02); tests/test_triton_interpreter.py covers the other dtypes. The GPU runs all.
                    if ctx.smoke and strategy == "triton" and (c > 0 or dtype_name != "float32"):
                        chk.add(key, "all", None, None, status="refused",
                                detail="--smoke: the interpreter runs float32's case 1 only")
                        continue
                    try:
                        plan = forced_plan(shape, case.params, dtype, device, strategy, requires_grad=True,
                                           several_tiles=case.several_tiles)
                    except tiledcorr.TiledCorrError as exc:
                        chk.add(key, "volume", None, None, status="refused", detail=short(exc))
                    else:
                        chk.guarded(key, "volume", lambda: check_volume(
                            chk, key, lambda a, b: tiledcorr.correlate(a, b, **case.params, plan=plan), x1, x2, r1, r2,
                            lambda p, q: correlate_reference(p, q, **case.params), tol, seed + 2, f"{plan.passes} tiles"))
                    chk.guarded(key, "reductions", lambda: check_reductions(
                        chk, key, case, shape, x1, x2, r1, r2, strategy, dtype, tol, seed + 3))
            shape = CASES[1].smoke_shape if ctx.smoke else CASES[1].shape
            seed = 1000 * d + 500
            x1, x2 = randn(shape, dtype, device, seed), randn(shape, dtype, device, seed + 1)
            r1, r2 = (x.detach().double().cpu().requires_grad_() for x in (x1, x2))
            for name, (make, ref_fn) in SHIMS.items():
                key = dict(case=CASES[1].name, strategy="auto", dtype=dtype_name, check_group=name)
                chk.guarded(key, "shim", lambda: check_volume(chk, key, make(), x1, x2, r1, r2, ref_fn, tol, seed + 2, name))
    counts: dict[str, int] = {}
    for row in chk.rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    ctx.result["correctness"] = chk.rows
    return {"counts": counts, "strategies": strategies, "dtypes": list(DTYPES), "reductions": list(REDUCTIONS),
            "shims": list(SHIMS), "tolerance": TOLERANCE, "status": "passed" if not counts.get("fail") and
            not counts.get("error") else "failed"}


# --------------------------------------------------------------------------- stage: C++ sampler


def stage_sampler(ctx: "Run", budget: Budget) -> dict:
    """Wait for the background build (gpu_check.sh), import the sampler and check it on one case."""
    args, info = ctx.args, {}
    if args.sampler_status:
        status = Path(args.sampler_status)
        while not status.exists() and budget.left() > 0:
            time.sleep(1)
        if status.exists():
            rc, seconds, reason = (status.read_text().split() + ["", "", ""])[:3]
            info.update(built=rc == "0", build_seconds=int(seconds or 0), build_result=reason)
        else:
            info.update(built=False, build_result=f"not finished after {budget.seconds:.0f} s")
        if args.sampler_log and Path(args.sampler_log).exists() and not info["built"]:
            info["build_log_tail"] = Path(args.sampler_log).read_text(errors="replace")[-4000:]
        if args.sampler_site and Path(args.sampler_site).is_dir():
            sys.path.insert(0, args.sampler_site)  # even after a failed check there: the import below decides
    else:
        info["build_result"] = "not built here (smoke run, or no --sampler-status): using an installed copy if any"
    ctx.sampler = bench._reference()
    info["available"] = ctx.sampler is not None
    if ctx.sampler is None:
        info["status"] = f"unavailable ({info.get('build_result', 'not built')})"
        return info
    import spatial_correlation_sampler

    info["module"] = spatial_correlation_sampler.__file__
    case = CASES[1]
    shape = case.smoke_shape if ctx.smoke else case.shape
    x1, x2 = randn(shape, torch.float32, ctx.device, 7), randn(shape, torch.float32, ctx.device, 8)
    out = ctx.sampler(x1, x2, **case.params)
    info["float32_error_vs_reference"] = rel_error(out, correlate_reference(x1.double().cpu(), x2.double().cpu(), **case.params))
    info["status"] = "ok" if info["float32_error_vs_reference"] <= TOLERANCE["float32"] else "wrong results"
    if args.sampler_status and not info["built"]:
        info["status"] += f" (an installed copy: the build {info['build_result']})"
    return info


# --------------------------------------------------------------------------- stage: timing


def timing_configs(smoke: bool, only: list[str]) -> dict[str, tuple[tuple[int, ...], dict]]:
    """Name -> (shape, params) in :data:`TIMING_ORDER`; ``--smoke`` shrinks every shape, keeping its parameters."""
    every = {**bench.CONFIGS, **EXTRA_CONFIGS}
    names = [n for n in TIMING_ORDER if not only or n in only]
    if smoke:
        return {n: ((1, min(every[n][0][1], 8), min(every[n][0][2], 10), min(every[n][0][3], 13)), every[n][1]) for n in names}
    return {n: every[n] for n in names}


def cublas_step(geometry, dtype: torch.dtype, device: torch.device, backward: bool) -> Callable[[], Any]:
    """A ``torch.bmm`` of the correlation's flops: ``(B, N, C*k*k) @ (B, C*k*k, positions)``, output the volume's size."""
    B, N = geometry.batch, geometry.num_displacements
    K, M = geometry.channels * geometry.kernel_volume, geometry.num_positions
    a, b = randn((B, N, K), dtype, device, 11), randn((B, K, M), dtype, device, 12)
    return bench._step(lambda p, q: torch.bmm(p, q), a, b, {}, backward)


def time_config(ctx: "Run", name: str, shape, kw: dict, dtype_name: str, cpp_ratio: list[float]) -> list[dict]:
    """Rows for one configuration and dtype: every contender, forward and forward+backward."""
    device, dtype, args = ctx.device, torch_dtype(dtype_name), ctx.args
    reduction = REDUCED.get(name)
    x1, x2 = randn(shape, dtype, device, 0), randn(shape, dtype, device, 1)
    # What a default call plans: forward-only for inputs without grad, forward and backward otherwise.
    chosen = tiledcorr.plan(shape, **kw, dtype=dtype, device=device, reduction=reduction)
    chosen_bwd = None if reduction else tiledcorr.plan(shape, **kw, dtype=dtype, device=device, requires_grad=True)
    geometry = chosen.geometry
    rows: dict[str, dict] = {}
    fwd, fwdbwd = {}, {}

    def row(contender: str, note: str = "") -> dict:
        return rows.setdefault(contender, dict(
            config=name, dtype=dtype_name, contender=contender, forward_ms=None, forward_backward_ms=None,
            peak_bytes=None, forward_backward_peak_bytes=None, repeats=[0, 0], shape=list(shape), params=kw,
            gflop=geometry.flops / 1e9, planned_forward=False, planned_forward_backward=False, note=note))

    def volume_then(fn: Callable) -> Callable:
        """A stored-volume contender, followed by the configuration's reduction, if any."""
        return fn if reduction is None else (lambda a, b, **k: fn(a, b, **k).flatten(1, 2).argmax(1))

    for strategy in strategy_names():
        label = f"tiledcorr:{strategy}"
        if ctx.smoke and strategy == "triton":  # the interpreter's speed says nothing; the correctness stage ran it
            row(label, "not timed in --smoke (Triton interpreter)")
            continue
        try:
            p_fwd = tiledcorr.plan(shape, **kw, dtype=dtype, device=device, strategy=strategy, reduction=reduction)
            p_bwd = None if reduction else tiledcorr.plan(shape, **kw, dtype=dtype, device=device, strategy=strategy,
                                                          requires_grad=True)
        except tiledcorr.TiledCorrError as exc:
            row(label, f"refused: {short(exc)}")
            continue
        row(label).update(planned_forward=strategy == chosen.strategy,
                          planned_forward_backward=chosen_bwd is not None and strategy == chosen_bwd.strategy)
        if reduction:
            fwd[label] = bench._step(lambda a, b, _p=p_fwd, **k: tiledcorr.correlate_reduce(a, b, **k, reduction=reduction, plan=_p),
                                     x1, x2, kw, False)
        else:
            fwd[label] = bench._step(lambda a, b, _p=p_fwd, **k: tiledcorr.correlate(a, b, **k, plan=_p), x1, x2, kw, False)
            fwdbwd[label] = bench._step(lambda a, b, _p=p_bwd, **k: tiledcorr.correlate(a, b, **k, plan=_p), x1, x2, kw, True)
    if ctx.sampler is not None and (device.type == "cuda" or dtype == torch.float32):
        fwd["cpp_sampler"] = bench._step(volume_then(ctx.sampler), x1, x2, kw, False)
        row("cpp_sampler")
    else:
        row("cpp_sampler", "not available" if ctx.sampler is None else f"no {dtype_name} on {device.type}")
    limit = min(args.naive_limit, 0.5 * tiledcorr.budget.free_memory(device))
    need = naive_peak_bytes(chosen, backward=False)
    if need < limit:
        fwd["naive"] = bench._step(volume_then(naive_correlate), x1, x2, kw, False)
        row("naive")
    else:
        row("naive", f"skipped: needs {tiledcorr.budget.format_bytes(need)}")
    fwd["cublas"] = cublas_step(geometry, dtype, device, False)
    copy, copy_bytes = bench._volume_copy(geometry, dtype, device)
    fwd["copy"] = copy
    row("cublas")
    row("copy", "copy of the volume's size")["gbytes_per_s"] = None
    timer = dict(target_s=args.target_s, min_repeat=args.min_repeat, max_repeat=args.max_repeat, slow_s=args.slow_s)
    for label, t in round_robin(fwd, ctx.clock, **timer).items():
        r = row(label)
        r["forward_ms"], r["peak_bytes"], r["repeats"][0] = t.median_s and 1e3 * t.median_s, t.peak_bytes, t.repeats
        if t.error:
            r["note"] = f"forward: {t.error}"
    if rows["copy"]["forward_ms"]:
        rows["copy"]["gbytes_per_s"] = copy_bytes / rows["copy"]["forward_ms"] / 1e6
    del copy
    if reduction is None:
        if "cpp_sampler" in fwd:
            # Its backward can take seconds at large shapes: predicted from its forward and the ratio seen so far.
            predicted = max(cpp_ratio, default=0) * (rows["cpp_sampler"]["forward_ms"] or 0) / 1e3
            if predicted <= args.slow_limit:
                fwdbwd["cpp_sampler"] = bench._step(ctx.sampler, x1, x2, kw, True)
            else:
                rows["cpp_sampler"]["note"] = f"forward+backward skipped: predicted {predicted:.1f} s per call"
        if "naive" in fwd and naive_peak_bytes(chosen, backward=True) < limit:
            fwdbwd["naive"] = bench._step(naive_correlate, x1, x2, kw, True)
        fwdbwd["cublas"] = cublas_step(geometry, dtype, device, True)
        for label, t in round_robin(fwdbwd, ctx.clock, **timer).items():
            r = row(label)
            r["forward_backward_ms"], r["forward_backward_peak_bytes"], r["repeats"][1] = (
                t.median_s and 1e3 * t.median_s, t.peak_bytes, t.repeats)
            if t.error:
                r["note"] = (r["note"] + "; " if r["note"] else "") + f"forward+backward: {t.error}"
        cpp = rows.get("cpp_sampler", {})
        if cpp.get("forward_ms") and cpp.get("forward_backward_ms"):
            cpp_ratio.append(cpp["forward_backward_ms"] / cpp["forward_ms"])
    return list(rows.values())


def stage_timing(ctx: "Run", budget: Budget) -> dict:
    configs = timing_configs(ctx.smoke, ctx.only)
    cpp_ratio: list[float] = []
    rows, skipped = ctx.result["rows"], []
    # On the CPU, TF32 is float32 and float16 runs as bfloat16 does: the smoke run times two dtypes.
    for dtype_name in TIMING_DTYPES[:2] if ctx.smoke else TIMING_DTYPES:
        with precision(dtype_name):
            for name, (shape, kw) in configs.items():
                if budget.spent():
                    skipped.append(f"{name}/{dtype_name}")
                    continue
                start = time.perf_counter()
                try:
                    rows.extend(time_config(ctx, name, shape, kw, dtype_name, cpp_ratio))
                except Exception as exc:  # noqa: BLE001 (recorded; the next configuration runs)
                    rows.append(dict(config=name, dtype=dtype_name, contender="all", forward_ms=None,
                                     forward_backward_ms=None, peak_bytes=None, note=f"error: {short(exc)}"))
                free_cuda()
                print(f"  timing {name} {dtype_name}: {time.perf_counter() - start:.1f} s", flush=True)
        ctx.save()
    return {"configs": list(configs), "skipped_for_budget": skipped, "cpp_backward_over_forward": cpp_ratio}


# --------------------------------------------------------------------------- stage: memory


def stage_memory(ctx: "Run", budget: Budget) -> dict:
    """Measured workspace (peak minus inputs, output, gradients) against the budget and the plan's prediction."""
    device, rows = ctx.device, []
    budgets = [64 * 2**10, 256 * 2**10, MiB] if ctx.smoke else [64 * MiB, 256 * MiB, GiB]
    cases = [("mem41", (1, 8, 12, 14) if ctx.smoke else (4, 128, 96, 96), dict(patch_size=41), None),
             ("argmax81", (1, 4, 12, 14) if ctx.smoke else (4, 128, 192, 256), dict(patch_size=81), "argmax")]
    for config, shape, kw, reduction in cases:
        x1, x2 = randn(shape, torch.float32, device, 0), randn(shape, torch.float32, device, 1)
        for backward in ((False,) if reduction else (False, True)):
            for limit in budgets:
                if budget.spent():
                    continue
                row = dict(config=config, mode="forward_backward" if backward else "forward", budget_bytes=limit,
                           shape=list(shape), params=kw)
                try:
                    plan = tiledcorr.plan(shape, **kw, device=device, memory_budget=limit, requires_grad=backward,
                                          reduction=reduction)
                    a, b = x1.detach().requires_grad_(backward), x2.detach().requires_grad_(backward)
                    g = torch.randn(plan.geometry.out_shape, device=device) if backward else None
                    if reduction:
                        # The running max and index (B, *out), float32 and int64: results, not counted by the budget.
                        kept = math.prod(plan.geometry.out_shape[:1] + plan.geometry.out_shape[3:]) * (4 + 8)
                        def fn():
                            return tiledcorr.correlate_reduce(a, b, **kw, reduction=reduction, memory_budget=limit)
                    else:
                        kept = plan.output_bytes + (2 * x1.numel() * x1.element_size() if backward else 0)

                        def fn():
                            a.grad = b.grad = None
                            out = tiledcorr.correlate(a, b, **kw, memory_budget=limit)
                            if backward:
                                out.backward(g)
                    seconds, peak = ctx.clock.peak(fn)
                    predicted = plan.peak_workspace_bytes
                    workspace = None if peak is None else peak - kept
                    row.update(strategy=plan.strategy, passes=plan.passes, seconds=seconds, peak_bytes=peak,
                               workspace_bytes=workspace, predicted_bytes=predicted,
                               over_budget=None if workspace is None else workspace / limit,
                               vs_prediction=None if workspace is None else workspace / max(predicted, 1))
                except Exception as exc:  # noqa: BLE001
                    row["error"] = short(exc)
                rows.append(row)
                free_cuda()
        del x1, x2
    ctx.result["memory"] = rows
    over = [r["over_budget"] for r in rows if r.get("over_budget") is not None]
    vs = [r["vs_prediction"] for r in rows if r.get("vs_prediction") is not None]
    ctx.result["workspace_over_budget_max"] = max(over, default=None)
    ctx.result["workspace_vs_prediction_range"] = [min(vs), max(vs)] if vs else None
    return {"rows": len(rows), "errors": sum("error" in r for r in rows)}


# --------------------------------------------------------------------------- stage: threads


def stage_threads(ctx: "Run", budget: Budget) -> dict:
    """The CPU forward of flownetc at several thread counts, round-robin (issue 20)."""
    shape, kw = bench.CONFIGS["flownetc"]
    if ctx.smoke:
        shape = (1, 16, 12, 16)
    counts = [1, 2] if ctx.smoke else [n for n in (1, 2, 4, 8, 16) if n <= max(2, os.cpu_count() or 1)]
    x1, x2 = randn(shape, torch.float32, torch.device("cpu"), 0), randn(shape, torch.float32, torch.device("cpu"), 1)
    saved = torch.get_num_threads()

    def at(n: int) -> Callable[[], Any]:
        def run():
            torch.set_num_threads(n)
            return tiledcorr.correlate(x1, x2, **kw)
        return run

    try:
        timings = round_robin({str(n): at(n) for n in counts}, Clock(torch.device("cpu")),
                              target_s=min(2.0, budget.left() / (2 * len(counts))), min_repeat=3,
                              max_repeat=ctx.args.max_repeat, slow_s=ctx.args.slow_s)
    finally:
        torch.set_num_threads(saved)
    one = timings["1"].median_s
    rows = [dict(threads=n, forward_ms=t.median_s and 1e3 * t.median_s, repeats=t.repeats,
                 speedup=one / t.median_s if one and t.median_s else None, error=t.error)
            for n, t in ((int(k), v) for k, v in timings.items())]
    ctx.result["threads"] = dict(config="flownetc", shape=list(shape), params=kw, rows=rows)
    return {"counts": counts}


# --------------------------------------------------------------------------- report


def best(rows: list[dict], config: str, dtype: str, field: str, planned: bool = False) -> float | None:
    """The fastest tiledcorr time (or the planner's choice's) for a configuration and dtype."""
    times = [r[field] for r in rows if r["config"] == config and r["dtype"] == dtype and r["contender"].startswith("tiledcorr:")
             and r.get(field) and (r.get("planned_" + field[:-3]) or not planned)]
    return min(times, default=None)


def contender(rows: list[dict], config: str, dtype: str, name: str, field: str) -> float | None:
    return next((r.get(field) for r in rows if r["config"] == config and r["dtype"] == dtype and r["contender"] == name), None)


def targets(result: dict) -> list[list[Any]]:
    """Issue 19's targets as measured: [target, measured, goal] (ratios from this one run)."""
    rows, out = result["rows"], []

    def ratio(num, den):
        return num / den if num and den else None

    for config in ("flownetc", "larger"):
        for field, goal in (("forward_ms", ">= 10"), ("forward_backward_ms", ">= 5")):
            out.append([f"cpp_sampler / tiledcorr (planned), {config} float32 {field[:-3]}",
                        ratio(contender(rows, config, "float32", "cpp_sampler", field), best(rows, config, "float32", field, True)), goal])
    for dtype in ("bfloat16", "float16"):
        for config in ("flownetc", "large", "larger", "big"):
            tiled = best(rows, config, dtype, "forward_ms", True)
            cublas, copy = (contender(rows, config, dtype, c, "forward_ms") for c in ("cublas", "copy"))
            # The copy reads and writes the volume's size: half its time is the floor of writing the volume once.
            write = copy / 2 if copy else None
            bound = None if not (cublas and write) else ("memory" if write > cublas else "compute")
            out.append([f"{dtype} {config} forward: cublas / tiledcorr (planned); tiledcorr / volume-write floor; bound",
                        None if tiled is None else f"{ratio(cublas, tiled) or 0:.2f}; {ratio(tiled, write) or 0:.2f}; {bound}",
                        ">= 0.4 if compute-bound; <= 2 if memory-bound"])
    out.append(["tiledcorr (planned) / cpp_sampler forward, tiny float32",
                ratio(best(rows, "tiny", "float32", "forward_ms", True), contender(rows, "tiny", "float32", "cpp_sampler", "forward_ms")),
                "<= 2"])
    worst = [ratio(best(rows, r["config"], r["dtype"], f, True), r.get(f)) for r in rows if r["contender"] == "naive"
             for f in ("forward_ms", "forward_backward_ms")]
    out.append(["tiledcorr (planned) / naive, worst over configs and dtypes", max((w for w in worst if w), default=None), "<= 1"])
    out.append(["workspace / budget, max", result.get("workspace_over_budget_max"), "<= 1.10"])
    rng = result.get("workspace_vs_prediction_range")
    out.append(["workspace / prediction, range", None if rng is None else f"{rng[0]:.3f} .. {rng[1]:.3f}", "0.9 .. 1.1"])
    return out


def markdown(result: dict) -> str:
    """The report: stages, correctness summary and failures, timing, memory, threads, targets."""
    mb = lambda v: None if v is None else v / MiB  # noqa: E731
    parts = [f"# GPU check: {result['device']}",
             f"torch {result['torch']}, CUDA {result['cuda']}, triton {result['triton']}, python {result['python']}; "
             f"{result['date']}{' (smoke run on the CPU)' if result['smoke'] else ''}.", "## Stages",
             markdown_table(["stage", "status", "seconds", "budget s"],
                            [[k, v.get("status"), v.get("seconds"), v.get("budget_s")] for k, v in result["stages"].items()])]
    corr = result.get("correctness", [])
    if corr:
        groups: dict[tuple, dict] = {}
        for r in corr:
            g = groups.setdefault((r["strategy"], r["dtype"]), {})
            g[r["status"]] = g.get(r["status"], 0) + 1
        parts += ["## Correctness", markdown_table(["strategy", "dtype", "pass", "fail", "error", "refused", "skipped"], [
            [s, d, g.get("pass", 0), g.get("fail", 0), g.get("error", 0), g.get("refused", 0), g.get("skipped", 0)]
            for (s, d), g in groups.items()])]
        bad = [r for r in corr if r["status"] in ("fail", "error")]
        if bad:
            parts.append(markdown_table(["case", "strategy", "dtype", "check", "status", "error", "tolerance", "detail"],
                                        [[r["case"], r["strategy"], r["dtype"], r["check"], r["status"], r["error"],
                                          r["tolerance"], r["detail"]] for r in bad[:60]]))
    if result["rows"]:
        parts += ["## Timing (median ms; peak MiB of one call)", markdown_table(
            ["config", "dtype", "contender", "fwd ms", "fwd+bwd ms", "peak fwd MiB", "peak fwd+bwd MiB", "planned", "note"],
            [[r["config"], r["dtype"], r["contender"], r.get("forward_ms"), r.get("forward_backward_ms"), mb(r.get("peak_bytes")),
              mb(r.get("forward_backward_peak_bytes")),
              "/".join(m for m, f in (("fwd", "planned_forward"), ("bwd", "planned_forward_backward")) if r.get(f)),
              r.get("note") or (f"{r['gbytes_per_s']:.0f} GB/s" if r.get("gbytes_per_s") else "")] for r in result["rows"]])]
    if result.get("memory"):
        parts += ["## Memory (workspace = peak minus inputs, output, gradients)", markdown_table(
            ["config", "mode", "budget MiB", "strategy", "tiles", "workspace MiB", "predicted MiB", "/ budget", "/ predicted", "error"],
            [[r["config"], r["mode"], mb(r["budget_bytes"]), r.get("strategy"), r.get("passes"), mb(r.get("workspace_bytes")),
              mb(r.get("predicted_bytes")), r.get("over_budget"), r.get("vs_prediction"), r.get("error")] for r in result["memory"]])]
    if result.get("threads"):
        parts += ["## CPU threads (flownetc forward)", markdown_table(
            ["threads", "ms", "speedup"], [[r["threads"], r["forward_ms"], r["speedup"]] for r in result["threads"]["rows"]])]
    parts += ["## Targets (issue 19)", markdown_table(["target", "measured", "goal"], targets(result))]
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------- driver


class Run:
    """The run's state: arguments, device, clock, the result dict and where it is saved."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.smoke = args, args.smoke
        self.device = torch.device("cpu" if args.smoke else "cuda")
        self.clock = Clock(self.device)
        self.only = [n for n in args.only.split(",") if n]
        self.sampler = None
        self.out_dir = Path(args.out)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu"
        self.json_path = self.out_dir / f"gpu-{slug(name)}.json"
        self.start = time.perf_counter()
        self.result: dict[str, Any] = {
            "device": name, "torch": torch.__version__, "triton": triton_version(), "cuda": torch.version.cuda,
            "python": sys.version.split()[0], "smoke": self.smoke, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1", "machine": describe_machine(),
            "strategies": strategy_names(), "stages": {}, "correctness": [], "rows": [], "memory": [], "threads": None,
            "workspace_over_budget_max": None, "workspace_vs_prediction_range": None,
        }

    def stage(self, name: str, fn: Callable[["Run", Budget], dict]) -> None:
        nominal = BUDGETS[name][1 if self.smoke else 0] * self.args.budget_scale
        if name == "sampler" and self.args.sampler_status:
            # The build began with the run (gpu_check.sh): wait for it until its deadline after the start.
            nominal = max(5.0, BUDGETS[name][0] - (time.perf_counter() - self.start))
        left = self.args.time_limit - (time.perf_counter() - self.start)
        budget = Budget(max(1.0, min(nominal, left)))
        print(f"== {name}: budget {budget.seconds:.0f} s", flush=True)
        start = time.perf_counter()
        try:
            info = fn(self, budget)
            info.setdefault("status", "ok")
        except Exception as exc:  # noqa: BLE001 (a failed stage is recorded; the next one runs)
            info = {"status": "failed", "error": short(exc), "traceback": traceback.format_exc()[-3000:]}
            free_cuda()
        info.update(seconds=round(time.perf_counter() - start, 1), budget_s=round(budget.seconds))
        self.result["stages"][name] = info
        print(f"== {name}: {info['status']} in {info['seconds']} s", flush=True)
        self.save()

    def save(self) -> None:
        self.result["total_seconds"] = round(time.perf_counter() - self.start, 1)
        self.json_path.write_text(json.dumps(self.result, indent=1, default=str))
        self.json_path.with_suffix(".md").write_text(markdown(self.result))


STAGES = {
    "tests": stage_tests, "correctness": stage_correctness, "memory": stage_memory, "sampler": stage_sampler,
    "timing": stage_timing, "threads": stage_threads,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU at tiny sizes (CI)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu_out"), help="output folder")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--only", default="", help="comma-separated timing configurations")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds for the whole run (default 420; smoke 120)")
    parser.add_argument("--budget-scale", type=float, default=1.0,
                        help="multiply every stage's time budget (CI's smoke test on a shared machine)")
    parser.add_argument("--target-s", type=float, default=None, help="timed seconds per contender (sets its repeats)")
    parser.add_argument("--min-repeat", type=int, default=None)
    parser.add_argument("--max-repeat", type=int, default=None)
    parser.add_argument("--slow-s", type=float, default=1.0, help="a contender slower than this per call is timed once")
    parser.add_argument("--slow-limit", type=float, default=4.0, help="skip the C++ backward predicted slower than this")
    parser.add_argument("--naive-limit", type=float, default=40 * GiB, help="skip the naive unfold above this many bytes")
    parser.add_argument("--sampler-status", default="", help="status file of gpu_check.sh's background build")
    parser.add_argument("--sampler-site", default="", help="where that build installed the sampler")
    parser.add_argument("--sampler-log", default="", help="that build's log")
    args = parser.parse_args(argv)
    smoke_or_gpu = lambda smoke, gpu: smoke if args.smoke else gpu  # noqa: E731
    args.time_limit = args.time_limit or smoke_or_gpu(120.0, 420.0) * args.budget_scale
    args.target_s = args.target_s or smoke_or_gpu(0.005, 0.25)
    args.min_repeat = args.min_repeat or smoke_or_gpu(2, 5)
    args.max_repeat = args.max_repeat or smoke_or_gpu(3, 30)
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; expected a subset of {list(STAGES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --smoke for the CPU run", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)  # tiny problems: threads only add contention on a shared CI machine
    run = Run(args)
    print(f"gpu_check: {run.result['device']} | torch {run.result['torch']} | CUDA {run.result['cuda']} | "
          f"triton {run.result['triton']} | strategies {', '.join(run.result['strategies'])}", flush=True)
    for name, fn in STAGES.items():
        if name in args.stages.split(","):
            run.stage(name, fn)
    run.save()
    # The reply of the device tool carries the end of the output: the stages and the targets, last.
    sections = markdown(run.result).split("\n\n## ")
    print("\n\n".join("## " + s for s in sections if s.startswith(("Stages", "Targets"))))
    print(f"gpu_check: wrote {run.json_path} and {run.json_path.with_suffix('.md').name} in {run.result['total_seconds']} s")
    failed = [n for n, s in run.result["stages"].items() if str(s.get("status", "")).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
