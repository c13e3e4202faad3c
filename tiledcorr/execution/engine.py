"""Executes a plan: the tile loop, from the registry's strategy to the sink.

One tile is a block of batch items x output positions x displacements (see
:mod:`tiledcorr.geometry`). For each tile a strategy (:mod:`tiledcorr.strategies`)
gathers

* ``X1``: input1 at the tile's positions, shape ``(Bt, kvol, C, *U)``, and
* ``X2``: the dense input2 region the tile reaches, ``(Bt, kvol, C, *E)``,

into the preallocated :class:`~tiledcorr.execution.workspace.Workspace`
(zeros where the implicit padding lies), computes the tile's band of the cost
volume, shape ``(Bt, *J, *U)``, and hands it to a sink
(:mod:`tiledcorr.execution.sinks`): the stored volume, or a fused reduction
of :mod:`tiledcorr.reductions`. The backward walks the same tiles and
scatters its products into the gradients. Nothing ever holds more than one
tile, so the workspace is what the planner predicts, whatever the image and
patch sizes. A strategy that runs a whole plan itself (a fused kernel) is
called by :mod:`tiledcorr.execution.volume` and :mod:`tiledcorr.reductions.run`
instead of this loop, and a plan of one small tile may come as a fixed
sequence of tensor ops (:meth:`~tiledcorr.planning.registry.Strategy.one_tile`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from ..dtypes import compute_dtype
from ..geometry import Geometry
from ..planning import registry
from ..planning.tiling import TileDims, Tiling, as_sizes
from .context import TileContext
from .sinks import GradSource, Sink
from .tiles import Tile, iter_tiles
from .workspace import Workspace


def workspace_elements(geometry: Geometry, tiling: Tiling, *, backward: bool) -> dict[str, int]:
    """Elements of each workspace buffer the tiling's strategy allocates (what the planner predicts)."""
    return dict(_workspace_elements(geometry, tiling, backward))


@functools.lru_cache(maxsize=1024)
def _workspace_elements(geometry: Geometry, tiling: Tiling, backward: bool) -> Mapping[str, int]:
    # Cached (read-only): the strategies' formulas run on numpy rows, costly for one small call.
    return MappingProxyType(as_sizes(registry.get(tiling.strategy).buffers(TileDims.of_tiling(geometry, tiling), backward)))


def _workspace(x1: torch.Tensor, geometry: Geometry, tiling: Tiling, *, backward: bool) -> Workspace:
    return Workspace(_workspace_elements(geometry, tiling, backward), compute_dtype(x1.dtype), x1.device)


def _per_tile(tiling: Tiling) -> registry.Strategy:
    strategy = registry.get(tiling.strategy)
    if strategy.runs_whole_plan:  # its callers run it (execution.volume, reductions.run)
        raise ValueError(f"strategy {tiling.strategy!r} runs whole plans, not tiles; use planner.per_tile_plan()")
    return strategy


def _one_tile(strategy: registry.Strategy, geometry: Geometry, tiling: Tiling, x1: torch.Tensor,
              x2: torch.Tensor) -> Any | None:
    """The strategy's program for a plan of one small tile, where it has one and the inputs need no conversion."""
    dtype = x1.dtype
    if x2.dtype is not dtype or compute_dtype(dtype) is not dtype:
        return None
    return strategy.one_tile(geometry, tiling)


def _program(geometry: Geometry, tiling: Tiling, x1: torch.Tensor, x2: torch.Tensor) -> Any | None:
    """:func:`_one_tile` for any plan: ``None`` also for a strategy that runs whole plans."""
    strategy = registry.get(tiling.strategy)
    return None if strategy.runs_whole_plan else _one_tile(strategy, geometry, tiling, x1, x2)


def one_tile_volume(x1: torch.Tensor, x2: torch.Tensor, geometry: Geometry, tiling: Tiling, scale: float = 1.0,
                    ) -> torch.Tensor | None:
    """The cost volume ``(B, *patch, *out_size)`` (new, contiguous) by a plan of one small tile; ``None`` for other plans.

    What :func:`run_forward` into an :class:`~tiledcorr.execution.sinks.OutputSink`
    computes, without the output's separate allocation, the sink or the
    retry around them: for every tiny call. Finite inputs only (the caller
    checks the result).
    """
    single = _program(geometry, tiling, x1, x2)
    return None if single is None else single.volume(x1, x2, scale)


def one_tile_gradients(x1: torch.Tensor, x2: torch.Tensor, grad_out: torch.Tensor, geometry: Geometry, tiling: Tiling,
                       need1: bool, need2: bool, scale: float = 1.0,
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
    """Both input gradients (new tensors, ``None`` where not needed) by a plan of one small tile; ``None`` for other plans.

    What :func:`run_backward` adds into zeroed accumulators for a stored
    volume's gradient ``grad_out`` ``(B, *patch, *out_size)``, without the
    accumulators, the workspace or the tile context. Finite values only (the
    caller checks the results).
    """
    single = _program(geometry, tiling, x1, x2)
    return None if single is None else single.gradients(x1, x2, grad_out, need1, need2, scale)


def run_forward(x1: torch.Tensor, x2: torch.Tensor, geometry: Geometry, tiling: Tiling, sink: Sink, *, scale: float = 1.0) -> None:
    """Compute every tile of the cost volume and hand it to ``sink``.

    Args:
        x1, x2: inputs of shape ``(B, C, *in_size)``, any strides.
        geometry: their shapes and the correlation parameters.
        tiling: the plan's tiling.
        sink: receives each band ``(Bt, *J, *U)`` in the compute dtype.
        scale: multiplies every output value (the normalisation).
    """
    strategy = _per_tile(tiling)
    single = _one_tile(strategy, geometry, tiling, x1, x2)
    if single is not None:
        sink.consume(single.tile, single.band(x1, x2, scale))
        return
    ws = _workspace(x1, geometry, tiling, backward=False)
    try:
        ctx = TileContext(geometry, x1, x2, ws, scale, strategy)
        for tile in iter_tiles(geometry, tiling):
            strategy.forward(ctx, tile, sink)
    finally:
        ws.release()


def run_backward(
    x1: torch.Tensor,
    x2: torch.Tensor,
    geometry: Geometry,
    tiling: Tiling,
    grad1: torch.Tensor | None,
    grad2: torch.Tensor | None,
    grad_source: GradSource,
    *,
    scale: float = 1.0,
) -> None:
    """Accumulate the gradients of both inputs, tile by tile, into ``grad1``/``grad2``.

    Args:
        grad1, grad2: zero-initialised accumulators of shape ``(B, C, *in_size)``
            in the compute dtype, or ``None`` for a gradient nobody needs.
        grad_source: the gradient of each tile's band;
            :func:`~tiledcorr.execution.sinks.volume_grad` for a stored cost
            volume ``(B, *patch, *out_size)``.
    """
    strategy = _per_tile(tiling)
    ws = _workspace(x1, geometry, tiling, backward=True)
    try:
        ctx = TileContext(geometry, x1, x2, ws, scale, strategy)
        single = _one_tile(strategy, geometry, tiling, x1, x2)
        if single is not None:
            single.backward(x1, x2, grad_source(ctx, single.tile), grad1, grad2, scale)
            return
        for tile in iter_tiles(geometry, tiling):
            strategy.backward(ctx, tile, grad_source(ctx, tile), grad1, grad2)
    finally:
        ws.release()


class Lockstep:
    """Several problems with one tiling, computed tile by tile in one shared workspace.

    The exact NaN/Inf path (:mod:`tiledcorr.execution.nonfinite`) combines, for each
    tile, the bands of a few correlations of the same geometry (indicator maps
    stacked along channels, then the finite part): computing them tile by tile
    keeps what it combines to one tile's band instead of the whole volume.

    Args:
        problems: ``(x1, x2, geometry, scale)`` for each correlation; the
            geometries may differ in channels only (the tiling is shared), and
            the inputs in dtype (gathering a tile converts them).
        tiling: the plan's tiling (a per-tile strategy).
        dtype: the compute dtype of the workspace.
    """

    def __init__(self, problems: list[tuple[torch.Tensor, torch.Tensor, Geometry, float]], tiling: Tiling,
                 dtype: torch.dtype) -> None:
        self.strategy = _per_tile(tiling)
        sizes: dict[str, int] = {}
        for _, _, geometry, _ in problems:
            for name, n in workspace_elements(geometry, tiling, backward=False).items():
                sizes[name] = max(sizes.get(name, 0), n)
        self.ws = Workspace(sizes, dtype, problems[0][0].device)
        self.contexts = [TileContext(g, a, b, self.ws, scale, self.strategy) for a, b, g, scale in problems]

    def forward(self, tile: Tile, sinks: list[Sink]) -> None:
        """Hand each problem's band of ``tile`` to its sink, in order.

        A band is valid only inside its sink's ``consume``: the next problem
        reuses the buffers.
        """
        for ctx, sink in zip(self.contexts, sinks):
            self.strategy.forward(ctx, tile, sink)

    def release(self) -> None:
        """Free the shared workspace."""
        self.ws.release()
