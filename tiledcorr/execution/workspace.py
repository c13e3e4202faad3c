"""The workspace: buffers allocated once per call and viewed at each tile's size."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import torch

from . import hugepages


class Workspace:
    """Buffers allocated once per call and viewed at each tile's size.

    Reusing them avoids an allocation (and, on CPU, fresh page faults) per tile
    and makes the peak at most the sum of the buffer sizes the planner
    predicts. A buffer is allocated when first viewed: one a call does not
    need (input1 read in place, see
    :meth:`~tiledcorr.execution.context.TileContext.gather_x1` and
    :meth:`~tiledcorr.execution.context.TileContext.input1_in_place`) costs nothing.
    """

    def __init__(self, sizes: Mapping[str, int], dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self._sizes = sizes
        self._flat: dict[str, torch.Tensor] = {}
        self._zeroed_for: dict[str, Hashable] = {}

    def view(self, name: str, *shape: int) -> torch.Tensor:
        """The buffer's first ``prod(shape)`` elements; the caller may write any of them."""
        self._zeroed_for.pop(name, None)
        return self._prefix(name, shape)

    def _prefix(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        flat, n = self._flat.get(name), math.prod(shape)
        if flat is None:
            flat = self._flat[name] = torch.empty(self._sizes[name], dtype=self.dtype, device=self.device)
            hugepages.advise(flat)
        return (flat if flat.numel() == n else flat[:n]).view(shape)

    def zeroed_view(self, name: str, key: Hashable, *shape: int) -> torch.Tensor:
        """Like :meth:`view`, but zero wherever the caller does not write.

        The caller promises to write the same entries every time it passes the
        same ``key`` (a band of a tile of the same shape). The buffer is then
        zeroed only when the key changes or a plain :meth:`view` may have
        written it since, not at every tile: for the backward's band-shaped
        buffers the zeroing cost as much as a third of the band copies.
        """
        buf = self._prefix(name, shape)
        if self._zeroed_for.get(name) != key:
            buf.zero_()
            self._zeroed_for[name] = key
        return buf

    def release(self) -> None:
        self._flat.clear()
        self._zeroed_for.clear()

