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

Three more measurements (issue 20):

* **tiny call**: the per-call overhead, ``(1, 8, 8, 8)`` patch 3, as the
  median over ``--repeat`` rounds of ``--tiny-calls`` calls each, in
  microseconds per call, against the C++ sampler and the naive unfold;
* **contention** (``--contend N``): every contender timed quiet and with N
  busy PyTorch processes on the same cores, in ``--alternations`` quiet and
  contended phases; the slowdown is the contended median over the quiet
  median, and each contender's slowdown is also given over matmul's;
* **thread scaling** (``--threads 1,2``): the whole measurement once per
  thread count; the main, tiny and contention tables then show the last
  count, and a scaling table shows every count.

Saves JSON with the machine's description under ``profiling/results/`` and
writes the tables into ``docs/performance.md`` between markers for this
device and dtype (``cpu-float32``, ``cpu-float32-tiny``,
``cpu-float32-contend2``, ``cpu-float32-threads``).

Usage::

    python profiling/bench.py                       # CPU, float32, plus the tiny call
    python profiling/bench.py --device cuda --dtype bfloat16
    python profiling/bench.py --device cuda --tf32  # float32 with TF32 matmul
    python profiling/bench.py --only flownetc,large --repeat 7
    python profiling/bench.py --tiny-only           # only the per-call overhead (seconds)
    python profiling/bench.py --contend 2 --alternations 3 --no-reference
    python profiling/bench.py --threads 1,2 --no-tiny
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

import tiledcorr
from tiledcorr.budget import free_memory, format_bytes
from tiledcorr.tools.machine import describe_machine
from tiledcorr.tools.naive import naive_correlate, naive_peak_bytes

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "performance.md"

#: name -> (input shape, correlate parameters)
CONFIGS = {
    "mmtracker": ((1, 512, 19, 34), dict(patch_size=9)),
    "flownetc": ((4, 256, 48, 64), dict(patch_size=21, dilation_patch=2)),
    "pwcnet": ((4, 196, 32, 48), dict(patch_size=9)),
    "large": ((2, 128, 64, 64), dict(patch_size=31)),
    "larger": ((1, 64, 96, 128), dict(patch_size=41)),
    "kernel3": ((2, 64, 64, 64), dict(kernel_size=3, patch_size=7)),
}

#: The per-call overhead probe: so small that the host time is the whole cost.
TINY = ((1, 8, 8, 8), dict(patch_size=3))

#: Contenders whose slowdown the contention table shows, in its column order.
CONTEND_COLUMNS = ("tiled_fwd", "tiled_fwdbwd", "naive_fwd", "naive_fwdbwd", "ref_fwd", "ref_fwdbwd", "copy")


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


def _repeated(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    """A closure calling ``fn`` ``calls`` times: one timed sample of a call too short to time alone."""

    def run():
        for _ in range(calls):
            fn()

    return fn if calls == 1 else run


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


@dataclass
class Contest:
    """The contenders of one configuration, ready to be timed (again) by :meth:`time`.

    Attributes:
        contenders: name -> closure running ``calls`` calls (``tiled_fwd``,
            ``naive_fwdbwd``, ``ref_fwd``, ``matmul``, ``copy``...).
        repeats: name -> timed rounds; warmup: name -> untimed rounds first.
        calls: calls per closure (1, or ``--tiny-calls`` for the tiny call).
        plan, forward_plan: what a default call plans with and without grad.
        matmul_flops, copy_bytes: the work of the ``matmul`` and ``copy`` probes.
        notes: extra fields for the JSON row (why a contender was skipped).
    """

    contenders: dict[str, Callable[[], object]]
    repeats: dict[str, int]
    warmup: dict[str, int]
    calls: int
    plan: object
    forward_plan: object
    matmul_flops: float
    copy_bytes: float
    notes: dict = field(default_factory=dict)

    def time(self, device) -> dict[str, float]:
        """Median seconds per call of every contender, timed round-robin."""
        medians = time_interleaved(self.contenders, self.repeats, device, self.warmup)
        return {name: t / self.calls for name, t in medians.items()}


def build_contest(shape, kw, args, reference, calls: int = 1) -> Contest:
    """Inputs (seed 0) and the closures of every contender for one configuration.

    Args:
        shape: ``(B, C, H, W)`` of both inputs; kw: the ``correlate`` parameters.
        args: the parsed command line (device, dtype, repeats, naive limit...).
        reference: the C++ ``spatial_correlation_sample``, or ``None``.
        calls: calls per timed sample; above 1, the C++ reference is timed as
            often as the others and warmed up (its calls are then short).
    """
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    x1 = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    x2 = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    # What a default call plans: forward-only for inputs without grad, forward
    # and backward otherwise (both are in the JSON).
    plan = tiledcorr.plan(shape, dtype=dtype, device=device, requires_grad=True, **kw)
    forward_plan = tiledcorr.plan(shape, dtype=dtype, device=device, **kw)
    matmul, matmul_flops = _matmul(plan.geometry.flops, dtype, device)
    copy, copy_bytes = _volume_copy(plan.geometry, dtype, device)
    steps, repeats, notes = {"matmul": matmul, "copy": copy}, {"matmul": args.repeat, "copy": args.repeat}, {}
    # A big C++ call takes seconds and has nothing to warm up but its first call.
    ref_repeat, ref_warmup = (args.repeat, 1) if calls > 1 else (args.ref_repeat, 0)
    use_reference = reference is not None and dtype in (torch.float32, torch.float64) and not args.no_reference
    for label, backward in (("fwd", False), ("fwdbwd", True)):
        steps[f"tiled_{label}"] = _step(tiledcorr.correlate, x1, x2, kw, backward)
        repeats[f"tiled_{label}"] = args.repeat
        naive_need = naive_peak_bytes(plan, backward=backward)
        if naive_need < min(args.naive_limit, 0.5 * free_memory(device)):
            steps[f"naive_{label}"] = _step(naive_correlate, x1, x2, kw, backward)
            repeats[f"naive_{label}"] = args.repeat
        else:
            notes["naive_skipped"] = f"needs {format_bytes(naive_need)}"
        if use_reference:
            steps[f"ref_{label}"] = _step(reference, x1, x2, kw, backward)
            repeats[f"ref_{label}"] = ref_repeat
    contenders = {name: _repeated(fn, calls) for name, fn in steps.items()}
    warmup = {"ref_fwd": ref_warmup, "ref_fwdbwd": ref_warmup}
    return Contest(contenders, repeats, warmup, calls, plan, forward_plan, matmul_flops, copy_bytes, notes)


def bench_config(name, shape, kw, args, reference) -> dict:
    """One row of the main table: medians (seconds), rates and the plans, as a JSON-ready dict."""
    contest = build_contest(shape, kw, args, reference)
    flops = contest.plan.geometry.flops
    row = {"name": name, "threads": torch.get_num_threads(), "shape": list(shape), "params": kw,
           "gflop": flops / 1e9, "plan": contest.plan.to_dict(), "forward_plan": contest.forward_plan.to_dict(),
           **contest.notes}
    medians = contest.time(args.device)
    for label in ("fwd", "fwdbwd"):
        for who in ("tiled", "naive", "ref"):
            row[f"{who}_{label}_s"] = medians.get(f"{who}_{label}")
    row["matmul_gflops"] = contest.matmul_flops / medians["matmul"] / 1e9
    row["copy_gbytes_per_s"] = contest.copy_bytes / medians["copy"] / 1e9
    row["tiled_fwd_gflops"] = flops / row["tiled_fwd_s"] / 1e9
    row["tiled_fwdbwd_gflops"] = 3 * flops / row["tiled_fwdbwd_s"] / 1e9  # backward: two more products per term
    return row


def bench_tiny(args, reference) -> dict:
    """The per-call overhead: microseconds per tiny call (``TINY``), median over ``--repeat`` rounds.

    Each round times ``--tiny-calls`` calls in a row (a single call is too
    short for the clock and the machine's noise); one round of each contender
    warms up first (plan cache, allocator, thread pool).
    """
    shape, kw = TINY
    medians = build_contest(shape, kw, args, reference, calls=args.tiny_calls).time(args.device)
    tiny = {"shape": list(shape), "params": kw, "threads": torch.get_num_threads(),
            "calls_per_round": args.tiny_calls, "rounds": args.repeat}
    for label in ("fwd", "fwdbwd"):
        for who in ("tiled", "naive", "ref"):
            t = medians.get(f"{who}_{label}")
            tiny[f"{who}_{label}_us"] = None if t is None else 1e6 * t
    return tiny


# A busy process beside the measurement: what another training job (or a
# DataLoader worker doing augmentation) does to the cores, a stream of
# moderate matmuls and an elementwise pass, each entering a parallel region,
# at torch's default thread count (all cores) as such a process would run.
_BUSY = r"""
import os, torch
parent = os.getppid()
a, b = torch.randn(384, 384), torch.randn(384, 384)
c = torch.mm(a, b)
print("ready", flush=True)
try:
    while os.getppid() == parent:  # ends by itself if the benchmark dies without killing it
        for _ in range(20):
            torch.mm(a, b, out=c)
            c.relu_()
except KeyboardInterrupt:
    pass
"""


class BusyProcesses:
    """``n`` CPU-bound PyTorch processes, paused except inside :meth:`busy`.

    They are started once and paused with SIGSTOP between contended phases
    rather than restarted: a resumed process is back at full load within a
    scheduler tick, while a fresh one spends seconds importing torch (load
    the quiet phase would not see and the contended one would partly miss),
    and a stopped process takes no CPU at all, so quiet phases stay quiet.
    POSIX only. Used as a context manager: leaving it, by return, exception,
    Ctrl-C or SIGTERM, kills and reaps every process (SIGKILL reaches a
    stopped process too).

    Args:
        n: number of processes; spin_up: seconds to wait after resuming them.
    """

    def __init__(self, n: int, spin_up: float = 0.25):
        if not hasattr(signal, "SIGSTOP"):
            raise RuntimeError("--contend needs POSIX signals (SIGSTOP/SIGCONT)")
        self.n, self.spin_up = n, spin_up
        self.procs: list[subprocess.Popen] = []
        self._old_sigterm = None

    def __enter__(self) -> BusyProcesses:
        try:
            self._catch_sigterm()
            for _ in range(self.n):
                self.procs.append(subprocess.Popen([sys.executable, "-c", _BUSY], stdin=subprocess.DEVNULL,
                                                   stdout=subprocess.PIPE, text=True))
            for proc in self.procs:
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"busy process {proc.pid} did not start (exit code {proc.poll()})")
            self._pause()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Resume the processes for the body of a ``with`` block, then pause them again."""
        self._signal(signal.SIGCONT)
        try:
            time.sleep(self.spin_up)
            yield
            if any(proc.poll() is not None for proc in self.procs):
                raise RuntimeError("a busy process died during the contended phase")
        finally:
            self._pause()

    def close(self) -> None:
        """Kill and reap every process; restore the SIGTERM handler."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(timeout=30)
            proc.stdout.close()
        self.procs = []
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def _signal(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    def _pause(self) -> None:
        """SIGSTOP every process and wait until each has stopped (the signal is asynchronous)."""
        self._signal(signal.SIGSTOP)
        for proc in self.procs:
            if proc.returncode is None:
                _, status = os.waitpid(proc.pid, os.WUNTRACED)
                if not os.WIFSTOPPED(status):  # it exited instead: tell Popen, which can no longer reap it
                    proc.returncode = os.waitstatus_to_exitcode(status)

    def _catch_sigterm(self) -> None:
        """Turn SIGTERM into SystemExit, so ``close`` runs (only the main thread may set handlers)."""
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_sigterm = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def slowdowns(quiet: list[dict], contended: list[dict]) -> dict:
    """Slowdown of each contender: median contended time over median quiet time.

    Args:
        quiet, contended: one ``{name: seconds}`` dict per phase; every dict
            has the same names, one of them ``matmul``.

    Returns:
        ``quiet_s`` and ``contended_s`` (medians over the phases), ``slowdown``
        and ``vs_matmul`` (slowdown over matmul's) per name, and the phases.
    """
    q = {name: statistics.median(p[name] for p in quiet) for name in quiet[0]}
    c = {name: statistics.median(p[name] for p in contended) for name in quiet[0]}
    slow = {name: c[name] / q[name] for name in q}
    return {"quiet_s": q, "contended_s": c, "slowdown": slow,
            "vs_matmul": {name: s / slow["matmul"] for name, s in slow.items()},
            "phases": {"quiet": quiet, "contended": contended}}


def bench_contention(contest: Contest, pool: BusyProcesses, alternations: int, device) -> dict:
    """Time a contest in ``alternations`` quiet and contended phase pairs; :func:`slowdowns` of them.

    The order alternates (quiet first, then contended first, ...), so that a
    drift of the machine's speed falls on both kinds of phase alike.
    """
    quiet, contended = [], []
    for k in range(alternations):
        for busy in ((False, True) if k % 2 == 0 else (True, False)):
            if busy:
                with pool.busy():
                    contended.append(contest.time(device))
            else:
                quiet.append(contest.time(device))
    return slowdowns(quiet, contended)


def contention_row(name: str, shape, kw, args, reference, pool: BusyProcesses) -> dict:
    """One row of the contention table (``name`` ``"tiny"`` times ``--tiny-calls`` calls per sample)."""
    calls = args.tiny_calls if name == "tiny" else 1
    contest = build_contest(shape, kw, args, reference, calls=calls)
    row = {"name": name, "threads": torch.get_num_threads(), "busy_processes": pool.n, "calls": calls,
           **bench_contention(contest, pool, args.alternations, args.device)}
    return row


def _ratio(num, den) -> str:
    return "n/a" if num is None or den is None else f"{num / den:.2f}"


def _header(cells: list[str]) -> list[str]:
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


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


def format_tiny(tinies: list[dict]) -> str:
    """The tiny-call table: microseconds per call and tiledcorr's time over the C++ sampler's and naive's."""
    lines = _header(["call", "threads", "tiled us", "C++ us", "tiled/C++", "naive us", "tiled/naive"])
    us = lambda t: "n/a" if t is None else f"{t:.0f}"  # noqa: E731
    for t in tinies:
        for label, call in (("fwd", "fwd"), ("fwdbwd", "fwd+bwd")):
            tiled, ref, naive = (t[f"{who}_{label}_us"] for who in ("tiled", "ref", "naive"))
            lines.append(f"| {call} | {t['threads']} | {us(tiled)} | {us(ref)} | {_ratio(tiled, ref)} "
                         f"| {us(naive)} | {_ratio(tiled, naive)} |")
    return "\n".join(lines)


def format_contention(rows: list[dict]) -> str:
    """The contention table: matmul's slowdown, then each contender's as ``slowdown (over matmul's)``."""
    names = {"tiled_fwd": "tiled fwd", "tiled_fwdbwd": "tiled fwd+bwd", "naive_fwd": "naive fwd",
             "naive_fwdbwd": "naive fwd+bwd", "ref_fwd": "C++ fwd", "ref_fwdbwd": "C++ fwd+bwd", "copy": "copy"}
    lines = _header(["config", "threads", "busy", "tiled fwd ms quiet", "matmul x"] + [names[c] for c in CONTEND_COLUMNS])
    for r in rows:
        cells = [f"{r['slowdown'][c]:.2f} ({r['vs_matmul'][c]:.2f})" if c in r["slowdown"] else "n/a"
                 for c in CONTEND_COLUMNS]
        lines.append(f"| {r['name']} | {r['threads']} | {r['busy_processes']} | {1e3 * r['quiet_s']['tiled_fwd']:.3g} "
                     f"| {r['slowdown']['matmul']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_threads(runs: list[dict]) -> str:
    """Thread scaling: per configuration, forward ms, % of matmul and matmul GFLOP/s at each thread count."""
    counts = [run["threads"] for run in runs]
    cells = ["config"] + [f"{label} ({n} thr)" for n in counts for label in ("fwd ms", "% matmul", "matmul GFLOP/s")]
    lines = _header(cells)
    by_count = [{r["name"]: r for r in run["rows"]} for run in runs]
    for name in by_count[0]:
        out = []
        for rows in by_count:
            r = rows[name]
            out += [f"{1e3 * r['tiled_fwd_s']:.1f}", f"{100 * r['tiled_fwd_gflops'] / r['matmul_gflops']:.0f}%",
                    f"{r['matmul_gflops']:.0f}"]
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def write_docs(section: str, text: str, path: Path = DOCS) -> None:
    """Replace (or append) the block between this section's markers in ``path`` (docs/performance.md)."""
    doc = path.read_text() if path.exists() else "# Performance\n"
    begin, end = f"<!-- bench:{section} -->", f"<!-- /bench:{section} -->"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc:
        doc = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _thread_counts(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; empty: the current thread count."""
    try:
        counts = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads: expected comma-separated integers, got {text!r}") from None
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"--threads: thread counts must be >= 1, got {text!r}")
    return counts


def parse_args(argv=None) -> argparse.Namespace:
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
    tiny = parser.add_mutually_exclusive_group()
    tiny.add_argument("--tiny-only", action="store_true", help="measure only the tiny call (per-call overhead)")
    tiny.add_argument("--no-tiny", action="store_true", help="skip the tiny call")
    parser.add_argument("--tiny-calls", type=int, default=200, help="tiny calls per timed round")
    parser.add_argument("--contend", type=int, default=0, metavar="N", help="also time beside N busy processes")
    parser.add_argument("--alternations", type=int, default=3, help="quiet/contended phase pairs (--contend)")
    parser.add_argument("--threads", type=_thread_counts, default=[], metavar="LIST",
                        help="comma-separated thread counts, one whole measurement each (default: current)")
    parser.add_argument("--out", type=Path, help="JSON path (default profiling/results/bench-<section>[-tiny].json)")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the Markdown file the tables go into")
    return parser.parse_args(argv)


def measure_at(run: dict, names: list[str], args, reference, pool: BusyProcesses | None, save) -> None:
    """The whole measurement at ``run["threads"]`` threads, filled into ``run``: rows, tiny call, contention.

    ``save()`` is called after every measurement, so a run cut short keeps
    what it measured.
    """
    torch.set_num_threads(run["threads"])
    for name in names:
        shape, kw = CONFIGS[name]
        start = time.perf_counter()
        run["rows"].append(bench_config(name, shape, kw, args, reference))
        print(format_table(run["rows"]).splitlines()[-1], flush=True)
        print(f"  {name} ({run['threads']} threads): done in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
        save()
    if not args.no_tiny:
        run["tiny"] = bench_tiny(args, reference)
        print("\n".join(format_tiny([run["tiny"]]).splitlines()[-2:]), flush=True)
        save()
    if pool is not None:
        for name in names + ([] if args.no_tiny else ["tiny"]):
            shape, kw = TINY if name == "tiny" else CONFIGS[name]
            run["contend"].append(contention_row(name, shape, kw, args, reference, pool))
            print(format_contention(run["contend"]).splitlines()[-1], flush=True)
            save()


def _write_all_docs(runs: list[dict], args, machine: dict, section: str, out: Path, reference) -> None:
    """Every table into its marked section of ``args.docs``: main, tiny, contention, threads."""
    device_name = machine.get("cuda_device") if args.device.startswith("cuda") else machine.get("cpu")
    last = runs[-1]

    def head(threads) -> str:
        return (f"Measured {time.strftime('%Y-%m-%d')} on {device_name}, torch {torch.__version__}, {threads} threads, "
                f"{args.dtype}{' (TF32 on)' if args.tf32 else ''}")

    every = ",".join(str(run["threads"]) for run in runs)
    raw = f"Raw data: `{_shown(out)}`."
    ref = f"C++ reference: {args.ref_repeat}{'' if reference is not None else ', not installed'}"
    if last["rows"]:
        write_docs(section, f"{head(last['threads'])}; median of {args.repeat} after warm-up ({ref}). {raw}\n\n"
                   + format_table(last["rows"]), args.docs)
    tinies = [run["tiny"] for run in runs if run["tiny"]]
    if tinies:
        call = f"`{TINY[0]}` " + ", ".join(f"{k} {v}" for k, v in TINY[1].items())
        write_docs(f"{section}-tiny", f"{head(every)}; tiny call {call}: microseconds per call, median over "
                   f"{args.repeat} rounds of {args.tiny_calls} calls after one warm-up round. {raw}\n\n"
                   + format_tiny(tinies), args.docs)
    contended = [row for run in runs for row in run["contend"]]
    if contended:
        busy = f"{args.contend} busy PyTorch process{'es' if args.contend > 1 else ''}"
        write_docs(f"{section}-contend{args.contend}",
                   f"{head(every)}; {busy} (matmul loops at torch's default thread count) on the same cores, "
                   f"{args.alternations} quiet/contended phase pairs of {args.repeat} rounds each. Cells: slowdown "
                   f"(contended median / quiet median) and, in brackets, that slowdown over matmul's "
                   f"(target: tiled fwd+bwd <= 1.3). {raw}\n\n" + format_contention(contended), args.docs)
    if args.threads and last["rows"]:
        write_docs(f"{section}-threads", f"{head(every)}; median of {args.repeat} at each thread count. {raw}\n\n"
                   + format_threads(runs), args.docs)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    names = [] if args.tiny_only else [n for n in args.only.split(",") if n] or list(CONFIGS)
    reference = _reference()
    machine = describe_machine()
    initial_threads = torch.get_num_threads()
    counts = args.threads or [initial_threads]
    print(f"machine: {machine.get('cpu')} | torch {torch.__version__} | threads {','.join(map(str, counts))}"
          f"{' | ' + str(machine.get('cuda_device')) if args.device.startswith('cuda') else ''}", flush=True)
    section = f"{args.device.split(':')[0]}-{args.dtype}{'-tf32' if args.tf32 else ''}"
    # A tiny-only run must not overwrite the full run's data that the docs point to.
    out = args.out or ROOT / "profiling" / "results" / f"bench-{section}{'-tiny' if args.tiny_only else ''}.json"
    runs = [{"threads": n, "rows": [], "tiny": None, "contend": []} for n in counts]
    done: list[dict] = []

    def save() -> None:
        # The top-level rows/tiny/contend are the latest thread count's (the main table's); "runs" has them all.
        last = done[-1]
        result = {"machine": machine, "args": vars(args), "section": section, "reference_available": reference is not None,
                  "threads": counts, "rows": last["rows"], "tiny": last["tiny"], "contend": last["contend"], "runs": done}
        out.write_text(json.dumps(result, indent=2, default=str))

    try:
        with BusyProcesses(args.contend) if args.contend else contextlib.nullcontext() as pool:
            for run in runs:
                done.append(run)
                measure_at(run, names, args, reference, pool, save)
                save()
    finally:
        torch.set_num_threads(initial_threads)
    for run in runs:
        print(f"\n{run['threads']} threads:")
        for rows, fmt in ((run["rows"], format_table), ([run["tiny"]] if run["tiny"] else [], format_tiny),
                          (run["contend"], format_contention)):
            if rows:
                print(fmt(rows))
    if args.threads and runs[-1]["rows"]:
        print("\nthread scaling:\n" + format_threads(runs))
    print(f"saved {_shown(out)}")
    if not args.no_docs:
        _write_all_docs(runs, args, machine, section, out, reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
