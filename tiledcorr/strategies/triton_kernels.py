"""Fused Triton kernels for the 2-D, kernel-size-1 correlation: volume, gradients, reductions.

Every kernel works on one *block*: one batch item ``b``, one output row ``h``
and ``BW`` output columns ``w`` that share one input2 lattice (see
:mod:`tiledcorr.geometry`, "Tiles"): with ``g = gcd(sW, dpW)``,
``t = dpW / g`` and ``m = sW / g``, the columns ``w = r + t*(a0 + i)``
(``i < BW``) and the horizontal displacements ``pw = pw0 + q`` (``q < BP``)
read input2 at ``base + (i*m + q) * dpW``: a dense region of ``BR >= (BW-1)*m + BP``
lattice points. For one vertical displacement ``ph`` the block's products are
one matrix product over channels, accumulated in fp32 with ``tl.dot``::

    Y[i, u] = sum_c x1[b, c, y, x_i] * x2[b, c, y + dy, base + u*dpW]      (BW x BR)

and ``out[b, ph, pw0 + q, h, w_i] = scale * Y[i, i*m + q]``: the kernels read
the volume off Y's "diagonal band" (``0 <= u - i*m < BP``) with masks, so no
product is stored twice and nothing is gathered or copied. Zero padding is a
masked load (zeros outside the image), which makes every out-of-image term
exactly 0, as ``spatial_correlation_sampler`` defines it.

* :func:`volume_forward`: grid over ``(h, ph, pw-block, w-block) x B``; each
  program stores its band of the volume in the input dtype.
* :func:`volume_backward`: the same grid; the band of ``grad_out`` is gathered
  into G (``BW x BR``, zeros off the band), then per channel block
  ``grad1 += X2 @ G^T`` and ``grad2 += X1 @ G`` with ``tl.atomic_add``
  (programs of neighbouring displacements and columns overlap).
* :func:`reduce_forward`: grid over ``(h, w-block) x B``; each program loops
  over every displacement and folds each Y band into a running top-k of
  packed (value, index) keys ("max"/"argmax" are top-1) or an online softmax
  ("softargmax"), then stores ``B x (1|k|2) x oH x oW`` results only.
* :func:`reduce_backward`: "max"/"topk" gather input2/input1 at the selected
  displacement (no matrix product); "softargmax" recomputes each Y band, forms
  ``dL/dv = p (g . (d - E)) / T`` and reuses the volume backward's products.

Numerics: float16/bfloat16 operands go to the tensor cores, with fp32
accumulation; the volume is stored in the input dtype, reductions and input
gradients in float32. float32 operands use ``input_precision="ieee"`` unless
the user allows TF32 globally (``torch.backends.cuda.matmul.allow_tf32`` or
``torch.set_float32_matmul_precision`` other than "highest"), as matmul does.
The gradient products round G to the input dtype for float16/bfloat16 (as a
half matmul's backward does). float64, kernel_size > 1 and 3-D volumes are
refused (:func:`supports`); the PyTorch strategies handle them. Inputs are
assumed finite (the caller routes NaN/Inf to the exact path).

Limits: every per-batch-item extent (``C*H*W``, ``PH*PW*oH*oW``) must fit in
int32 (batch and displacement offsets are int64); ``sW / gcd(sW, dpW) <= 8``
(the widest lattice step a 16 x 128 block holds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import triton
import triton.language as tl

__all__ = [
    "BLOCK_CONFIGS",
    "BlockConfig",
    "choose_config",
    "reduce_backward",
    "reduce_forward",
    "reduction_supported",
    "supports",
    "volume_backward",
    "volume_forward",
    "workspace_bytes",
]

_HALF = (torch.float16, torch.bfloat16)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_REDUCTIONS = ("max", "argmax", "topk", "softargmax")
_INT32_MAX = 2**31 - 1
#: Key below every real packed (value, index) key: its high word is below
#: every ordered float32 (the lowest real one, -inf, is -2**31 + 2**23 + ...).
_NO_KEY = tl.constexpr(-(2**63) + 1)
_SELECT_BW = 32  # output columns per program of the max/top-k backward (no tl.dot)
_SELECT_BC = 16  # channels per step there


@dataclass(frozen=True)
class BlockConfig:
    """One shipped block shape and its compile options.

    Attributes:
        bw: output columns per program (the M of the forward ``tl.dot``), a power of two >= 16.
        br: input2 lattice points per region (its N), a power of two >= 16.
        bc: channels per ``tl.dot`` step (its K), >= 16.
        num_warps: warps per program.
        num_stages: software-pipelining stages of the channel loops (shared memory grows with them).
    """

    bw: int
    br: int
    bc: int = 32
    num_warps: int = 4
    num_stages: int = 3

    def displacements_per_block(self, patch_w: int, m: int) -> int:
        """``BP``: horizontal displacements one region holds (< 1: the lattice step is too wide)."""
        return min(patch_w, self.br - (self.bw - 1) * m)


_HALF_CONFIGS: tuple[BlockConfig, ...] = (
    BlockConfig(16, 32, num_warps=8),
    BlockConfig(16, 64, num_warps=8),
    BlockConfig(32, 64, num_warps=8),
    BlockConfig(16, 128, num_warps=8),
    BlockConfig(32, 128, num_warps=16),
    BlockConfig(64, 128, num_warps=16),
)
_FLOAT_CONFIGS: tuple[BlockConfig, ...] = (
    BlockConfig(16, 32, num_warps=4, num_stages=2),
    BlockConfig(16, 64, bc=16, num_warps=8),
    BlockConfig(32, 64, num_warps=8),
    BlockConfig(16, 128, num_warps=8, num_stages=2),
)

#: The block configs shipped per input dtype, every one compiled by the
#: ahead-of-time tests (tests/test_triton_aot.py, profiling/triton_resources.py).
#: :func:`choose_config` picks one per geometry by a fixed rule (no autotuning:
#: autotuning needs a GPU and a synchronising benchmark at the first call).
#: Each entry is where ptxas (triton 3.6) keeps every kernel free of spills on
#: sm_90 and the shared memory within every target's (99 KB on sm_86/89):
#:
#: * float16/bfloat16: 8 warps, and 16 for the 4096-entry tiles (4 warps spill
#:   the backward's band tiles, 32 warps cap registers at 64).
#: * float32: no 32 x 128 or 64 x 128 block (their reductions spill at any warp
#:   count, channel block and stage count tried, and 64 x 128 needs up to 131 KB
#:   of shared memory); 16 x 128 holds the same displacements per region with
#:   less padding, so the rule never prefers them on work. Smaller tiles take
#:   fewer warps/stages or a 16-channel step where that removes the spills.
#:
#: A 16 x 256 block spilled at any warp count, so the widest lattice step is 8
#: (a 16 x 128 block).
BLOCK_CONFIGS: dict[torch.dtype, tuple[BlockConfig, ...]] = {
    torch.float16: _HALF_CONFIGS,
    torch.bfloat16: _HALF_CONFIGS,
    torch.float32: _FLOAT_CONFIGS,
}


def choose_config(patch_w: int, stride_w: int, dilation_patch_w: int,
                  dtype: torch.dtype = torch.float16) -> BlockConfig:
    """The shipped block for one geometry and dtype: least padded tensor-core work, then the widest.

    Per output column and vertical displacement a config computes
    ``ceil(PW / BP) * BR`` products per channel, of which ``PW`` are used; the
    rule takes the config of ``BLOCK_CONFIGS[dtype]`` minimising that, and
    among equals the largest ``BW`` (fewer programs, more reuse of each input1 tile).

    Raises:
        ValueError: the lattice step ``m = sW / gcd(sW, dpW)`` is wider than
            every config holds (see :func:`supports`), or ``dtype`` is not shipped.
    """
    if dtype not in BLOCK_CONFIGS:
        raise ValueError(f"dtype must be one of {tuple(BLOCK_CONFIGS)}, got {dtype}")
    m = stride_w // math.gcd(stride_w, dilation_patch_w)
    best = None
    for cfg in BLOCK_CONFIGS[dtype]:
        bp = cfg.displacements_per_block(patch_w, m)
        if bp < 1:
            continue
        key = (-(-patch_w // bp) * cfg.br, -cfg.bw)
        if best is None or key < best[0]:
            best = (key, cfg)
    if best is None:
        raise ValueError(
            f"stride {stride_w} with dilation_patch {dilation_patch_w} (lattice step {m}) is wider "
            f"than the Triton blocks hold (lattice step <= {_max_lattice_step()})"
        )
    return best[1]


def _max_lattice_step() -> int:
    """The widest lattice step every dtype's configs hold (the same for all of them)."""
    return min(max((c.br - 1) // (c.bw - 1) for c in configs) for configs in BLOCK_CONFIGS.values())


def _interpreting() -> bool:
    """Whether this module's kernels run in the Triton interpreter (decided when ``triton.jit`` ran)."""
    return _INTERPRETED


def supports(
    *,
    ndim: int,
    kernel: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    stride: Sequence[int] | None = None,
    dilation_patch: Sequence[int] | None = None,
) -> str | None:
    """Whether the kernels can run a problem: ``None``, or a short reason they cannot.

    Args:
        ndim: number of spatial dimensions.
        kernel: the kernel size per dimension.
        dtype: the input dtype.
        device: the input device.
        stride, dilation_patch: optional, per dimension; given, the lattice
            step of the last dimension is checked too.
    """
    if ndim != 2:
        return "3-D volumes" if ndim == 3 else f"{ndim}-D inputs"
    if any(k != 1 for k in kernel):
        return "kernel_size > 1"
    if dtype not in _DTYPES:
        return "float64" if dtype == torch.float64 else f"dtype {dtype}"
    if torch.device(device).type != "cuda" and not _interpreting():
        return "CPU tensors without TRITON_INTERPRET=1"
    if stride is not None and dilation_patch is not None:
        m = stride[-1] // math.gcd(stride[-1], dilation_patch[-1])
        if m > _max_lattice_step():
            return f"stride/gcd(stride, dilation_patch) = {m} > {_max_lattice_step()} along the width"
    return None


def reduction_supported(reduction: str) -> str | None:
    """``None`` for the reductions the kernels fuse (all four), else a reason."""
    return None if reduction in _REDUCTIONS else f"reduction {reduction!r}"


def workspace_bytes(**_geometry) -> int:
    """Bytes the kernels allocate besides their outputs: none (every sum stays on chip)."""
    return 0


# --------------------------------------------------------------------------- host-side geometry


@dataclass(frozen=True)
class _Launch:
    """Everything a kernel launch needs, from shapes only (no device sync)."""

    B: int
    C: int
    H: int
    W: int
    oH: int
    oW: int
    PH: int
    PW: int
    sH: int
    sW: int
    pH: int
    pW: int
    dpH: int
    dpW: int
    t: int  # lattice residues along the width
    m: int  # region step per output column
    n_wb: int  # column blocks (all residues)
    n_pb: int  # horizontal displacement blocks
    bp: int  # horizontal displacements per block
    cfg: BlockConfig
    precision: str
    upcast: bool

    def geometry_args(self) -> tuple[int, ...]:
        return (self.C, self.H, self.W, self.oH, self.oW, self.PH, self.PW, self.sH, self.sW,
                self.pH, self.pW, self.dpH, self.dpW, self.t, self.m, self.n_wb, self.n_pb, self.bp)

    def meta(self) -> dict:
        return dict(BW=self.cfg.bw, BR=self.cfg.br, BC=self.cfg.bc, PRECISION=self.precision,
                    UPCAST=self.upcast, num_warps=self.cfg.num_warps, num_stages=self.cfg.num_stages)


def _pair(name: str, value) -> tuple[int, int]:
    items = (value, value) if isinstance(value, int) else tuple(value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {value!r}")
    return int(items[0]), int(items[1])


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot``: "tf32" for float32 only where the user allows TF32 globally."""
    if dtype == torch.float32 and (
        torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    ):
        return "tf32"
    return "ieee"


def _launch(x1: torch.Tensor, patch, stride, padding, dilation_patch, config: BlockConfig | None = None) -> _Launch:
    B, C, H, W = x1.shape
    PH, PW = _pair("patch", patch)
    sH, sW = _pair("stride", stride)
    pH, pW = _pair("padding", padding)
    dpH, dpW = _pair("dilation_patch", dilation_patch)
    oH = max(0, (H + 2 * pH - 1) // sH + 1)
    oW = max(0, (W + 2 * pW - 1) // sW + 1)
    if max(C * H * W, PH * PW * oH * oW) > _INT32_MAX:
        raise ValueError(
            f"per-batch-item sizes C*H*W = {C * H * W} and PH*PW*oH*oW = {PH * PW * oH * oW} "
            f"must fit in int32 for the Triton kernels"
        )
    g = math.gcd(sW, dpW)
    t, m = dpW // g, sW // g
    cfg = choose_config(PW, sW, dpW, x1.dtype) if config is None else config
    bp = cfg.displacements_per_block(PW, m)
    if bp < 1:
        raise ValueError(f"config {config} cannot hold lattice step {m} (stride {sW}, dilation_patch {dpW})")
    per_residue = -(-oW // t)
    n_wb = t * -(-per_residue // cfg.bw)
    return _Launch(B, C, H, W, oH, oW, PH, PW, sH, sW, pH, pW, dpH, dpW, t, m, n_wb, -(-PW // bp), bp, cfg,
                   dot_precision(x1.dtype), _interpreting() and x1.dtype == torch.bfloat16)


def _same_layout(x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs with one set of strides (the kernels take one)."""
    if x1.stride() != x2.stride():
        x1, x2 = x1.contiguous(), x2.contiguous()
    return x1, x2


def _check_buffer(name: str, buf: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    if buf is None:
        return
    if tuple(buf.shape) != shape or buf.dtype != torch.float32 or not buf.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous float32 tensor of shape {shape}, got "
            f"{buf.dtype} {tuple(buf.shape)} (contiguous={buf.is_contiguous()})"
        )


# --------------------------------------------------------------------------- device helpers


# Row reductions through tl.reduce with the standard library's own combine
# functions, not tl.max / tl.sum / tl.zeros: those are @triton.jit functions of
# triton's standard library, interpretable only if TRITON_INTERPRET=1 was set
# before triton was first imported, whereas tl.reduce is a builtin (see
# tests/triton_support.py). The interpreter recognises these two combine
# functions and reduces with numpy; compiled, this is exactly tl.max / tl.sum.


@triton.jit
def _row_max(x):
    return tl.reduce(x, 1, tl.standard._elementwise_max)


@triton.jit
def _row_sum(x):
    return tl.reduce(x, 1, tl.standard._sum_combine)


@triton.jit
def _block(wb, h, ph, pb, H, W, oW, PH, PW, sH, sW, pH, pW, dpH, dpW, t, m, BP,
           BW: tl.constexpr, BR: tl.constexpr):
    """Coordinates of one block (columns ``w``, region ``col2``) and its masks.

    Returns ``w, y, x1c, x1ok`` (``[BW]``: output columns, input1 row and
    columns, in-image and in-output), ``y2, col2, regok`` (input2 row, region
    columns ``[BR]`` and their in-image mask), ``pw`` ``[BW, BR]`` (the
    horizontal displacement index of each Y entry) and ``band`` (Y entries that
    are volume entries of this block).
    """
    r = wb % t
    a0 = (wb // t) * BW
    i = tl.arange(0, BW)
    u = tl.arange(0, BR)
    w = r + t * (a0 + i)
    y = h * sH - pH
    x1c = w * sW - pW
    x1ok = (w < oW) & (x1c >= 0) & (x1c < W) & (y >= 0) & (y < H)
    pw0 = pb * BP
    y2 = y + (ph - (PH - 1) // 2) * dpH
    col2 = r * sW - pW + dpW * (m * a0 + pw0 - (PW - 1) // 2) + dpW * u
    regok = (col2 >= 0) & (col2 < W) & (y2 >= 0) & (y2 < H) & (u < (BW - 1) * m + BP)
    q = u[None, :] - i[:, None] * m
    band = (q >= 0) & (q < BP) & (pw0 + q < PW)
    return w, y, x1c, x1ok, y2, col2, regok, pw0 + q, band


@triton.jit
def _decode(pid, n_wb, n_pb, PH):
    """Program id -> (column block, displacement block, ph, h), column block fastest."""
    wb = pid % n_wb
    rest = pid // n_wb
    pb = rest % n_pb
    rest = rest // n_pb
    return wb, pb, rest % PH, rest // PH


@triton.jit
def _correlate_band(x1b, x2b, sxc, sxh, sxw, C, y, x1c, x1ok, y2, col2, regok,
                    BW: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``Y = X1^T X2`` over all channels, ``[BW, BR]`` fp32 (zeros where a term is out of the image)."""
    acc = tl.full((BW, BR), 0.0, tl.float32)
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cm = c < C
        a = tl.load(x1b + c[None, :] * sxc + y * sxh + x1c[:, None] * sxw,
                    mask=x1ok[:, None] & cm[None, :], other=0.0)
        b = tl.load(x2b + c[:, None] * sxc + y2 * sxh + col2[None, :] * sxw,
                    mask=cm[:, None] & regok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _scatter_gradients(x1b, x2b, g1b, g2b, G, sxc, sxh, sxw, C, H, W, y, x1c, x1ok, y2, col2, regok, post,
                       HAS_G1: tl.constexpr, HAS_G2: tl.constexpr,
                       BW: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Add ``post * X2 G^T`` to grad1 and ``post * X1 G`` to grad2 (contiguous fp32), channel block by block.

    ``G`` is ``[BW, BR]`` ``dL/dv`` on the block's band (zeros elsewhere), in
    the dot operand dtype.
    """
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cm = c < C
        if HAS_G1:
            b = tl.load(x2b + c[:, None] * sxc + y2 * sxh + col2[None, :] * sxw,
                        mask=cm[:, None] & regok[None, :], other=0.0)
            if UPCAST:
                b = b.to(tl.float32)
            g1 = tl.dot(b, tl.trans(G), input_precision=PRECISION)  # [BC, BW]
            tl.atomic_add(g1b + c[:, None] * (H * W) + y * W + x1c[None, :], g1 * post,
                          mask=cm[:, None] & x1ok[None, :], sem="relaxed")
        if HAS_G2:
            a = tl.load(x1b + c[:, None] * sxc + y * sxh + x1c[None, :] * sxw,
                        mask=cm[:, None] & x1ok[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
            g2 = tl.dot(a, G, input_precision=PRECISION)  # [BC, BR]
            tl.atomic_add(g2b + c[:, None] * (H * W) + y2 * W + col2[None, :], g2 * post,
                          mask=cm[:, None] & regok[None, :], sem="relaxed")


@triton.jit
def _ordered_key(v, j):
    """Pack fp32 values and int32 indices into int64 keys: larger value first, then lower index."""
    v = tl.where(v == 0.0, 0.0, v)  # -0.0 and 0.0 are one value
    bits = v.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | (0x7FFFFFFF - j).to(tl.int64)


@triton.jit
def _key_value(key):
    ordered = (key >> 32).to(tl.int32)
    bits = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _key_index(key):
    return 0x7FFFFFFF - (key - ((key >> 32) << 32))


# --------------------------------------------------------------------------- kernels


@triton.jit
def _volume_fwd_kernel(x1, x2, out, sx0, sxc, sxh, sxw, so0, so1, so2, so3, so4,
                       C, H, W, oH, oW, PH, PW, sH, sW, pH, pW, dpH, dpW, t, m, n_wb, n_pb, BP, scale,
                       BW: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    wb, pb, ph, h = _decode(tl.program_id(0), n_wb, n_pb, PH)
    b = tl.program_id(1).to(tl.int64)
    w, y, x1c, x1ok, y2, col2, regok, pw, band = _block(wb, h, ph, pb, H, W, oW, PH, PW, sH, sW, pH, pW,
                                                        dpH, dpW, t, m, BP, BW, BR)
    acc = _correlate_band(x1 + b * sx0, x2 + b * sx0, sxc, sxh, sxw, C, y, x1c, x1ok, y2, col2, regok,
                          BW, BR, BC, PRECISION, UPCAST)
    base = out + b * so0 + ph.to(tl.int64) * so1 + h.to(tl.int64) * so3
    tl.store(base + pw * so2 + w[:, None] * so4, (acc * scale).to(out.dtype.element_ty),
             mask=band & (w < oW)[:, None])


@triton.jit
def _dense_bwd_kernel(gout, x1, x2, g1, g2, E, mx, zn, sx0, sxc, sxh, sxw, so0, so1, so2, so3, so4,
                      C, H, W, oH, oW, PH, PW, sH, sW, pH, pW, dpH, dpW, t, m, n_wb, n_pb, BP, scale, inv_t,
                      SOFT: tl.constexpr, HAS_G1: tl.constexpr, HAS_G2: tl.constexpr,
                      BW: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                      PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Input gradients from the band gradient of one block.

    ``SOFT=False``: the band gradient is ``grad_out`` (the volume's, strides
    ``so*``). ``SOFT=True``: it is the soft-argmax's ``p (g . (d - E)) / T``,
    with ``gout`` the gradient of E ``(B, 2, oH, oW)`` and ``E``, ``mx``, ``zn``
    the forward's results, all contiguous; Y is recomputed.
    """
    wb, pb, ph, h = _decode(tl.program_id(0), n_wb, n_pb, PH)
    b = tl.program_id(1).to(tl.int64)
    w, y, x1c, x1ok, y2, col2, regok, pw, band = _block(wb, h, ph, pb, H, W, oW, PH, PW, sH, sW, pH, pW,
                                                        dpH, dpW, t, m, BP, BW, BR)
    keep = band & (w < oW)[:, None]
    x1b = x1 + b * sx0
    x2b = x2 + b * sx0
    if SOFT:
        acc = _correlate_band(x1b, x2b, sxc, sxh, sxw, C, y, x1c, x1ok, y2, col2, regok,
                              BW, BR, BC, PRECISION, UPCAST)
        pos = b * (oH * oW) + h * oW + w  # [BW] into (B, oH, oW)
        wok = w < oW
        mrow = tl.load(mx + pos, mask=wok, other=0.0)
        zrow = tl.load(zn + pos, mask=wok, other=1.0)
        ey = tl.load(E + pos + b * (oH * oW), mask=wok, other=0.0)
        ex = tl.load(E + pos + (b + 1) * (oH * oW), mask=wok, other=0.0)
        gy = tl.load(gout + pos + b * (oH * oW), mask=wok, other=0.0).to(tl.float32)
        gx = tl.load(gout + pos + (b + 1) * (oH * oW), mask=wok, other=0.0).to(tl.float32)
        p = tl.exp(acc * (scale * inv_t) - mrow[:, None]) / zrow[:, None]
        dy = ((ph - (PH - 1) // 2) * dpH).to(tl.float32)
        dx = ((pw - (PW - 1) // 2) * dpW).to(tl.float32)
        weight = gy[:, None] * (dy - ey[:, None]) + gx[:, None] * (dx - ex[:, None])
        G = tl.where(keep, p * weight * inv_t, 0.0)
    else:
        base = gout + b * so0 + ph.to(tl.int64) * so1 + h.to(tl.int64) * so3
        G = tl.load(base + pw * so2 + w[:, None] * so4, mask=keep, other=0.0)
    if UPCAST:
        G = G.to(tl.float32)
    else:
        G = G.to(x1.dtype.element_ty)
    plane = b * C * H * W
    _scatter_gradients(x1b, x2b, g1 + plane, g2 + plane, G, sxc, sxh, sxw, C, H, W, y, x1c, x1ok,
                       y2, col2, regok, scale, HAS_G1, HAS_G2, BW, BR, BC, PRECISION, UPCAST)


@triton.jit
def _select_fwd_kernel(x1, x2, values, index, sx0, sxc, sxh, sxw,
                       C, H, W, oH, oW, PH, PW, sH, sW, pH, pW, dpH, dpW, t, m, n_wb, n_pb, BP, scale, K,
                       KP: tl.constexpr, BW: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Top-``K`` values and flat indices per output position (``K = 1``: max/argmax).

    Keys are unique per displacement, so each of ``K`` extraction steps takes
    the largest of the running top-K and the band and removes it from both.
    """
    pid = tl.program_id(0)
    wb = pid % n_wb
    h = pid // n_wb
    b = tl.program_id(1).to(tl.int64)
    col = tl.arange(0, KP)[None, :]
    top = tl.full((BW, KP), _NO_KEY, tl.int64)
    for ph in range(PH):
        for pb in range(n_pb):
            w, y, x1c, x1ok, y2, col2, regok, pw, band = _block(wb, h, ph, pb, H, W, oW, PH, PW, sH, sW, pH, pW,
                                                                dpH, dpW, t, m, BP, BW, BR)
            acc = _correlate_band(x1 + b * sx0, x2 + b * sx0, sxc, sxh, sxw, C, y, x1c, x1ok, y2, col2, regok,
                                  BW, BR, BC, PRECISION, UPCAST)
            cand = tl.where(band, _ordered_key(acc * scale, ph * PW + pw), _NO_KEY)
            merged = tl.full((BW, KP), _NO_KEY, tl.int64)
            for s in range(K):
                best = tl.maximum(_row_max(cand), _row_max(top))[:, None]
                merged = tl.where(col == s, best, merged)
                cand = tl.where(cand == best, _NO_KEY, cand)
                top = tl.where(top == best, _NO_KEY, top)
            top = merged
    w = (wb % t) + t * ((wb // t) * BW + tl.arange(0, BW))
    where = b * K * (oH * oW) + col * (oH * oW) + h * oW + w[:, None]
    ok = (col < K) & (w < oW)[:, None]
    tl.store(values + where, _key_value(top), mask=ok)
    tl.store(index + where, _key_index(top), mask=ok)


@triton.jit
def _softargmax_fwd_kernel(x1, x2, E, mx, zn, sx0, sxc, sxh, sxw,
                           C, H, W, oH, oW, PH, PW, sH, sW, pH, pW, dpH, dpW, t, m, n_wb, n_pb, BP, scale, inv_t,
                           BW: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
                           PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Online softmax of ``v / T`` over displacements; ``E = sum p_j (dy_j, dx_j)``, and its max and normaliser."""
    pid = tl.program_id(0)
    wb = pid % n_wb
    h = pid // n_wb
    b = tl.program_id(1).to(tl.int64)
    run_m = tl.full((BW,), float("-inf"), tl.float32)
    run_z = tl.full((BW,), 0.0, tl.float32)
    run_y = tl.full((BW,), 0.0, tl.float32)
    run_x = tl.full((BW,), 0.0, tl.float32)
    for ph in range(PH):
        dy = ((ph - (PH - 1) // 2) * dpH).to(tl.float32)
        for pb in range(n_pb):
            w, y, x1c, x1ok, y2, col2, regok, pw, band = _block(wb, h, ph, pb, H, W, oW, PH, PW, sH, sW, pH, pW,
                                                                dpH, dpW, t, m, BP, BW, BR)
            acc = _correlate_band(x1 + b * sx0, x2 + b * sx0, sxc, sxh, sxw, C, y, x1c, x1ok, y2, col2, regok,
                                  BW, BR, BC, PRECISION, UPCAST)
            # Every row has BP >= 1 band entries, so new_m is finite from the first block on.
            logits = tl.where(band, acc * (scale * inv_t), float("-inf"))
            new_m = tl.maximum(run_m, _row_max(logits))
            alpha = tl.exp(run_m - new_m)
            e = tl.exp(logits - new_m[:, None])
            dx = ((pw - (PW - 1) // 2) * dpW).to(tl.float32)
            ez = _row_sum(e)
            run_z = run_z * alpha + ez
            run_y = run_y * alpha + ez * dy
            run_x = run_x * alpha + _row_sum(e * dx)
            run_m = new_m
    w = (wb % t) + t * ((wb // t) * BW + tl.arange(0, BW))
    ok = w < oW
    pos = b * (oH * oW) + h * oW + w
    tl.store(E + pos + b * (oH * oW), run_y / run_z, mask=ok)
    tl.store(E + pos + (b + 1) * (oH * oW), run_x / run_z, mask=ok)
    tl.store(mx + pos, run_m, mask=ok)
    tl.store(zn + pos, run_z, mask=ok)


@triton.jit
def _select_bwd_kernel(grad, index, x1, x2, g1, g2, sx0, sxc, sxh, sxw,
                       C, H, W, oH, oW, PH, PW, sH, sW, pH, pW, dpH, dpW, n_wb, scale, K,
                       HAS_G1: tl.constexpr, HAS_G2: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr):
    """Input gradients of selected values: each goes to its own displacement (a gather, no product).

    ``grad``/``index`` are contiguous ``(B, K, oH, oW)``. A program owns the
    input1 positions of its output positions, so grad1 needs no atomics.
    """
    pid = tl.program_id(0)
    wb = pid % n_wb
    h = pid // n_wb
    b = tl.program_id(1).to(tl.int64)
    w = wb * BW + tl.arange(0, BW)
    wok = w < oW
    y = h * sH - pH
    x1c = w * sW - pW
    x1ok = wok & (x1c >= 0) & (x1c < W) & (y >= 0) & (y < H)
    x1b = x1 + b * sx0
    x2b = x2 + b * sx0
    plane = b * C * H * W
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cm = c < C
        acc = tl.full((BC, BW), 0.0, tl.float32)
        if HAS_G2:
            a = tl.load(x1b + c[:, None] * sxc + y * sxh + x1c[None, :] * sxw,
                        mask=cm[:, None] & x1ok[None, :], other=0.0).to(tl.float32)
        for s in range(K):
            where = b * K * (oH * oW) + s * (oH * oW) + h * oW + w
            g = tl.load(grad + where, mask=wok, other=0.0).to(tl.float32)
            j = tl.load(index + where, mask=wok, other=0).to(tl.int32)
            y2 = y + (j // PW - (PH - 1) // 2) * dpH
            x2c = x1c + (j % PW - (PW - 1) // 2) * dpW
            ok = cm[:, None] & (x1ok & (y2 >= 0) & (y2 < H) & (x2c >= 0) & (x2c < W))[None, :]
            if HAS_G1:
                v = tl.load(x2b + c[:, None] * sxc + y2[None, :] * sxh + x2c[None, :] * sxw, mask=ok, other=0.0)
                acc += v.to(tl.float32) * g[None, :]
            if HAS_G2:
                tl.atomic_add(g2 + plane + c[:, None] * (H * W) + y2[None, :] * W + x2c[None, :],
                              a * (g * scale)[None, :], mask=ok, sem="relaxed")
        if HAS_G1:
            ptr = g1 + plane + c[:, None] * (H * W) + y * W + x1c[None, :]
            own = cm[:, None] & x1ok[None, :]
            tl.store(ptr, tl.load(ptr, mask=own, other=0.0) + acc * scale, mask=own)


#: ``triton.jit`` returns interpreted kernels when ``TRITON_INTERPRET=1`` at import.
_INTERPRETED = type(_volume_fwd_kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------- host API


def volume_forward(x1: torch.Tensor, x2: torch.Tensor, out: torch.Tensor, *, patch, stride, padding,
                   dilation_patch, scale: float, config: BlockConfig | None = None) -> None:
    """Write ``scale`` times the cost volume into ``out``.

    Args:
        x1, x2: ``(B, C, H, W)`` float16/bfloat16/float32, one device.
        out: ``(B, PH, PW, oH, oW)`` in the input dtype, any strides.
        patch, stride, padding, dilation_patch: ints or ``(h, w)`` pairs.
        scale: multiplies every sum (1 for the sampler, 1/C for FlowNet-like normalisation).
        config: a block shape of :data:`BLOCK_CONFIGS` instead of :func:`choose_config`'s (tests).
    """
    x1, x2 = _same_layout(x1, x2)
    L = _launch(x1, patch, stride, padding, dilation_patch, config)
    expected = (L.B, L.PH, L.PW, L.oH, L.oW)
    if tuple(out.shape) != expected or out.dtype != x1.dtype:
        raise ValueError(f"out must be {x1.dtype} of shape {expected}, got {out.dtype} {tuple(out.shape)}")
    if out.numel() == 0:
        return
    if L.C == 0:
        out.zero_()
        return
    grid = (L.oH * L.PH * L.n_pb * L.n_wb, L.B)
    _volume_fwd_kernel[grid](x1, x2, out, *x1.stride(), *out.stride(), *L.geometry_args(), float(scale),
                             **L.meta())


def volume_backward(grad_out: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, grad1: torch.Tensor | None,
                    grad2: torch.Tensor | None, *, patch, stride, padding, dilation_patch, scale: float,
                    config: BlockConfig | None = None) -> None:
    """Add the input gradients of :func:`volume_forward` to ``grad1``/``grad2``.

    Args:
        grad_out: ``(B, PH, PW, oH, oW)``, any strides (rounded to the input
            dtype for the products).
        x1, x2: the forward's inputs.
        grad1, grad2: contiguous float32 ``(B, C, H, W)`` accumulators, or ``None``.
    """
    _dense_backward(grad_out, x1, x2, grad1, grad2, patch, stride, padding, dilation_patch, scale, None, config)


def _dense_backward(gout, x1, x2, grad1, grad2, patch, stride, padding, dilation_patch, scale, soft, config) -> None:
    x1, x2 = _same_layout(x1, x2)
    L = _launch(x1, patch, stride, padding, dilation_patch, config)
    for name, buf in (("grad1", grad1), ("grad2", grad2)):
        _check_buffer(name, buf, tuple(x1.shape))
    if (grad1 is None and grad2 is None) or x1.numel() == 0 or L.oH * L.oW == 0:
        return
    dummy = grad1 if grad1 is not None else grad2
    if soft is None:
        E = mx = zn = dummy
        strides, inv_t = gout.stride(), 1.0
    else:
        E, mx, zn, temperature = soft
        strides, inv_t = (0,) * 5, 1.0 / float(temperature)
    grid = (L.oH * L.PH * L.n_pb * L.n_wb, L.B)
    _dense_bwd_kernel[grid](gout, x1, x2, grad1 if grad1 is not None else dummy,
                            grad2 if grad2 is not None else dummy, E, mx, zn, *x1.stride(), *strides,
                            *L.geometry_args(), float(scale), inv_t, SOFT=soft is not None,
                            HAS_G1=grad1 is not None, HAS_G2=grad2 is not None, **L.meta())


def reduce_forward(x1: torch.Tensor, x2: torch.Tensor, *, reduction: str, k: int | None, temperature: float,
                   patch, stride, padding, dilation_patch, scale: float,
                   config: BlockConfig | None = None) -> tuple[torch.Tensor, ...]:
    """A fused reduction over displacements of ``scale`` times the volume; the volume is never stored.

    Returns:
        "max"/"argmax": ``(values (B, 1, oH, oW) fp32, index (B, 1, oH, oW) int64)``;
        "topk": ``(values (B, k, oH, oW) fp32, index)``, descending, ties to the lower index;
        "softargmax": ``(E (B, 2, oH, oW) fp32, m (B, oH, oW), z (B, oH, oW))``
        with ``E`` the softmax(v / T)-weighted displacement ``(dy, dx)`` in
        pixels, ``m`` the max of ``v / T`` and ``z = sum exp(v / T - m)``.
        Indices are flat ``ph * PW + pw``.
    """
    reason = reduction_supported(reduction)
    if reason is not None:
        raise ValueError(f"the Triton kernels do not fuse {reason}")
    x1, x2 = _same_layout(x1, x2)
    L = _launch(x1, patch, stride, padding, dilation_patch, config)
    dev = x1.device
    grid = (L.oH * L.n_wb, L.B)
    common = (*x1.stride(), *L.geometry_args(), float(scale))
    if reduction == "softargmax":
        E = torch.empty((L.B, 2, L.oH, L.oW), dtype=torch.float32, device=dev)
        mx = torch.empty((L.B, L.oH, L.oW), dtype=torch.float32, device=dev)
        zn = torch.empty_like(mx)
        if E.numel():
            if L.C == 0:
                _soft_argmax_of_zeros(L, E, mx, zn, temperature, scale)
            else:
                _softargmax_fwd_kernel[grid](x1, x2, E, mx, zn, *common, 1.0 / float(temperature), **L.meta())
        return E, mx, zn
    K = 1 if reduction in ("max", "argmax") else int(k if k is not None else 0)
    if not 1 <= K <= L.PH * L.PW:
        raise ValueError(f"k must be in [1, {L.PH * L.PW}] (the number of displacements), got {k!r}")
    values = torch.empty((L.B, K, L.oH, L.oW), dtype=torch.float32, device=dev)
    index = torch.empty(values.shape, dtype=torch.int64, device=dev)
    if values.numel():
        if L.C == 0:
            values.zero_()
            index.copy_(torch.arange(K, device=dev).view(1, K, 1, 1).expand_as(index))
        else:
            _select_fwd_kernel[grid](x1, x2, values, index, *common, K, KP=_top_slots(K), **L.meta())
    return values, index


def _top_slots(k: int) -> int:
    """``KP``: the running top-k's width, a power of two >= 2.

    One slot (max/argmax) would be as exact, but ptxas spills the KP = 1
    selection of the 16 x 32 block on sm_90; the spare slot only ever holds
    the empty key and is never stored.
    """
    return max(2, triton.next_power_of_2(k))


def _soft_argmax_of_zeros(L: _Launch, E, mx, zn, temperature, scale) -> None:
    """C = 0: every value is 0, so the softmax is uniform (E the mean displacement)."""
    dy = [(j - (L.PH - 1) // 2) * L.dpH for j in range(L.PH)]
    dx = [(j - (L.PW - 1) // 2) * L.dpW for j in range(L.PW)]
    E[:, 0].fill_(sum(dy) / L.PH)
    E[:, 1].fill_(sum(dx) / L.PW)
    mx.zero_()
    zn.fill_(float(L.PH * L.PW))


def reduce_backward(grad: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, results: Sequence[torch.Tensor],
                    grad1: torch.Tensor | None, grad2: torch.Tensor | None, *, reduction: str, k: int | None,
                    temperature: float, patch, stride, padding, dilation_patch, scale: float,
                    config: BlockConfig | None = None) -> None:
    """Add the input gradients of a fused reduction to ``grad1``/``grad2`` (contiguous fp32, or None).

    Args:
        grad: "max"/"argmax"/"topk": the gradient of the values ``(B, k, oH, oW)``;
            "softargmax": the gradient of ``E`` ``(B, 2, oH, oW)``.
        results: what :func:`reduce_forward` returned for the same arguments.
    """
    reason = reduction_supported(reduction)
    if reason is not None:
        raise ValueError(f"the Triton kernels do not fuse {reason}")
    grad = grad.contiguous()
    if reduction == "softargmax":
        E, mx, zn = (r.contiguous() for r in results)
        _dense_backward(grad, x1, x2, grad1, grad2, patch, stride, padding, dilation_patch, scale,
                        (E, mx, zn, temperature), config)
        return
    x1, x2 = _same_layout(x1, x2)
    L = _launch(x1, patch, stride, padding, dilation_patch, config)
    for name, buf in (("grad1", grad1), ("grad2", grad2)):
        _check_buffer(name, buf, tuple(x1.shape))
    index = results[1].contiguous()
    K = index.shape[1]
    if (grad1 is None and grad2 is None) or x1.numel() == 0 or L.oH * L.oW == 0:
        return
    dummy = grad1 if grad1 is not None else grad2
    n_wb = -(-L.oW // _SELECT_BW)
    _select_bwd_kernel[(L.oH * n_wb, L.B)](
        grad, index, x1, x2, grad1 if grad1 is not None else dummy, grad2 if grad2 is not None else dummy,
        *x1.stride(), L.C, L.H, L.W, L.oH, L.oW, L.PH, L.PW, L.sH, L.sW, L.pH, L.pW, L.dpH, L.dpW, n_wb,
        float(scale), K, HAS_G1=grad1 is not None, HAS_G2=grad2 is not None, BW=_SELECT_BW, BC=_SELECT_BC,
        num_warps=4,
    )
