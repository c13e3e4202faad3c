"""What the public entry points share: input preparation, normalisation, plans given by the user, reprs."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .. import checks
from ..errors import ArgumentTypeError, ArgumentValueError
from ..geometry import Geometry
from ..library.common import encode_budget
from ..library.deploy import NORMALIZE_CODES, DeployConfig, normalization_factor
from ..planning.planner import Plan
from ..typing import BudgetLike, Normalize

NORMALIZATIONS = (None, "channels", "kernel_channels", "sqrt_channels")


def normalization_scale(normalize: Normalize, channels: int, kernel_volume: int) -> float:
    """The factor each sum is multiplied by for a ``normalize`` option.

    ``None``: 1 (a plain sum, as ``spatial_correlation_sampler``);
    ``"channels"``: 1/C (the mean over channels, as the pure-PyTorch ports);
    ``"kernel_channels"``: 1/(k*k*C) (FlowNet2); ``"sqrt_channels"``: 1/sqrt(C)
    (RAFT, GMFlow). With C = 0 the sums are empty and the factor is 1.
    """
    return normalization_factor(check_normalize(normalize), channels, kernel_volume)


def check_normalize(normalize: Any) -> str:
    """A ``normalize`` option, as :mod:`tiledcorr.library.deploy` encodes it ("" for ``None``)."""
    if normalize not in NORMALIZATIONS:
        raise ArgumentValueError(f"normalize must be one of {NORMALIZATIONS}, got {checks.show(normalize)}")
    return NORMALIZE_CODES[normalize]


#: The geometry parameters of the public functions, with their smallest accepted value.
_MINIMUMS = (("kernel_size", 1), ("patch_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1),
             ("dilation_patch", 1))


def deploy_config(
    params: tuple[Any, ...], normalize: Normalize, memory_budget: BudgetLike, *, ndims: tuple[int, ...] = (2, 3),
    plan: Any = None,
) -> DeployConfig:
    """A public function's arguments, validated, as scripted, traced and exported code takes them.

    Args:
        params: ``kernel_size, patch_size, stride, padding, dilation, dilation_patch``
            (each an int or one int per spatial dimension).
        normalize, memory_budget: as in :func:`tiledcorr.correlate`.
        ndims: the accepted numbers of spatial dimensions.
        plan: must be ``None``: a plan is made for one input shape.

    Raises:
        ArgumentTypeError, ArgumentValueError: as the eager call would, for the same argument.
    """
    if plan is not None:
        raise ArgumentValueError(
            "plan= is not supported under torch.jit.trace, torch.export or ONNX export (a plan is made for one "
            "input shape); pass memory_budget= instead: the operator plans when it runs")
    lengths = {len(v) for v in params if isinstance(v, (tuple, list, torch.Size))}
    ndim = lengths.pop() if len(lengths) == 1 and next(iter(lengths)) in ndims else ndims[0]
    lists = []
    for (name, minimum), value in zip(_MINIMUMS, params):
        items = checks.as_tuple(name, value, ndim, minimum=minimum)  # the eager call's errors
        lists.append([items[0]] if not isinstance(value, (tuple, list, torch.Size)) else list(items))
    return DeployConfig(params=(*lists, [0]), normalize=check_normalize(normalize),
                        budget=encode_budget(memory_budget), ndims=list(ndims))


def prepare_inputs(input1: Any, input2: Any, *, spatial_dims=(2, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the two inputs and apply autocast (correlation runs in autocast's dtype, as matmul).

    As for matmul, float64 inputs are left in float64 inside an autocast region.
    """
    checks.check_inputs(input1, input2, spatial_dims=spatial_dims)
    device_type = device_type_of(input1)
    if torch.is_autocast_enabled(device_type) and input1.dtype != torch.float64:
        low = torch.get_autocast_dtype(device_type)
        input1, input2 = input1.to(low), input2.to(low)
    return input1, input2


def device_type_of(x: torch.Tensor) -> str:
    """``x.device.type``, cheaper for a CPU tensor: ``is_cpu`` is a flag, the type a new string (0.3-0.5 us a read)."""
    return "cpu" if x.is_cpu else x.device.type


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """A context in which autocast is off (the operators compute in the inputs' dtype); a no-op where it is off already.

    Entering ``torch.autocast(..., enabled=False)`` cost a tenth of a small call.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def check_plan(plan: Any, geometry: Geometry, input1: torch.Tensor) -> Plan | None:
    """A user's ``plan`` argument: ``None``, or a :class:`Plan` made for these shapes, dtype and device.

    Its tiling is checked field by field when an operator runs it.
    """
    if plan is None:
        return None
    if not isinstance(plan, Plan):
        raise ArgumentTypeError(f"plan must be a tiledcorr.Plan from tiledcorr.plan(), got {type(plan).__name__}")
    plan.check_fits(geometry, input1.dtype, input1.device)
    return plan


class Deployable:
    """What a Module needs to be scripted: its arguments as :mod:`tiledcorr.library.deploy` takes them.

    ``torch.jit.script`` calls :meth:`__prepare_scriptable__` first (on every
    submodule of a scripted model), which validates the Module's current
    arguments (the eager call's errors) and stores them as typed attributes
    the scripted ``forward`` reads.
    """

    def deploy_config(self) -> DeployConfig:
        """The Module's arguments, validated (see :func:`deploy_config`)."""
        raise NotImplementedError

    def __prepare_scriptable__(self) -> "Deployable":
        config = self.deploy_config()
        self._script_params = [list(v) for v in config.params]
        self._script_normalize, self._script_budget, self._script_ndims = config.normalize, config.budget, config.ndims
        return self


def repr_args(module: nn.Module, names: tuple[str, ...], defaults: dict[str, Any]) -> str:
    """``name=value`` for each argument that differs from its default (kornia style)."""
    parts = [f"{n}={getattr(module, n)!r}" for n in names if getattr(module, n) != defaults.get(n, object())]
    return ", ".join(parts)
