"""Drop-in for FlowNet2's ``Correlation`` (``correlation_package``), on any device.

FlowNet's correlation is one tiled correlation with its own geometry: output
``oy`` centres its window at ``cy = oy*stride1 + max_displacement - pad_size``,
so the window's top-left corner is ``oy*stride1 - (pad_size + kr - max_displacement)``.
That is the engine's geometry with stride ``stride1`` and padding
``pad_size + kr - max_displacement`` (negative when FlowNet crops more than it
pads), displacements spaced by ``stride2``, and the output cut to FlowNet's
size. Only the output positions FlowNet keeps are ever computed.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .. import checks
from ..errors import ArgumentValueError
from ..geometry import Geometry, check_sizes
from ..library import deploy, dispatch
from ..library.common import encode_budget
from ..library.deploy import DeployConfig
from ..typing import BudgetLike
from ..ops.common import Deployable, normalization_scale, repr_args
from ..ops.correlate import cost_volume


def check_flownet_args(
    pad_size: Any, kernel_size: Any, max_displacement: Any, stride1: Any, stride2: Any, corr_multiply: Any,
) -> tuple[int, int, int, int, int]:
    """Validate FlowNet's arguments (each a scalar int; ``corr_multiply`` a number).

    Returns:
        ``(pad_size, kernel_size, max_displacement, stride1, stride2)`` as Python
        ints (``numpy.int64`` and other ``__index__`` integers are accepted, as by the original).

    Raises:
        ArgumentTypeError: an argument is not an int (``corr_multiply``: not a number).
        ArgumentValueError: a negative size or displacement, a stride below 1, or a
            ``kernel_size`` that is not a positive odd int (the original divides by
            zero with its default 0 and has no centre for an even size).
    """
    pad_size = checks.check_int("pad_size", pad_size, minimum=0)
    kernel_size = checks.check_int("kernel_size", kernel_size, minimum=-checks.INT64_MAX)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ArgumentValueError(
            f"kernel_size must be a positive odd int (FlowNet's window is centred; FlowNetC uses 1), "
            f"got {kernel_size!r}" + (" (the original's default 0 gives inf/NaN)" if kernel_size == 0 else "")
        )
    max_displacement = checks.check_int("max_displacement", max_displacement, minimum=0)
    stride1 = checks.check_int("stride1", stride1, minimum=1)
    stride2 = checks.check_int("stride2", stride2, minimum=1)
    checks.check_real("corr_multiply", corr_multiply)
    return pad_size, kernel_size, max_displacement, stride1, stride2


def flownet_geometry(
    input_shape: Sequence[int], pad_size: int, kernel_size: int, max_displacement: int, stride1: int, stride2: int,
) -> Geometry:
    """The engine :class:`Geometry` of a FlowNet correlation on inputs of ``input_shape`` ``(B, C, H, W)``.

    Its output ``(B, D, D, oH, oW)`` is FlowNet's before flattening the displacements.
    """
    batch, channels, height, width = input_shape
    kr = (kernel_size - 1) // 2
    border = kr + max_displacement
    patch = 2 * (max_displacement // stride2) + 1
    out_limit = tuple(max(0, -(-(n + 2 * pad_size - 2 * border) // stride1)) for n in (height, width))
    geometry = Geometry(
        batch=batch, channels=channels, in_size=(height, width),
        kernel=(kernel_size,) * 2, patch=(patch,) * 2, stride=(stride1,) * 2,
        padding=(pad_size + kr - max_displacement,) * 2, dilation=(1, 1), dilation_patch=(stride2,) * 2,
        out_limit=out_limit,
    )
    if not torch.compiler.is_compiling():  # sizes are symbolic there: the operator checks them when it runs
        check_sizes(geometry)
    return geometry


def flownet_config(
    pad_size: int, kernel_size: int, max_displacement: int, stride1: int, stride2: int, memory_budget: BudgetLike,
) -> DeployConfig:
    """:func:`flownet_geometry`'s parameters as scripted, traced and exported code takes them (validated).

    FlowNet's output is the engine's with the end of each dimension padded
    ``2*kr`` less than its start (``crop``): that makes its ``out_limit`` a
    function of the input size computed when the operator runs.
    """
    kr = (kernel_size - 1) // 2
    patch = 2 * (max_displacement // stride2) + 1
    params = ([kernel_size], [patch], [stride1], [pad_size + kr - max_displacement], [1], [stride2], [2 * kr])
    return DeployConfig(params=params, normalize="kernel_channels", budget=encode_budget(memory_budget), ndims=[2])


def flownet_correlation(
    input1: torch.Tensor,
    input2: torch.Tensor,
    pad_size: int,
    kernel_size: int,
    max_displacement: int,
    stride1: int,
    stride2: int,
    corr_multiply: float = 1,
    *,
    memory_budget: BudgetLike = None,
) -> torch.Tensor:
    """FlowNet2's correlation (``Correlation(...)(input1, input2)``), computed in tiles.

    Convention (that of FlowNet2): the window is centred and each sum is
    **divided by k*k*C**; channels are dy-major. With ``kr = (k-1)//2``,
    ``dr = max_displacement // stride2``, ``D = 2*dr + 1``, ``tj, ti in [-dr, dr]``
    (``tj`` vertical) and zeros outside the images::

        out[b, (tj+dr)*D + (ti+dr), oy, ox] = 1/(k*k*C) * sum_c sum_{j,i in [-kr, kr]}
            input1[b, c, cy+j, cx+i] * input2[b, c, cy+j+tj*stride2, cx+i+ti*stride2]
        cy = oy*stride1 + max_displacement - pad_size   (cx likewise)

    Every combination of strides, kernel size and padding is supported, and the
    backward is the true gradient of this forward for every ``stride1`` (the
    original's is not for ``stride1 > 1``). Where the original reads outside
    its padded buffer (``k > 1``) this reads zeros. ``corr_multiply`` is
    accepted and ignored, as in the original, whose kernel never reads it.
    Under ``torch.autocast`` it computes in the inputs' dtype, as the original
    does (float32 inputs give a float32 result).

    Args:
        input1: tensor of shape ``(B, C, H, W)``, any floating dtype.
        input2: tensor of the same shape, dtype and device.
        pad_size: implicit zero padding (>= 0).
        kernel_size: odd window size (>= 1).
        max_displacement: largest displacement in pixels (>= 0).
        stride1: step between output positions (>= 1).
        stride2: spacing of the displacements (>= 1).
        corr_multiply: ignored (a number).
        memory_budget: bound on the temporary workspace (see :func:`tiledcorr.correlate`).

    Returns:
        Tensor of shape ``(B, D*D, oH, oW)``, dtype and device of ``input1``, with
        ``oH = ceil((H + 2*pad_size - 2*(kr + max_displacement)) / stride1)``
        (likewise ``oW``; 0 when negative).

    Raises:
        ShapeError, ArgumentTypeError, ArgumentValueError, DeviceError: bad input,
            including ``kernel_size`` 0 (the original's default) or even.
        MemoryBudgetError: no tiling fits ``memory_budget``.

    Example:
        >>> x1, x2 = torch.randn(1, 256, 48, 64), torch.randn(1, 256, 48, 64)
        >>> flownet_correlation(x1, x2, 20, 1, 20, 1, 2).shape
        torch.Size([1, 441, 48, 64])
    """
    pad_size, kernel_size, max_displacement, stride1, stride2 = check_flownet_args(
        pad_size, kernel_size, max_displacement, stride1, stride2, corr_multiply)
    how = deploy.mode()
    if how != "eager":  # torch.jit.trace, torch.export, ONNX export (docs/deployment.md)
        config = flownet_config(pad_size, kernel_size, max_displacement, stride1, stride2, memory_budget)
        return dispatch.run_volume(how, config, input1, input2, True)
    # As the original (an extension autocast does not know), compute in the inputs' dtype even under autocast.
    checks.check_inputs(input1, input2, spatial_dims=(2,))
    geometry = flownet_geometry(input1.shape, pad_size, kernel_size, max_displacement, stride1, stride2)
    scale = normalization_scale("kernel_channels", geometry.channels, geometry.kernel_volume)
    out = cost_volume(input1, input2, geometry, scale, memory_budget)
    return out.reshape(geometry.batch, geometry.num_displacements, *geometry.out_size)


class FlowNetCorrelation(Deployable, nn.Module):
    """FlowNet2's ``Correlation`` Module (same constructor order and defaults); see :func:`flownet_correlation`.

    The arguments are checked when the Module is built, so the original's
    default ``kernel_size=0`` (inf/NaN there) raises at once: pass
    ``kernel_size`` explicitly, e.g. FlowNetC's ``Correlation(20, 1, 20, 1, 2, 1)``.

    Shape:
        - input1, input2: ``(B, C, H, W)``
        - output: ``(B, D*D, oH, oW)``, ``D = 2*(max_displacement // stride2) + 1``

    Example:
        >>> corr = FlowNetCorrelation(pad_size=20, kernel_size=1, max_displacement=20, stride1=1, stride2=2)
        >>> corr(torch.randn(1, 256, 48, 64), torch.randn(1, 256, 48, 64)).shape
        torch.Size([1, 441, 48, 64])
    """

    _ARGS = ("pad_size", "kernel_size", "max_displacement", "stride1", "stride2", "corr_multiply", "memory_budget")

    def __init__(
        self, pad_size: int = 0, kernel_size: int = 0, max_displacement: int = 0, stride1: int = 1,
        stride2: int = 2, corr_multiply: float = 1, *, memory_budget: BudgetLike = None,
    ) -> None:
        super().__init__()
        check_flownet_args(pad_size, kernel_size, max_displacement, stride1, stride2, corr_multiply)
        self.pad_size, self.kernel_size, self.max_displacement = pad_size, kernel_size, max_displacement
        self.stride1, self.stride2, self.corr_multiply = stride1, stride2, corr_multiply
        self.memory_budget = memory_budget

    def forward(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return deploy.correlate(input1, input2, self._script_params, self._script_normalize, self._script_budget,
                                    self._script_ndims, True)
        return self._call(input1, input2)

    @torch.jit.unused
    def _call(self, input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
        return flownet_correlation(
            input1, input2, self.pad_size, self.kernel_size, self.max_displacement, self.stride1, self.stride2,
            self.corr_multiply, memory_budget=self.memory_budget,
        )

    def deploy_config(self) -> DeployConfig:
        check_flownet_args(self.pad_size, self.kernel_size, self.max_displacement, self.stride1, self.stride2,
                           self.corr_multiply)
        return flownet_config(self.pad_size, self.kernel_size, self.max_displacement, self.stride1, self.stride2,
                              self.memory_budget)

    def extra_repr(self) -> str:
        return repr_args(self, self._ARGS, {"memory_budget": None})


#: FlowNet2's own name for the Module (``from tiledcorr import Correlation``).
Correlation = FlowNetCorrelation
