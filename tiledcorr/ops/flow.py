"""Flow conventions: displacements in tiledcorr's ``(dy, dx)`` order to flow fields in ``(u, v)`` order.

tiledcorr lists displacement components in the order of the spatial
dimensions: ``(dy, dx)`` for images, ``(dz, dy, dx)`` for volumes (the
argmax and soft-argmax of :func:`tiledcorr.correlate_reduce`, the ``TopK``
displacements). Optical-flow code (torchvision's ``flow_to_image``, ptlflow,
RAFT, ``.flo`` files) stores ``(u, v) = (dx, dy)``: horizontal first. The
helpers here convert, so a result is never passed on with its axes swapped:

* :func:`displacement_to_flow`: ``(dy, dx)`` -> ``(u, v) = (dx, dy)``
  (``(dz, dy, dx)`` -> ``(dx, dy, dz)``), any layout, any dtype;
* :func:`index_to_displacement`: a flat displacement index (as
  ``volume.flatten(1, N).argmax(1)`` gives) -> the displacement in pixels;
* :func:`volume_to_flow`: a stored cost volume -> a flow field
  ``(B, 2, oH, oW)`` in ``(u, v)`` order, by argmax or soft-argmax.

Sign: a displacement ``d`` at output position ``p`` means input1 at ``p``
correlates with input2 at ``p + d``, so ``(u, v)`` is the forward flow from
the first frame to the second, in input pixels (with ``stride > 1`` it is
given on the strided output grid, still in input pixels).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from .. import checks
from ..errors import ArgumentTypeError, ArgumentValueError, ShapeError
from ..geometry import Geometry
from ..reductions import indices
from ..typing import IntOrTuple


def _check_dim(dim: Any, ndim: int, what: str) -> int:
    """``dim`` as a non-negative axis of a tensor with ``ndim`` dimensions."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ArgumentTypeError(f"dim must be an int, got {checks.show(dim, typed=True)}")
    if not -ndim <= dim < ndim:
        raise ArgumentValueError(f"dim must be in [{-ndim}, {ndim - 1}] for {what}, got {dim}")
    return dim % ndim


def displacement_to_flow(displacements: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Reorder displacement components from tiledcorr's ``(dy, dx)`` to flow's ``(u, v) = (dx, dy)``.

    The component axis ``dim`` is reversed: ``(dy, dx)`` -> ``(dx, dy)`` for
    images, ``(dz, dy, dx)`` -> ``(dx, dy, dz)`` for volumes. Values and dtype
    are kept (argmax displacements stay int64; call ``.float()`` for a float
    flow field). Differentiable.

    Args:
        displacements: tensor whose axis ``dim`` has size 2 or 3: the result
            of ``correlate_reduce(..., reduction="argmax" | "softargmax")``
            ``(B, N, *out)`` with ``dim=1``, or ``TopK.displacements``
            ``(B, k, N, *out)`` with ``dim=2``.
        dim: the component axis (negative values count from the end).

    Returns:
        A new tensor of the same shape and dtype, components reversed.

    Raises:
        ArgumentTypeError: ``displacements`` is not a tensor, ``dim`` not an int.
        ArgumentValueError: ``dim`` out of range.
        ShapeError: axis ``dim`` has neither 2 nor 3 components.

    Example:
        >>> displacement_to_flow(torch.tensor([[3, -1]]), dim=1)   # dy = 3, dx = -1
        tensor([[-1,  3]])
    """
    if not isinstance(displacements, torch.Tensor):
        raise ArgumentTypeError(f"displacements must be a Tensor, got {checks.show(displacements, typed=True)}")
    dim = _check_dim(dim, displacements.ndim, f"displacements of shape {tuple(displacements.shape)}")
    if displacements.shape[dim] not in (2, 3):
        raise ShapeError(
            f"displacements must have 2 (dy, dx) or 3 (dz, dy, dx) components along dim={dim}, "
            f"got shape {tuple(displacements.shape)}")
    return displacements.flip(dim)


def _patch_geometry(patch_size: Any, dilation_patch: Any) -> Geometry:
    """A minimal :class:`Geometry` holding only the displacement grid (what the index arithmetic reads).

    The number of spatial dimensions is the length of ``patch_size`` or
    ``dilation_patch`` where either is a tuple, else 2 (images).
    """
    ndim = next((len(v) for v in (patch_size, dilation_patch) if isinstance(v, (tuple, list, torch.Size))), 2)
    patch = checks.as_tuple("patch_size", patch_size, ndim, minimum=1)
    dilation_patch = checks.as_tuple("dilation_patch", dilation_patch, ndim, minimum=1)
    ones = (1,) * ndim
    return Geometry(
        batch=1, channels=1, in_size=ones, kernel=ones, patch=patch, stride=ones, padding=(0,) * ndim,
        dilation=ones, dilation_patch=dilation_patch)


def index_to_displacement(
    index: torch.Tensor, *, patch_size: IntOrTuple, dilation_patch: IntOrTuple = 1, dim: int = 1,
) -> torch.Tensor:
    """Flat displacement indices -> displacements in pixels, components ``(dy, dx)`` stacked at ``dim``.

    The flat index ``j`` runs row-major over ``patch_size``, as
    ``volume.flatten(1, N)`` of a :func:`tiledcorr.correlate` volume (FlowNet's
    dy-major channel order in 2-D): ``j = jy * PW + jx``, and the displacement
    is ``((jy - (PH-1)//2) * dilation_patchH, (jx - (PW-1)//2) * dilation_patchW)``
    (likewise ``(dz, dy, dx)`` in 3-D). Follow with :func:`displacement_to_flow`
    for ``(u, v)`` order.

    Args:
        index: integer tensor of any shape ``S``, values in ``[0, prod(patch_size))``.
        patch_size: the correlation's ``patch_size``: an int (images) or one
            int per spatial dimension (a 3-tuple for volumes).
        dilation_patch: the correlation's ``dilation_patch``, same forms.
        dim: where the component axis goes in the result (negative values
            count from the end of the result).

    Returns:
        int64 tensor of shape ``S`` with an axis of size ``N`` (2 or 3) inserted at ``dim``.

    Raises:
        ArgumentTypeError: ``index`` is not an integer tensor; bad parameter types.
        ArgumentValueError: an index outside ``[0, prod(patch_size))``, bad sizes, ``dim`` out of range.

    Example:
        >>> index_to_displacement(torch.tensor([0, 4, 8]), patch_size=3, dim=0)   # corners and centre
        tensor([[-1,  0,  1],
                [-1,  0,  1]])
    """
    if not isinstance(index, torch.Tensor) or index.dtype.is_floating_point or index.dtype.is_complex \
            or index.dtype == torch.bool:
        raise ArgumentTypeError(f"index must be an integer Tensor, got {checks.show(index, typed=True)}")
    geometry = _patch_geometry(patch_size, dilation_patch)
    dim = _check_dim(dim, index.ndim + 1, f"an index of shape {tuple(index.shape)} (the result has one more axis)")
    if index.numel() and not torch.compiler.is_compiling():
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= geometry.num_displacements:
            raise ArgumentValueError(
                f"index must lie in [0, {geometry.num_displacements}) for patch_size={geometry.patch}, "
                f"got values in [{low}, {high}]")
    return indices.index_to_displacement(geometry, index.long(), dim)


def _volume_patch(volume: torch.Tensor, patch_size: IntOrTuple | None) -> tuple[tuple[int, ...], torch.Tensor]:
    """The patch of a stored volume and its view ``(B, prod(patch), *out)``.

    Accepts ``(B, *patch, *out)`` (the default output of :func:`tiledcorr.correlate`;
    ``patch_size`` optional) and ``(B, prod(patch), *out)`` (``flatten=True``,
    FlowNet's layout; ``patch_size`` needed).
    """
    shape = tuple(volume.shape)
    if patch_size is None:
        if volume.ndim not in (5, 7):
            raise ShapeError(
                f"volume must be (B, *patch, *out) with 2 or 3 spatial dimensions (5-D or 7-D) when patch_size "
                f"is not given, got shape {shape}; pass patch_size for a flattened (B, P, *out) volume")
        ndim = (volume.ndim - 1) // 2
        return shape[1 : 1 + ndim], volume.flatten(1, ndim)
    ndim = len(patch_size) if isinstance(patch_size, (tuple, list, torch.Size)) else 2
    patch = checks.as_tuple("patch_size", patch_size, ndim, minimum=1)
    if volume.ndim == 1 + 2 * ndim and shape[1 : 1 + ndim] == patch:
        return patch, volume.flatten(1, ndim)
    if volume.ndim == 2 + ndim and shape[1] == math.prod(patch):
        return patch, volume
    raise ShapeError(
        f"volume must be (B, *patch, *out) or (B, prod(patch), *out) for patch_size={patch}, got shape {shape}")


def volume_to_flow(
    volume: torch.Tensor,
    *,
    patch_size: IntOrTuple | None = None,
    dilation_patch: IntOrTuple = 1,
    reduction: Literal["argmax", "softargmax"] = "argmax",
    temperature: float = 1.0,
) -> torch.Tensor:
    """A stored cost volume -> a flow field in ``(u, v)`` order, ``(B, 2, oH, oW)``.

    ``"argmax"``: the displacement of the largest value per position (ties to
    the lowest flat index), as ``correlate_reduce(..., reduction="argmax")``;
    ``"softargmax"``: ``sum_j softmax(v / temperature)[j] * d(j)``, as
    ``correlate_reduce(..., reduction="softargmax")`` (differentiable). Then
    the components are reordered by :func:`displacement_to_flow`: channel 0
    is ``u = dx``, channel 1 ``v = dy`` (3-D: ``(dx, dy, dz)``, ``(B, 3, oD, oH, oW)``).

    When the volume is not needed, ``displacement_to_flow(correlate_reduce(...))``
    gives the same field without storing it.

    Args:
        volume: a :func:`tiledcorr.correlate` (or sampler) output ``(B, *patch,
            *out)``, or a flattened one ``(B, prod(patch), *out)`` (FlowNet's
            dy-major channels; then ``patch_size`` is required).
        patch_size: the correlation's ``patch_size`` (read from the shape of
            an unflattened volume when ``None``).
        dilation_patch: the correlation's ``dilation_patch`` (the spacing of
            the displacements in pixels).
        reduction: ``"argmax"`` or ``"softargmax"``.
        temperature: softmax temperature of ``"softargmax"`` (finite, > 0).

    Returns:
        Flow field ``(B, N, *out)`` in ``(u, v)`` (``(u, v, w)``) order, in the
        volume's dtype (float); in input pixels.

    Raises:
        ArgumentTypeError: ``volume`` is not a floating tensor.
        ArgumentValueError: an unknown ``reduction``, a ``temperature`` <= 0, bad sizes.
        ShapeError: the volume's shape does not match ``patch_size``.

    Example:
        >>> import tiledcorr
        >>> x = torch.randn(1, 64, 12, 16)
        >>> shifted = torch.roll(x, shifts=(1, -2), dims=(2, 3))   # frame 2: 1 px down, 2 px left
        >>> flow = volume_to_flow(tiledcorr.correlate(x, shifted, patch_size=7))
        >>> flow.shape, flow[0, :, 6, 8].tolist()                    # (u, v) = (dx, dy)
        (torch.Size([1, 2, 12, 16]), [-2.0, 1.0])
    """
    if not isinstance(volume, torch.Tensor) or not volume.dtype.is_floating_point:
        raise ArgumentTypeError(f"volume must be a floating Tensor, got {checks.show(volume, typed=True)}")
    if reduction not in ("argmax", "softargmax"):
        raise ArgumentValueError(f"reduction must be 'argmax' or 'softargmax', got {checks.show(reduction)}")
    patch, flat = _volume_patch(volume, patch_size)
    ndim = len(patch)
    geometry = _patch_geometry(patch, checks.as_tuple("dilation_patch", dilation_patch, ndim, minimum=1))
    if reduction == "argmax":
        displacement = indices.index_to_displacement(geometry, flat.argmax(1), 1).to(volume.dtype)
    else:
        temperature = checks.check_real("temperature", temperature)
        if temperature <= 0:
            raise ArgumentValueError(f"temperature must be > 0, got {checks.show(temperature)}")
        weights = torch.softmax(flat / temperature, dim=1)                       # (B, P, *out)
        shifts = indices.shift_table(geometry, volume.dtype, volume.device)      # (P, N)
        displacement = torch.einsum("bp...,pn->bn...", weights, shifts)
    return displacement_to_flow(displacement, dim=1)
