"""Memory and time of the RAFT-style look-up against RAFT's all-pairs CorrBlock, on the CPU.

Two parts, each measurement in a fresh process (so the resident-set
high-water mark and the allocator start clean):

1. **Budget check.** The look-up of ``(1, 256, 136, 240)`` float32 feature
   maps (1080p images at 1/8 resolution), 4 levels, radius 4, under a 256 MiB
   budget: the measured peak (:func:`tiledcorr.tools.measure.peak_memory`, RSS
   high-water mark above the level before the call, so the inputs and coords
   are excluded) minus the result (the forward's output, the backward's two
   gradients), against the plan's predicted workspace and 1.1 x the budget;
   forward and backward.
2. **Against RAFT.** RAFT's all-pairs CorrBlock (the float32 code path of
   ``tiledcorr.reference.raft_corr_block_reference``: matmul, pooling,
   ``grid_sample``; construction and one look-up) against one tiled look-up,
   time and peak, at ``--raft-shape`` (default the same 1080p features: the
   largest standard size whose all-pairs volume fits this 24 GiB machine,
   ~10 GiB peak; 1440p features, 180 x 320, would need ~27 GiB).

Method: fixed seed (inputs standard normal, coords uniform over the image and
4 pixels beyond); one untimed warm-up call, then ``--repeat`` timed calls
(median, min-max), then one call for the peak. The machine is shared: timings
are noisy. The look-up is called through its operator
``torch.ops.tiledcorr.correlate_lookup`` (what ``tiledcorr.correlate_lookup``
calls after validating).

Usage::

    PYTHONPATH=. python profiling/lookup_memory.py            # both parts; writes results/lookup_memory-cpu-float32.json
    PYTHONPATH=. python profiling/lookup_memory.py --skip-raft
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _inputs(shape, requires_grad=False):
    import torch

    g = torch.Generator().manual_seed(0)
    batch, _, height, width = shape
    f1 = torch.randn(shape, generator=g).requires_grad_(requires_grad)
    f2 = torch.randn(shape, generator=g).requires_grad_(requires_grad)
    size = torch.tensor([width, height], dtype=torch.float32).view(1, 2, 1, 1)
    coords = torch.rand(batch, 2, height, width, generator=g) * (size + 8) - 4
    return f1, f2, coords


def _child(kind: str, shape: tuple[int, ...], budget: str, levels: int, radius: int, repeat: int) -> dict:
    """One measurement, in this (fresh) process."""
    from tiledcorr.tools.measure import measure  # first: it tunes malloc before the inputs exist

    import torch

    import tiledcorr.library.lookup  # noqa: F401  (registers torch.ops.tiledcorr.correlate_lookup)
    from tiledcorr.planning.lookup import plan_lookup
    from tiledcorr.reference import raft_corr_block_reference

    scale = 1 / shape[1] ** 0.5
    encoded = f"s:{budget}"
    lookup = lambda a, b, c: torch.ops.tiledcorr.correlate_lookup(a, b, c, radius, levels, scale, encoded)  # noqa: E731
    result: dict = {"kind": kind, "shape": list(shape), "num_levels": levels, "radius": radius, "budget": budget}
    if kind in ("forward", "raft-tiled"):
        f1, f2, coords = _inputs(shape)
        plan = plan_lookup(shape, num_levels=levels, radius=radius, memory_budget=budget)
        m = measure(lambda: lookup(f1, f2, coords), repeat=repeat, warmup=1)
        result.update(predicted_bytes=plan.workspace_forward_bytes, result_bytes=plan.output_bytes,
                      num_tiles=plan.num_tiles, tile=[plan.tile_rows, plan.tile_cols])
    elif kind == "backward":
        f1, f2, coords = _inputs(shape, requires_grad=True)
        plan = plan_lookup(shape, num_levels=levels, radius=radius, memory_budget=budget, requires_grad=True)
        out = lookup(f1, f2, coords)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))

        def step():  # drops the gradients it made, so that they are not in the next call's baseline
            out.backward(grad, retain_graph=True)
            f1.grad = f2.grad = None

        m = measure(step, repeat=repeat, warmup=1)
        result.update(predicted_bytes=plan.workspace_backward_bytes, result_bytes=2 * f1.numel() * 4,
                      num_tiles=plan.num_tiles, tile=[plan.tile_rows, plan.tile_cols])
    elif kind == "raft":
        f1, f2, coords = _inputs(shape)
        m = measure(lambda: raft_corr_block_reference(f1, f2, coords, levels, radius), repeat=repeat, warmup=1)
        result.update(predicted_bytes=None, result_bytes=shape[0] * levels * (2 * radius + 1) ** 2 * shape[2] * shape[3] * 4)
    else:
        raise ValueError(kind)
    result.update(times_s=m.times, median_s=m.median, peak_bytes=m.peak_bytes,
                  workspace_measured_bytes=m.peak_bytes - result["result_bytes"])
    return result


def _run(kind: str, args) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--shape", ",".join(map(str, args.shape if kind in (
        "forward", "backward") else args.raft_shape)), "--budget", args.budget, "--repeat", str(args.repeat)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1,256,136,240", help="B,C,H,W of the budget check")
    parser.add_argument("--raft-shape", default="1,256,136,240", help="B,C,H,W of the comparison with RAFT")
    parser.add_argument("--budget", default="256MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-raft", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.shape = tuple(int(n) for n in args.shape.split(","))
    args.raft_shape = tuple(int(n) for n in args.raft_shape.split(","))
    if args.child:
        print(json.dumps(_child(args.child, args.shape, args.budget, 4, 4, args.repeat)))
        return

    from tiledcorr.budget import format_bytes, resolve_budget
    from tiledcorr.tools.machine import describe_machine

    budget = resolve_budget(args.budget)
    kinds = ["forward", "backward"] + ([] if args.skip_raft else ["raft-tiled", "raft"])
    results = []
    for kind in kinds:
        r = _run(kind, args)
        results.append(r)
        predicted = "-" if r["predicted_bytes"] is None else format_bytes(r["predicted_bytes"])
        spread = f"{min(r['times_s']):.2f}-{max(r['times_s']):.2f}"
        print(f"{kind:10s} {tuple(r['shape'])}: median {r['median_s']:.2f} s ({spread}), peak {format_bytes(r['peak_bytes'])}, "
              f"peak minus result {format_bytes(r['workspace_measured_bytes'])}, predicted workspace {predicted}, "
              f"1.1 x budget {format_bytes(1.1 * budget)}", flush=True)
    out = ROOT / "profiling" / "results" / "lookup_memory-cpu-float32.json"
    out.write_text(json.dumps({"machine": describe_machine(), "budget_bytes": budget, "results": results}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
