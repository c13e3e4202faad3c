"""Tiles spread over threads: is one single-threaded call per core faster than one call on every core?

Issue 20 item 2 names "single-threaded per-tile work with tiles spread over
threads" as one way to parallelise a call. Before building it into the
engine (per-worker workspaces and gradient accumulators, a planner that
divides the budget among workers), this script measures the best case it
could reach: the batch of a ``bench.py`` configuration split into
``--threads`` equal slices, each sliced call run on its own Python thread at
one intra-op thread (PyTorch releases the GIL inside its operators, so the
slices run at once, with no barrier shared between them), against one
``correlate`` call on the whole batch at ``--threads`` intra-op threads, and
one call at one thread (the serial time). The three are timed round-robin,
forward and forward+backward (``bench.time_interleaved``), with the equal-flop ``torch.matmul`` at
``--threads`` as the yardstick.

Only configurations whose batch divides among the threads are run (batch 1,
MM-Tracker and patch 41, would need tiles of one image spread over threads,
which this best case cannot show).

Usage: ``python profiling/tile_threads.py [--only flownetc,large] [--threads 2] [--repeat 9]``
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CONFIGS, _matmul, _step, time_interleaved  # noqa: E402

import tiledcorr  # noqa: E402


def _at_threads(threads: int, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        torch.set_num_threads(threads)
        return fn()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated config names")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=9, help="round-robin rounds, one timed call each (median)")
    args = parser.parse_args()
    n = args.threads
    pool = ThreadPoolExecutor(n)
    names = [s for s in args.only.split(",") if s] or list(CONFIGS)
    print(f"torch {torch.__version__}, {n} threads; ms, median of {args.repeat} round-robin rounds")
    print("| config | kind | one call, 1 thread | one call, n threads | n sliced calls, 1 thread each "
          "| sliced / one call | equal-flop matmul, n threads | one call, % of matmul |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        shape, kw = CONFIGS[name]
        if shape[0] % n:
            print(f"| {name} | skipped: batch {shape[0]} does not divide among {n} threads | | | | | | |")
            continue
        g = torch.Generator().manual_seed(0)
        x1, x2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        h = shape[0] // n
        flops = tiledcorr.plan(shape, **kw).geometry.flops
        matmul, matmul_flops = _matmul(flops, torch.float32, "cpu")
        for backward in (False, True):
            whole = _step(tiledcorr.correlate, x1, x2, kw, backward)
            slices = [_step(tiledcorr.correlate, x1[i * h:(i + 1) * h], x2[i * h:(i + 1) * h], kw, backward)
                      for i in range(n)]

            def sliced(slices=slices) -> None:
                # OpenMP's thread count is per thread: each worker sets its own
                for f in [pool.submit(_at_threads(1, s)) for s in slices]:
                    f.result()

            contenders = {"serial": _at_threads(1, whole), "whole": _at_threads(n, whole),
                          "sliced": sliced, "matmul": _at_threads(n, matmul)}
            seconds = time_interleaved(contenders, dict.fromkeys(contenders, args.repeat), "cpu", {})
            ms = {k: t * 1e3 for k, t in seconds.items()}
            kind = "fwd+bwd" if backward else "fwd"
            # forward+backward: three products per term (the forward's and two gradients)
            share = (3 if backward else 1) * flops * seconds["matmul"] / (matmul_flops * seconds["whole"])
            print(f"| {name} | {kind} | {ms['serial']:.1f} | {ms['whole']:.1f} | {ms['sliced']:.1f} "
                  f"| {ms['sliced'] / ms['whole']:.2f} | {ms['matmul']:.1f} | {100 * share:.0f}% |", flush=True)
    torch.set_num_threads(n)


if __name__ == "__main__":
    main()
