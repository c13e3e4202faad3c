"""Slow, obviously correct float64 references for the layers tiledcorr replaces.

Each function is a direct transcription of a formula in ``docs/semantics.md``
(sections 1-3): loops over displacements and kernel offsets, with every
displacement/offset evaluated as one product of two zero-filled, strided
"views" of the inputs, vectorised over batch, channels and output positions.
Nothing here is clever; nothing here is fast. They exist to test the real
implementations against, and are differentiable by autograd (they are built
from ``torch`` ops on slices), so they also provide reference gradients.

All three compute and return ``float64`` on the device of ``input1``, whatever
the input dtype. They depend on nothing else in tiledcorr on purpose, and
check their arguments only as far as is needed to compute a meaningful answer
(plain ``ValueError``/``TypeError``).

Conventions:
    * :func:`correlate_reference` -- ``spatial_correlation_sampler``: plain sum
      over ``C * prod(kernel_size)`` products, kernel anchored top-left,
      output ``(B, *patch_size, *out_spatial)``.
    * :func:`flownet_reference` -- FlowNet2 ``Correlation``: centred window,
      divided by ``k * k * C``, output ``(B, D*D, oH, oW)``, dy-major.
    * :func:`corrtorch_reference` -- the ``CorrTorch`` pure-PyTorch port: mean
      over channels (= FlowNet2 with ``k=1``), output ``(B, (2md+1)**2, H, W)``.
    * :func:`raft_corr_block_reference` -- RAFT's ``CorrBlock`` (section 5):
      the all-pairs volume divided by ``sqrt(C)``, its pooled pyramid, a
      bilinear look-up around ``coords``; output ``(B, L*(2r+1)**2, H, W)``.
      Unlike the others it computes in the input dtype, as RAFT does, and
      casts the result to float32 (``.float()``) unless it is float64.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["correlate_reference", "flownet_reference", "corrtorch_reference", "raft_corr_block_reference"]

IntOrTuple = Union[int, Sequence[int]]


def _ints(name: str, value: IntOrTuple, n: int, minimum: int) -> tuple[int, ...]:
    """Normalise an int-or-tuple parameter to ``n`` ints, each ``>= minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if isinstance(value, int):
        items = (value,) * n
    else:
        items = tuple(value)
        if len(items) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in items
        ):
            raise TypeError(
                f"{name} must be an int or a tuple of {n} ints, got {value!r}"
            )
    if any(v < minimum for v in items):
        raise ValueError(f"{name} must be >= {minimum} everywhere, got {value!r}")
    return items


def _check_pair(input1: torch.Tensor, input2: torch.Tensor, ndims: Sequence[int]) -> None:
    if input1.dim() not in ndims:
        raise ValueError(
            f"input1 must have {' or '.join(map(str, ndims))} dimensions, "
            f"got shape {tuple(input1.shape)}"
        )
    if input1.shape != input2.shape:
        raise ValueError(
            f"input1 and input2 must have the same shape, got {tuple(input1.shape)} "
            f"and {tuple(input2.shape)}"
        )


def _sample_grid(
    x: torch.Tensor,
    starts: Sequence[int],
    steps: Sequence[int],
    counts: Sequence[int],
) -> torch.Tensor:
    """Sample the spatial dims of ``x`` on a regular grid, zero outside the tensor.

    Args:
        x: tensor of shape ``(B, C, *S)`` with ``N = len(S)`` spatial dims.
        starts: N ints, the (possibly negative) index of the first sample per dim.
        steps: N positive ints, the distance between samples per dim.
        counts: N non-negative ints, the number of samples per dim.

    Returns:
        Tensor of shape ``(B, C, *counts)`` with
        ``out[b, c, t_1, ..., t_N] = x[b, c, starts[d] + steps[d] * t_d ...]``
        where every index is inside ``[0, S_d)``, and ``0`` otherwise.
    """
    spatial = x.shape[2:]
    # How far the grid reaches below 0 and at or above S in each dim.
    lows = [max(0, -s) for s in starts]
    highs = [
        max(0, s + st * (c - 1) + 1 - size) if c > 0 else 0
        for s, st, c, size in zip(starts, steps, counts, spatial)
    ]
    # F.pad takes (low, high) pairs starting from the LAST dimension.
    pad = []
    for lo, hi in zip(reversed(lows), reversed(highs)):
        pad += [lo, hi]
    xp = F.pad(x, pad) if any(pad) else x
    index = [slice(None), slice(None)]
    for s, st, c, lo in zip(starts, steps, counts, lows):
        first = s + lo  # position of the first sample in the padded tensor
        index.append(slice(first, first + st * (c - 1) + 1 if c > 0 else first, st))
    return xp[tuple(index)]


def correlate_reference(
    input1: torch.Tensor,
    input2: torch.Tensor,
    kernel_size: IntOrTuple = 1,
    patch_size: IntOrTuple = 1,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    dilation_patch: IntOrTuple = 1,
) -> torch.Tensor:
    """``spatial_correlation_sampler`` semantics, in float64, for 1-3 spatial dims.

    With ``N`` spatial dims, for every displacement index ``p`` (one per dim,
    ``0 <= p_d < patch_size[d]``) and output position ``o``::

        out[n, *p, *o] = sum_c sum_{i < kernel_size} x1[n, c, *y] * x2[n, c, *(y + s)]
            y_d = o_d * stride[d] - padding[d] + i_d * dilation[d]
            s_d = (p_d - (patch_size[d] - 1) // 2) * dilation_patch[d]

    where a term counts only if both ``y`` and ``y + s`` lie inside the input
    (zero padding). No normalisation; the kernel is anchored at its top-left
    corner; even patch sizes give shifts ``-(P-1)//2 ... P//2`` (times
    ``dilation_patch``). ``padding`` moves the window origin and enlarges the
    output; ``patch_size`` and ``dilation_patch`` do not change the output size.

    Args:
        input1: ``(B, C, *S)`` with ``1 <= len(S) <= 3``, any floating dtype.
        input2: same shape as ``input1``.
        kernel_size: int or N-tuple, >= 1.
        patch_size: int or N-tuple, >= 1 (number of displacements per dim).
        stride: int or N-tuple, >= 1 (subsamples output positions only).
        padding: int or N-tuple, >= 0 (implicit zero padding of both inputs).
        dilation: int or N-tuple, >= 1 (spacing of kernel taps).
        dilation_patch: int or N-tuple, >= 1 (spacing of displacements).

    Returns:
        float64 tensor of shape ``(B, *patch_size, *out)`` where
        ``out[d] = (S[d] + 2*padding[d] - ((kernel_size[d]-1)*dilation[d] + 1))
        // stride[d] + 1`` (clamped at 0). In 2-D: ``(B, PH, PW, oH, oW)``;
        in 3-D: ``(B, PD, PH, PW, oD, oH, oW)``.
    """
    _check_pair(input1, input2, (3, 4, 5))
    n = input1.dim() - 2
    k = _ints("kernel_size", kernel_size, n, 1)
    patch = _ints("patch_size", patch_size, n, 1)
    st = _ints("stride", stride, n, 1)
    pad = _ints("padding", padding, n, 0)
    dil = _ints("dilation", dilation, n, 1)
    dil_p = _ints("dilation_patch", dilation_patch, n, 1)

    x1 = input1.to(torch.float64)
    x2 = input2.to(torch.float64)
    batch = x1.shape[0]
    spatial = x1.shape[2:]
    out_size = [
        max(0, (spatial[d] + 2 * pad[d] - ((k[d] - 1) * dil[d] + 1)) // st[d] + 1)
        for d in range(n)
    ]

    planes = []  # one (B, *out_size) tensor per displacement, row-major order
    for p in itertools.product(*(range(P) for P in patch)):
        shift = [(p[d] - (patch[d] - 1) // 2) * dil_p[d] for d in range(n)]
        acc = x1.new_zeros((batch, *out_size))
        for i in itertools.product(*(range(kd) for kd in k)):
            first = [-pad[d] + i[d] * dil[d] for d in range(n)]  # y for o = 0
            a = _sample_grid(x1, first, st, out_size)
            b = _sample_grid(x2, [first[d] + shift[d] for d in range(n)], st, out_size)
            acc = acc + (a * b).sum(dim=1)
        planes.append(acc)
    return torch.stack(planes, dim=1).reshape(batch, *patch, *out_size)


def flownet_reference(
    input1: torch.Tensor,
    input2: torch.Tensor,
    pad_size: int,
    kernel_size: int,
    max_displacement: int,
    stride1: int,
    stride2: int,
) -> torch.Tensor:
    """FlowNet2 ``Correlation`` semantics, in float64, straight from its formula.

    With ``kr = (k-1)//2``, ``dr = max_displacement // stride2``,
    ``D = 2*dr + 1`` and ``tj, ti in [-dr, dr]`` (``tj`` vertical)::

        out[n, (tj+dr)*D + (ti+dr), oy, ox] = 1/(k*k*C) * sum_c sum_{j,i in [-kr, kr]}
            x1[n, c, cy+j, cx+i] * x2[n, c, cy+j+tj*stride2, cx+i+ti*stride2]
        cy = oy*stride1 + max_displacement - pad_size   (cx likewise)

    with ``x1``, ``x2`` zero outside ``[0,H) x [0,W)``. The window is centred
    and the sum is divided by ``k*k*C``. (For an even ``k`` the formula is
    followed literally: a ``k-1`` wide window, still divided by ``k*k*C``.)
    ``corr_multiply`` of the original has no effect and is not a parameter.

    Args:
        input1: ``(B, C, H, W)``, any floating dtype.
        input2: same shape as ``input1``.
        pad_size: int >= 0.
        kernel_size: int >= 1.
        max_displacement: int >= 0.
        stride1: int >= 1, output subsampling.
        stride2: int >= 1, displacement spacing.

    Returns:
        float64 tensor ``(B, D*D, oH, oW)`` with
        ``oH = ceil((H + 2*pad_size - 2*(kr + max_displacement)) / stride1)``
        (likewise ``oW``, clamped at 0). Channels are dy-major.
    """
    _check_pair(input1, input2, (4,))
    (pad,) = _ints("pad_size", pad_size, 1, 0)
    (k,) = _ints("kernel_size", kernel_size, 1, 1)
    (md,) = _ints("max_displacement", max_displacement, 1, 0)
    (s1,) = _ints("stride1", stride1, 1, 1)
    (s2,) = _ints("stride2", stride2, 1, 1)

    x1 = input1.to(torch.float64)
    x2 = input2.to(torch.float64)
    batch, channels, height, width = x1.shape
    kr = (k - 1) // 2
    border = kr + md
    dr = md // s2
    o_h = max(0, math.ceil((height + 2 * pad - 2 * border) / s1))
    o_w = max(0, math.ceil((width + 2 * pad - 2 * border) / s1))
    c0 = md - pad  # cy (and cx) for oy = 0

    planes = []  # index (tj+dr)*D + (ti+dr): tj outer loop = dy-major
    for tj in range(-dr, dr + 1):
        for ti in range(-dr, dr + 1):
            acc = x1.new_zeros((batch, o_h, o_w))
            for j in range(-kr, kr + 1):
                for i in range(-kr, kr + 1):
                    a = _sample_grid(x1, [c0 + j, c0 + i], [s1, s1], [o_h, o_w])
                    b = _sample_grid(
                        x2,
                        [c0 + j + tj * s2, c0 + i + ti * s2],
                        [s1, s1],
                        [o_h, o_w],
                    )
                    acc = acc + (a * b).sum(dim=1)
            planes.append(acc / (k * k * channels))
    return torch.stack(planes, dim=1)


def corrtorch_reference(
    input1: torch.Tensor,
    input2: torch.Tensor,
    pad_size: int = 4,
    max_displacement: int = 4,
) -> torch.Tensor:
    """``CorrTorch`` semantics (the limacv "CorrelationLayer" port), in float64.

    ``input2`` is zero-padded by ``pad_size`` on every side; for every shift
    ``(dy, dx)`` in ``[0, 2*max_displacement]^2``, dy-major, the output channel
    is the mean over channels of ``input1 * input2_padded[:, :, dy:dy+H, dx:dx+W]``.
    The original asserts ``kernel_size == 1``, ``stride1 == stride2 == 1`` and
    ``pad_size == max_displacement`` (so only the last is a parameter here, and
    it is enforced); this is then FlowNet2 with ``k=1``.

    Args:
        input1: ``(B, C, H, W)``, any floating dtype.
        input2: same shape as ``input1``.
        pad_size: int, must equal ``max_displacement``.
        max_displacement: int >= 0.

    Returns:
        float64 tensor ``(B, (2*max_displacement + 1)**2, H, W)``; channel
        ``dy*(2md+1) + dx`` holds displacement ``(dy - md, dx - md)``.
    """
    _check_pair(input1, input2, (4,))
    (md,) = _ints("max_displacement", max_displacement, 1, 0)
    (pad,) = _ints("pad_size", pad_size, 1, 0)
    if pad != md:
        raise ValueError(
            f"CorrTorch requires pad_size == max_displacement, got pad_size={pad} "
            f"and max_displacement={md}"
        )
    x1 = input1.to(torch.float64)
    x2 = F.pad(input2.to(torch.float64), [pad, pad, pad, pad])
    height, width = x1.shape[2:]
    planes = []
    for dy in range(2 * md + 1):
        for dx in range(2 * md + 1):
            shifted = x2[:, :, dy : dy + height, dx : dx + width]
            planes.append((x1 * shifted).mean(dim=1))
    return torch.stack(planes, dim=1)


def raft_corr_block_reference(
    fmap1: torch.Tensor,
    fmap2: torch.Tensor,
    coords: torch.Tensor,
    num_levels: int = 4,
    radius: int = 4,
) -> torch.Tensor:
    """RAFT's ``CorrBlock(fmap1, fmap2, num_levels, radius)(coords)``, the all-pairs way.

    A transcription of princeton-vl/RAFT ``core/corr.py`` (semantics.md section 5):

    * the all-pairs volume ``corr[b, h, w, y, x] = sum_c fmap1[b, c, h, w] *
      fmap2[b, c, y, x] / sqrt(C)``, viewed as ``B*H*W`` images of size (H, W);
    * a pyramid of ``num_levels`` levels, each ``avg_pool2d(previous, 2, stride=2)``;
    * at level ``i``, window point ``(a, b)`` (``0 <= a, b <= 2r``) is sampled at
      ``(x, y) = (coords_x / 2**i + a - r, coords_y / 2**i + b - r)`` with
      ``grid_sample(align_corners=True)`` (zeros outside); the FIRST window
      index moves x (RAFT adds ``stack(meshgrid(dy, dx))`` to ``(x, y)``) and
      the channel is ``a*(2r+1) + b``;
    * the levels concatenated along channels, contiguous, ``.float()``.

    It builds ``B * (H*W)**2`` numbers: tiny inputs only (tests, profiling).
    Like RAFT, a level of height or width 1 divides by zero in the coordinate
    normalisation (NaN), and a level of size 0 makes ``avg_pool2d`` raise.

    Args:
        fmap1: ``(B, C, H, W)``, floating.
        fmap2: same shape and dtype as ``fmap1``.
        coords: ``(B, 2, H, W)`` pixel positions in fmap2, channel 0 = x, 1 = y.
        num_levels: pyramid levels, >= 1.
        radius: window radius ``r`` >= 0.

    Returns:
        ``(B, num_levels*(2r+1)**2, H, W)``: float64 for float64 input, else
        float32 (computed in the input dtype, then cast, as RAFT does).
    """
    _check_pair(fmap1, fmap2, (4,))
    (levels,) = _ints("num_levels", num_levels, 1, 1)
    (r,) = _ints("radius", radius, 1, 0)
    batch, dim, ht, wd = fmap1.shape
    if tuple(coords.shape) != (batch, 2, ht, wd):
        raise ValueError(f"coords must have shape {(batch, 2, ht, wd)}, got {tuple(coords.shape)}")

    # CorrBlock.corr: (B, H, W, 1, H, W), divided by sqrt(C)
    corr = torch.matmul(fmap1.reshape(batch, dim, ht * wd).transpose(1, 2), fmap2.reshape(batch, dim, ht * wd))
    corr = corr.view(batch, ht, wd, 1, ht, wd) / math.sqrt(dim)
    corr = corr.reshape(batch * ht * wd, 1, ht, wd)
    pyramid = [corr]
    for _ in range(levels - 1):
        corr = F.avg_pool2d(corr, 2, stride=2)
        pyramid.append(corr)

    # CorrBlock.__call__
    xy = coords.permute(0, 2, 3, 1).to(corr.dtype)  # (B, H, W, 2)
    d = torch.linspace(-r, r, 2 * r + 1, dtype=corr.dtype, device=corr.device)
    dy, dx = d, d
    delta = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1)  # (2r+1, 2r+1, 2): delta[a, b] = (d[a], d[b])
    out_pyramid = []
    for i, level in enumerate(pyramid):
        centroid = xy.reshape(batch * ht * wd, 1, 1, 2) / 2**i
        grid = centroid + delta.view(1, 2 * r + 1, 2 * r + 1, 2)  # [..., 0] = x + d[a], [..., 1] = y + d[b]
        # bilinear_sampler: normalise pixel coordinates to [-1, 1] for align_corners=True
        h, w = level.shape[-2:]
        xgrid, ygrid = grid.split([1, 1], dim=-1)
        grid = torch.cat([2 * xgrid / (w - 1) - 1, 2 * ygrid / (h - 1) - 1], dim=-1)
        sampled = F.grid_sample(level, grid, align_corners=True)  # (B*H*W, 1, 2r+1, 2r+1)
        out_pyramid.append(sampled.view(batch, ht, wd, -1))
    out = torch.cat(out_pyramid, dim=-1).permute(0, 3, 1, 2).contiguous()
    return out if out.dtype == torch.float64 else out.float()
