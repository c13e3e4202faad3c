"""The execution strategies, one module each; importing this package registers them.

Registration order is the planner's candidate order (:mod:`tiledcorr.planning.registry`).
"""

from . import tile_matmul, shift, row_matmul, triton  # noqa: F401  (registers them, in this order)

__all__ = ["row_matmul", "shift", "tile_matmul", "triton"]
