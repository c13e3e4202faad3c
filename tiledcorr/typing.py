"""Type aliases used by the public signatures."""

from __future__ import annotations

from typing import Literal, Sequence, Union

#: An int, or one int per spatial dimension (``(h, w)`` for images).
IntOrTuple = Union[int, Sequence[int]]

#: ``None`` (a fraction of free memory), bytes, a string with units, or a fraction.
BudgetLike = Union[None, int, float, str]

#: How the sums over channels (and kernel window) are scaled.
Normalize = Literal[None, "channels", "kernel_channels", "sqrt_channels"]

#: Names of the execution strategies in the engine's registry.
StrategyName = Literal["tile_matmul", "row_matmul", "shift"]

#: The fused reductions of :func:`tiledcorr.correlate_reduce` that return one tensor.
TensorReductionName = Literal["max", "argmax", "softargmax"]

#: Every ``reduction=`` of :func:`tiledcorr.correlate_reduce` (``"topk"`` returns a ``TopK``).
ReductionName = Literal["max", "argmax", "softargmax", "topk"]
