"""The planner: shapes alone, budgets, the memory model, errors, caching; and one measured check."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import tiledcorr
from tiledcorr.planning import planner
from tiledcorr.budget import resolve_budget
from tiledcorr.execution.engine import workspace_elements

from support import cpu_strategies  # noqa: E402

STRATEGIES = cpu_strategies()

CONFIGS = [
    ((4, 128, 96, 96), dict(patch_size=41)),
    ((4, 256, 48, 64), dict(patch_size=21, dilation_patch=2)),
    ((2, 64, 64, 64), dict(kernel_size=3, patch_size=7)),
    ((2, 16, 33, 17), dict(patch_size=(5, 9), stride=(2, 3), padding=2, dilation_patch=(3, 1))),
    ((1, 8, 9, 10, 11), dict(patch_size=5, kernel_size=(1, 3, 3))),
]


@pytest.mark.parametrize("shape, kw", CONFIGS)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_smaller_budget_never_predicts_a_larger_peak(shape, kw, requires_grad):
    budgets = [2**e for e in range(36, 10, -1)]
    peaks, passes = [], []
    for b in budgets:
        try:
            p = tiledcorr.plan(shape, memory_budget=b, requires_grad=requires_grad, **kw)
        except tiledcorr.MemoryBudgetError:
            break
        assert p.peak_workspace_bytes <= b
        peaks.append(p.peak_workspace_bytes)
        passes.append(p.passes)
    assert len(peaks) > 3
    assert all(later <= earlier for earlier, later in zip(peaks, peaks[1:]))
    assert passes[-1] > passes[0]  # tiny budgets give many chunks


def test_tiny_budget_gives_many_chunks_and_the_error_states_the_minimum():
    shape, kw = (2, 32, 40, 50), dict(patch_size=15)
    with pytest.raises(tiledcorr.MemoryBudgetError, match="memory_budget of 100 B") as info:
        tiledcorr.plan(shape, memory_budget=100, **kw)
    minimum = info.value.minimum_bytes
    assert isinstance(info.value, RuntimeError) and str(minimum) in str(info.value)
    smallest = tiledcorr.plan(shape, memory_budget=minimum, **kw)
    assert smallest.forward_workspace_bytes <= minimum
    assert smallest.passes >= 2 * 40 * 50  # at most one position per tile... and few displacements
    with pytest.raises(tiledcorr.MemoryBudgetError):
        tiledcorr.plan(shape, memory_budget=minimum - 1, **kw)


def test_vectorised_memory_model_matches_the_strategies_buffers():
    """The planner's byte counts of candidate rows equal what the engine allocates for their tilings."""
    rng = np.random.default_rng(0)
    model = planner.device_model("cpu")
    for shape, kw in CONFIGS:
        geometry = planner.make_geometry(shape, None, **{k: kw.get(k, d) for k, d in dict(
            kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1, dilation_patch=1).items()})
        for grid in planner._candidate_grids(geometry, torch.float32, "cpu", 4, model, None):
            dims = grid.dims(geometry, slice(0, grid.count))
            fwd, bwd = planner._workspace(grid.strategy, dims, planner.SinkCost(), 4, 0)
            for i in rng.choice(grid.count, size=20, replace=False):
                tiling = grid.tiling(int(i))
                assert fwd[i] == 4 * sum(workspace_elements(geometry, tiling, backward=False).values())
                assert bwd[i] == 4 * sum(workspace_elements(geometry, tiling, backward=True).values())


def test_half_inputs_count_float32_buffers_and_accumulators():
    shape, kw = (2, 32, 24, 24), dict(patch_size=9)
    p32 = tiledcorr.plan(shape, dtype=torch.float32, memory_budget="64MiB", requires_grad=True, strategy="tile_matmul", **kw)
    p16 = tiledcorr.plan(shape, dtype=torch.float16, memory_budget="64MiB", requires_grad=True, strategy="tile_matmul", **kw)
    assert p16.compute_dtype == torch.float32 and p16.output_bytes * 2 == p32.output_bytes
    if p16.tiling == p32.tiling:
        assert p16.backward_workspace_bytes - p32.backward_workspace_bytes == 2 * math.prod(shape) * 4


@pytest.mark.parametrize("form, expected", [
    (1024, 1024), ("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)), ("64 kib", 65536),
])
def test_budget_forms(form, expected):
    assert resolve_budget(form) == expected


def test_default_and_fractional_budgets_follow_free_memory(monkeypatch):
    monkeypatch.setattr(planner, "resolve_budget", lambda b, d: resolve_budget(b, d))
    from tiledcorr import budget

    monkeypatch.setattr(budget, "free_memory", lambda device: 8 * 2**30)
    assert resolve_budget(None) == int(budget.DEFAULT_FRACTION * 8 * 2**30)
    assert resolve_budget(0.25) == 2 * 2**30


@pytest.mark.parametrize("bad", [0, -5, float("nan"), 1.5, 0.0, "lots", "12 parsecs", "-1MiB", True, [1], b"1MiB"])
def test_bad_budgets_list_the_accepted_forms(bad):
    with pytest.raises((ValueError, TypeError)) as info:
        tiledcorr.plan((1, 2, 5, 5), memory_budget=bad)
    assert "memory_budget" in str(info.value) and "'512MiB'" in str(info.value)
    assert repr(bad) in str(info.value) or str(bad) in str(info.value)


def test_plan_is_immutable_and_reports():
    p = tiledcorr.plan((4, 128, 96, 96), patch_size=41, memory_budget="256MiB", requires_grad=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.budget_bytes = 1  # type: ignore[misc]
    text = str(p)
    for key in ("naive unfold would need", "29.5 GiB", "planned peak workspace", "chunk grid", "passes", "256.0 MiB"):
        assert key in text
    d = p.to_dict()
    assert d["output_bytes"] == 4 * 41 * 41 * 96 * 96 * 4 and d["passes"] == p.passes
    assert p.displacement_chunk >= 1 and p.row_tile >= 1 and p.column_tile >= 1


def test_correlate_checks_that_a_plan_fits_the_inputs():
    p = tiledcorr.plan((1, 2, 8, 8), patch_size=3)
    x = torch.randn(1, 2, 8, 9)
    with pytest.raises(ValueError, match="plan was made for"):
        tiledcorr.correlate(x, x, patch_size=3, plan=p)
    with pytest.raises(ValueError, match="plan was made for"):
        tiledcorr.correlate(torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8), patch_size=5, plan=p)
    with pytest.raises(ValueError, match="dtype"):
        tiledcorr.correlate(torch.randn(1, 2, 8, 8).double(), torch.randn(1, 2, 8, 8).double(), patch_size=3, plan=p)


def test_output_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    from tiledcorr.planning import planner as pl

    monkeypatch.setattr(pl, "free_memory", lambda device: 10_000)
    x = torch.randn(1, 2, 30, 30)
    with pytest.raises(tiledcorr.MemoryBudgetError, match="output .* needs"):
        tiledcorr.correlate(x, x, patch_size=9, memory_budget="1MiB")


def test_plans_are_cached_and_cheap():
    args = dict(patch_size=17, memory_budget="300MiB")
    first = tiledcorr.plan((3, 40, 50, 60), **args)
    start = time.perf_counter()
    for _ in range(100):
        again = tiledcorr.plan((3, 40, 50, 60), **args)
    per_call = (time.perf_counter() - start) / 100
    assert again is first
    assert per_call < 1e-3


def test_default_call_does_not_hold_gigabytes():
    """With a huge budget the planner still picks a small workspace when it is about as fast."""
    p = tiledcorr.plan((4, 256, 48, 64), patch_size=21, dilation_patch=2, memory_budget="64GiB")
    assert p.peak_workspace_bytes < 512 * 2**20


@pytest.mark.slow
def test_measured_cpu_workspace_matches_prediction():
    """B=4, C=128, 96x96, patch 41: measured peak workspace within 15% of the prediction, <= 110% of the budget."""
    budgets = ["64MiB", "256MiB", "1GiB"]
    for backward in (False, True):
        cmd = [sys.executable, "-m", "tiledcorr", "sweep", "--shape", "4,128,96,96", "--patch-size", "41",
               "--budgets", ",".join(budgets), "--repeat", "1", "--warmup", "1", "--json"] + (["--backward"] if backward else [])
        rows = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)["rows"]
        for row in rows:
            budget = resolve_budget(row["budget"])
            result = row["result"]
            measured, predicted = result["measured_workspace_bytes"], result["predicted_workspace_bytes"]
            assert abs(measured - predicted) <= 0.15 * predicted, (row["budget"], backward, measured, predicted)
            assert measured <= 1.10 * budget, (row["budget"], backward, measured, budget)


@pytest.mark.parametrize("shape, kw", [
    ((2, 128, 64, 64), dict(patch_size=31)), ((2, 64, 64, 64), dict(kernel_size=3, patch_size=7)),
    ((4, 128, 96, 96), dict(patch_size=41)), ((1, 512, 19, 34), dict(patch_size=9)),
])
def test_row_matmul_column_tiles_fill_whole_vectors(shape, kw):
    """Measured with profiling/tilings.py: a (2,128,64,64) patch-31 backward took 144 ms with 13-wide
    column tiles and 114 ms with 16-wide ones; (4,128,96,96) patch 41, 871 ms with 14 and 572 ms with 16
    (64-byte vectors); MM-Tracker's backward 7.5 ms with 16-wide tiles (a 2-wide remainder) and 9.5 ms
    with one 34-wide."""
    for requires_grad in (False, True):
        p = tiledcorr.plan(shape, requires_grad=requires_grad, **kw)
        assert p.strategy == "row_matmul" and p.tiling.tile[-1] % 16 == 0, p.tiling


def test_planning_itself_stays_small():
    """Scoring a few hundred thousand candidate tilings at once took 24-65 MiB; chunks keep it to a few."""
    import tracemalloc

    planner._cached_plan.cache_clear()
    tracemalloc.start()
    try:
        tiledcorr.plan((4, 128, 96, 96), patch_size=41, requires_grad=True, memory_budget="64MiB")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20, peak


@pytest.mark.parametrize("budget", ["256KiB", "4MiB", "1GiB"])
def test_chunked_scoring_picks_what_scoring_all_at_once_picks(monkeypatch, budget):
    shape, kw = (2, 8, 30, 26), dict(patch_size=9, dilation_patch=2)
    whole = []
    for chunk in (10**9, 97):  # one chunk, then many (not a divisor of the candidate count)
        monkeypatch.setattr(planner, "_CHUNK", chunk)
        planner._cached_plan.cache_clear()
        whole.append(tiledcorr.plan(shape, memory_budget=budget, requires_grad=True, **kw))
    assert whole[0] == whole[1]
    planner._cached_plan.cache_clear()


def test_narrow_row_tiles_remain_for_tight_budgets():
    """Partial-vector column tiles cost more, but a budget that fits nothing wider still gets one."""
    shape, kw = (1, 64, 40, 40), dict(patch_size=21, strategy="row_matmul")
    with pytest.raises(tiledcorr.MemoryBudgetError) as info:
        tiledcorr.plan(shape, memory_budget=1, **kw)
    p = tiledcorr.plan(shape, memory_budget=info.value.minimum_bytes, **kw)
    assert p.strategy == "row_matmul" and p.tiling.tile[-1] < 16


def test_refusing_strategies_are_ranked_out_and_their_reasons_listed(monkeypatch):
    """The planner ranks only what accepts the problem; forcing a refusing strategy names its reason."""
    from tiledcorr.planning import registry

    refusals = {"row_matmul": "not today", "shift": "nor this one"}
    for name, reason in refusals.items():
        monkeypatch.setattr(type(registry.get(name)), "refusal", lambda self, g, d, t, reason=reason: reason)
    planner._cached_plan.cache_clear()
    try:
        assert tiledcorr.plan((1, 4, 9, 9), patch_size=5).strategy == "tile_matmul"
        with pytest.raises(tiledcorr.ArgumentValueError, match="row_matmul: not today"):
            tiledcorr.plan((1, 4, 9, 9), patch_size=5, strategy="row_matmul")
        monkeypatch.setattr(type(registry.get("tile_matmul")), "refusal", lambda self, g, d, t: "no")
        planner._cached_plan.cache_clear()
        with pytest.raises(tiledcorr.ArgumentValueError, match="tile_matmul: no.*row_matmul: not today|row_matmul.*tile_matmul"):
            tiledcorr.plan((1, 4, 9, 9), patch_size=5)
    finally:
        planner._cached_plan.cache_clear()


def test_unknown_strategy_lists_the_registry():
    with pytest.raises(tiledcorr.ArgumentValueError, match=r"strategy must be one of \['row_matmul', 'shift', 'tile_matmul', 'triton'\]"):
        tiledcorr.plan((1, 4, 9, 9), patch_size=5, strategy="fast")
