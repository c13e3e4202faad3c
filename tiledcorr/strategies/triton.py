"""The ``triton`` strategy: fused Triton kernels that run a whole plan with no workspace.

The kernels (:mod:`.triton_kernels`) compute the volume, both input gradients
and the four fused reductions of 2-D, kernel-size-1 correlations on tensor
cores (float16/bfloat16 with float32 accumulation; float32 exact unless TF32
is allowed globally). Everything else is refused with a reason, and the
planner falls back to the PyTorch strategies: kernel_size > 1, float64,
volumes, FlowNet's cropped output, negative padding, CPU tensors (except
under ``TRITON_INTERPRET=1``, for tests), and NaN/Inf inputs (the exact path
runs on a per-tile plan instead).

triton is optional (``pip install tiledcorr[triton]``): without it the
strategy is registered and refuses with that reason.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..geometry import Geometry
from ..planning.costs import Cost, CostTerms
from ..planning.registry import Strategy, register
from ..planning.tiling import TileDims

try:
    from . import triton_kernels as kernels
except Exception as exc:  # noqa: BLE001 - ImportError, or a triton that cannot initialise here
    kernels = None  # type: ignore[assignment]  # mypy types the name as the module; refusal() reports it missing, so no plan reaches the kernels
    _UNAVAILABLE = f"triton is not available ({type(exc).__name__}: {exc}); pip install tiledcorr[triton]"
else:
    _UNAVAILABLE = ""

#: Slowdown the cost model charges the interpreter (TRITON_INTERPRET=1): it is only for tests,
#: so a default plan never picks it on the CPU.
INTERPRETER_COST = 1e6


def fix_interpreter_for_numpy() -> None:
    """Let triton 3.6's interpreter run with numpy >= 2.4 (triton-lang/triton issue 9171; idempotent).

    The interpreter turns a scalar kernel argument used as a ``range`` bound
    into an int with ``int(array)`` on a shape-``(1,)`` array, which numpy 2.4 refuses.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_tiledcorr_fixed", False):
        return

    def patched(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._tiledcorr_fixed = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched


if kernels is not None and os.environ.get("TRITON_INTERPRET") == "1":
    fix_interpreter_for_numpy()


def _params(geometry: Geometry) -> dict[str, Any]:
    return dict(patch=geometry.patch, stride=geometry.stride, padding=geometry.padding,
                dilation_patch=geometry.dilation_patch)


@register
class Triton(Strategy):
    """Fused kernels: each program multiplies an input1 block by the input2 region it reaches on chip."""

    name = "triton"
    runs_whole_plan = True

    def refusal(self, geometry: Geometry, dtype: torch.dtype, device_type: str) -> str | None:
        if kernels is None:
            return _UNAVAILABLE
        if geometry.out_limit is not None:
            return "FlowNet's cropped output (out_limit)"
        if any(p < 0 for p in geometry.padding):
            return "negative padding"
        return kernels.supports(ndim=geometry.ndim, kernel=geometry.kernel, dtype=dtype,
                                device=torch.device(device_type), stride=geometry.stride,
                                dilation_patch=geometry.dilation_patch)

    def buffers(self, dims: TileDims, backward: bool) -> dict[str, np.ndarray]:
        return {}  # every sum stays on chip (kernels.workspace_bytes() is 0)

    def cost(self, terms: CostTerms) -> Cost:
        d, model = terms.dims, terms.model
        # The band's products with the waste of its region (BR / BP, about 1.5), plus writing the
        # band once: no gathers, transposes or copies.
        seconds = 1.5 * 2 * d.Bt * d.T * d.Jp * terms.K / model.matmul_flops + terms.band_bytes / 2 / model.bandwidth
        if kernels is not None and kernels._interpreting():
            seconds = seconds * INTERPRETER_COST
        return Cost(seconds, 3 * seconds)

    # ----------------------------------------------------------------- execution of a whole plan

    def volume_forward(self, x1: torch.Tensor, x2: torch.Tensor, out: torch.Tensor, geometry: Geometry,
                       scale: float) -> None:
        """Write the volume ``(B, *patch, *out_size)`` into ``out``."""
        kernels.volume_forward(x1, x2, out, scale=scale, **_params(geometry))

    def volume_backward(self, grad_out: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                        grad1: torch.Tensor | None, grad2: torch.Tensor | None, geometry: Geometry,
                        scale: float) -> None:
        """Add the input gradients into the float32 accumulators ``grad1``/``grad2`` (or ``None``)."""
        kernels.volume_backward(grad_out, x1, x2, grad1, grad2, scale=scale, **_params(geometry))

    def reduce_forward(self, reduction: str, x1: torch.Tensor, x2: torch.Tensor, geometry: Geometry, scale: float,
                       k: int | None, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reduction operator's three results (see :mod:`tiledcorr.reductions.table`)."""
        results = kernels.reduce_forward(x1, x2, reduction=reduction, k=k, temperature=temperature, scale=scale,
                                         **_params(geometry))
        if reduction == "softargmax":
            expectation, m, z = results
            return expectation.to(x1.dtype), m, z
        values, index = results
        return values.to(x1.dtype), index, values.new_empty(0)

    def reduce_backward(self, reduction: str, grad: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                        results: tuple[torch.Tensor, torch.Tensor, torch.Tensor], grad1: torch.Tensor | None,
                        grad2: torch.Tensor | None, geometry: Geometry, scale: float, k: int | None,
                        temperature: float) -> None:
        """Add the input gradients of a reduction's first result into the float32 accumulators."""
        if reduction == "softargmax":
            expectation, m, z = results
            results = (expectation.float(), m, z)
        kernels.reduce_backward(grad.float(), x1, x2, results, grad1, grad2, reduction=reduction, k=k,
                                temperature=temperature, scale=scale, **_params(geometry))


__all__ = ["INTERPRETER_COST", "Triton", "fix_interpreter_for_numpy", "kernels"]
