"""Memory of a fused reduction against storing the cost volume: argmax over an 81x81 patch.

One ``tiledcorr.correlate_reduce(..., reduction="argmax")`` of two
``(2, 128, 96, 96)`` float32 maps with ``patch_size=81`` (displacements
-40..40 in both directions) under a 256 MiB budget, on the CPU. Prints and
saves (``profiling/results/reduce_memory-<device>-float32.json``, with the
machine's description):

* the plan (workspace predicted, the reduction's per-tile temporaries included);
* the wall-clock time and the measured peak memory of the call
  (:func:`tiledcorr.tools.measure.peak_memory`: the resident-set high-water mark
  above the level before the call, on CPU);
* the bytes a stored volume ``(2, 81, 81, 96, 96)`` float32 would take alone.

Method: fixed seed; one warm-up call on a small input (same code paths: it
settles the thread pool and first-use allocations without doubling the run
time), then the measured call, run once (the machine is shared: a single
run, no median; say so next to the figure), then the same call again. The
plan is made (and cached) before either, so neither includes planning. The
first call of a matmul shape in a process can measure more than the repeat:
MKL keeps the buffers of its first use of a shape for later calls (its
"fast memory manager"; ``MKL_DISABLE_FAST_MM=1`` turns that off, and the
script records whether it is set).

Usage::

    PYTHONPATH=. python profiling/reduce_memory.py
    PYTHONPATH=. python profiling/reduce_memory.py --budget 64MiB --patch-size 41
    MKL_DISABLE_FAST_MM=1 PYTHONPATH=. python profiling/reduce_memory.py   # without MKL's buffer cache
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

import tiledcorr
from tiledcorr.budget import format_bytes
from tiledcorr.tools.machine import describe_machine
from tiledcorr.tools.measure import peak_memory

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2,128,96,96", help="B,C,H,W")
    parser.add_argument("--patch-size", type=int, default=81)
    parser.add_argument("--budget", default="256MiB")
    parser.add_argument("--reduction", default="argmax", choices=tuple(tiledcorr.reductions.REDUCTIONS))
    parser.add_argument("--k", type=int, default=None, help="for --reduction topk")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    shape = tuple(int(v) for v in args.shape.split(","))
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    x1 = torch.randn(shape, generator=gen).to(device)
    x2 = torch.randn(shape, generator=gen).to(device)
    kw = dict(patch_size=args.patch_size, reduction=args.reduction, k=args.k, memory_budget=args.budget)

    plan = tiledcorr.plan(shape, patch_size=args.patch_size, device=device, memory_budget=args.budget,
                          reduction=args.reduction, k=args.k)
    geometry = plan.geometry
    print(plan)

    small = x1[:1, :, :16, :16].contiguous()
    peak_memory(lambda: tiledcorr.correlate_reduce(small, small, **kw), device)  # warm-up (and the allocator's set-up)

    start = time.perf_counter()
    result, peak = peak_memory(lambda: tiledcorr.correlate_reduce(x1, x2, **kw), device)
    seconds = time.perf_counter() - start
    _, repeat_peak = peak_memory(lambda: tiledcorr.correlate_reduce(x1, x2, **kw), device)
    result_bytes = sum(t.numel() * t.element_size() for t in (result if isinstance(result, tuple) else (result,)))
    volume_bytes = math.prod(geometry.out_shape) * 4
    inputs_bytes = 2 * x1.numel() * x1.element_size()

    rows = [
        ("time (one run)", f"{seconds:.1f} s"),
        ("measured peak of the call", f"{format_bytes(peak)} ({peak} bytes)"),
        ("measured peak, same call again", f"{format_bytes(repeat_peak)} ({repeat_peak} bytes)"),
        ("planned workspace (incl. reduction)", f"{format_bytes(plan.forward_workspace_bytes)}"),
        ("budget", f"{format_bytes(plan.budget_bytes)}"),
        ("result", f"{tuple(result.shape) if isinstance(result, torch.Tensor) else 'TopK'} {format_bytes(result_bytes)}"),
        ("inputs (not counted)", format_bytes(inputs_bytes)),
        ("stored volume would need", f"{format_bytes(volume_bytes)} ({volume_bytes} bytes) for {tuple(geometry.out_shape)}"),
        ("tiles", f"{plan.passes}"),
        ("MKL_DISABLE_FAST_MM", os.environ.get("MKL_DISABLE_FAST_MM", "(not set)")),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")

    record = {
        "shape": list(shape), "patch_size": args.patch_size, "reduction": args.reduction, "k": args.k,
        "budget_bytes": plan.budget_bytes, "seconds": seconds, "peak_bytes": peak, "repeat_peak_bytes": repeat_peak,
        "planned_workspace_bytes": plan.forward_workspace_bytes, "result_bytes": result_bytes,
        "stored_volume_bytes": volume_bytes, "tiles": plan.passes,
        "mkl_disable_fast_mm": os.environ.get("MKL_DISABLE_FAST_MM"), "plan": plan.to_dict(), "machine": describe_machine(),
    }
    out = ROOT / "profiling" / "results" / f"reduce_memory-{device.type}-float32.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
