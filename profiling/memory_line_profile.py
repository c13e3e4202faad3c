"""Line-by-line CPU memory of one forward + backward: tiledcorr against the naive unfold approach.

memory_profiler reads the process's resident memory before and after every
line. That shows *where* memory is held, but it misses peaks that come and go
inside one line (a temporary freed before the line returns), so the report
also gives, for each step, the exact peak from the kernel's high-water mark
(:func:`tiledcorr.tools.measure.peak_memory`) and the prediction. The optional
figure samples the resident memory over time with memory_profiler's
``memory_usage``.

Usage (from the repository root, CPU only)::

    python profiling/memory_line_profile.py --out docs/memory_line_profile.txt \\
        --plot docs/figures/memory_timeline.png
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import torch
from memory_profiler import LineProfiler, memory_usage, show_results

import tiledcorr
from tiledcorr.budget import format_bytes
from tiledcorr.tools.machine import describe_machine
from tiledcorr.tools.measure import peak_memory
from tiledcorr.tools.naive import naive_correlate, naive_peak_bytes


def tiled_step(x1: torch.Tensor, x2: torch.Tensor, grad_out: torch.Tensor, patch_size: int, budget: str):
    """One forward + backward of tiledcorr.correlate; returns both input gradients."""
    out = tiledcorr.correlate(x1, x2, patch_size=patch_size, memory_budget=budget)
    grads = torch.autograd.grad(out, (x1, x2), grad_out)
    del out
    return grads


def naive_step(x1: torch.Tensor, x2: torch.Tensor, grad_out: torch.Tensor, patch_size: int):
    """One forward + backward of the naive unfold approach; returns both input gradients."""
    out = naive_correlate(x1, x2, patch_size=patch_size)
    grads = torch.autograd.grad(out, (x1, x2), grad_out)
    del out
    return grads


def line_profile(functions, call) -> str:
    """memory_profiler's line report of ``functions`` while ``call()`` runs."""
    profiler = LineProfiler(backend="psutil")
    for fn in functions:
        profiler.add_function(fn)
    profiler.enable_by_count()
    try:
        call()
    finally:
        profiler.disable_by_count()
    stream = io.StringIO()
    show_results(profiler, stream=stream, precision=1)
    return stream.getvalue()


def plot_timeline(samples: dict[str, list[tuple[float, float]]], title: str, path: Path) -> None:
    """Resident memory (MiB) against time for each step, each from its own start."""
    from tiledcorr.tools.plotting import import_pyplot

    plt = import_pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    for name, series in samples.items():
        t0, m0 = series[0][1], series[0][0]
        ax.plot([t - t0 for _, t in series], [m - m0 for m, _ in series], label=name)
    ax.set_xlabel("time since the step started (s)")
    ax.set_ylabel("resident memory above the start (MiB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="2,64,48,48", help="B,C,H,W (default 2,64,48,48)")
    parser.add_argument("--patch-size", type=int, default=21)
    parser.add_argument("--budget", default="64MiB", help="tiledcorr's workspace budget (default 64MiB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the report here (default: stdout)")
    parser.add_argument("--plot", type=Path, help="also write a figure of memory over time (needs matplotlib)")
    args = parser.parse_args(argv)

    shape = tuple(int(v) for v in args.shape.split(","))
    gen = torch.Generator().manual_seed(args.seed)
    x1 = torch.randn(shape, generator=gen).requires_grad_()
    x2 = torch.randn(shape, generator=gen).requires_grad_()
    plan = tiledcorr.plan(shape, patch_size=args.patch_size, memory_budget=args.budget, requires_grad=True)
    grad_out = torch.randn(plan.geometry.out_shape, generator=gen)
    tiled = lambda: tiled_step(x1, x2, grad_out, args.patch_size, args.budget)  # noqa: E731
    naive = lambda: naive_step(x1, x2, grad_out, args.patch_size)  # noqa: E731
    tiled(), naive()  # warm-up: first-call allocations and the plan cache

    grads_bytes = 2 * x1.numel() * x1.element_size()
    report = [
        "# Line-by-line CPU memory of one forward + backward (profiling/memory_line_profile.py)",
        f"# problem: input {shape}, patch {args.patch_size}, float32, tiledcorr budget {args.budget}",
        f"# output {format_bytes(plan.output_bytes)}; naive (B, C, P*P, H*W) tensor {format_bytes(plan.naive_bytes)}",
        f"# machine: {json.dumps(describe_machine())}",
        "",
        "## Exact peaks (VmHWM high-water mark, bytes above the inputs; includes the output and both gradients)",
    ]
    expected = {
        "tiledcorr": plan.output_bytes + grads_bytes + plan.peak_workspace_bytes,
        "naive unfold": naive_peak_bytes(plan, backward=True) + grads_bytes,
    }
    for name, step in (("tiledcorr", tiled), ("naive unfold", naive)):
        _, peak = peak_memory(step)
        report.append(f"{name:14} measured {format_bytes(peak):>10}   predicted {format_bytes(expected[name]):>10}")
    report += ["", "## Line profiles (memory_profiler; a line's transient peak is not shown, only what it leaves)", ""]
    report.append(line_profile([tiled_step], tiled))
    report.append(line_profile([naive_step, naive_correlate], naive))
    text = "\n".join(report)
    if args.out is None:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)

    if args.plot is not None:
        samples = {name: memory_usage((step, (), {}), interval=0.01, timestamps=True)
                   for name, step in (("tiledcorr (forward + backward)", tiled), ("naive unfold (forward + backward)", naive))}
        plot_timeline(samples, f"input {shape}, patch {args.patch_size}: resident memory during one step", args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
