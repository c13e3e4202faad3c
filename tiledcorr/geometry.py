"""Parameters -> output shape, displacements and tile lattices (pure arithmetic).

Notation, per spatial dimension (for images: H then W):

* ``n`` input size, ``k`` kernel size, ``P`` patch size, ``s`` stride,
  ``p`` padding, ``l`` kernel dilation, ``q`` patch dilation (dilation_patch);
* output size ``o = (n + 2p - ((k-1)l + 1)) // s + 1`` (0 when negative);
* displacement index ``j`` in ``[0, P)`` shifts by ``(j - R) * q`` with
  ``R = (P - 1) // 2``;
* output position ``h`` and kernel offset ``i`` read input1 at
  ``h*s - p + i*l`` and input2 at that plus the shift.

Tiles. Positions ``h`` with the same residue modulo ``t = q / gcd(s, q)``
reach input2 on one lattice of step ``q``: position ``h = r + t*(u0 + a)``
and displacement ``j = j0 + jj`` read input2 at
``base + (a*m + jj) * q`` with ``m = s / gcd(s, q)``. A tile of ``U``
positions and ``J`` displacements therefore needs a dense input2 region of
``(U - 1)*m + J`` lattice points per dimension, and one matmul of the
input1 tile against that region contains every product the tile needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterator

from .errors import ArgumentValueError
from .memo import cached, cached_hash

#: Largest value a tensor size, index or stride can take (torch's int64).
INT64_MAX = 2**63 - 1

#: Most elements of a cost volume tiledcorr plans for: its float64 or int64
#: tensors (and a fused top-k's ``(B, k, N, *out)`` displacements) then stay
#: far below int64's byte count, so no size computation overflows.
MAX_ELEMENTS = 2**56

#: Most displacements per dimension (``patch_size``) tiledcorr accepts.
MAX_PATCH = 2**20


@dataclass(frozen=True)
class Geometry:
    """Shapes and parameters of one correlation, every per-dimension value a tuple.

    Attributes:
        batch: B.
        channels: C.
        in_size: spatial size of both inputs, e.g. ``(H, W)``.
        kernel, patch, stride, padding, dilation, dilation_patch: one int per
            spatial dimension, with ``spatial_correlation_sampler``'s meaning.
            Internally padding may be negative (a crop; the FlowNet shim uses it).
        out_limit: keep only the first ``out_limit`` output positions per
            dimension (FlowNet's output is such a prefix); ``None`` keeps all.
    """

    batch: int
    channels: int
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    patch: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    dilation_patch: tuple[int, ...]
    out_limit: tuple[int, ...] | None = None

    @cached
    def ndim(self) -> int:
        """Number of spatial dimensions (2 for images, 3 for volumes)."""
        return len(self.in_size)

    @cached
    def out_size(self) -> tuple[int, ...]:
        """Output spatial size ``(oH, oW)``; a 0 where the kernel does not fit."""
        size = tuple(
            max(0, (n + 2 * p - ((k - 1) * dil + 1)) // s + 1)
            for n, p, k, dil, s in zip(
                self.in_size, self.padding, self.kernel, self.dilation, self.stride
            )
        )
        if self.out_limit is not None:
            size = tuple(min(o, limit) for o, limit in zip(size, self.out_limit))
        return size

    @cached
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the cost volume: ``(B, *patch, *out_size)``."""
        return (self.batch, *self.patch, *self.out_size)

    @cached
    def radius(self) -> tuple[int, ...]:
        """Index of the zero displacement along each patch dimension."""
        return tuple((P - 1) // 2 for P in self.patch)

    @cached
    def num_displacements(self) -> int:
        return math.prod(self.patch)

    @cached
    def kernel_volume(self) -> int:
        return math.prod(self.kernel)

    @cached
    def num_positions(self) -> int:
        return math.prod(self.out_size)

    @cached
    def is_empty(self) -> bool:
        """True when the output or the sums are empty (B, C or a spatial size is 0)."""
        return self.batch == 0 or self.channels == 0 or self.num_positions == 0

    @cached
    def no_tiles(self) -> bool:
        """True when no tile runs (B or the output's positions are 0): nothing is computed, no workspace is needed."""
        return self.batch == 0 or self.num_positions == 0

    def shifts(self, dim: int) -> list[int]:
        """Displacements in pixels along ``dim``, in output order."""
        R, q = self.radius[dim], self.dilation_patch[dim]
        return [(j - R) * q for j in range(self.patch[dim])]

    def lattice(self, dim: int) -> "Lattice":
        """The tile lattice constants of one spatial dimension (see :attr:`lattices`)."""
        return self.lattices[dim]

    @cached
    def lattices(self) -> tuple["Lattice", ...]:
        """The tile lattice constants of each spatial dimension.

        Where the step ``t`` is at least the output size, each position class
        holds at most one position, so ``t`` and ``m`` change nothing but the
        numbering: the lattice ``(max(o, 1), 1)`` has the same spans, and keeps
        every step and stride the engine derives from it (``t * s``, ``m`` times
        a buffer stride) small however large ``stride`` and ``dilation_patch`` are.
        """
        return tuple(_lattice(s, q, out) for s, q, out in zip(self.stride, self.dilation_patch, self.out_size))

    @cached
    def flops(self) -> int:
        """Multiply-adds of the exact correlation, times two."""
        return 2 * self.batch * self.channels * self.kernel_volume * self.num_displacements * self.num_positions

    # Geometries key the plan caches on every call: the hash, like the derived sizes above, is computed once.
    def __hash__(self) -> int:
        return cached_hash(self, _fields)


def _fields(geometry: Geometry) -> tuple:
    return tuple(getattr(geometry, f.name) for f in fields(geometry))


def _lattice(stride: int, dilation_patch: int, out_size: int) -> "Lattice":
    """:attr:`Geometry.lattices` of one dimension."""
    g = math.gcd(stride, dilation_patch)
    step = dilation_patch // g
    if step >= out_size:
        return Lattice(step=max(out_size, 1), region_step=1)
    return Lattice(step=step, region_step=stride // g)


@dataclass(frozen=True)
class Lattice:
    """Tiling constants of one dimension (see the module docstring).

    Attributes:
        step: ``t``, the spacing of output positions inside one tile.
        region_step: ``m``, how far the input2 region advances per position.
    """

    step: int
    region_step: int

    def positions_per_class(self, out_size: int, residue: int) -> int:
        """Number of output positions ``h < out_size`` with ``h % step == residue``."""
        return max(0, -(-(out_size - residue) // self.step))

    def blocks(self, out_size: int, tile: int) -> int:
        """Number of tiles of ``tile`` positions covering every class, in closed form.

        ``o = a*t + b``: ``b`` classes hold ``a + 1`` positions, the others ``a``.
        """
        a, b = divmod(out_size, self.step)
        return b * -(-(a + 1) // tile) + (self.step - b) * -(-a // tile)

    def region_extent(self, positions: int, displacements: int) -> int:
        """Lattice points of input2 a tile of this many positions and displacements reads."""
        return (positions - 1) * self.region_step + displacements


@dataclass(frozen=True)
class Span:
    """One block along one dimension of a tile.

    Attributes:
        residue: ``r``, the position class modulo the lattice step.
        start: ``u0``, first position index within that class.
        count: ``U``, number of positions.
        disp_start: ``j0``, first displacement index.
        disp_count: ``J``, number of displacements.
    """

    residue: int
    start: int
    count: int
    disp_start: int
    disp_count: int


def spans(geometry: Geometry, dim: int, tile: int, disp_tile: int) -> Iterator[Span]:
    """Yield the blocks that cover dimension ``dim`` with tiles of the given sizes."""
    lattice = geometry.lattice(dim)
    for j0 in range(0, geometry.patch[dim], disp_tile):
        J = min(disp_tile, geometry.patch[dim] - j0)
        for r in range(min(lattice.step, geometry.out_size[dim])):  # the other classes are empty
            U_total = lattice.positions_per_class(geometry.out_size[dim], r)
            for u0 in range(0, U_total, tile):
                yield Span(r, u0, min(tile, U_total - u0), j0, J)


def count_spans(geometry: Geometry, dim: int, tile: int, disp_tile: int) -> int:
    """Number of blocks :func:`spans` yields, without building them."""
    per_disp = geometry.lattice(dim).blocks(geometry.out_size[dim], tile)
    return per_disp * -(-geometry.patch[dim] // disp_tile)


def check_sizes(geometry: Geometry) -> None:
    """Refuse a geometry whose sizes would overflow torch's int64 or build tables beyond memory, naming the parameters.

    The limits, none of which a real correlation comes near:

    * at most :data:`MAX_PATCH` displacements per dimension (a fused
      reduction holds a table of them, whatever the output size);
    * the cost volume's shape multiplies to at most :data:`MAX_ELEMENTS`
      (counting empty dimensions as 1: torch computes the strides of an empty
      tensor too), so no tensor size, stride or byte count overflows;
    * where the output is not empty, every input coordinate the engine
      computes (up to the padded size plus the largest displacement) fits in int64.

    An empty output is otherwise always accepted, however large its kernel:
    nothing is computed.

    Raises:
        ArgumentValueError: the message names the parameters responsible.
    """
    g = geometry
    if max(g.patch, default=1) > MAX_PATCH:
        raise ArgumentValueError(
            f"patch_size must be at most {MAX_PATCH} (2**20) displacements per dimension, got {g.patch}")
    extent = math.prod(max(n, 1) for n in g.out_shape)
    if extent > MAX_ELEMENTS:
        named = _named(g, ("patch_size", g.patch, 1), ("padding", g.padding, 0), ("stride", g.stride, 1),
                       ("kernel_size", g.kernel, 1), ("dilation", g.dilation, 1))
        raise ArgumentValueError(
            f"the cost volume {g.out_shape} is too large: its sizes multiply to {extent}, more than tiledcorr "
            f"supports ({MAX_ELEMENTS} = 2**56, beyond any device's memory){named}; reduce patch_size or padding"
        )
    if g.no_tiles:
        return
    # A view of the inputs strided by a coordinate step has strides up to that step times the input's size.
    input_elements = max(1, g.batch * g.channels * math.prod(g.in_size))
    for d in range(g.ndim):
        # The engine steps by dilation_patch even over a single displacement (a view's stride).
        reach = g.in_size[d] + 2 * abs(g.padding[d]) + max(g.patch[d] - 1, 1) * g.dilation_patch[d]
        if reach * input_elements > INT64_MAX:
            named = _named(g, ("padding", g.padding, 0), ("stride", g.stride, 1), ("dilation", g.dilation, 1),
                           ("dilation_patch", g.dilation_patch, 1))
            raise ArgumentValueError(
                f"input coordinates reach {reach} in spatial dimension {d}{named}: their offsets in the "
                f"inputs ({input_elements} elements) would overflow int64; reduce padding or dilation_patch"
            )


def _named(g: Geometry, *params: tuple[str, tuple[int, ...], int]) -> str:
    """``" (from patch_size=(..), padding=(..))"``: the parameters that differ from their defaults."""
    shown = [f"{name}={values}" for name, values, default in params if any(v != default for v in values)]
    return f" (from {', '.join(shown)})" if shown else ""


def input1_start(geometry: Geometry, dim: int, span: Span, kernel_offset: int) -> int:
    """Coordinate in input1 of the span's first position for one kernel offset."""
    lattice = geometry.lattice(dim)
    h0 = span.residue + lattice.step * span.start
    return h0 * geometry.stride[dim] - geometry.padding[dim] + kernel_offset * geometry.dilation[dim]


def input1_step(geometry: Geometry, dim: int) -> int:
    """Distance in input1 between consecutive positions of a span.

    Where every span holds one position the step is never taken: 1 then, so
    that a huge ``stride`` does not overflow the strides of the views it makes.
    """
    lattice = geometry.lattice(dim)
    if lattice.step >= geometry.out_size[dim]:
        return 1
    return lattice.step * geometry.stride[dim]


def input2_start(geometry: Geometry, dim: int, span: Span, kernel_offset: int) -> int:
    """Coordinate in input2 of the first point of the span's region."""
    shift = (span.disp_start - geometry.radius[dim]) * geometry.dilation_patch[dim]
    return input1_start(geometry, dim, span, kernel_offset) + shift


def output_slice(geometry: Geometry, dim: int, span: Span) -> slice:
    """The output positions of a span along ``dim``, as a strided slice."""
    t = geometry.lattice(dim).step
    h0 = span.residue + t * span.start
    return slice(h0, h0 + t * (span.count - 1) + 1, t)


def clip(start: int, step: int, count: int, size: int) -> tuple[int, int]:
    """Range ``[lo, hi)`` of indices ``n < count`` with ``0 <= start + step*n < size``."""
    lo = max(0, -(start // step))  # ceil(-start / step) when start < 0
    hi = min(count, -(-(size - start) // step)) if size > start else 0
    return lo, max(lo, hi)
