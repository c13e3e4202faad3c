"""Figures (matplotlib, the optional "plot" extra): lazy import and the budget sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..budget import format_bytes
from ..errors import ArgumentValueError
from .profile import SweepRow


def import_pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend.

    Raises:
        ImportError: matplotlib is not installed; the message says how to get it.
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "this command draws a figure and needs matplotlib, which is not installed; "
            "install tiledcorr's 'plot' extra (pip install 'tiledcorr[plot]') or matplotlib itself"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bytes_axis(axis: Any, ticks: Sequence[int] | None = None) -> None:
    """Byte-size tick labels, at ``ticks`` if given (else at powers of two)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    axis.set_major_locator(FixedLocator(ticks) if ticks is not None else LogLocator(base=2, numticks=12))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: format_bytes(v).replace(".0 ", " ")))


def _label_points(ax: Any, xs: Sequence[float], ys: Sequence[float], texts: Sequence[str]) -> None:
    for x, y, text in zip(xs, ys, texts):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)


def plot_sweep(rows: Sequence[SweepRow], title: str, path: str | Path) -> Path:
    """Time and peak memory against the budget: predicted lines, measured points.

    Args:
        rows: the result of :func:`tiledcorr.profile.sweep`; budgets too small to
            plan are left out.
        title: the figure's title (the problem).
        path: where to write the figure (PNG, or any format matplotlib knows).

    Returns:
        The path written.

    Raises:
        ArgumentValueError: no row has a measurement.
    """
    plt = import_pyplot()
    # Rows with a measurement (they have a plan too), as (plan, result) pairs.
    done = sorted(((r.plan, r.result) for r in rows if r.plan is not None and r.result is not None),
                  key=lambda pair: pair[0].budget_bytes)
    if not done:
        raise ArgumentValueError("no budget of the sweep could be planned (all too small): nothing to plot")
    plans, results = [plan for plan, _ in done], [result for _, result in done]
    budgets = [p.budget_bytes for p in plans]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")

    median = [r.measurement.median for r in results]
    low = [m - r.measurement.spread[0] for m, r in zip(median, results)]
    high = [r.measurement.spread[1] - m for m, r in zip(median, results)]
    ax_t.errorbar(budgets, median, yerr=[low, high], fmt="o", color="C0", capsize=4, label="measured median (min-max)")
    # The cost model only ranks tilings; its own axis keeps its scale from reading as a time prediction.
    ax_c = ax_t.twinx()
    ax_c.plot(budgets, [p.predicted_seconds for p in plans], "--", color="0.5")
    ax_c.set_ylabel("cost model estimate (relative)", color="0.4")
    ax_c.set_ylim(0, 1.35 * max(p.predicted_seconds for p in plans))  # headroom for the legend
    ax_t.plot([], [], "--", color="0.5", label="cost model (right axis)")
    _label_points(ax_t, budgets, median, [f"{p.passes} tiles" for p in plans])
    ax_t.set_ylabel("time per call (s)")
    ax_t.set_ylim(0, 1.35 * max(r.measurement.spread[1] for r in results))

    ax_m.plot(budgets, [r.predicted_peak_bytes for r in results], "-", color="C1", label="predicted peak")
    peaks = [r.measurement.peak_bytes for r in results]
    ax_m.plot(budgets, peaks, "o", color="C1", label="measured peak")
    _label_points(ax_m, budgets, peaks, [format_bytes(p) for p in peaks])
    ax_m.plot(budgets, [r.returned_bytes + b for r, b in zip(results, budgets)], ":", color="0.4",
              label="bound: returned + budget")
    ax_m.plot(budgets, [r.returned_bytes for r in results], "--", color="0.6", label="returned tensors alone")
    ax_m.set_yscale("log", base=2)
    _bytes_axis(ax_m.yaxis)
    ax_m.set_ylabel("peak memory above the inputs")

    for ax in (ax_t, ax_m):
        ax.set_xscale("log", base=2)
        _bytes_axis(ax.xaxis, budgets)
        ax.set_xlabel("memory_budget (workspace)")
        ax.margins(x=0.1)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
