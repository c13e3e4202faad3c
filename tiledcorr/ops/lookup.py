"""RAFT-style correlation look-up around a per-pixel position, exact, tiled within a memory budget.

:func:`correlate_lookup` is the function; :class:`CorrBlock` a drop-in for
RAFT's class of the same name (``from tiledcorr import CorrBlock`` is the
whole switch); :class:`CorrelationLookup` the Module twin. All three run the
operator ``tiledcorr::correlate_lookup`` (:mod:`tiledcorr.library.lookup`) through
:func:`tiledcorr.library.registration.call`.

Conventions (RAFT's, see docs/lookup.md): ``coords`` channel 0 is x and
channel 1 is y, in pixels of ``fmap2``; window point ``(a, b)`` of level
``i`` is ``(x / 2**i + a - r, y / 2**i + b - r)``, so the FIRST window index
moves x, at channel ``i*(2r+1)**2 + a*(2r+1) + b``; sampling is bilinear with
pixel centres at integer coordinates (``grid_sample(align_corners=True)``)
and zeros outside the level's image.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ..budget import resolve_budget
from ..checks import check_int, show
from ..errors import ArgumentTypeError, ArgumentValueError, DeviceError, ShapeError
from ..library.lookup import COORDS_GRAD_MESSAGE, correlate_lookup_op  # noqa: F401  (registers the operators)
from ..library.registration import call
from ..library.common import encode_budget
from ..planning.lookup import level_sizes
from ..typing import BudgetLike

__all__ = ["correlate_lookup", "CorrBlock", "CorrelationLookup", "NORMALIZATIONS"]

#: Accepted ``normalize`` values and what each divides the channel sum by.
NORMALIZATIONS = {None: "nothing (a plain sum over channels)", "channels": "C", "sqrt_channels": "sqrt(C) (RAFT)"}

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {show(x, typed=True)}")
    if x.layout != torch.strided:
        raise ArgumentTypeError(f"{name} must be a dense tensor, got layout {x.layout}; call .to_dense() first")
    if x.dtype not in _FLOAT_DTYPES:
        raise ArgumentTypeError(f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), "
                                f"got {x.dtype}")
    if x.dim() != 4:
        raise ShapeError(f"{name} must be 4-D, got shape {tuple(x.shape)} ({x.dim()}-D)")
    if x.device.type == "meta":
        raise DeviceError(f"{name} is on the meta device, which holds no data; use "
                          "tiledcorr.planning.lookup.plan_lookup() to plan from shapes alone")
    return x


def _check_fmaps(fmap1: Any, fmap2: Any, num_levels: int) -> None:
    """fmap1 and fmap2: ``(B, C, H, W)`` of one shape, dtype and device, large enough for ``num_levels``."""
    _check_tensor("fmap1", fmap1)
    _check_tensor("fmap2", fmap2)
    if fmap1.dtype != fmap2.dtype:
        raise ArgumentTypeError(f"fmap1 and fmap2 must have the same dtype, got {fmap1.dtype} and {fmap2.dtype}")
    if fmap1.device != fmap2.device:
        raise DeviceError(f"fmap1 and fmap2 must be on the same device, got {fmap1.device} and {fmap2.device}")
    if fmap1.shape != fmap2.shape:
        raise ShapeError(f"fmap1 and fmap2 must have the same shape (B, C, H, W), got {tuple(fmap1.shape)} "
                         f"and {tuple(fmap2.shape)}")
    height, width = fmap1.shape[2:]
    if height * width > 0 and 0 in level_sizes(height, width, num_levels)[-1]:
        raise ShapeError(f"num_levels={num_levels} needs fmap1 and fmap2 of at least {2 ** (num_levels - 1)} "
                         f"pixels in height and width (each level halves them), got {height} x {width}")


def _check_coords(coords: Any, fmap1: torch.Tensor) -> None:
    _check_tensor("coords", coords)
    batch, _, height, width = fmap1.shape
    if tuple(coords.shape) != (batch, 2, height, width):
        raise ShapeError(f"coords must have shape (B, 2, H, W) = {(batch, 2, height, width)} for fmap1 of shape "
                         f"{tuple(fmap1.shape)}, got {tuple(coords.shape)}")
    if coords.device != fmap1.device:
        raise DeviceError(f"coords must be on fmap1's device {fmap1.device}, got {coords.device}")
    if coords.requires_grad and torch.is_grad_enabled():
        raise ArgumentValueError(COORDS_GRAD_MESSAGE)


def _check_normalize(normalize: Any) -> Optional[str]:
    if normalize is not None and not isinstance(normalize, str):
        raise ArgumentTypeError(f"normalize must be None or a string, one of {list(NORMALIZATIONS)}; "
                                f"got {show(normalize, typed=True)}")
    if normalize not in NORMALIZATIONS:
        raise ArgumentValueError(f"normalize must be one of {list(NORMALIZATIONS)}, got {show(normalize)}")
    return normalize


def _scale(normalize: Optional[str], channels: int) -> float:
    """The factor of every correlation; 1 when there are no channels (all sums are 0 then)."""
    if normalize is None or channels == 0:
        return 1.0
    return 1.0 / (channels if normalize == "channels" else math.sqrt(channels))


def _encoded_budget(memory_budget: Any, device: torch.device) -> str:
    """The operator's budget string; outside ``torch.compile`` the budget is also checked here, by name."""
    if not torch.compiler.is_compiling():
        resolve_budget(memory_budget, device)  # raises for a bad form or value, before any work
    encoded = encode_budget(memory_budget)
    if encoded is None:
        resolve_budget(memory_budget, device)  # a form the operator cannot carry: this raises
    return encoded


def correlate_lookup(
    fmap1: torch.Tensor, fmap2: torch.Tensor, coords: torch.Tensor, radius: int, num_levels: int = 1,
    normalize: Optional[str] = "sqrt_channels", memory_budget: BudgetLike = None,
) -> torch.Tensor:
    """Correlation of fmap1 with fmap2 bilinearly looked up in a window around ``coords``, per level.

    ``out[b, i*K*K + a*K + c, h, w]`` (``K = 2r+1``, ``0 <= a, c < K``) is the
    correlation ``sum_ch fmap1[b, ch, h, w] * P_i[b, ch, y', x'] / norm`` where
    ``P_i`` is fmap2 average-pooled ``i`` times (2x2, stride 2, floor sizes),
    sampled bilinearly (pixel centres at integers, zeros outside) at
    ``x' = coords[b, 0, h, w] / 2**i + a - r`` and ``y' = coords[b, 1, h, w] / 2**i + c - r``.
    This is exactly RAFT's ``CorrBlock`` (which samples the pooled all-pairs
    volume), computed tile by tile without that volume.

    Args:
        fmap1: ``(B, C, H, W)``, float16, bfloat16, float32 or float64.
        fmap2: ``(B, C, H, W)``, same dtype and device.
        coords: ``(B, 2, H, W)``, floating, same device: channel 0 = x, 1 = y, in
            pixels of fmap2 (level 0). Computed in the result's dtype. Gets no
            gradient: pass it detached (as RAFT does), else this raises.
        radius: window radius ``r`` >= 0: ``(2r+1)**2`` points per level.
        num_levels: pyramid levels >= 1; ``H`` and ``W`` must be at least ``2**(num_levels-1)``.
        normalize: divide the channel sum by ``sqrt(C)`` (``"sqrt_channels"``, RAFT),
            ``C`` (``"channels"``) or nothing (``None``).
        memory_budget: workspace limit, any form of :func:`tiledcorr.resolve_budget`.

    Returns:
        ``(B, num_levels*(2r+1)**2, H, W)``, float32 (float64 for float64
        input), contiguous; differentiable once in fmap1 and fmap2.

    Raises:
        ShapeError, ArgumentTypeError, ArgumentValueError, DeviceError: bad input (named).
        MemoryBudgetError: the smallest tile does not fit ``memory_budget``.

    Example:
        >>> import torch
        >>> from tiledcorr import correlate_lookup
        >>> f1, f2 = torch.randn(1, 8, 12, 16), torch.randn(1, 8, 12, 16)
        >>> coords = torch.stack(torch.meshgrid(torch.arange(16.), torch.arange(12.), indexing="xy")).unsqueeze(0)
        >>> correlate_lookup(f1, f2, coords, radius=1, num_levels=2).shape
        torch.Size([1, 18, 12, 16])
    """
    num_levels = check_int("num_levels", num_levels, minimum=1)
    radius = check_int("radius", radius, minimum=0)
    _check_fmaps(fmap1, fmap2, num_levels)
    _check_coords(coords, fmap1)
    scale = _scale(_check_normalize(normalize), fmap1.shape[1])
    budget = _encoded_budget(memory_budget, fmap1.device)
    return call(correlate_lookup_op, fmap1, fmap2, coords, radius, num_levels, scale, budget)


class CorrBlock:
    """Drop-in for RAFT's ``CorrBlock``: ``CorrBlock(fmap1, fmap2)(coords)`` without the all-pairs volume.

    Same constructor and call as princeton-vl/RAFT ``core/corr.py``; the result
    has RAFT's values, channel order, shape and float32 dtype. See
    :func:`correlate_lookup` (with ``normalize="sqrt_channels"``).

    Args:
        fmap1, fmap2: ``(B, C, H, W)`` feature maps of the two frames.
        num_levels: pyramid levels (RAFT: 4).
        radius: window radius (RAFT: 4).
        memory_budget: workspace limit of each look-up (keyword only).

    Shape:
        - coords: ``(B, 2, H, W)``, channel 0 = x, 1 = y (detached).
        - Output: ``(B, num_levels*(2*radius+1)**2, H, W)``.

    Example:
        >>> import torch
        >>> from tiledcorr import CorrBlock
        >>> block = CorrBlock(torch.randn(2, 16, 24, 32), torch.randn(2, 16, 24, 32), memory_budget="64MiB")
        >>> block(torch.zeros(2, 2, 24, 32)).shape
        torch.Size([2, 324, 24, 32])
    """

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = 4, radius: int = 4, *,
                 memory_budget: BudgetLike = None) -> None:
        self.num_levels = check_int("num_levels", num_levels, minimum=1)
        self.radius = check_int("radius", radius, minimum=0)
        _check_fmaps(fmap1, fmap2, self.num_levels)
        self.fmap1, self.fmap2, self.memory_budget = fmap1, fmap2, memory_budget

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        return correlate_lookup(self.fmap1, self.fmap2, coords, self.radius, self.num_levels, "sqrt_channels",
                                self.memory_budget)

    def __repr__(self) -> str:
        return (f"CorrBlock(fmaps={tuple(self.fmap1.shape)}, num_levels={self.num_levels}, radius={self.radius}, "
                f"memory_budget={self.memory_budget!r})")


class CorrelationLookup(torch.nn.Module):
    """Module form of :func:`correlate_lookup`: ``CorrelationLookup(radius, ...)(fmap1, fmap2, coords)``.

    Args:
        radius, num_levels, normalize, memory_budget: as :func:`correlate_lookup`.

    Shape:
        - fmap1, fmap2: ``(B, C, H, W)``; coords: ``(B, 2, H, W)``.
        - Output: ``(B, num_levels*(2*radius+1)**2, H, W)``.
    """

    def __init__(self, radius: int, num_levels: int = 1, normalize: Optional[str] = "sqrt_channels",
                 memory_budget: BudgetLike = None) -> None:
        super().__init__()
        self.radius = check_int("radius", radius, minimum=0)
        self.num_levels = check_int("num_levels", num_levels, minimum=1)
        self.normalize = _check_normalize(normalize)
        self.memory_budget = memory_budget

    def forward(self, fmap1: torch.Tensor, fmap2: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return correlate_lookup(fmap1, fmap2, coords, self.radius, self.num_levels, self.normalize,
                                self.memory_budget)

    def extra_repr(self) -> str:
        parts = [f"radius={self.radius}"]
        if self.num_levels != 1:
            parts.append(f"num_levels={self.num_levels}")
        if self.normalize != "sqrt_channels":
            parts.append(f"normalize={self.normalize!r}")
        if self.memory_budget is not None:
            parts.append(f"memory_budget={self.memory_budget!r}")
        return ", ".join(parts)
