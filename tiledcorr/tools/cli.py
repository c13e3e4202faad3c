"""The ``tiledcorr`` command: ``plan``, ``profile``, ``sweep`` and ``demo``.

Argument parsing and printing only; the work is done by :mod:`tiledcorr.planner`,
:mod:`tiledcorr.profile`, :mod:`tiledcorr.plotting` and :mod:`tiledcorr.demo`.
Every command returns an exit status: 0 on success, 1 when tiledcorr refuses
the problem or it does not fit in memory (the message says why), 2 for
arguments that are wrong by themselves (malformed values, an ``--out`` or
``--plot`` path that cannot be written), found before any work. Either way the
error is one line on stderr, never a traceback; output piped into a command
that stops reading (``| head``) ends quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ..budget import format_bytes, is_relative, parse_budget
from ..execution.retry import is_out_of_memory
from .demo import DEMO_MIN_SIZE, DemoConfig, demo_steps, run_demo
from ..errors import ArgumentValueError, DeviceError, TiledCorrError
from .machine import describe_machine
from ..ops.plan import plan
from .plotting import import_pyplot, plot_sweep
from .profile import PARAM_DEFAULTS, Problem, Result, naive_skip_reason, profile_naive, profile_tiled, runs_per_measurement, sweep
from .progress import Progress
from ..reductions import REDUCTIONS

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------- argument types


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def int_or_pair(text: str) -> int | tuple[int, ...]:
    """``"3"`` -> 3, ``"3,5"`` -> (3, 5) (one value per spatial dimension)."""
    values = _ints(text, "an int or comma-separated ints such as 3 or 3,5")
    return values[0] if len(values) == 1 else values


def shape(text: str) -> tuple[int, ...]:
    """``"4,128,96,96"`` -> (4, 128, 96, 96); five values for volumes."""
    values = _ints(text, "comma-separated ints B,C,H,W such as 4,128,96,96")
    if len(values) not in (4, 5):
        raise argparse.ArgumentTypeError(f"expected B,C,H,W (or B,C,D,H,W), got {text!r} with {len(values)} values")
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative sizes B,C,H,W (or B,C,D,H,W), got {text!r}")
    return values


def at_least(minimum: int):
    """An argparse type: an int no smaller than ``minimum``."""

    def parse(text: str) -> int:
        value = _ints(text, "an int")
        if len(value) != 1 or value[0] < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}")
        return value[0]

    return parse


#: ``--budget``'s help: the rule of :func:`tiledcorr.resolve_budget`, the same as in the API.
BUDGET_HELP = ("workspace budget: an integer is bytes (268435456), a size with units is bytes (512MiB, 1.5GiB), "
               "a number with a decimal point is a fraction of the free memory in (0, 1] (0.25); 1.5 without "
               "units is refused")


def budget(text: str) -> str:
    """A memory budget, checked by :func:`tiledcorr.budget.parse_budget` and passed on as written.

    ``"1GiB"`` and ``"268435456"`` are bytes, ``"0.25"`` a fraction of the free
    memory; the API reads the same strings the same way.
    """
    try:
        parse_budget(text)
    except TiledCorrError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a budget: an integer or a size with units is bytes (268435456, 512MiB, 1.5GiB), "
            "a number with a decimal point is a fraction of the free memory in (0, 1] (0.25)") from None
    return text


def budget_list(text: str) -> list[str | float]:
    """``"64MiB,256MiB,1GiB"`` -> one budget each."""
    budgets: list[str | float] = [budget(v.strip()) for v in text.split(",") if v.strip()]
    if not budgets:
        raise argparse.ArgumentTypeError(f"expected comma-separated budgets such as 64MiB,1GiB, got {text!r}")
    return budgets


def device(text: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a torch.device (availability is checked where it runs)."""
    try:
        parsed = torch.device(text)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return parsed


# --------------------------------------------------------------------------- parser


class UsageError(Exception):
    """An argument that is wrong by itself, found after parsing but before any work (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (and the same exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _RefuseSweepBudget(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("sweep measures each budget of --budgets (e.g. --budgets 64MiB,1GiB); --budget is for plan "
                     "and profile")


def _version() -> str:
    """The installed distribution's version, or the package's own when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tiledcorr")
    except PackageNotFoundError:
        from ..version import __version__

        return __version__


def _add_problem_options(parser: argparse.ArgumentParser, *, budget_default: Any = None, with_budget: bool = True) -> None:
    parser.add_argument("--shape", type=shape, required=True,
                        help="input shape B,C,H,W of both inputs, or B,C,D,H,W for volumes (5-D)")
    for name, default in PARAM_DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int_or_pair, default=default,
                            help=f"int or h,w (default {default})")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="input dtype (default float32)")
    parser.add_argument("--device", type=device, default=torch.device("cpu"), help="cpu, cuda or cuda:N (default cpu)")
    if with_budget:
        parser.add_argument("--budget", type=budget, default=budget_default,
                            help=BUDGET_HELP + " (default: half the free memory)")
    else:
        parser.add_argument("--budget", action=_RefuseSweepBudget, help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help="plan/measure the backward too (both input gradients)")


def _add_reduction_options(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--reduction", choices=tuple(REDUCTIONS),
                        help=f"{verb} the fused reduction correlate_reduce() runs instead of the stored cost volume")
    parser.add_argument("--k", type=at_least(1), help="values kept per position by --reduction topk")


def _add_measure_options(parser: argparse.ArgumentParser, *, repeat: int) -> None:
    parser.add_argument("--repeat", type=at_least(1), default=repeat, help=f"timed runs (default {repeat}); the median is reported")
    parser.add_argument("--warmup", type=at_least(0), default=1, help="untimed runs first (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON (with the machine's description)")


def build_parser() -> argparse.ArgumentParser:
    """The ``tiledcorr`` argument parser with its four subcommands."""
    parser = _Parser(prog="tiledcorr", description="Exact spatial correlation within a memory budget: tools.")
    parser.add_argument("--version", action="version", version=f"tiledcorr {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{plan,profile,sweep,demo}")

    def command(name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
                              epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("plan", "print the plan for a problem (no tensors are allocated)",
                "The strategy, tile sizes, predicted workspace and output size tiledcorr would use,\n"
                "from shapes alone: nothing is allocated, so any device and size can be planned.",
                "tiledcorr plan --shape 4,128,96,96 --patch-size 41 --budget 256MiB --backward")
    _add_problem_options(p)
    _add_reduction_options(p, "plan")
    p.add_argument("--json", action="store_true", help="print plan.to_dict() as JSON")
    p.set_defaults(run=cmd_plan)

    p = command("profile", "time the layer and measure its peak memory on random data",
                "Median time over --repeat runs and the peak memory above the inputs, measured\n"
                "against the plan's prediction (optionally against the naive unfold approach).",
                "tiledcorr profile --shape 2,64,64,64 --patch-size 21 --budget 64MiB --compare naive")
    _add_problem_options(p)
    _add_reduction_options(p, "measure")
    _add_measure_options(p, repeat=5)
    p.add_argument("--compare", choices=["naive"], help="also measure the naive unfold approach (where it fits)")
    p.set_defaults(run=cmd_profile)

    p = command("sweep", "time and peak memory for several budgets (to choose one)",
                "One plan and measurement per budget of --budgets (a sweep has no --budget),\n"
                "as a table, JSON, or a figure (--plot, needs matplotlib).",
                "tiledcorr sweep --shape 4,128,96,96 --patch-size 41 --budgets 64MiB,256MiB,1GiB --plot sweep.png")
    _add_problem_options(p, with_budget=False)
    _add_reduction_options(p, "measure")
    _add_measure_options(p, repeat=3)
    p.add_argument("--budgets", type=budget_list, default=budget_list("64MiB,256MiB,1GiB,4GiB"),
                   help="comma-separated budgets, each read as --budget is by plan (default 64MiB,256MiB,1GiB,4GiB)")
    p.add_argument("--plot", type=Path, help="write a figure of time and peak memory against the budget (needs matplotlib)")
    p.set_defaults(run=cmd_sweep)

    p = command("demo", "recover a large displacement field (patch 41) from a cost volume",
                "A synthetic image pair with a known displacement field of up to 22 px; the\n"
                "argmax of the cost volume recovers it. Prints accuracy, time and memory, and\n"
                "writes demo.png (needs matplotlib). About 10-20 s on a laptop CPU at the default size.",
                "tiledcorr demo --out ./tiledcorr-demo --budget 64MiB")
    p.add_argument("--out", type=Path, default=Path("tiledcorr-demo"), help="folder for demo.png (default ./tiledcorr-demo)")
    p.add_argument("--size", type=at_least(DEMO_MIN_SIZE), default=256,
                   help=f"image height and width, at least {DEMO_MIN_SIZE} (default 256)")
    p.add_argument("--patch-size", type=at_least(3), default=41, help="displacements per dimension (default 41: radius 20)")
    p.add_argument("--channels", type=at_least(1), default=32, help="feature channels (default 32)")
    p.add_argument("--budget", type=budget, default="64MiB", help=BUDGET_HELP + " (default 64MiB)")
    p.add_argument("--device", type=device, default=torch.device("cpu"), help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the texture and filters (default 0)")
    p.set_defaults(run=cmd_demo)
    return parser


# --------------------------------------------------------------------------- commands


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in PARAM_DEFAULTS}


def _available(device: torch.device) -> torch.device:
    """``device`` if it can compute on this machine."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: no CUDA device is available on this machine")
    return device


def _problem(args: argparse.Namespace) -> Problem:
    return Problem(shape=args.shape, params=_params(args), dtype=_DTYPES[args.dtype], device=_available(args.device),
                   backward=args.backward, seed=args.seed, reduction=args.reduction, k=args.k)


def cmd_plan(args: argparse.Namespace) -> int:
    """``tiledcorr plan``: the plan report, or its JSON."""
    relative = is_relative(args.budget)
    if args.device.type == "cuda" and not torch.cuda.is_available() and relative:
        raise ArgumentValueError("planning for cuda on a machine without one needs an absolute --budget such as 8GiB "
                                 "(the default is a fraction of the device's free memory)")
    p = plan(args.shape, **_params(args), dtype=_DTYPES[args.dtype], device=args.device,
             memory_budget=args.budget, requires_grad=args.backward, reduction=args.reduction, k=args.k)
    print(json.dumps(p.to_dict(), indent=2) if args.json else p)
    return 0


def _machine_line(machine: dict[str, Any]) -> str:
    gpu = f", {machine['cuda_device']['name']}" if machine["cuda_device"] else ""
    return (f"{machine['cpu']}, {machine['usable_cores']} cores, torch {machine['torch']} "
            f"({machine['torch_threads']} threads){gpu}")


def _time_range(result: Result) -> str:
    low, high = result.measurement.spread
    return f"{low:.3f} - {high:.3f} s"


def cmd_profile(args: argparse.Namespace) -> int:
    """``tiledcorr profile``: median time and measured vs predicted peak memory (and the naive approach's)."""
    problem = _problem(args)
    plan_ = problem.plan(args.budget)
    skip = naive_skip_reason(problem, plan_) if args.compare == "naive" else None
    naive = args.compare == "naive" and skip is None
    bar = Progress(runs_per_measurement(args.repeat, args.warmup) * (2 if naive else 1), "tiledcorr")
    results = [profile_tiled(problem, plan_, repeat=args.repeat, warmup=args.warmup, progress=bar)]
    if naive:
        bar.advance(0, label="naive unfold")
        results.append(profile_naive(problem, plan_, repeat=args.repeat, warmup=args.warmup, progress=bar))
    bar.close()

    machine = describe_machine()
    if args.json:
        print(json.dumps({
            "machine": machine, "plan": plan_.to_dict(), "backward": problem.backward, "reduction": problem.reduction,
            "k": problem.k, "repeat": args.repeat,
            "warmup": args.warmup, "seed": args.seed, "results": [r.to_dict() for r in results], "naive_skipped": skip,
        }, indent=2))
        return 0
    print(plan_)
    print()
    print(f"profile: {'forward + backward' if problem.backward else 'forward'}, {args.repeat} runs after "
          f"{args.warmup} warm-up, seed {args.seed}; {_machine_line(machine)}")
    print(f"  {'':14} {'median':>9}  {'min - max':<19} {'peak':>10}  {'workspace measured':>18}  {'predicted':>10}")
    for r in results:
        print(f"  {r.name:14} {r.measurement.median:7.3f} s  {_time_range(r):<19} {format_bytes(r.measurement.peak_bytes):>10}  "
              f"{format_bytes(r.measured_workspace_bytes):>18}  {format_bytes(r.predicted_workspace_bytes):>10}")
    if skip is not None:
        print(f"  {'naive unfold':14} skipped: {skip}")
    output = "output" if problem.reduction is None else "result"
    returned = f"({output} + both input gradients)" if problem.backward else output
    print(f"  peak: memory above the inputs during one call; workspace: peak - {returned} "
          f"({format_bytes(results[0].returned_bytes)})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``tiledcorr sweep``: a table (and figure) of time and peak memory per budget."""
    if args.plot is not None:
        check_figure_path(args.plot)  # fail before measuring, not after
    problem = _problem(args)
    bar = Progress(runs_per_measurement(args.repeat, args.warmup) * len(args.budgets), str(args.budgets[0]))
    rows = sweep(problem, args.budgets, repeat=args.repeat, warmup=args.warmup, progress=bar)
    bar.close()
    title = (f"{problem.describe()}, {'forward + backward' if problem.backward else 'forward'}, "
             f"median of {args.repeat} runs")
    if args.json:
        print(json.dumps({"machine": describe_machine(), "problem": title, "rows": [r.to_dict() for r in rows]}, indent=2))
    else:
        print(f"sweep: {title}; {_machine_line(describe_machine())}")
        print(f"  {'budget':>9}  {'strategy':<12} {'tiles':>7}  {'workspace predicted':>19}  {'measured':>10}  "
              f"{'peak predicted':>14}  {'measured':>10}  {'median':>9}  min - max")
        for row in rows:
            if row.result is None:
                print(f"  {row.budget:>9}  too small: {row.error}")
                continue
            r, p = row.result, row.plan
            assert p is not None  # a measured row has its plan
            note = f"  (same tiling as {row.same_as}, not rerun)" if row.same_as else ""
            print(f"  {row.budget:>9}  {p.strategy:<12} {p.passes:>7}  {format_bytes(r.predicted_workspace_bytes):>19}  "
                  f"{format_bytes(r.measured_workspace_bytes):>10}  {format_bytes(r.predicted_peak_bytes):>14}  "
                  f"{format_bytes(r.measurement.peak_bytes):>10}  {r.measurement.median:7.3f} s  {_time_range(r)}{note}")
    if args.plot is not None:
        path = plot_sweep(rows, title, args.plot)
        print(f"figure: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``tiledcorr demo``: the large-displacement example; prints accuracy, time and memory, writes a figure."""
    import_pyplot()  # fail before computing, not after
    check_writable_folder(args.out, "--out")
    config = DemoConfig(size=args.size, patch_size=args.patch_size, channels=args.channels,
                        memory_budget=args.budget, device=str(_available(args.device)), seed=args.seed)
    bar = Progress(demo_steps(), "demo")
    r = run_demo(config, args.out, progress=bar)
    bar.close()
    p, g = r.plan, r.plan.geometry
    low, mean, high = r.flow_magnitude
    print(f"tiledcorr demo: {config.size}x{config.size} image pair, C={config.channels} features, patch "
          f"{config.patch_size}x{config.patch_size} (search radius {config.radius} px), budget {config.memory_budget}, {config.device}")
    print(f"  {'true displacement':24} {low:.1f} - {high:.1f} px (mean {mean:.1f} px)")
    print(f"  {'cost volume':24} {tuple(g.out_shape)} {format_bytes(p.output_bytes)}; {p.strategy}, {p.passes} tiles, "
          f"workspace {format_bytes(p.forward_workspace_bytes)} predicted")
    print(f"  {'naive unfold would need':24} {format_bytes(p.naive_bytes)} for its (B, C, P*P, H*W) tensor")
    for i, m in enumerate(r.methods):
        same = f", same displacement as above at {100 * m.agreement:.1f}% of pixels" if i else ""
        print(f"  {m.name:24} time {m.seconds:.2f} s, peak {format_bytes(m.peak_bytes)} measured, "
              f"{format_bytes(m.predicted_peak_bytes)} predicted{same}")
    print(f"  {'endpoint error':24} mean {r.mean_epe:.2f} px, {100 * r.within_1px:.1f}% within 1 px "
          f"({r.scored_pixels} pixels scored: displacement inside the window, away from the border)")
    print(f"  {'figure':24} {r.figure}")
    return 0


def check_writable_folder(path: Path, option: str) -> None:
    """Raise :class:`UsageError` unless ``path`` is, or can be created as, a folder."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is" if folder == path else f"is under {folder}, which is"
                raise UsageError(f"{option} {path} {what} a file, not a folder")
            if not os.access(folder, os.W_OK):
                raise UsageError(f"{option} {path}: {folder} is not writable")
            return


#: Figure formats a matplotlib without extra backends writes (checked without importing matplotlib).
FIGURE_FORMATS = ("eps", "jpeg", "jpg", "pdf", "pgf", "png", "ps", "raw", "rgba", "svg", "svgz", "tif", "tiff", "webp")


def check_figure_path(path: Path) -> None:
    """Check ``--plot`` before measuring: matplotlib is installed, the format is known, the folder writable."""
    import_pyplot()
    suffix = path.suffix.lower().lstrip(".")
    if suffix and suffix not in FIGURE_FORMATS:
        raise UsageError(f"--plot {path}: matplotlib cannot write .{suffix} figures; use one of "
                         f"{', '.join('.' + f for f in FIGURE_FORMATS)} (e.g. sweep.png)")
    if path.is_dir():
        raise UsageError(f"--plot {path} is a folder; give a file name such as {path / 'sweep.png'}")
    check_writable_folder(path.parent if str(path.parent) else Path("."), "--plot")


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--shape -1,2,8,8`` -> ``--shape=-1,2,8,8``: argparse takes a value starting with ``-`` for an option.

    The value is then checked (and refused) by its type, with a message about the value.
    """
    joined: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if (token.startswith("--") and "=" not in token and i + 1 < len(argv)
                and re.match(r"^-[0-9.]", argv[i + 1])):
            joined.append(f"{token}={argv[i + 1]}")
            i += 2
        else:
            joined.append(token)
            i += 1
    return joined


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tiledcorr`` console script and ``python -m tiledcorr``.

    Args:
        argv: the arguments after the program name (``sys.argv[1:]`` when ``None``).

    Returns:
        The exit status (see the module docstring).
    """
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    prefix = f"tiledcorr {args.command}: error:"
    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return code
    except UsageError as exc:
        print(f"{prefix} {_one_line(exc)}", file=sys.stderr)
        return 2
    except (TiledCorrError, ImportError) as exc:
        print(f"{prefix} {_one_line(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader stopped (| head): end quietly. Python would report the failed flush at exit, so
        # stdout is pointed at /dev/null first (the recipe of Python's signal documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer the pipe stopped
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        print(f"{prefix} out of memory: {_one_line(exc).split(' (most recent call')[0][:300]}; reduce --shape "
              "or the parameters", file=sys.stderr)
        return 1
