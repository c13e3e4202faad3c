"""The row_matmul strategy's backward pieces: grouped stacked gradient, zero-once buffers, chunked transposes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import tiledcorr
from tiledcorr.execution import bands
from tiledcorr.execution.bands import SCRATCH_ROWS, swap_band_order, transpose_band
from tiledcorr.execution.engine import workspace_elements
from tiledcorr.execution.workspace import Workspace
from tiledcorr.strategies.row_matmul import RowMatmul
from tiledcorr.planning.tiling import Tiling
from tiledcorr.strategies.row_matmul import SCRATCH_FROM_DISPLACEMENTS, stacked_groups, stacked_window_rows
from tiledcorr.reference import correlate_reference

from support import assert_matches_reference


@pytest.mark.parametrize("rows, lead_disp", [(1, 1), (1, 9), (3, 9), (9, 3), (24, 21), (96, 41), (5, 40), (40, 5)])
def test_stacked_groups_cover_every_in_tile_product_once(rows, lead_disp):
    extent = rows + lead_disp - 1
    covered = torch.zeros(extent, lead_disp, dtype=torch.int64)
    for e0, e1, w0, w1 in stacked_groups(rows, lead_disp):
        assert 0 <= e0 < e1 <= extent and 0 <= w0 < w1 <= lead_disp
        covered[e0:e1, w0:w1] += 1
    # Window row w of region row e is position row e + w - (J1 - 1).
    e, w = torch.meshgrid(torch.arange(extent), torch.arange(lead_disp), indexing="ij")
    inside = (e + w - (lead_disp - 1) >= 0) & (e + w - (lead_disp - 1) < rows)
    assert (covered[inside] == 1).all(), "an in-tile product is missing or counted twice"
    assert (covered <= 1).all()
    assert stacked_window_rows(rows, lead_disp) == int(covered.sum())
    assert stacked_window_rows(rows, lead_disp) <= extent * lead_disp


def test_grouping_cuts_the_zero_products_on_the_benchmark_tiles():
    for rows, lead_disp in [(24, 21), (96, 41), (64, 31)]:
        assert stacked_window_rows(rows, lead_disp) <= 1.25 * rows * lead_disp < (rows + lead_disp - 1) * lead_disp


# Tilings with rows below, equal to and above the leading displacements, several
# tiles of each shape (zero-once buffers reused) and edge tiles of another shape.
TILINGS = [(1, 4), (3, 5), (7, 7), (11, 3), (4, 13)]


@pytest.mark.parametrize("tile", TILINGS)
@pytest.mark.parametrize("kw", [dict(patch_size=7), dict(patch_size=(9, 5), padding=2), dict(patch_size=5, dilation_patch=2)])
def test_forced_row_tilings_match_reference(tile, kw):
    shape = (2, 3, 13, 11)
    g = torch.Generator().manual_seed(3)
    x1, x2 = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    base = tiledcorr.plan(shape, dtype=torch.float64, strategy="row_matmul", requires_grad=True, memory_budget="1GiB", **kw)
    p = dataclasses.replace(base, tiling=Tiling("row_matmul", 1, tile, base.tiling.disp_tile))
    assert p.passes > 2
    assert RowMatmul.stacked_grad2(p.geometry)
    assert_matches_reference(
        lambda a, b: tiledcorr.correlate(a, b, plan=p, **kw), lambda a, b: correlate_reference(a, b, **kw),
        x1, x2, rtol=1e-10, atol=1e-10,
    )


def test_zeroed_view_rezeroes_after_a_plain_view_or_another_key():
    ws = Workspace({"y": 12}, torch.float64, torch.device("cpu"))
    a = ws.zeroed_view("y", "k", 3, 4)
    assert (a == 0).all()
    a[0, 0] = 5.0  # the caller's band
    assert ws.zeroed_view("y", "k", 3, 4)[0, 0] == 5.0  # same key: not re-zeroed
    ws.view("y", 12).fill_(7.0)  # a plain view may write anything
    assert (ws.zeroed_view("y", "k", 3, 4) == 0).all()
    ws.zeroed_view("y", "k", 3, 4)[1, 1] = 1.0
    assert (ws.zeroed_view("y", "other", 2, 6) == 0).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_transpose_band_equals_copy(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.randn(1, 9, 7, 40, 33)  # (Bt, J1, J2, U1, U2), volume order
        dst = torch.empty(1, 40, 33, 9, 7)
        transpose_band(swap_band_order(dst, 2), src, 1)
        assert torch.equal(swap_band_order(dst, 2), src)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("scratch_rows", [1, 3, 40, 64])
@pytest.mark.parametrize("ndim", [2, 3])
def test_transpose_band_through_scratch_equals_copy(scratch_rows, ndim, monkeypatch):
    """A few rows of positions at a time (the last chunk shorter), 2-D and 3-D bands; a strided source copies directly."""
    gen = torch.Generator().manual_seed(7)
    disps, positions = ((5, 13), (40, 16)) if ndim == 2 else ((3, 2, 13), (7, 2, 16))
    src = torch.randn(2, *disps, *positions, generator=gen)  # volume order (Bt, *J, *U)
    dst = torch.zeros(2, *positions, *disps)  # position-major (Bt, *U, *J)
    staged = []
    real = bands._through_scratch
    monkeypatch.setattr(bands, "_through_scratch", lambda *a: staged.append(1) or real(*a))
    per_row = 2 * math.prod(positions[1:]) * math.prod(disps)  # batch items x one leading row of positions
    scratch = torch.full((scratch_rows * per_row,), math.nan)
    transpose_band(dst, swap_band_order(src, ndim), 1 + ndim, scratch=scratch)
    assert staged and torch.equal(swap_band_order(dst, ndim), src)
    staged.clear()
    strided = torch.randn(2, *disps, *positions[:-1], 2 * positions[-1], generator=gen)[..., ::2]
    dst.zero_()
    transpose_band(dst, swap_band_order(strided, ndim), 1 + ndim, scratch=scratch)
    assert not staged and torch.equal(swap_band_order(dst, ndim), strided)
    dst.zero_()  # a scratch smaller than one row of positions: the direct copy too
    transpose_band(dst, swap_band_order(src, ndim), 1 + ndim, scratch=scratch[: per_row - 1])
    assert not staged and torch.equal(swap_band_order(dst, ndim), src)


@pytest.mark.parametrize("kw", [dict(patch_size=13), dict(patch_size=(5, 15), padding=3)])
def test_band_gradient_through_scratch_matches_reference(kw, monkeypatch):
    """Row tilings whose band gradients go through the scratch, several chunks of rows per tile."""
    staged = []
    real = bands._through_scratch
    monkeypatch.setattr(bands, "_through_scratch", lambda *a: staged.append(1) or real(*a))
    shape = (2, 3, 23, 19)
    gen = torch.Generator().manual_seed(8)
    x1, x2 = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    base = tiledcorr.plan(shape, dtype=torch.float64, strategy="row_matmul", requires_grad=True, memory_budget="1GiB", **kw)
    p = dataclasses.replace(base, tiling=Tiling("row_matmul", 1, (SCRATCH_ROWS + 3, 16), base.tiling.disp_tile))
    assert_matches_reference(
        lambda a, b: tiledcorr.correlate(a, b, plan=p, **kw), lambda a, b: correlate_reference(a, b, **kw),
        x1, x2, rtol=1e-10, atol=1e-10,
    )
    assert staged


def test_band_scratch_is_predicted_exactly_where_it_is_used():
    def band_buffer(shape, **kw):
        plan = tiledcorr.plan(shape, strategy="row_matmul", requires_grad=True, memory_budget="1GiB", **kw)
        return workspace_elements(plan.geometry, plan.tiling, backward=True).get("band", 0), plan

    used, plan = band_buffer((1, 8, 40, 48), patch_size=SCRATCH_FROM_DISPLACEMENTS)
    rows, cols = plan.tiling.tile
    assert used == min(rows, SCRATCH_ROWS) * cols * SCRATCH_FROM_DISPLACEMENTS**2
    assert band_buffer((1, 8, 40, 48), patch_size=9)[0] == 0  # few displacements: the direct copy is faster
    assert band_buffer((1, 8, 40, 48), patch_size=13, dilation_patch=2)[0] == 0  # strided rows of the volume


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("kw", [dict(patch_size=5, normalize="channels"), dict(patch_size=(3, 7), stride=2),
                                dict(patch_size=5, padding=1, normalize="sqrt_channels")])
def test_reading_input1_in_place_matches_reference(layout, kw):
    """The forward reads interior tiles' input1 values where they lie (scaled in the matmul); edges are gathered."""
    shape = (2, 3, 13, 11)
    g = torch.Generator().manual_seed(5)
    x1, x2 = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2))
    if layout == "channels_last":
        x1 = x1.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        x1 = x1.transpose(2, 3).contiguous().transpose(2, 3)  # last dimension not contiguous: gathered
    ref_kw = {k: v for k, v in kw.items() if k != "normalize"}
    base = tiledcorr.plan(shape, dtype=torch.float64, strategy="row_matmul", memory_budget="1GiB", **ref_kw)
    p = dataclasses.replace(base, tiling=Tiling("row_matmul", 1, (4, 3), base.tiling.disp_tile))
    scale = {"channels": 1 / 3, "sqrt_channels": 3 ** -0.5}.get(kw.get("normalize"), 1.0)
    assert_matches_reference(
        lambda a, b: tiledcorr.correlate(a, b, plan=p, **kw), lambda a, b: correlate_reference(a, b, **ref_kw) * scale,
        x1, x2, rtol=1e-10, atol=1e-10,
    )
    # And a plan made for the backward, with the same tiling.
    pb = dataclasses.replace(tiledcorr.plan(shape, dtype=torch.float64, strategy="row_matmul", memory_budget="1GiB",
                                            requires_grad=True, **ref_kw), tiling=p.tiling)
    assert_matches_reference(
        lambda a, b: tiledcorr.correlate(a, b, plan=pb, **kw), lambda a, b: correlate_reference(a, b, **ref_kw) * scale,
        x1, x2, rtol=1e-10, atol=1e-10,
    )


def test_input1_in_place_is_a_view_only_where_the_values_lie_in_input1():
    from tiledcorr.dtypes import compute_dtype
    from tiledcorr.execution.context import TileContext
    from tiledcorr.execution.tiles import iter_tiles

    def views(x1, **kw):
        p = tiledcorr.plan(x1.shape, dtype=x1.dtype, strategy="row_matmul", memory_budget="1GiB", **kw)
        p = dataclasses.replace(p, tiling=Tiling("row_matmul", 1, (4, 3), p.tiling.disp_tile))
        ws = Workspace({}, compute_dtype(x1.dtype), x1.device)
        ctx = TileContext(p.geometry, x1, x1, ws, 1.0, RowMatmul())
        found = [ctx.input1_in_place(t) for t in iter_tiles(p.geometry, p.tiling)]
        for v in found:
            if v is not None:
                assert v.untyped_storage().data_ptr() == x1.untyped_storage().data_ptr()
        return [v is not None for v in found]

    x = torch.randn(1, 3, 13, 11)
    assert all(views(x, patch_size=5))  # no padding: every tile's positions lie in input1
    padded = views(x, patch_size=5, padding=1)
    assert any(padded) and not all(padded)  # border tiles reach the padding
    assert not any(views(x, patch_size=5, stride=2))  # strided positions: gathered
    assert not any(views(x.transpose(2, 3).contiguous().transpose(2, 3), patch_size=5))
    assert not any(views(x.half(), patch_size=5))  # converted to the float32 compute dtype: gathered
