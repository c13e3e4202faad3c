"""What an ONNX export computes instead of the operators: a fixed decomposition into standard operators.

An ONNX graph cannot plan at run time (it has no Python, no free-memory
query and no tile loop), so under ``torch.onnx.export`` (either exporter) the
public functions and Modules compute the correlation from plain aten
operators, which both exporters translate into standard ONNX operators (no
custom domain). Per spatial dimension, with padding ``p``, shifts
``(j - R) * q`` (``R = (P-1)//2``) and FlowNet's end crop ``c``:

1. ``input1`` is zero-padded by ``(p, p - c)`` and ``input2`` by
   ``(p + R*q, p - c + (P-1-R)*q)`` (``Pad``; a negative amount is a ``Slice``);
2. for every displacement ``j`` (``prod(patch)`` of them), the product of
   ``input1`` with the slice of ``input2`` shifted by ``j`` is summed over
   channels (``Slice``, ``Mul``, ``ReduceSum``): one ``(B, 1, *L)`` map each,
   ``L`` the padded size;
3. the maps are concatenated (``Concat``) into the volume ``(B, prod(patch), *L)``;
4. the kernel window is summed by a grouped convolution with a ones weight
   (``Conv``, dilation and stride of the correlation), or, for a 1-pixel
   kernel, positions are taken every ``stride`` (``Slice``), then the volume is
   scaled (``Mul``).

So the exported graph holds the whole volume (and one product per
displacement, one at a time) in memory, not one tile at a time; the fused
reductions run on that volume (``ReduceMax``, ``ArgMax``, ``Softmax`` and
``Einsum``, ``TopK``). Nothing here depends on an input's size, so the graph
keeps batch and spatial axes dynamic.
"""

from __future__ import annotations

import itertools
import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .deploy import DeployConfig, check_inputs, displacements, expand

_NAMES = ("kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch", "crop")


def _slice(x: Tensor, dim: int, start: int, end: int | None, step: int = 1) -> Tensor:
    """``x[..., start:end:step]`` along ``dim`` (one ``Slice``; none when it keeps everything)."""
    if start == 0 and end is None and step == 1:
        return x
    return torch.ops.aten.slice.Tensor(x, dim, start, end, step)


def _pad(x: Tensor, amounts: Sequence[Tuple[int, int]]) -> Tensor:
    """``x`` padded with zeros by ``(before, after)`` per spatial dimension; a negative amount crops."""
    for d, (before, after) in enumerate(amounts):
        x = _slice(x, d + 2, max(0, -before), after if after < 0 else None)
    grow = [v for b, a in reversed(amounts) for v in (max(0, b), max(0, a))]  # F.pad: last dimension first
    return F.pad(x, grow) if any(grow) else x


def _volume(input1: Tensor, input2: Tensor, config: DeployConfig) -> Tuple[Tensor, List[List[int]]]:
    """The flat volume ``(B, prod(patch), *out)`` (scaled) and the per-dimension parameters."""
    ndim = check_inputs(input1, input2, config.ndims)
    kernel, patch, stride, padding, dilation, dilation_patch, crop = (
        expand(name, values, ndim) for name, values in zip(_NAMES, config.params))
    radius = [(P - 1) // 2 for P in patch]
    x1 = _pad(input1, [(p, p - c) for p, c in zip(padding, crop)])
    x2 = _pad(input2, [(p + R * q, p - c + (P - 1 - R) * q)
                       for p, c, P, R, q in zip(padding, crop, patch, radius, dilation_patch)])
    pointwise = all(k == 1 for k in kernel)
    step = stride if pointwise else [1] * ndim  # a 1-pixel kernel: only the positions the output keeps
    for d in range(ndim):
        x1 = _slice(x1, d + 2, 0, None, step[d])
    maps = []
    for j in itertools.product(*(range(P) for P in patch)):
        # The shifted input2 has input1's padded size: it starts j*q in and ends (P-1-j)*q before the end.
        shifted = x2
        for d in range(ndim):
            shifted = _slice(shifted, d + 2, j[d] * dilation_patch[d], -(patch[d] - 1 - j[d]) * dilation_patch[d] or None,
                             step[d])
        maps.append((x1 * shifted).sum(1, keepdim=True))
    volume = torch.cat(maps, 1)
    if not pointwise:
        ones = torch.ones((len(maps), 1, *kernel), dtype=volume.dtype, device=volume.device)  # a static shape
        conv = (F.conv2d, F.conv3d)[ndim - 2]
        volume = conv(volume, ones, stride=stride, dilation=dilation, groups=len(maps))
    return _scaled(volume, config.normalize, input1.shape[1], math.prod(kernel)), [patch, dilation_patch]


def _scaled(volume: Tensor, normalize: str, channels, kernel_volume: int) -> Tensor:
    # ``channels`` is an int, a symbolic int (torch.export) or a traced size (the TorchScript exporter).
    if normalize == "" or (isinstance(channels, int) and channels == 0):
        return volume
    if normalize == "channels":
        return volume / channels
    if normalize == "kernel_channels":
        return volume / (channels * kernel_volume)
    return volume / math.sqrt(channels) if isinstance(channels, int) else volume / torch.sqrt(
        torch.as_tensor(channels, dtype=volume.dtype))


def correlate_decomposed(input1: Tensor, input2: Tensor, config: DeployConfig, flatten: bool) -> Tensor:
    """The cost volume ``(B, *patch, *out)`` (``(B, prod(patch), *out)`` flattened) in standard operators."""
    volume, (patch, _) = _volume(input1, input2, config)
    return volume if flatten else volume.unflatten(1, patch)


def correlate_reduce_decomposed(input1: Tensor, input2: Tensor, config: DeployConfig, reduction: str, k: int,
                                temperature: float) -> Tuple[Tensor, Tensor]:
    """A fused reduction's ``(result, displacements)`` (:func:`tiledcorr.library.deploy.correlate_reduce`)
    over the decomposed volume, which the graph holds whole."""
    volume, (patch, dilation_patch) = _volume(input1, input2, config)
    empty = volume.new_empty(0)
    if reduction == "max":
        return volume.amax(1), empty
    if reduction == "argmax":
        return displacements(volume.argmax(1), patch, dilation_patch, 1), empty
    if reduction == "topk":
        values, index = volume.topk(k, 1)
        return values, displacements(index, patch, dilation_patch, 2)
    # softargmax: the softmax's expectation of the displacement table (prod(patch), N).
    axes = [torch.tensor([(j - (P - 1) // 2) * q for j in range(P)], dtype=volume.dtype) for P, q in
            zip(patch, dilation_patch)]
    table = torch.stack([g.reshape(-1) for g in torch.meshgrid(*axes, indexing="ij")], 1).to(volume.device)
    weights = torch.softmax(volume / temperature, 1)
    spatial = "hwd"[: len(patch)]
    return torch.einsum(f"bj{spatial},jn->bn{spatial}", weights, table), empty
