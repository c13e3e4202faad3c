"""The operators' calls as TorchScript code: what scripted, traced and exported Modules run.

Eagerly, a Module calls its public function, which validates everything and
raises tiledcorr's typed errors. Scripted, traced or exported, it calls the
functions of this module instead: TorchScript-compatible code (positional
arguments, annotated types) that takes the Module's parameters already
normalised (:class:`DeployConfig`, built once and validated in Python) and
computes only what depends on the input's shape (``scale = 1/C``, FlowNet's
output crop) when it runs, then calls ``torch.ops.tiledcorr.*``, which plans
at run time. So

* ``torch.jit.script`` compiles these functions into the Module's code;
* ``torch.jit.trace`` records a call to their scripted versions
  (:func:`scripted`), so the trace stays correct at other input sizes;
* ``torch.export`` runs them in Python on symbolic sizes (nothing here turns
  a size into a Python int or branches on one).

Parameters travel as ``List[int]`` of length 1 (an int for every spatial
dimension) or one per dimension. ``crop`` is per dimension too: how much
less padding the end of each dimension gets than its start (FlowNet's
window, ``2*kr``; 0 elsewhere). It becomes the operator's ``out_limit``.
"""

from __future__ import annotations

import functools
import math
import typing
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch
from torch import Tensor

from ..reductions.table import TopK

# TorchScript reads a NamedTuple's field types from ``__annotations__``, which
# ``from __future__ import annotations`` in its module leaves as strings it cannot resolve.
TopK.__annotations__ = typing.get_type_hints(TopK)

#: The ``normalize`` options as TorchScript strings ("" is None).
NORMALIZE_CODES = {None: "", "channels": "channels", "kernel_channels": "kernel_channels", "sqrt_channels": "sqrt_channels"}


@dataclass(frozen=True)
class DeployConfig:
    """A Module's parameters as the functions of this module take them (validated, shape-free).

    Attributes:
        params: kernel, patch, stride, padding, dilation, dilation_patch, crop;
            each a list of one int (every dimension) or one per dimension.
        normalize: a key of :data:`NORMALIZE_CODES`' values ("" for a plain sum).
        budget: the encoded ``memory_budget`` (``tiledcorr.library.common.encode_budget``).
        ndims: the accepted numbers of spatial dimensions.
    """

    params: Tuple[List[int], ...]
    normalize: str
    budget: str
    ndims: List[int]


def expand(name: str, values: List[int], ndim: int) -> List[int]:
    """``values`` for ``ndim`` spatial dimensions (a single value is repeated)."""
    if len(values) == 1:
        return values * ndim
    if len(values) != ndim:
        raise ValueError(f"{name} has {len(values)} values (one per spatial dimension) but the inputs have {ndim} "
                         f"spatial dimensions")
    return values


def normalization_factor(normalize: str, channels: int, kernel_volume: int) -> float:
    """The factor each sum is multiplied by (see :func:`tiledcorr.ops.common.normalization_scale`)."""
    if normalize == "" or channels == 0:
        return 1.0
    if normalize == "channels":
        return 1.0 / channels
    if normalize == "kernel_channels":
        return 1.0 / (channels * kernel_volume)
    return 1.0 / math.sqrt(channels)


def check_inputs(input1: Tensor, input2: Tensor, ndims: List[int]) -> int:
    """Check the two inputs as ``tiledcorr.checks.check_inputs`` does; the number of spatial dimensions."""
    ndim = input1.dim() - 2
    if ndim not in ndims:
        expected = " or ".join([f"{n + 2}-D" for n in ndims])
        raise ValueError(f"input1 must be {expected} (B, C, *spatial), got {input1.dim()}-D")
    if input2.dim() != input1.dim():
        raise ValueError(f"input1 and input2 must have the same shape, got {input1.dim()}-D and {input2.dim()}-D")
    if not input1.is_floating_point():
        raise TypeError("input1 must have a floating dtype (float16, bfloat16, float32 or float64)")
    if input1.dtype != input2.dtype:
        raise TypeError("input1 and input2 must have the same dtype")
    if input1.device != input2.device:
        raise ValueError("input1 and input2 must be on the same device")
    return ndim


def _operator_geometry(input1: Tensor, params: List[List[int]], ndim: int) -> List[List[int]]:
    """The geometry for ``input1``'s size: six parameters and ``out_limit`` (empty for none), one list each."""
    kernel, patch, stride = expand("kernel_size", params[0], ndim), expand("patch_size", params[1], ndim), expand(
        "stride", params[2], ndim)
    padding, dilation = expand("padding", params[3], ndim), expand("dilation", params[4], ndim)
    dilation_patch, crop = expand("dilation_patch", params[5], ndim), expand("crop", params[6], ndim)
    out_limit: List[int] = []
    if max(crop) > 0:
        # FlowNet: the end of each dimension is padded by ``padding - crop`` only.
        for d in range(ndim):
            extent = input1.shape[d + 2] + 2 * padding[d] - crop[d] - (kernel[d] - 1) * dilation[d] - 1
            out_limit.append(_nonnegative(extent // stride[d] + 1))
    return [kernel, patch, stride, padding, dilation, dilation_patch, out_limit]


def _flat(geometry: List[List[int]]) -> List[int]:
    """The operators' ``geometry`` argument (``tiledcorr.library.common.geometry_args``): the lists, concatenated."""
    flat: List[int] = []
    for values in geometry:
        flat.extend(values)
    return flat


def _nonnegative(n: int) -> int:
    """``max(0, n)``; on a symbolic size (``torch.export``) without a guard on its value."""
    if torch.jit.is_scripting():
        return max(0, n)
    return _sym_nonnegative(n)


@torch.jit.unused
def _sym_nonnegative(n: int) -> int:
    return torch.sym_max(0, n)


def _scale(normalize: str, input1: Tensor, kernel: List[int]) -> float:
    volume = 1
    for k in kernel:
        volume *= k
    return normalization_factor(normalize, input1.shape[1], volume)


def correlate(input1: Tensor, input2: Tensor, params: List[List[int]], normalize: str, budget: str,
              ndims: List[int], flatten: bool) -> Tensor:
    """``tiledcorr::correlate`` for a Module: the volume ``(B, *patch, *out)``, or ``(B, prod(patch), *out)`` flattened."""
    ndim = check_inputs(input1, input2, ndims)
    g = _operator_geometry(input1, params, ndim)
    out = torch.ops.tiledcorr.correlate(input1, input2, _flat(g), _scale(normalize, input1, g[0]), budget, "")
    return out.flatten(1, ndim) if flatten else out


def displacements(index: Tensor, patch: List[int], dilation_patch: List[int], dim: int) -> Tensor:
    """Flat displacement indices -> displacements in pixels stacked at ``dim`` (``reductions.indices``)."""
    parts: List[Tensor] = []
    stride = 1
    for P in patch:
        stride *= P
    for d in range(len(patch)):
        stride = stride // patch[d]
        part = torch.div(index, stride, rounding_mode="floor").remainder(patch[d])
        parts.append((part - (patch[d] - 1) // 2) * dilation_patch[d])
    return torch.stack(parts, dim=dim)


def correlate_reduce(input1: Tensor, input2: Tensor, params: List[List[int]], normalize: str, budget: str,
                     ndims: List[int], reduction: str, k: int, temperature: float) -> Tuple[Tensor, Tensor]:
    """``tiledcorr::correlate_reduce`` for a Module: ``(result, displacements)``.

    ``"max"``: ``(B, *out)``; ``"argmax"`` and ``"softargmax"``: ``(B, N, *out)``
    (the second tensor empty); ``"topk"``: values ``(B, k, *out)`` and
    displacements ``(B, k, N, *out)``.
    """
    ndim = check_inputs(input1, input2, ndims)
    g = _operator_geometry(input1, params, ndim)
    scale = _scale(normalize, input1, g[0])
    if reduction == "argmax":
        with torch.no_grad():  # no gradient: the operator runs its forward alone
            results = torch.ops.tiledcorr.correlate_reduce(input1, input2, _flat(g), scale, budget, "", reduction, k,
                                                           temperature)
        return displacements(results[1].squeeze(1), g[1], g[5], 1), results[2]
    results = torch.ops.tiledcorr.correlate_reduce(input1, input2, _flat(g), scale, budget, "", reduction, k,
                                                   temperature)
    if reduction == "max":
        return results[0].squeeze(1), results[2]
    if reduction == "topk":
        return results[0], displacements(results[1], g[1], g[5], 2)
    return results[0], results[2]


@functools.lru_cache(maxsize=None)
def scripted(fn: Callable) -> Callable:
    """``torch.jit.script(fn)``, compiled once: what a traced Module calls, so its trace keeps sizes dynamic."""
    return torch.jit.script(fn)


def mode() -> str:
    """How a Module's ``forward`` is being run (outside TorchScript).

    ``"onnx"`` (either ONNX exporter), ``"trace"`` (``torch.jit.trace``),
    ``"export"`` (``torch.export``), else ``"eager"`` (including ``torch.compile``).
    """
    tracing, exporting = torch.jit.is_tracing(), torch.compiler.is_exporting()
    if not (tracing or exporting):  # both ONNX exporters run the model under one of them; their check costs more
        return "eager"
    if torch.onnx.is_in_onnx_export():
        return "onnx"
    return "trace" if tracing else "export"
