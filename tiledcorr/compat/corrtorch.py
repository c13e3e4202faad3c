"""Drop-in for ``CorrTorch``, the pure-PyTorch FlowNet correlation copied into many repositories."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import checks
from ..errors import ArgumentValueError
from ..library import deploy
from ..library.deploy import DeployConfig
from ..typing import BudgetLike
from ..ops.common import Deployable, repr_args
from .flownet import flownet_config, flownet_correlation


def check_corrtorch_args(
    pad_size: Any, kernel_size: Any, max_displacement: Any, stride1: Any, stride2: Any, corr_multiply: Any,
) -> None:
    """Accept exactly what the original accepts (it asserts these in its constructor).

    ``numpy.int64`` and other ``__index__`` integers are accepted as ints.

    Raises:
        ArgumentTypeError: an argument is not an int (``corr_multiply``: not a number).
        ArgumentValueError: ``kernel_size``, ``stride1`` or ``stride2`` is not 1,
            ``max_displacement`` is negative, or ``pad_size != max_displacement``.
    """
    for name, value in (("kernel_size", kernel_size), ("stride1", stride1), ("stride2", stride2)):
        if checks.check_int(name, value, minimum=1) != 1:
            raise ArgumentValueError(
                f"CorrTorch supports only {name}=1 (the original asserts it), got {value!r}; "
                "use tiledcorr.flownet_correlation for other values"
            )
    max_displacement = checks.check_int("max_displacement", max_displacement, minimum=0)
    if checks.check_int("pad_size", pad_size, minimum=0) != max_displacement:
        raise ArgumentValueError(
            f"CorrTorch requires pad_size == max_displacement (the original asserts it), got "
            f"pad_size={pad_size!r} and max_displacement={max_displacement!r}; use "
            "tiledcorr.flownet_correlation for other values"
        )
    checks.check_real("corr_multiply", corr_multiply)


def corr_torch(
    input1: torch.Tensor,
    input2: torch.Tensor,
    pad_size: int = 4,
    kernel_size: int = 1,
    max_displacement: int = 4,
    stride1: int = 1,
    stride2: int = 1,
    corr_multiply: float = 1,
    *,
    memory_budget: BudgetLike = None,
) -> torch.Tensor:
    """``CorrTorch(...)(input1, input2)`` (the limacv "CorrelationLayer" port), computed in tiles.

    Convention (that of the original): the **mean over channels** of
    ``input1 * shift(input2)``, zeros outside the images, channels dy-major;
    this is FlowNet2 with ``kernel_size=1`` (:func:`tiledcorr.flownet_correlation`).
    With ``md = max_displacement``::

        out[b, dy*(2md+1) + dx, h, w] = mean_c input1[b, c, h, w] * input2[b, c, h + dy - md, w + dx - md]

    The arguments the original asserts (``kernel_size == stride1 == stride2 == 1``,
    ``pad_size == max_displacement``) are required here too, with a clear error.
    ``corr_multiply`` is accepted and ignored, as in the original.

    Args:
        input1: tensor of shape ``(B, C, H, W)``, any floating dtype.
        input2: tensor of the same shape, dtype and device.
        pad_size: must equal ``max_displacement``.
        kernel_size: must be 1.
        max_displacement: largest displacement in pixels (>= 0).
        stride1: must be 1.
        stride2: must be 1.
        corr_multiply: ignored (a number).
        memory_budget: bound on the temporary workspace (see :func:`tiledcorr.correlate`).

    Returns:
        Tensor of shape ``(B, (2*md+1)**2, H, W)``, dtype and device of ``input1``.

    Raises:
        ShapeError, ArgumentTypeError, ArgumentValueError, DeviceError: bad input.
        MemoryBudgetError: no tiling fits ``memory_budget``.

    Example:
        >>> x1, x2 = torch.randn(2, 64, 24, 32), torch.randn(2, 64, 24, 32)
        >>> corr_torch(x1, x2).shape
        torch.Size([2, 81, 24, 32])
    """
    check_corrtorch_args(pad_size, kernel_size, max_displacement, stride1, stride2, corr_multiply)
    return flownet_correlation(
        input1, input2, pad_size, kernel_size, max_displacement, stride1, stride2, corr_multiply,
        memory_budget=memory_budget,
    )


class CorrTorch(Deployable, nn.Module):
    """The ``CorrTorch`` Module (same constructor order and defaults); see :func:`corr_torch`.

    The arguments are checked when the Module is built, as the original's asserts do.

    Shape:
        - input1, input2: ``(B, C, H, W)``
        - output: ``(B, (2*max_displacement+1)**2, H, W)``

    Example:
        >>> corr = CorrTorch(pad_size=4, kernel_size=1, max_displacement=4, stride1=1, stride2=1)
        >>> corr(torch.randn(2, 64, 24, 32), torch.randn(2, 64, 24, 32)).shape
        torch.Size([2, 81, 24, 32])
    """

    _ARGS = ("pad_size", "kernel_size", "max_displacement", "stride1", "stride2", "corr_multiply", "memory_budget")

    def __init__(
        self, pad_size: int = 4, kernel_size: int = 1, max_displacement: int = 4, stride1: int = 1,
        stride2: int = 1, corr_multiply: float = 1, *, memory_budget: BudgetLike = None,
    ) -> None:
        super().__init__()
        check_corrtorch_args(pad_size, kernel_size, max_displacement, stride1, stride2, corr_multiply)
        self.pad_size, self.kernel_size, self.max_displacement = pad_size, kernel_size, max_displacement
        self.stride1, self.stride2, self.corr_multiply = stride1, stride2, corr_multiply
        self.memory_budget = memory_budget

    def forward(self, in1: torch.Tensor, in2: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` twice -> ``(B, (2*max_displacement+1)**2, H, W)``; the original's argument names."""
        if torch.jit.is_scripting():
            return deploy.correlate(in1, in2, self._script_params, self._script_normalize, self._script_budget,
                                    self._script_ndims, True)
        return self._call(in1, in2)

    @torch.jit.unused
    def _call(self, in1: torch.Tensor, in2: torch.Tensor) -> torch.Tensor:
        return corr_torch(
            in1, in2, self.pad_size, self.kernel_size, self.max_displacement, self.stride1, self.stride2,
            self.corr_multiply, memory_budget=self.memory_budget,
        )

    def deploy_config(self) -> DeployConfig:
        check_corrtorch_args(self.pad_size, self.kernel_size, self.max_displacement, self.stride1, self.stride2,
                             self.corr_multiply)
        return flownet_config(self.pad_size, self.kernel_size, self.max_displacement, self.stride1, self.stride2,
                              self.memory_budget)

    def extra_repr(self) -> str:
        return repr_args(self, self._ARGS, {"memory_budget": None})
