"""Typed exceptions.

Each one also derives from the built-in exception that users already catch
(``ValueError``, ``TypeError``, ``RuntimeError``), so ``except ValueError``
keeps working while ``except tiledcorr.ShapeError`` can be precise.
"""

from __future__ import annotations


class TiledCorrError(Exception):
    """Base class of every exception tiledcorr raises on purpose."""


class ShapeError(TiledCorrError, ValueError):
    """An input tensor has the wrong number of dimensions or a mismatched shape."""


class ArgumentTypeError(TiledCorrError, TypeError):
    """An argument has the wrong Python type or a tensor has an unsupported dtype."""


class ArgumentValueError(TiledCorrError, ValueError):
    """An argument has the right type but a value outside its accepted range."""


class DeviceError(TiledCorrError, ValueError):
    """The inputs live on different devices, or on a device that cannot compute."""


class MemoryBudgetError(TiledCorrError, RuntimeError):
    """No plan fits the memory budget, or the output alone cannot fit in memory.

    Attributes:
        minimum_bytes: the smallest budget that works, or ``None`` when the
            problem is the output itself rather than the workspace.
    """

    def __init__(self, message: str, minimum_bytes: int | None = None) -> None:
        super().__init__(message)
        self.minimum_bytes = minimum_bytes
