"""Benchmark: tiledcorr against the naive unfold approach, the C++ reference and matmul.

Times forward and forward+backward (median of ``--repeat`` runs after a
warm-up) for a fixed list of configurations, in one run, and prints ratios
measured in that same run (the machines are shared and noisy, so only
same-run ratios are comparable):

* ``ref/tiled``: how many times faster than ``spatial_correlation_sampler`` (C++);
* ``tiled/naive``: tiledcorr's time over the naive unfold approach's (< 1 is faster);
* ``% matmul``: tiledcorr's effective rate, ``2*B*C*kH*kW*PH*PW*oH*oW`` flops per
  second, over the rate of one ``torch.matmul`` with the same flop count;
* ``copy GB/s``: bytes read and written per second by a plain copy of a
  tensor the size of the cost volume, timed in the same rounds: the memory
  bandwidth the run got (other tenants of a shared machine take some).

Saves JSON with the machine's description under ``profiling/results/`` and
writes the table into ``docs/performance.md`` between markers for this
device and dtype.

Usage::

    python profiling/bench.py                       # CPU, float32
    python profiling/bench.py --device cuda --dtype bfloat16
    python profiling/bench.py --device cuda --tf32  # float32 with TF32 matmul
    python profiling/bench.py --only flownetc,large --repeat 7
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch

import tiledcorr
from tiledcorr.budget import free_memory, format_bytes
from tiledcorr.tools.machine import describe_machine
from tiledcorr.tools.naive import naive_correlate, naive_peak_bytes

ROOT = Path(__file__).resolve().parents[1]

#: name -> (input shape, correlate parameters)
CONFIGS = {
    "mmtracker": ((1, 512, 19, 34), dict(patch_size=9)),
    "flownetc": ((4, 256, 48, 64), dict(patch_size=21, dilation_patch=2)),
    "pwcnet": ((4, 196, 32, 48), dict(patch_size=9)),
    "large": ((2, 128, 64, 64), dict(patch_size=31)),
    "larger": ((1, 64, 96, 128), dict(patch_size=41)),
    "kernel3": ((2, 64, 64, 64), dict(kernel_size=3, patch_size=7)),
}


def _reference():
    try:
        from spatial_correlation_sampler import spatial_correlation_sample
    except ImportError:
        return None
    return spatial_correlation_sample


def _step(fn, x1, x2, kw, backward: bool):
    """A closure running ``fn`` forward (and backward with a fixed gradient)."""
    if not backward:
        return lambda: fn(x1, x2, **kw)
    a, b = x1.detach().requires_grad_(), x2.detach().requires_grad_()

    def run():
        a.grad = b.grad = None
        out = fn(a, b, **kw)
        out.backward(torch.ones_like(out))

    return run


def _matmul(flops: float, dtype, device):
    """A closure running one square ``torch.matmul`` of ``flops`` flops (2 n^3), and its true flop count."""
    n = max(64, round((flops / 2) ** (1 / 3)))
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return (lambda: a @ b), 2 * n**3


def _volume_copy(geometry, dtype, device):
    """A closure copying a tensor of the volume's size into another, and the bytes it moves.

    A probe of the memory bandwidth the run gets: tiledcorr writes the volume
    and transposes bands into it, so its share of matmul's rate falls when
    other tenants load the memory, while matmul's own rate barely moves.
    """
    n = math.prod(geometry.out_shape)
    src = torch.ones(n, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), 2 * n * src.element_size()


def time_interleaved(contenders: dict, repeats: dict, device, warmup: dict) -> dict:
    """Median seconds per contender, timed round-robin so all see the same machine load.

    The machines are shared and their speed drifts by tens of percent within
    a minute; timing one contender after another would turn that drift into
    the ratios. Round ``r`` runs every contender with ``repeats[name] > r``,
    after ``warmup[name]`` untimed calls.

    Deliberately not :func:`tiledcorr.tools.measure.measure`: importing that module
    tells glibc to give every buffer above 64 KiB its own mapping (so freed
    memory leaves the RSS and peaks are exact), which makes every allocation
    page-fault afresh and slows every contender by how much it allocates.
    Timings here use the allocator as a user's process has it.
    """
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = {name: [] for name in contenders}
    for name, fn in contenders.items():
        for _ in range(warmup.get(name, 1)):
            fn()
    sync()
    for r in range(max(repeats.values())):
        for name, fn in contenders.items():
            if repeats[name] > r:
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_config(name, shape, kw, args, reference) -> dict:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    x1 = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    x2 = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    # What a default call plans: forward-only for inputs without grad, forward
    # and backward otherwise (both are in the JSON).
    plan = tiledcorr.plan(shape, dtype=dtype, device=device, requires_grad=True, **kw)
    forward_plan = tiledcorr.plan(shape, dtype=dtype, device=device, **kw)
    flops = plan.geometry.flops
    row = {"name": name, "shape": list(shape), "params": kw, "gflop": flops / 1e9, "plan": plan.to_dict(),
           "forward_plan": forward_plan.to_dict()}
    matmul, matmul_flops = _matmul(flops, dtype, device)
    copy, copy_bytes = _volume_copy(plan.geometry, dtype, device)
    contenders, repeats = {"matmul": matmul, "copy": copy}, {"matmul": args.repeat, "copy": args.repeat}
    use_reference = reference is not None and dtype in (torch.float32, torch.float64) and not args.no_reference
    for label, backward in (("fwd", False), ("fwdbwd", True)):
        contenders[f"tiled_{label}"] = _step(tiledcorr.correlate, x1, x2, kw, backward)
        repeats[f"tiled_{label}"] = args.repeat
        naive_need = naive_peak_bytes(plan, backward=backward)
        if naive_need < min(args.naive_limit, 0.5 * free_memory(device)):
            contenders[f"naive_{label}"] = _step(naive_correlate, x1, x2, kw, backward)
            repeats[f"naive_{label}"] = args.repeat
        else:
            row["naive_skipped"] = f"needs {format_bytes(naive_need)}"
        if use_reference:
            contenders[f"ref_{label}"] = _step(reference, x1, x2, kw, backward)
            repeats[f"ref_{label}"] = args.ref_repeat
    # The reference takes seconds per call and has nothing to warm up but its first call.
    medians = time_interleaved(contenders, repeats, device, warmup={"ref_fwd": 0, "ref_fwdbwd": 0})
    for label in ("fwd", "fwdbwd"):
        for who in ("tiled", "naive", "ref"):
            row[f"{who}_{label}_s"] = medians.get(f"{who}_{label}")
    row["matmul_gflops"] = matmul_flops / medians["matmul"] / 1e9
    row["copy_gbytes_per_s"] = copy_bytes / medians["copy"] / 1e9
    row["tiled_fwd_gflops"] = flops / row["tiled_fwd_s"] / 1e9
    row["tiled_fwdbwd_gflops"] = 3 * flops / row["tiled_fwdbwd_s"] / 1e9  # backward: two more products per term
    return row


def _ratio(num, den) -> str:
    return "n/a" if num is None or den is None else f"{num / den:.2f}"


def format_table(rows: list[dict]) -> str:
    head = ("| config | GFLOP | tiled fwd ms | ref/tiled fwd | tiled/naive fwd | % matmul fwd "
            "| tiled fwd+bwd ms | ref/tiled fwd+bwd | tiled/naive fwd+bwd | % matmul fwd+bwd | copy GB/s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        pct_f = 100 * r["tiled_fwd_gflops"] / r["matmul_gflops"]
        pct_b = 100 * r["tiled_fwdbwd_gflops"] / r["matmul_gflops"]
        lines.append(
            f"| {r['name']} | {r['gflop']:.2f} | {1e3 * r['tiled_fwd_s']:.1f} | {_ratio(r['ref_fwd_s'], r['tiled_fwd_s'])} "
            f"| {_ratio(r['tiled_fwd_s'], r['naive_fwd_s'])} | {pct_f:.0f}% | {1e3 * r['tiled_fwdbwd_s']:.1f} "
            f"| {_ratio(r['ref_fwdbwd_s'], r['tiled_fwdbwd_s'])} | {_ratio(r['tiled_fwdbwd_s'], r['naive_fwdbwd_s'])} | {pct_b:.0f}% "
            f"| {r['copy_gbytes_per_s']:.1f} |"
        )
    return "\n".join(lines)


def write_docs(section: str, text: str) -> None:
    """Replace (or append) the block between this section's markers in docs/performance.md."""
    path = ROOT / "docs" / "performance.md"
    doc = path.read_text() if path.exists() else "# Performance\n"
    begin, end = f"<!-- bench:{section} -->", f"<!-- /bench:{section} -->"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc:
        doc = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmul (CUDA float32)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--ref-repeat", type=int, default=5, help="timed runs of the C++ reference")
    parser.add_argument("--only", default="", help="comma-separated config names")
    parser.add_argument("--naive-limit", type=float, default=4 * 2**30, help="skip naive above this many bytes")
    parser.add_argument("--no-reference", action="store_true", help="skip the C++ reference")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/performance.md")
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    names = [n for n in args.only.split(",") if n] or list(CONFIGS)
    reference = _reference()
    machine = describe_machine()
    print(f"machine: {machine.get('cpu')} | torch {torch.__version__} | threads {torch.get_num_threads()}"
          f"{' | ' + str(machine.get('cuda_device')) if args.device.startswith('cuda') else ''}", flush=True)
    section = f"{args.device.split(':')[0]}-{args.dtype}{'-tf32' if args.tf32 else ''}"
    out = ROOT / "profiling" / "results" / f"bench-{section}.json"
    rows = []
    for name in names:
        shape, kw = CONFIGS[name]
        start = time.perf_counter()
        rows.append(bench_config(name, shape, kw, args, reference))
        # Print and save after every configuration: a run cut short keeps what it measured.
        print(format_table(rows).splitlines()[-1], flush=True)
        print(f"  {name}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        result = {"machine": machine, "args": vars(args), "section": section,
                  "reference_available": reference is not None, "rows": rows}
        out.write_text(json.dumps(result, indent=2, default=str))
    table = format_table(rows)
    print(table)
    print(f"saved {out.relative_to(ROOT)}")
    if not args.no_docs:
        device_name = machine.get("cuda_device") if args.device.startswith("cuda") else machine.get("cpu")
        header = (f"Measured {time.strftime('%Y-%m-%d')} on {device_name}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, {args.dtype}{' (TF32 on)' if args.tf32 else ''}; "
                  f"median of {args.repeat} after warm-up (C++ reference: {args.ref_repeat}"
                  f"{'' if reference is not None else ', not installed'}). Raw data: `{out.relative_to(ROOT)}`.\n\n")
        write_docs(section, header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
