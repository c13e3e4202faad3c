"""Time chosen tilings of one problem against each other and against the planner's choice.

For checking the planner's cost model: each tiling runs the engine's forward
(into a fresh, huge-page-advised volume, as ``correlate`` does) or backward
(both input gradients of a random output gradient), timed round-robin after
one warm-up call each; prints the median per tiling. Only the ratios within
one run mean anything on a shared machine.

Usage::

    python profiling/tilings.py larger --pass backward --tiles row_matmul:96x16,row_matmul:96x14
    python profiling/tilings.py --shape 4,128,96,96 --patch-size 41 --pass backward \\
        --tiles row_matmul:96x16,row_matmul:96x14/41x41

A tile is ``strategy:UHxUW`` with an optional ``/JHxJW`` (displacements per
tile; default the planner's). The planner's own tiling is always timed first.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CONFIGS, time_interleaved  # noqa: E402

import tiledcorr  # noqa: E402
from tiledcorr.execution import engine, hugepages  # noqa: E402
from tiledcorr.execution.sinks import OutputSink, volume_grad  # noqa: E402
from tiledcorr.planning.tiling import Tiling  # noqa: E402


def parse_tiling(spec: str, default: Tiling) -> Tiling:
    strategy, _, sizes = spec.partition(":")
    tile, _, disp = sizes.partition("/")
    return dataclasses.replace(
        default, strategy=strategy, tile=tuple(map(int, tile.split("x"))),
        disp_tile=tuple(map(int, disp.split("x"))) if disp else default.disp_tile,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", choices=sorted(CONFIGS), help="a profiling/bench.py configuration")
    parser.add_argument("--shape", help="B,C,H,W instead of a configuration")
    parser.add_argument("--patch-size", type=int, default=1)
    parser.add_argument("--pass", dest="which", choices=("forward", "backward"), default="forward")
    parser.add_argument("--tiles", required=True, help="comma-separated strategy:UHxUW[/JHxJW]")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    if args.config:
        shape, kw = CONFIGS[args.config]
    elif args.shape:
        shape, kw = tuple(map(int, args.shape.split(","))), dict(patch_size=args.patch_size)
    else:
        parser.error("give a configuration or --shape")

    torch.manual_seed(0)
    x1, x2 = torch.randn(shape), torch.randn(shape)
    plan = tiledcorr.plan(shape, requires_grad=args.which == "backward", **kw)
    g = plan.geometry
    grad = torch.randn(g.out_shape) if args.which == "backward" else None
    tilings = [plan.tiling] + [parse_tiling(s, plan.tiling) for s in args.tiles.split(",")]

    def runner(tiling: Tiling):
        if args.which == "forward":
            def run():
                out = torch.empty(g.out_shape)
                hugepages.advise(out)
                engine.run_forward(x1, x2, g, tiling, OutputSink(g, out))
        else:
            def run():
                engine.run_backward(x1, x2, g, tiling, torch.zeros(shape), torch.zeros(shape), volume_grad(grad))
        return run

    runs = {i: runner(t) for i, t in enumerate(tilings)}
    medians = time_interleaved(runs, {i: args.repeat for i in runs}, "cpu", warmup={})
    print(f"{args.config or args.shape} {kw}, {args.which}, median of {args.repeat} (round-robin):")
    for i, tiling in enumerate(tilings):
        label = "planner" if i == 0 else "       "
        print(f"  {label} {tiling.strategy:<11} tile {'x'.join(map(str, tiling.tile)):>7} "
              f"displacements {'x'.join(map(str, tiling.disp_tile)):>6}  {medians[i] * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
