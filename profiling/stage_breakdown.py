"""Where a forward's time goes: each stage's share, measured by switching it off.

For each benchmark configuration (``profiling/bench.py``'s list) and the plan a
default call gets, times the forward round-robin with

* everything (``full``);
* the band copy into the cost volume replaced by nothing (``no sink``);
* also the matmuls replaced by nothing (``no bmm``);
* also the input2 region gathers replaced by nothing (``no gather``),

and prints each stage as the difference of consecutive medians, with the band
copy's cost per output element next to a ``memcpy`` of the volume. Then it
times writing a freshly allocated tensor of the volume's size against writing
an existing one, with and without huge-page advice (page faults).

With ``--backward`` it profiles instead ``--repeat`` forward+backward steps of
the plan a call with ``requires_grad`` inputs gets (``torch.profiler``, after
two warm-up steps) and prints each kind of operation's share of the step:
the matmuls, the copies (band transposes, gathers), the fills, the
accumulations. The profiler adds its own overhead, so these are shares, not
timings. The results are only meaningful as a breakdown of one run.

Usage: ``python profiling/stage_breakdown.py [--only large,larger] [--repeat 7] [--backward]``
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CONFIGS, time_interleaved  # noqa: E402

import tiledcorr  # noqa: E402
from tiledcorr.execution import hugepages  # noqa: E402
from tiledcorr.execution.context import TileContext  # noqa: E402
from tiledcorr.execution.sinks import OutputSink  # noqa: E402


@contextmanager
def switched_off(level: int):
    """Replace the last ``level`` stages (sink, bmm, region gather) by no-ops."""
    saved = OutputSink.consume, torch.bmm, TileContext.gather_x2
    try:
        if level >= 1:
            OutputSink.consume = lambda self, tile, band: None
        if level >= 2:
            torch.bmm = lambda *args, **kwargs: None
        if level >= 3:
            TileContext.gather_x2 = lambda self, tile, extent: self.ws.view(
                "x2", tile.batch, len(self.offsets), self.geometry.channels, *extent)
        yield
    finally:
        OutputSink.consume, torch.bmm, TileContext.gather_x2 = saved


def medians(calls: dict, repeat: int) -> dict:
    """Median seconds per call, round-robin after one warm-up each (bench.py's timer)."""
    return time_interleaved(calls, {name: repeat for name in calls}, "cpu", warmup={})


def breakdown(name: str, repeat: int) -> None:
    shape, kw = CONFIGS[name]
    x1, x2 = torch.randn(shape), torch.randn(shape)
    plan = tiledcorr.plan(shape, **kw)

    def at(level: int):
        def run():
            with switched_off(level):
                tiledcorr.correlate(x1, x2, plan=plan, **kw)
        return run

    volume = torch.empty(plan.geometry.out_shape)
    copy = torch.empty_like(volume)
    m = medians({"full": at(0), "no sink": at(1), "no bmm": at(2), "no gather": at(3),
                 "memcpy": lambda: copy.copy_(volume)}, repeat)
    n = volume.numel()
    t = plan.tiling
    print(f"{name}: {plan.strategy}, tile {t.tile}, displacements {t.disp_tile}; forward {m['full'] * 1e3:.1f} ms")
    print(f"  band copy into the volume  {(m['full'] - m['no sink']) * 1e3:6.1f} ms  "
          f"({(m['full'] - m['no sink']) / n * 1e9:.2f} ns per element; memcpy of the volume {m['memcpy'] / n * 1e9:.2f})")
    print(f"  bmm                        {(m['no sink'] - m['no bmm']) * 1e3:6.1f} ms")
    print(f"  input2 region gathers      {(m['no bmm'] - m['no gather']) * 1e3:6.1f} ms")
    print(f"  the rest                   {m['no gather'] * 1e3:6.1f} ms")

    def fresh(advise: bool):
        def run():
            out = torch.empty(n)
            if advise:
                hugepages.advise(out)
            out.fill_(1.0)
        return run

    m = medians({"fresh": fresh(False), "fresh, huge pages": fresh(True), "existing": lambda: copy.fill_(1.0)}, repeat)
    print(f"  writing {n * 4 / 1e6:.0f} MB: fresh {m['fresh'] * 1e3:.1f} ms, fresh with huge-page advice "
          f"{m['fresh, huge pages'] * 1e3:.1f} ms, existing {m['existing'] * 1e3:.1f} ms")


#: aten operations grouped into the stages of a forward+backward step.
OP_KINDS = {"aten::bmm": "matmuls (bmm)", "aten::copy_": "copies (band transposes, gathers)",
            "aten::fill_": "fills (zeroed buffers, accumulators)", "aten::add_": "accumulations into the gradients"}


def backward_breakdown(name: str, repeat: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    shape, kw = CONFIGS[name]
    x1, x2 = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)
    plan = tiledcorr.plan(shape, requires_grad=True, **kw)
    grad = torch.randn(plan.geometry.out_shape)

    def step():
        tiledcorr.correlate(x1, x2, **kw).backward(grad)
        x1.grad = x2.grad = None

    for _ in range(2):
        step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            step()
    wall = (time.perf_counter() - start) / repeat
    shares: dict[str, float] = {}
    for event in prof.key_averages():
        kind = OP_KINDS.get(event.key, "the rest (other ops, Python)")
        shares[kind] = shares.get(kind, 0.0) + event.self_cpu_time_total
    total = sum(shares.values())
    t = plan.tiling
    print(f"{name}: {plan.strategy}, tile {t.tile}, displacements {t.disp_tile}; "
          f"forward+backward {wall * 1e3:.1f} ms per step under the profiler")
    for kind, us in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<40} {100 * us / total:5.1f}%")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="large,larger")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--backward", action="store_true", help="profile forward+backward steps by kind of operation")
    args = parser.parse_args(argv)
    for name in args.only.split(","):
        (backward_breakdown if args.backward else breakdown)(name, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
