"""The strategy registry: each strategy declares what it supports, its buffers and its cost; the planner ranks.

A strategy is a class in its own module of :mod:`tiledcorr.strategies` that
subclasses :class:`Strategy` and registers itself with :func:`register`. The
planner sees only this interface (shapes in, numbers out). The execution
methods are called by the execution layer: ``forward``/``backward`` for one
tile by the engine's loop (:mod:`tiledcorr.execution.engine`); or, when
:attr:`Strategy.runs_whole_plan` (a fused kernel), ``volume_forward``,
``volume_backward``, ``reduce_forward`` and ``reduce_backward`` for a whole
problem (:mod:`tiledcorr.execution.volume`, :mod:`tiledcorr.reductions.run`;
see :mod:`tiledcorr.strategies.triton`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from ..checks import show
from ..errors import ArgumentValueError
from ..geometry import Geometry
from .costs import Cost, CostTerms
from .tiling import TileDims


class Strategy:
    """How one tile (or a whole plan) is computed. Subclasses set :attr:`name` and override the methods.

    Attributes:
        name: the registry key, shown in plans.
        runs_whole_plan: the strategy runs every tile of a plan itself (a fused
            kernel) instead of the engine's loop calling it per tile.
    """

    name: ClassVar[str] = ""
    runs_whole_plan: ClassVar[bool] = False

    def refusal(self, geometry: Geometry, dtype: torch.dtype, device_type: str) -> str | None:
        """Why this strategy cannot run the problem at all, or ``None`` when it can."""
        return None

    def buffers(self, dims: TileDims, backward: bool) -> dict[str, np.ndarray]:
        """Elements of each workspace buffer, per tile row of ``dims`` (the engine allocates exactly these)."""
        raise NotImplementedError

    def cost(self, terms: CostTerms) -> Cost:
        """Predicted seconds per tile, forward and backward, for each row of ``terms.dims``."""
        raise NotImplementedError

    # Execution (called by the engine): per tile, ctx is a TileContext of tiledcorr.execution.
    def forward(self, ctx: Any, tile: Any, sink: Any) -> None:
        raise NotImplementedError

    def backward(self, ctx: Any, tile: Any, grad_band: torch.Tensor, grad1: torch.Tensor | None,
                 grad2: torch.Tensor | None) -> None:
        raise NotImplementedError

    def one_tile(self, geometry: Geometry, tiling: Any) -> Any | None:
        """A plan of a single small tile run as a fixed sequence of tensor ops, or ``None`` (then the tile loop runs).

        The engine runs what this returns (an object with ``tile``,
        ``band(x1, x2, scale)``, ``volume(x1, x2, scale)``, ``backward(x1, x2,
        grad_band, grad1, grad2, scale)`` and ``gradients(x1, x2, grad_out,
        need1, need2, scale)``) for inputs already in the compute dtype: a tiny
        call then skips the workspace and the per-tile lookups. See
        :class:`tiledcorr.strategies.tile_matmul.OneTile`.
        """
        return None

    # Execution of a whole plan, only when runs_whole_plan (see tiledcorr.strategies.triton for the contract).
    def volume_forward(self, x1: torch.Tensor, x2: torch.Tensor, out: torch.Tensor, geometry: Geometry,
                       scale: float) -> None:
        raise NotImplementedError

    def volume_backward(self, grad_out: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                        grad1: torch.Tensor | None, grad2: torch.Tensor | None, geometry: Geometry,
                        scale: float) -> None:
        raise NotImplementedError

    def reduce_forward(self, reduction: str, x1: torch.Tensor, x2: torch.Tensor, geometry: Geometry, scale: float,
                       k: int | None, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def reduce_backward(self, reduction: str, grad: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                        results: tuple[torch.Tensor, torch.Tensor, torch.Tensor], grad1: torch.Tensor | None,
                        grad2: torch.Tensor | None, geometry: Geometry, scale: float, k: int | None,
                        temperature: float) -> None:
        raise NotImplementedError


_REGISTRY: dict[str, Strategy] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add a strategy to the registry under its ``name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"strategy name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def names() -> tuple[str, ...]:
    """The registered strategies, in registration order (the planner's candidate order)."""
    return tuple(_REGISTRY)


def get(name: Any) -> Strategy:
    """A strategy by name; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ArgumentValueError(f"strategy must be one of {sorted(_REGISTRY)}, got {show(name)}") from None


def refusals(geometry: Geometry, dtype: torch.dtype, device_type: str) -> dict[str, str]:
    """Every strategy that cannot run the problem, with its reason."""
    reasons = {}
    for name, strategy in _REGISTRY.items():
        reason = strategy.refusal(geometry, dtype, device_type)
        if reason is not None:
            reasons[name] = reason
    return reasons
