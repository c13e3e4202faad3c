"""NaN and Inf inputs, with exactly the original's in-image semantics.

The engine implements the implicit padding with zeros, which is exact for
finite values only: a non-finite input1 value whose input2 partner lies
outside the image would give ``inf * 0 = NaN`` in an output whose sum, by
the semantics, has no such term (and ``tile_matmul`` multiplies values outside
a position's band by zero weights). So when an input is not finite the result
is assembled from two exact parts:

1. the finite part: the engine on copies whose non-finite entries are 0;
2. the IEEE class of each sum, from correlations of 0/1 indicator maps through
   the same engine, geometry and tiling with scale 1. Indicators are finite,
   so zero padding is exact for them, and a sum of 0/1 products is > 0 exactly
   when some valid term (both positions inside the image) has the property.

A valid term ``x * y`` is NaN when a factor is NaN or one is infinite and the
other zero; otherwise it is infinite when a factor is, with the product's
sign. Counting NaN as +inf and -inf at once (a NaN with a non-zero or NaN
partner then gives terms of both signs, whose sum is NaN), three kinds of
terms cover every case, with ``pinf`` = +inf or NaN, ``ninf`` = -inf or NaN,
``pos`` = > 0 or NaN, ``neg`` = < 0 or NaN:

* NaN:  (nonfinite, zero), (zero, nonfinite)
* +inf: (pinf, pos), (ninf, neg), (pos, pinf), (neg, ninf)
* -inf: (pinf, neg), (ninf, pos), (pos, ninf), (neg, pinf)

(pairs may overlap, e.g. +inf * +inf is in two of them; only "> 0" is used,
so that is harmless). A sum with a NaN term or terms of both signs is NaN,
else +-inf if it has an infinite term, else the finite part. The class value
is *added* to the finite part, so a finite part that overflowed to +-inf on
its own combines with it as IEEE addition does.

The forward computes, for each tile, the indicator correlations and then the
finite part (:class:`tiledcorr.execution.engine.Lockstep`), so the class code it
combines is one tile's band, never the whole volume: any sink gets exact
bands (the stored volume, or a fused reduction of :mod:`tiledcorr.reductions`).
The backward is the same construction for ``grad1 = sum grad_out * input2``
and ``grad2 = sum grad_out * input1``, for the gradient of a stored volume or
a fused reduction's gradient source (``grad_out`` may be non-finite too).

Cost, on this path only: pairs whose two classes do not both occur are
skipped (a NaN in input1 alone leaves 4 or 5 pairs); in the forward, the pairs
of one kind are stacked along channels as far as the plan's budget allows, so
typically 2 or 3 extra correlations per tile; the backward makes one call per
live pair (and a gradient source that recomputes the forward, the
soft-argmax's, recomputes the exact band, those extra correlations included,
in each of them). Temporaries beyond the plan's workspace: zeroed copies of the
inputs; two one-byte indicator maps per live pair, all at once; the forward's
shared workspace is that of the widest stacked problem; one byte per element
of the current tile's band for its class (plus a comparison's temporaries);
in the backward one byte per input element for the class and a float32 count
per call, and, for a gradient source that recomputes the forward (the
soft-argmax), a forward workspace of its own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from ..dtypes import compute_dtype
from ..geometry import Geometry
from ..planning.planner import Plan
from .engine import Lockstep, workspace_elements
from .engine import run_backward as engine_backward
from .sinks import CaptureSink, GradSource, Sink
from .tiles import Tile, iter_tiles

#: The 0/1 classes of a value that decide the IEEE class of a product.
_CLASSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "nonfinite": lambda x: ~torch.isfinite(x),
    "zero": lambda x: x == 0,
    "pinf": lambda x: (x == math.inf) | torch.isnan(x),
    "ninf": lambda x: (x == -math.inf) | torch.isnan(x),
    "pos": lambda x: (x > 0) | torch.isnan(x),
    "neg": lambda x: (x < 0) | torch.isnan(x),
}

#: (code bit, class pairs whose valid terms set that bit); see the module docstring.
_KINDS: tuple[tuple[int, tuple[tuple[str, str], ...]], ...] = (
    (1, (("nonfinite", "zero"), ("zero", "nonfinite"))),
    (2, (("pinf", "pos"), ("ninf", "neg"), ("pos", "pinf"), ("neg", "ninf"))),
    (4, (("pinf", "neg"), ("ninf", "pos"), ("pos", "ninf"), ("neg", "pinf"))),
)

#: Value added to a finite part for each code (bit 1: a NaN term, 2: a +inf term, 4: a -inf term).
_SPECIAL = (0.0, math.nan, math.inf, math.nan, -math.inf, math.nan, math.nan, math.nan)


def all_finite(*tensors: torch.Tensor) -> bool:
    """True when no tensor holds a NaN or an Inf (may say False for finite values whose sum overflows).

    From one float32 (float64 for float64 tensors) sum per tensor: NaN and Inf
    propagate into it, so a finite sum proves every value finite; a sum that
    overflows only sends finite inputs down the exact path, which gives the
    same numbers. One pass, no temporary of the tensor's size, one host sync.
    On CPU the sums are added as Python floats: a third of the time of adding
    them as tensors, for a small call.
    """
    if tensors and tensors[0].is_cpu:
        total = 0.0
        for t in tensors:
            total += t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32).item()
        return math.isfinite(total)
    sums = [t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32) for t in tensors if t.numel()]
    if not sums:
        return True
    return bool(torch.isfinite(sum(sums[1:], start=sums[0])))


class Indicators:
    """The 0/1 class maps of one tensor (built on demand, in the dtype asked for) and which classes occur."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self._present: dict[str, bool] = {}

    def present(self, name: str) -> bool:
        if name not in self._present:
            self._present[name] = bool(_CLASSES[name](self.x).any())
        return self._present[name]

    def map(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return _CLASSES[name](self.x).to(dtype)


def _live_pairs(left: Indicators, right: Indicators, pairs) -> list[tuple[str, str]]:
    """The pairs whose two classes both occur (the others count nothing)."""
    return [(a, b) for a, b in pairs if left.present(a) and right.present(b)]


def _zeroed(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _apply(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """``values`` with each coded entry replaced by ``values + _SPECIAL[code]`` (IEEE addition)."""
    table = torch.tensor(_SPECIAL, dtype=values.dtype, device=values.device)
    return torch.where(code == 0, values, values + table[code.long()])


class _TileCode:
    """The class code of one tile's band, ``(Bt, *J, *U)`` uint8, zero for each new tile."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.tile: Tile | None = None
        self.code: torch.Tensor | None = None

    def get(self, tile: Tile) -> torch.Tensor:
        code = self.code
        if tile is not self.tile or code is None:  # (the code is None only before the first tile)
            self.tile = tile
            code = self.code = torch.zeros((tile.batch, *tile.displacements, *tile.positions), dtype=torch.uint8,
                                           device=self.device)
        return code


class _MarkSink:
    """Sets ``bit`` in the tile's code wherever a band of indicator sums is positive."""

    def __init__(self, code: _TileCode, bit: int) -> None:
        self.code, self.bit = code, bit

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        self.code.get(tile).bitwise_or_(torch.gt(band, 0).to(torch.uint8).mul_(self.bit))


class _PatchSink:
    """Adds the IEEE class of each sum to the finite part's band, then passes it on."""

    def __init__(self, code: _TileCode, sink: Sink) -> None:
        self.code, self.sink = code, sink

    def consume(self, tile: Tile, band: torch.Tensor) -> None:
        code = self.code.get(tile)
        if code.any():
            band = _apply(band, code)
        self.sink.consume(tile, band)


def _stack_size(plan: Plan, count: int) -> int:
    """How many indicator pairs one engine problem stacks along channels within the budget.

    Correlations of pairs stacked along channels add up, and only "> 0" is
    used, so ``n`` pairs cost one problem with ``n*C`` channels. All ``count``
    pairs' one-byte maps (two each) exist at once; the workspace, shared by the
    problems of a tile, is that of the widest, and both must fit
    ``plan.budget_bytes``.
    """
    g = plan.geometry
    maps = 2 * count * g.batch * g.channels * math.prod(g.in_size)
    elem = torch.empty((), dtype=plan.compute_dtype).element_size()  # the shared workspace's dtype
    for n in range(count, 1, -1):
        stacked = dataclasses.replace(g, channels=n * g.channels)
        workspace = sum(workspace_elements(stacked, plan.tiling, backward=False).values())
        if elem * workspace + maps <= plan.budget_bytes:
            return n
    return 1


def _exact_problems(
    x1: torch.Tensor, x2: torch.Tensor, plan: Plan, scale: float, sink: Sink,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, Geometry, float]], list[Sink]]:
    """The :class:`~tiledcorr.execution.engine.Lockstep` problems and sinks whose last sink gets exact bands.

    First the stacked indicator correlations of each kind (marking their bit in
    a tile's code), then the finite part, patched with the code, into ``sink``.
    """
    g = plan.geometry
    left, right = Indicators(x1), Indicators(x2)
    code = _TileCode(x1.device)
    live = [(bit, pair) for bit, pairs in _KINDS for pair in _live_pairs(left, right, pairs)]
    n = _stack_size(plan, len(live))
    problems: list[tuple[torch.Tensor, torch.Tensor, Geometry, float]] = []
    sinks: list[Sink] = []
    for bit, _ in _KINDS:
        kind = [pair for b, pair in live if b == bit]
        for i in range(0, len(kind), n):
            chunk = kind[i : i + n]
            # One byte per value: the engine converts while it gathers tiles.
            a = torch.cat([left.map(c1, torch.uint8) for c1, _ in chunk], dim=1)
            b = torch.cat([right.map(c2, torch.uint8) for _, c2 in chunk], dim=1)
            problems.append((a, b, dataclasses.replace(g, channels=a.shape[1]), 1.0))
            sinks.append(_MarkSink(code, bit))
    problems.append((_zeroed(x1), _zeroed(x2), g, scale))
    sinks.append(_PatchSink(code, sink))
    return problems, sinks


def run_forward(x1: torch.Tensor, x2: torch.Tensor, plan: Plan, sink: Sink, *, scale: float = 1.0) -> None:
    """:func:`tiledcorr.execution.engine.run_forward` for inputs that may hold NaN or Inf.

    Hands ``sink`` the same bands ``(Bt, *J, *U)`` the engine would for finite
    inputs, with each sum's IEEE value over its valid terms only.

    Args:
        x1, x2: inputs of shape ``(B, C, *in_size)``.
        plan: the plan (geometry, tiling; its budget bounds the channel stacking).
        sink: receives each band in the compute dtype.
        scale: multiplies every output value (positive).
    """
    problems, sinks = _exact_problems(x1, x2, plan, scale, sink)
    lockstep = Lockstep(problems, plan.tiling, compute_dtype(x1.dtype))
    try:
        for tile in iter_tiles(plan.geometry, plan.tiling):
            lockstep.forward(tile, sinks)
    finally:
        lockstep.release()


class _ExactBands:
    """What a :class:`~tiledcorr.execution.engine.GradSource` may ask of its context, with exact bands.

    ``recompute_band`` gives a tile's IEEE-exact forward values (a new
    tensor); its workspace is made on first use and kept until :meth:`release`.
    """

    def __init__(self, x1: torch.Tensor, x2: torch.Tensor, plan: Plan, scale: float) -> None:
        self.x1, self.x2, self.plan, self.scale = x1, x2, plan, scale
        self.geometry = plan.geometry
        self._captured: list[torch.Tensor] = []
        self._lockstep: Lockstep | None = None
        self._sinks: list[Sink] = []

    def recompute_band(self, tile: Tile) -> torch.Tensor:
        if self._lockstep is None:
            problems, self._sinks = _exact_problems(self.x1, self.x2, self.plan, self.scale, CaptureSink(self._captured))
            self._lockstep = Lockstep(problems, self.plan.tiling, compute_dtype(self.x1.dtype))
        self._lockstep.forward(tile, self._sinks)
        return self._captured.pop()

    def release(self) -> None:
        if self._lockstep is not None:
            self._lockstep.release()
            self._lockstep = None


def run_backward(
    x1: torch.Tensor,
    x2: torch.Tensor,
    plan: Plan,
    grad1: torch.Tensor | None,
    grad2: torch.Tensor | None,
    grad_source: GradSource,
    *,
    scale: float = 1.0,
    upstream_present: Callable[[str], bool] | None = None,
) -> None:
    """:func:`tiledcorr.execution.engine.run_backward` for values that may be NaN or Inf.

    ``grad1 = scale * sum grad_out * x2`` and ``grad2 = scale * sum grad_out * x1``
    over the valid terms, each entry with its IEEE value, where ``grad_out``
    is each tile's band gradient from ``grad_source``. A source that
    recomputes the forward band (``ctx.recompute_band``) gets its exact values.

    Args:
        x1, x2: inputs of shape ``(B, C, *in_size)``.
        plan: the plan (geometry and tiling).
        grad1, grad2: zero-initialised accumulators ``(B, C, *in_size)`` in the
            compute dtype, or ``None``.
        grad_source: the band gradients, :func:`~tiledcorr.execution.engine.volume_grad`
            of a stored volume's gradient or a fused reduction's source.
        scale: the forward's scale (positive).
        upstream_present: whether a class of :data:`_CLASSES` occurs in the
            band gradients at all (pairs with a class that does not are
            skipped); ``None`` tries every class.
    """
    g = plan.geometry
    exact = _ExactBands(x1, x2, plan, scale)
    try:
        def upstream(ctx, tile: Tile) -> torch.Tensor:
            return grad_source(exact, tile)

        engine_backward(
            _zeroed(x1), _zeroed(x2), g, plan.tiling, grad1, grad2,
            lambda ctx, tile: _zeroed(upstream(ctx, tile)), scale=scale,
        )
        for grad, partner, first in ((grad1, x2, True), (grad2, x1, False)):
            if grad is None:
                continue
            partners = Indicators(partner)
            code = torch.zeros(grad.shape, dtype=torch.uint8, device=grad.device)
            for bit, pairs in _KINDS:
                for a, b in pairs:
                    if not partners.present(b) or (upstream_present is not None and not upstream_present(a)):
                        continue
                    ones = partners.map(b)
                    count = torch.zeros(grad.shape, dtype=torch.float32, device=grad.device)
                    indicator = _CLASSES[a]
                    engine_backward(
                        ones, ones, g, plan.tiling, count if first else None, None if first else count,
                        lambda ctx, tile, indicator=indicator: indicator(upstream(ctx, tile)).to(torch.float32),
                    )
                    code.bitwise_or_((count > 0).to(torch.uint8) * bit)
            grad.copy_(_apply(grad, code))
    finally:
        exact.release()
