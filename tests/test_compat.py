"""Tests of the drop-in shims in tiledcorr.compat against the float64 references.

Each shim is compared with :mod:`tiledcorr.reference` (a transcription of
docs/semantics.md), forward and backward, over grids that include
kernel_size 3, stride1/stride2 2, pad_size != max_displacement and odd sizes;
gradcheck runs through each shim. Where the C++ ``spatial_correlation_sampler``
is importable, the sampler shim (and the FlowNet shim, through the identity of
semantics.md section 2) is compared with it as well.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tiledcorr
from tiledcorr import (
    ArgumentTypeError,
    ArgumentValueError,
    Correlation,
    CorrTorch,
    FlowNetCorrelation,
    MemoryBudgetError,
    ShapeError,
    SpatialCorrelationSampler,
    corr_torch,
    correlate,
    flownet_correlation,
    spatial_correlation_sample,
)
from tiledcorr.compat.flownet import flownet_geometry
from tiledcorr.geometry import Geometry
from tiledcorr.ops.correlate import cost_volume
from tiledcorr.planning.planner import plan_geometry
from tiledcorr.reference import corrtorch_reference, correlate_reference, flownet_reference

from support import cpu_strategies  # noqa: E402

STRATEGIES = cpu_strategies()

F64 = torch.float64

# spatial_correlation_sampler 0.5.0's backward uses the deprecated ctx.saved_variables.
pytestmark = pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated:DeprecationWarning")


def _randn(*shape, seed: int, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=F64, generator=g).to(dtype)


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol, atol=tol)


def _forward_and_grads(fn, x1, x2, seed: int):
    """``fn(x1, x2)`` and the gradients of ``<fn(x1, x2), G>`` for a random ``G``."""
    a, b = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    out = fn(a, b)
    grad_out = _randn(*out.shape, seed=seed, dtype=out.dtype)
    ga, gb = torch.autograd.grad(out, (a, b), grad_out)
    return out.detach(), ga, gb


def _check_against(fn, ref, x1, x2, seed: int, tol: float = 1e-10) -> torch.Tensor:
    """Forward and both gradients of ``fn`` equal those of ``ref``; returns the output."""
    out, g1, g2 = _forward_and_grads(fn, x1, x2, seed)
    out_r, g1_r, g2_r = _forward_and_grads(ref, x1, x2, seed)
    _close(out, out_r, tol)
    _close(g1, g1_r, tol)
    _close(g2, g2_r, tol)
    return out


# --------------------------------------------------------------------------- spatial_correlation_sampler

# Positional (kernel_size, patch_size, stride, padding, dilation, dilation_patch).
SAMPLER_CONFIGS = [
    (1, 9, 1, 0, 1),  # MM-Tracker
    (1, 21, 1, 0, 1, 2),  # FlowNetC through the sampler
    (3, 5, 2, 1, 2, 2),
    ((3, 2), (4, 3), (2, 1), (1, 2), (1, 2), (2, 1)),
    (2, 4, 3, 2),  # even kernel and patch
    (1, 1),
]


@pytest.mark.parametrize("args", SAMPLER_CONFIGS)
def test_sampler_matches_reference(args):
    x1, x2 = _randn(2, 3, 9, 11, seed=1), _randn(2, 3, 9, 11, seed=2)
    ref = lambda a, b: correlate_reference(a, b, *args)  # noqa: E731
    out = _check_against(lambda a, b: spatial_correlation_sample(a, b, *args), ref, x1, x2, seed=3)
    assert out.dim() == 5 and out.dtype == F64 and out.is_contiguous()
    _check_against(SpatialCorrelationSampler(*args), ref, x1, x2, seed=4)


def test_sampler_positional_order_is_the_originals():
    sampler = SpatialCorrelationSampler(1, 9, 1, 0, 1)
    assert (sampler.kernel_size, sampler.patch_size, sampler.stride, sampler.padding, sampler.dilation) == (1, 9, 1, 0, 1)
    assert sampler.dilation_patch == 1 and sampler.memory_budget is None
    sampler = SpatialCorrelationSampler(3, 5, 2, 1, 2, 2)
    assert (sampler.stride, sampler.padding, sampler.dilation, sampler.dilation_patch) == (2, 1, 2, 2)
    with pytest.raises(TypeError):
        SpatialCorrelationSampler(1, 1, 1, 0, 1, 1, None)  # memory_budget is keyword-only


def test_sampler_non_contiguous_and_float32():
    x1 = _randn(2, 4, 11, 9, seed=5).transpose(2, 3)
    x2 = _randn(2, 4, 11, 9, seed=6).transpose(2, 3)
    assert not x1.is_contiguous()
    out = spatial_correlation_sample(x1.float(), x2.float(), 3, 5, 1, 1)
    assert out.dtype == torch.float32
    _close(out, correlate_reference(x1, x2, 3, 5, 1, 1), 1e-4)


def test_sampler_memory_budget_is_used():
    x1, x2 = _randn(1, 8, 12, 13, seed=7), _randn(1, 8, 12, 13, seed=8)
    expected = correlate_reference(x1, x2, 1, 7)
    _close(spatial_correlation_sample(x1, x2, 1, 7, memory_budget=4096), expected)
    _close(SpatialCorrelationSampler(1, 7, memory_budget="8KiB")(x1, x2), expected)
    with pytest.raises(MemoryBudgetError, match="memory_budget"):
        spatial_correlation_sample(x1, x2, 1, 7, memory_budget=1)


def test_sampler_rejects_what_crashes_the_original():
    x = _randn(1, 2, 5, 5, seed=9)
    with pytest.raises(ShapeError, match="input1 and input2 must have the same shape"):
        spatial_correlation_sample(x, x[..., :4])
    with pytest.raises(ShapeError, match="must be 4-D .* got shape \\(1, 1, 2, 5, 5\\)"):
        spatial_correlation_sample(x[None], x[None])  # a volume: the original takes images only
    with pytest.raises(ArgumentTypeError, match="same dtype"):
        spatial_correlation_sample(x, x.float())
    with pytest.raises(ArgumentValueError, match="stride must be positive, got 0"):
        spatial_correlation_sample(x, x, 1, 3, 0)
    with pytest.raises(ArgumentValueError, match="padding must be >= 0, got -1"):
        SpatialCorrelationSampler(1, 3, 1, -1)(x, x)


def test_mm_tracker_configuration():
    """``SpatialCorrelationSampler(kernel_size=1, patch_size=9)`` on 1x512x19x34, flattened to 81 channels."""
    x1, x2 = _randn(1, 512, 19, 34, seed=10, dtype=torch.float32), _randn(1, 512, 19, 34, seed=11, dtype=torch.float32)
    out = SpatialCorrelationSampler(kernel_size=1, patch_size=9)(x1, x2)
    assert out.shape == (1, 9, 9, 19, 34) and out.dtype == torch.float32
    flat = out.reshape(1, 81, 19, 34)
    _close(flat, correlate_reference(x1, x2, 1, 9).reshape(1, 81, 19, 34), 2e-4)
    # Channel dy_idx*9 + dx_idx holds displacement (dy_idx - 4, dx_idx - 4), written out directly.
    padded = F.pad(x2.double(), (4, 4, 4, 4))
    for dy, dx in ((-4, -4), (-4, 3), (2, -1), (0, 0), (4, 4)):
        plane = (x1.double() * padded[:, :, 4 + dy : 4 + dy + 19, 4 + dx : 4 + dx + 34]).sum(1)
        _close(flat[:, (dy + 4) * 9 + dx + 4], plane, 2e-4)


SCS_CONFIGS = SAMPLER_CONFIGS[:5] + [((1, 3), (5, 3), (1, 2), (0, 1), (2, 1), (1, 2))]


@pytest.mark.parametrize("args", SCS_CONFIGS)
def test_sampler_matches_the_original(args):
    scs = pytest.importorskip("spatial_correlation_sampler")
    x1, x2 = _randn(2, 3, 9, 12, seed=12), _randn(2, 3, 9, 12, seed=13)
    original = lambda a, b: scs.spatial_correlation_sample(a, b, *args)  # noqa: E731
    _check_against(lambda a, b: spatial_correlation_sample(a, b, *args), original, x1, x2, seed=14)
    _check_against(SpatialCorrelationSampler(*args), scs.SpatialCorrelationSampler(*args), x1, x2, seed=15)


def test_mm_tracker_configuration_matches_the_original():
    scs = pytest.importorskip("spatial_correlation_sampler")
    x1, x2 = _randn(1, 512, 19, 34, seed=16, dtype=torch.float32), _randn(1, 512, 19, 34, seed=17, dtype=torch.float32)
    ours = SpatialCorrelationSampler(kernel_size=1, patch_size=9)(x1, x2)
    theirs = scs.SpatialCorrelationSampler(kernel_size=1, patch_size=9)(x1, x2)
    _close(ours, theirs, 2e-4)


# --------------------------------------------------------------------------- FlowNet2 Correlation

# (pad_size, kernel_size, max_displacement, stride1, stride2); engine padding pad + kr - md in the comment.
FLOWNET_CONFIGS = [
    (20, 1, 20, 1, 2),  # FlowNetC (0)
    (4, 1, 4, 1, 1),  # CorrTorch (0)
    (2, 3, 4, 1, 2),  # pad < md (-1)
    (0, 1, 4, 1, 1),  # no padding (-4)
    (5, 3, 2, 2, 2),  # pad > md, both strides (4)
    (1, 3, 3, 3, 2),  # md not a multiple of stride2 (-1)
    (0, 5, 1, 2, 1),  # kernel 5, no padding (1)
    (3, 3, 3, 2, 1),  # stride1 2, kernel 3 (1)
    (1, 1, 0, 2, 3),  # one displacement (1)
    (0, 3, 2, 3, 3),  # stride2 > max_displacement (-1)
]


@pytest.mark.parametrize("args", FLOWNET_CONFIGS)
def test_flownet_matches_reference(args):
    x1, x2 = _randn(2, 3, 9, 11, seed=20), _randn(2, 3, 9, 11, seed=21)
    ref = lambda a, b: flownet_reference(a, b, *args)  # noqa: E731
    out = _check_against(lambda a, b: flownet_correlation(a, b, *args), ref, x1, x2, seed=22)
    D = 2 * (args[2] // args[4]) + 1
    assert out.shape[:2] == (2, D * D) and out.numel() > 0
    _check_against(FlowNetCorrelation(*args), ref, x1, x2, seed=23)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("args", [(0, 1, 4, 1, 1), (2, 3, 4, 1, 2), (1, 3, 3, 3, 2), (0, 1, 5, 2, 2)])
def test_negative_engine_padding(strategy, args):
    """FlowNet geometries with negative padding and a cropped output, through each strategy and small tiles."""
    x1, x2 = _randn(2, 3, 15, 14, seed=24), _randn(2, 3, 15, 14, seed=25)
    geometry = flownet_geometry(x1.shape, *args)
    assert min(geometry.padding) < 0
    plan = plan_geometry(geometry, dtype=F64, memory_budget=6000, requires_grad=True, strategy=strategy)
    assert plan.passes > 1
    scale = 1.0 / (args[1] ** 2 * 3)
    D = geometry.patch[0]

    def run(a, b):
        return cost_volume(a, b, plan.geometry, scale, None, plan).reshape(2, D * D, *geometry.out_size)

    _check_against(run, lambda a, b: flownet_reference(a, b, *args), x1, x2, seed=26)


@pytest.mark.parametrize("stride", [1, 2])
def test_negative_padding_is_a_crop_of_the_origin(stride):
    """Padding -q (q a multiple of the stride) is padding 0 with q/stride positions dropped at each end."""
    x1, x2 = _randn(1, 2, 14, 13, seed=27), _randn(1, 2, 14, 13, seed=28)
    q = 2 * stride
    geometry = Geometry(
        batch=1, channels=2, in_size=(14, 13), kernel=(2, 2), patch=(3, 3), stride=(stride,) * 2,
        padding=(-q, -q), dilation=(1, 1), dilation_patch=(1, 1),
    )
    plan = plan_geometry(geometry, dtype=F64)
    (oH, oW), first = geometry.out_size, q // stride
    assert oH > 0 and oW > 0
    expected = correlate_reference(x1, x2, 2, 3, stride)[..., first : first + oH, first : first + oW]
    _close(cost_volume(x1, x2, plan.geometry, 1.0, None, plan), expected)


def test_flownet_empty_output():
    x = _randn(1, 2, 5, 6, seed=29)
    out = flownet_correlation(x, x, 0, 3, 4, 1, 1)
    assert out.shape == (1, 81, 0, 0) == flownet_reference(x, x, 0, 3, 4, 1, 1).shape


def test_flownet_corr_multiply_is_ignored():
    x1, x2 = _randn(1, 3, 7, 8, seed=30), _randn(1, 3, 7, 8, seed=31)
    _close(flownet_correlation(x1, x2, 2, 1, 2, 1, 1, 7.5), flownet_correlation(x1, x2, 2, 1, 2, 1, 1))


def test_flownet_bfloat16_accumulates_in_float32():
    x1, x2 = _randn(1, 64, 9, 10, seed=32), _randn(1, 64, 9, 10, seed=33)
    out = flownet_correlation(x1.bfloat16(), x2.bfloat16(), 2, 3, 2, 1, 2)
    assert out.dtype == torch.bfloat16
    expected = flownet_reference(x1.bfloat16(), x2.bfloat16(), 2, 3, 2, 1, 2)  # same rounded inputs
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kernel_size, expected", [(0, "default 0 gives inf/NaN"), (2, "got 2$"), (-3, "got -3$")])
def test_flownet_rejects_kernel_sizes_without_a_centre(kernel_size, expected):
    x = _randn(1, 2, 8, 8, seed=34)
    with pytest.raises(ArgumentValueError, match=f"kernel_size must be a positive odd int.*{expected}"):
        flownet_correlation(x, x, 1, kernel_size, 1, 1, 1)
    with pytest.raises(ArgumentValueError, match="kernel_size"):
        FlowNetCorrelation(1, kernel_size, 1)
    with pytest.raises(ArgumentValueError, match="default 0"):
        Correlation()  # the original's defaults


def test_flownet_rejects_bad_arguments():
    x = _randn(1, 2, 8, 8, seed=35)
    cases = [
        ((-1, 1, 1, 1, 1), ArgumentValueError, "pad_size must be >= 0, got -1"),
        ((0, 1, -2, 1, 1), ArgumentValueError, "max_displacement must be >= 0, got -2"),
        ((0, 1, 1, 0, 1), ArgumentValueError, "stride1 must be >= 1, got 0"),
        ((0, 1, 1, 1, 0), ArgumentValueError, "stride2 must be >= 1, got 0"),
        ((0, 1.0, 1, 1, 1), ArgumentTypeError, "kernel_size must be an int, got 1.0"),
        ((0, 1, 1, 1, 1, "x"), ArgumentTypeError, "corr_multiply must be a real number"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            flownet_correlation(x, x, *args)
    with pytest.raises(ShapeError, match="4-D"):
        flownet_correlation(x[None], x[None], 0, 1, 1, 1, 1)
    with pytest.raises(MemoryBudgetError):
        flownet_correlation(x, x, 0, 1, 1, 1, 1, memory_budget=1)


def test_flownetc_configuration():
    """``Correlation(20, 1, 20, 1, 2, 1)`` on 4x256x48x64 gives (4, 441, 48, 64), the mean over channels."""
    x1, x2 = _randn(4, 256, 48, 64, seed=36, dtype=torch.float32), _randn(4, 256, 48, 64, seed=37, dtype=torch.float32)
    out = Correlation(20, 1, 20, 1, 2, 1)(x1, x2)
    assert out.shape == (4, 441, 48, 64) and out.dtype == torch.float32
    # Channel (tj+10)*21 + (ti+10) is displacement (2*tj, 2*ti), written out directly.
    padded = F.pad(x2.double(), (20, 20, 20, 20))
    for tj, ti in ((-10, -10), (-10, 4), (0, 0), (3, -7), (10, 10)):
        dy, dx = 2 * tj, 2 * ti
        plane = (x1.double() * padded[:, :, 20 + dy : 20 + dy + 48, 20 + dx : 20 + dx + 64]).mean(1)
        _close(out[:, (tj + 10) * 21 + ti + 10], plane, 1e-5)


@pytest.mark.parametrize("args", [(20, 1, 20, 1, 2), (2, 3, 4, 1, 2), (5, 3, 2, 2, 2), (1, 3, 3, 3, 2)])
def test_flownet_matches_the_original_sampler_identity(args):
    """semantics.md section 2: FlowNet as a subsampled, cropped C++ sampler volume divided by k*k*C."""
    scs = pytest.importorskip("spatial_correlation_sampler")
    pad, k, md, s1, s2 = args
    x1, x2 = _randn(2, 3, 11, 13, seed=38), _randn(2, 3, 11, 13, seed=39)
    kr, D = (k - 1) // 2, 2 * (md // s2) + 1
    P = max(0, pad + kr - md)
    off = md - pad - kr + P
    out = flownet_correlation(x1, x2, *args)
    oH, oW = out.shape[2:]
    volume = scs.spatial_correlation_sample(x1, x2, kernel_size=k, patch_size=D, padding=P, dilation_patch=s2)
    expected = volume[..., off::s1, off::s1][..., :oH, :oW].reshape(2, D * D, oH, oW) / (k * k * 3)
    _close(out, expected)


# --------------------------------------------------------------------------- CorrTorch


@pytest.mark.parametrize("md", [0, 1, 3, 4])
def test_corrtorch_matches_reference(md):
    x1, x2 = _randn(2, 5, 7, 9, seed=40 + md), _randn(2, 5, 7, 9, seed=50 + md)
    ref = lambda a, b: corrtorch_reference(a, b, md, md)  # noqa: E731
    out = _check_against(CorrTorch(md, 1, md, 1, 1, 1), ref, x1, x2, seed=60)
    assert out.shape == (2, (2 * md + 1) ** 2, 7, 9)
    _check_against(lambda a, b: corr_torch(a, b, pad_size=md, max_displacement=md), ref, x1, x2, seed=61)


def test_corrtorch_defaults():
    x1, x2 = _randn(1, 3, 6, 10, seed=62), _randn(1, 3, 6, 10, seed=63)
    layer = CorrTorch()
    assert (layer.pad_size, layer.kernel_size, layer.max_displacement, layer.stride1, layer.stride2) == (4, 1, 4, 1, 1)
    _close(layer(x1, x2), corrtorch_reference(x1, x2))


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel_size=3), "CorrTorch supports only kernel_size=1 .*got 3"),
    (dict(stride1=2), "CorrTorch supports only stride1=1 .*got 2"),
    (dict(stride2=2), "CorrTorch supports only stride2=1 .*got 2"),
    (dict(pad_size=3), "pad_size == max_displacement .*pad_size=3 and max_displacement=4"),
    (dict(pad_size=-1, max_displacement=-1), "max_displacement must be >= 0, got -1"),
])
def test_corrtorch_rejects_what_the_original_asserts(kwargs, message):
    with pytest.raises(ArgumentValueError, match=message):
        CorrTorch(**kwargs)
    x = _randn(1, 2, 5, 5, seed=64)
    with pytest.raises(ArgumentValueError, match=message):
        corr_torch(x, x, **kwargs)


# --------------------------------------------------------------------------- gradcheck through each shim


def _gradcheck(fn, shape, seed: int) -> None:
    x1 = _randn(*shape, seed=seed).requires_grad_(True)
    x2 = _randn(*shape, seed=seed + 1).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x1, x2))


def test_gradcheck_sampler():
    _gradcheck(lambda a, b: spatial_correlation_sample(a, b, (2, 3), 3, 2, 1, (1, 2), 2), (1, 2, 6, 7), seed=70)


@pytest.mark.parametrize("args", [(1, 3, 2, 2, 2), (0, 3, 2, 3, 1), (2, 1, 3, 2, 2)])
def test_gradcheck_flownet(args):
    _gradcheck(FlowNetCorrelation(*args), (1, 2, 7, 8), seed=72)


def test_gradcheck_corrtorch():
    _gradcheck(CorrTorch(2, 1, 2, 1, 1), (1, 2, 5, 6), seed=74)


# --------------------------------------------------------------------------- core options, conventions


@pytest.mark.parametrize("normalize, factor", [
    (None, lambda C, kvol: 1.0),
    ("channels", lambda C, kvol: 1.0 / C),
    ("kernel_channels", lambda C, kvol: 1.0 / (kvol * C)),
    ("sqrt_channels", lambda C, kvol: 1.0 / math.sqrt(C)),
])
def test_correlate_normalize(normalize, factor):
    x1, x2 = _randn(2, 5, 8, 9, seed=80), _randn(2, 5, 8, 9, seed=81)
    expected = correlate_reference(x1, x2, (3, 2), 3, 1, 1) * factor(5, 6)
    _close(correlate(x1, x2, (3, 2), 3, 1, 1, normalize=normalize), expected)


def test_normalize_kernel_channels_is_flownet():
    """FlowNet (pad == md, k odd, strides 1) is the sampler with padding kr, /(k*k*C), flattened,
    without its last 2*kr rows and columns (FlowNet drops a border of kr + md, padded by md only)."""
    x1, x2 = _randn(2, 4, 9, 8, seed=82), _randn(2, 4, 9, 8, seed=83)
    out = correlate(x1, x2, 3, 5, 1, 1, normalize="kernel_channels", flatten=True)
    assert out.shape == (2, 25, 9, 8)
    _close(out[..., :7, :6], flownet_reference(x1, x2, 2, 3, 2, 1, 1))


def test_correlate_flatten_is_dy_major():
    x1, x2 = _randn(2, 3, 7, 10, seed=84), _randn(2, 3, 7, 10, seed=85)
    patch = (3, 5)  # PH != PW, so dy-major and dx-major orders differ
    flat = correlate(x1, x2, 1, patch, 1, 0, 1, (2, 1), flatten=True)
    assert flat.shape == (2, 15, 7, 10)
    volume = correlate_reference(x1, x2, 1, patch, 1, 0, 1, (2, 1))
    for ph in range(3):
        for pw in range(5):
            _close(flat[:, ph * 5 + pw], volume[:, ph, pw])
    # Channel 0 is (dy, dx) = (-2, -2): input2 read above and to the left of input1.
    shifted = F.pad(x2, (2, 2, 2, 2))[:, :, 0:7, 0:10]
    _close(flat[:, 0], (x1 * shifted).sum(1))


# --------------------------------------------------------------------------- exports and reprs


def test_exports():
    assert tiledcorr.Correlation is tiledcorr.FlowNetCorrelation
    for name in ("SpatialCorrelationSampler", "spatial_correlation_sample", "flownet_correlation",
                 "FlowNetCorrelation", "Correlation", "CorrTorch", "corr_torch"):
        assert name in tiledcorr.__all__ and hasattr(tiledcorr, name)


@pytest.mark.parametrize("module, expected", [
    (SpatialCorrelationSampler(1, 9),
     "SpatialCorrelationSampler(kernel_size=1, patch_size=9, stride=1, padding=0, dilation=1, dilation_patch=1)"),
    (SpatialCorrelationSampler((3, 1), 5, memory_budget="64MiB"),
     "SpatialCorrelationSampler(kernel_size=(3, 1), patch_size=5, stride=1, padding=0, dilation=1, "
     "dilation_patch=1, memory_budget='64MiB')"),
    (Correlation(20, 1, 20, 1, 2, 1),
     "FlowNetCorrelation(pad_size=20, kernel_size=1, max_displacement=20, stride1=1, stride2=2, corr_multiply=1)"),
    (FlowNetCorrelation(3, 3, 4, 2, 1, memory_budget=0.25),
     "FlowNetCorrelation(pad_size=3, kernel_size=3, max_displacement=4, stride1=2, stride2=1, corr_multiply=1, "
     "memory_budget=0.25)"),
    (CorrTorch(), "CorrTorch(pad_size=4, kernel_size=1, max_displacement=4, stride1=1, stride2=1, corr_multiply=1)"),
])
def test_repr_shows_arguments(module, expected):
    assert repr(module) == expected
