"""Tests of the float64 references in tiledcorr.reference.

Part (a) compares ``correlate_reference`` with the real C++
``spatial_correlation_sampler`` (CPU build; see
profiling/build_reference_sampler.sh) and is skipped where it is not
installed. Part (b) needs nothing but torch: hand-computed cases, the
FlowNet2 <-> sampler identity of semantics.md section 2, CorrTorch == FlowNet2
with k=1, and consistency between the 1-D, 2-D and 3-D forms.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from tiledcorr.reference import (
    corrtorch_reference,
    correlate_reference,
    flownet_reference,
)

F64 = torch.float64

# spatial_correlation_sampler 0.5.0's backward uses the deprecated
# ctx.saved_variables; that is its business, not a failure of ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:'saved_variables' is deprecated:DeprecationWarning"
)


def _randn(*shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=F64, generator=g)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, check_dtype=False)


def _grads(fn, x1, x2, grad_out_seed: int):
    """Gradients of <fn(x1, x2), G> w.r.t. x1 and x2 for a random G."""
    a = x1.detach().clone().requires_grad_(True)
    b = x2.detach().clone().requires_grad_(True)
    out = fn(a, b)
    g = _randn(*out.shape, seed=grad_out_seed).to(out.dtype)
    ga, gb = torch.autograd.grad(out, (a, b), g)
    return out.detach(), ga, gb


# ---------------------------------------------------------------------------
# (a) against the C++ spatial_correlation_sampler
# ---------------------------------------------------------------------------

_PARAM_CHOICES = {
    "kernel_size": [1, 2, 3],
    "patch_size": [1, 2, 3, 4, 5],
    "stride": [1, 2, 3],
    "padding": [0, 1, 2],
    "dilation": [1, 2, 3],
    "dilation_patch": [1, 2, 3],
}


def _random_config(rng: random.Random) -> dict:
    """A random 2-D sampler configuration with a non-empty output."""
    while True:
        params = {}
        for name, choices in _PARAM_CHOICES.items():
            if rng.random() < 0.5:
                params[name] = rng.choice(choices)
            else:
                params[name] = (rng.choice(choices), rng.choice(choices))
        H = rng.choice([3, 5, 7, 9, 11, 4, 6])
        W = rng.choice([5, 7, 9, 11, 13, 8])
        if H == W:
            continue
        k, d, p = (
            torch.nn.modules.utils._pair(params[n])
            for n in ("kernel_size", "dilation", "padding")
        )
        # Only configurations whose window fits in the padded input: the C++
        # code computes oH with C's truncating division, which disagrees with
        # the documented floor formula when H + 2p < dilated kernel (see
        # test_cpp_output_size_quirk_when_kernel_exceeds_input).
        if all(S + 2 * pp >= (kk - 1) * dd + 1 for S, pp, kk, dd in zip((H, W), p, k, d)):
            return dict(B=rng.choice([2, 3]), C=rng.choice([1, 2, 3, 5]), H=H, W=W, **params)


# A few hand-picked configurations first (FlowNetC-like, MM-Tracker-like,
# even patches, large padding), then seeded random ones.
_FIXED_CONFIGS = [
    dict(B=2, C=3, H=9, W=11, kernel_size=1, patch_size=9, stride=1, padding=0,
         dilation=1, dilation_patch=1),
    dict(B=2, C=2, H=7, W=13, kernel_size=1, patch_size=21, stride=1, padding=0,
         dilation=1, dilation_patch=2),
    dict(B=2, C=3, H=5, W=7, kernel_size=(3, 2), patch_size=(4, 2), stride=(2, 1),
         padding=(1, 2), dilation=(2, 1), dilation_patch=(1, 3)),
    dict(B=3, C=1, H=6, W=5, kernel_size=1, patch_size=4, stride=1, padding=3,
         dilation=1, dilation_patch=1),
    dict(B=2, C=4, H=11, W=9, kernel_size=3, patch_size=(6, 5), stride=3, padding=1,
         dilation=3, dilation_patch=2),
]
_rng = random.Random(20240611)
CPP_CONFIGS = _FIXED_CONFIGS + [_random_config(_rng) for _ in range(43)]


def _split(cfg: dict):
    shape = (cfg["B"], cfg["C"], cfg["H"], cfg["W"])
    params = {k: v for k, v in cfg.items() if k not in ("B", "C", "H", "W")}
    return shape, params


def test_cpp_configs_cover_every_feature():
    """The random configurations exercise everything they are meant to."""
    assert len(CPP_CONFIGS) >= 40
    seen_not_one = {name: False for name in _PARAM_CHOICES}
    seen_tuple = {name: False for name in _PARAM_CHOICES}
    even_patch = odd_nonsquare = batch = False
    for cfg in CPP_CONFIGS:
        shape, params = _split(cfg)
        for name, value in params.items():
            pair = torch.nn.modules.utils._pair(value)
            default = 0 if name == "padding" else 1
            seen_not_one[name] |= any(v != default for v in pair)
            seen_tuple[name] |= isinstance(value, tuple) and pair[0] != pair[1]
        even_patch |= any(
            v % 2 == 0 for v in torch.nn.modules.utils._pair(params["patch_size"])
        )
        odd_nonsquare |= cfg["H"] % 2 == 1 and cfg["W"] % 2 == 1 and cfg["H"] != cfg["W"]
        batch |= cfg["B"] > 1
    assert all(seen_not_one.values()), seen_not_one
    assert all(seen_tuple.values()), seen_tuple
    assert even_patch and odd_nonsquare and batch


@pytest.mark.parametrize("index", range(len(CPP_CONFIGS)))
def test_correlate_reference_matches_cpp(index):
    scs = pytest.importorskip("spatial_correlation_sampler")
    shape, params = _split(CPP_CONFIGS[index])
    x1 = _randn(*shape, seed=2 * index)
    x2 = _randn(*shape, seed=2 * index + 1)

    def cpp(a, b):
        return scs.spatial_correlation_sample(a, b, **params)

    def ref(a, b):
        return correlate_reference(a, b, **params)

    out_c, g1_c, g2_c = _grads(cpp, x1, x2, grad_out_seed=1000 + index)
    out_r, g1_r, g2_r = _grads(ref, x1, x2, grad_out_seed=1000 + index)
    assert out_r.dtype == F64 and out_c.dtype == F64
    assert out_r.shape == out_c.shape
    assert out_r.numel() > 0
    _assert_close(out_r, out_c, 1e-10)
    _assert_close(g1_r, g1_c, 1e-10)
    _assert_close(g2_r, g2_c, 1e-10)


def test_correlate_reference_matches_cpp_positional_and_float32():
    """Positional parameter order, and a float32 input (reference upcasts)."""
    scs = pytest.importorskip("spatial_correlation_sampler")
    x1 = _randn(2, 3, 7, 9, seed=1).float()
    x2 = _randn(2, 3, 7, 9, seed=2).float()
    args = ((3, 1), (5, 4), (1, 2), (1, 0), (1, 1), (2, 1))
    out_c = scs.spatial_correlation_sample(x1, x2, *args)
    out_r = correlate_reference(x1, x2, *args)
    assert out_c.dtype == torch.float32 and out_r.dtype == F64
    _assert_close(out_r, out_c.double(), 1e-4)
    module = scs.SpatialCorrelationSampler(*args)
    _assert_close(out_r, module(x1.double(), x2.double()), 1e-10)


def test_cpp_output_size_quirk_when_kernel_exceeds_input():
    """Documents a C++ quirk that the references deliberately do NOT copy.

    The C++ code computes ``oH = (H + 2p - dilated_k) / stride + 1`` with C
    integer division, which truncates towards zero. When the dilated kernel is
    larger than the padded input but by less than the stride, it therefore
    returns one output row (a partial window) where the documented floor
    formula (and the reference) gives an empty output.
    """
    scs = pytest.importorskip("spatial_correlation_sampler")
    x = torch.ones(1, 1, 3, 3, dtype=F64)
    assert scs.spatial_correlation_sample(x, x, kernel_size=4, stride=2).shape == (1, 1, 1, 1, 1)
    assert correlate_reference(x, x, kernel_size=4, stride=2).shape == (1, 1, 1, 0, 0)


# ---------------------------------------------------------------------------
# (b) hand-computed cases (no C++ library needed)
# ---------------------------------------------------------------------------


def test_correlate_reference_hand_computed_patch3():
    x1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    x2 = torch.tensor([[5.0, 6.0], [7.0, 8.0]]).reshape(1, 1, 2, 2)
    out = correlate_reference(x1, x2, patch_size=3)
    # expected[ph][pw] is the (2, 2) map for dy = ph - 1, dx = pw - 1:
    # out[h, w] = x1[h, w] * x2[h + dy, w + dx], zero if either is outside.
    expected = torch.tensor(
        [
            [[[0, 0], [0, 20]], [[0, 0], [15, 24]], [[0, 0], [18, 0]]],
            [[[0, 10], [0, 28]], [[5, 12], [21, 32]], [[6, 0], [24, 0]]],
            [[[0, 14], [0, 0]], [[7, 16], [0, 0]], [[8, 0], [0, 0]]],
        ],
        dtype=F64,
    ).reshape(1, 3, 3, 2, 2)
    assert out.dtype == F64
    assert out.shape == (1, 3, 3, 2, 2)
    assert torch.equal(out, expected)


def test_correlate_reference_hand_computed_kernel2_padding1():
    # The kernel is anchored top-left: out[h, w] sums x1*x2 over rows h-1..h,
    # columns w-1..w (padding 1). Products x1*x2 = [[5, 12], [21, 32]].
    x1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    x2 = torch.tensor([[5.0, 6.0], [7.0, 8.0]]).reshape(1, 1, 2, 2)
    out = correlate_reference(x1, x2, kernel_size=2, padding=1)
    expected = torch.tensor(
        [[5, 17, 12], [26, 70, 44], [21, 53, 32]], dtype=F64
    ).reshape(1, 1, 1, 3, 3)
    assert torch.equal(out, expected)


def test_correlate_reference_hand_computed_1d_even_patch_dilation_stride():
    x1 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).reshape(1, 1, 5)
    x2 = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0]).reshape(1, 1, 5)
    # patch 4, dilation_patch 2 -> shifts -2, 0, 2, 4; stride 2 -> x = 0, 2, 4.
    out = correlate_reference(x1, x2, patch_size=4, dilation_patch=2, stride=2)
    expected = torch.tensor(
        [[0, 30, 150], [10, 90, 250], [30, 150, 0], [50, 0, 0]], dtype=F64
    ).reshape(1, 4, 3)
    assert torch.equal(out, expected)
    # kernel 2, dilation 3, padding 1 -> taps at w-1 and w+2; products
    # x1*x2 = [10, 40, 90, 160, 250].
    out = correlate_reference(x1, x2, kernel_size=2, dilation=3, padding=1)
    expected = torch.tensor([90, 170, 290, 90], dtype=F64).reshape(1, 1, 4)
    assert torch.equal(out, expected)


def test_correlate_reference_padding_zero_border_and_shapes():
    x1, x2 = _randn(2, 3, 5, 7, seed=3), _randn(2, 3, 5, 7, seed=4)
    out = correlate_reference(x1, x2, patch_size=3, padding=2)
    assert out.shape == (2, 3, 3, 9, 11)
    inner = out[..., 2:-2, 2:-2]
    assert torch.count_nonzero(out).item() == torch.count_nonzero(inner).item()
    _assert_close(inner, correlate_reference(x1, x2, patch_size=3), 0)
    # zero displacement with k=1 is the channel sum of the product
    _assert_close(out[:, 1, 1, 2:-2, 2:-2], (x1 * x2).sum(1), 1e-12)
    # input smaller than the kernel -> correctly shaped empty output
    empty = correlate_reference(x1, x2, kernel_size=(6, 2), patch_size=(1, 3))
    assert empty.shape == (2, 1, 3, 0, 6)


def test_correlate_reference_argument_errors():
    x = _randn(1, 1, 4, 4, seed=0)
    with pytest.raises(ValueError):
        correlate_reference(x, x, patch_size=0)
    with pytest.raises(ValueError):
        correlate_reference(x, x, padding=-1)
    with pytest.raises(TypeError):
        correlate_reference(x, x, kernel_size=(1, 1, 1))
    with pytest.raises(ValueError):
        correlate_reference(x, x[..., :3])
    with pytest.raises(ValueError):
        correlate_reference(x[0, 0], x[0, 0])


def test_references_are_differentiable():
    a = _randn(2, 2, 4, 5, seed=5).requires_grad_(True)
    b = _randn(2, 2, 4, 5, seed=6).requires_grad_(True)

    def check(fn, *inputs):
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)

    check(lambda u, v: correlate_reference(u, v, 2, (3, 2), 1, 1, (1, 2), 2), a, b)
    check(lambda u, v: flownet_reference(u, v, 1, 3, 2, 2, 2), a, b)
    check(lambda u, v: corrtorch_reference(u, v, 1, 1), a, b)
    c = _randn(1, 2, 3, 2, 4, seed=7).requires_grad_(True)
    d = _randn(1, 2, 3, 2, 4, seed=8).requires_grad_(True)
    check(lambda u, v: correlate_reference(u, v, (2, 1, 2), (2, 1, 3), 1, (0, 1, 0)), c, d)


def test_reference_speed_patch9():
    """A 2x3x9x11 patch-9 case, forward and backward, is quick."""
    import time

    a = _randn(2, 3, 9, 11, seed=9).requires_grad_(True)
    b = _randn(2, 3, 9, 11, seed=10).requires_grad_(True)
    start = time.perf_counter()
    correlate_reference(a, b, patch_size=9).sum().backward()
    assert time.perf_counter() - start < 2.0  # typically ~0.02 s


# ---------------------------------------------------------------------------
# (b) FlowNet2 <-> sampler identity (semantics.md section 2)
# ---------------------------------------------------------------------------

_FLOWNET_GRID = [
    # (H, W, pad, k, md, s1, s2)
    (h, w, pad, k, md, s1, s2)
    for (h, w) in [(9, 11), (8, 13)]
    for pad in (0, 2, 3, 5)
    for k in (1, 3)
    for md in (0, 2, 3, 4)
    for s1 in (1, 2, 3)
    for s2 in (1, 2)
    if (h + w + pad + k + md + s1 + s2) % 3 != 1  # thin the grid (~2/3 kept)
    and min(h, w) + 2 * pad > 2 * ((k - 1) // 2 + md)  # non-empty output
] + [(15, 17, 3, 5, 4, 2, 3), (12, 9, 1, 3, 1, 2, 2), (20, 21, 6, 1, 6, 1, 2)]


def _flownet_via_sampler(x1, x2, pad, k, md, s1, s2):
    B, C, H, W = x1.shape
    kr = (k - 1) // 2
    dr = md // s2
    D = 2 * dr + 1
    oH = math.ceil((H + 2 * pad - 2 * (kr + md)) / s1)
    oW = math.ceil((W + 2 * pad - 2 * (kr + md)) / s1)
    P = max(0, pad + kr - md)
    off = md - pad - kr + P
    full = correlate_reference(
        x1, x2, kernel_size=k, patch_size=D, stride=1, padding=P, dilation_patch=s2
    )
    cropped = full[..., off::s1, off::s1][..., :oH, :oW]
    assert cropped.shape[-2:] == (oH, oW)
    return cropped.reshape(B, D * D, oH, oW) / (k * k * C)


def test_flownet_grid_covers_the_cases():
    assert any(k == 3 and s1 == 2 and s2 == 2 for _, _, _, k, _, s1, s2 in _FLOWNET_GRID)
    assert any(pad < md for _, _, pad, _, md, _, _ in _FLOWNET_GRID)
    assert any(pad > md for _, _, pad, _, md, _, _ in _FLOWNET_GRID)
    assert any(h % 2 and w % 2 for h, w, *_ in _FLOWNET_GRID)


@pytest.mark.parametrize("H,W,pad,k,md,s1,s2", _FLOWNET_GRID)
def test_flownet_reference_matches_sampler_identity(H, W, pad, k, md, s1, s2):
    x1 = _randn(2, 3, H, W, seed=H * 100 + W)
    x2 = _randn(2, 3, H, W, seed=H * 100 + W + 1)
    kr = (k - 1) // 2
    direct = flownet_reference(x1, x2, pad, k, md, s1, s2)
    D = 2 * (md // s2) + 1
    assert direct.shape == (
        2,
        D * D,
        math.ceil((H + 2 * pad - 2 * (kr + md)) / s1),
        math.ceil((W + 2 * pad - 2 * (kr + md)) / s1),
    )
    _assert_close(direct, _flownet_via_sampler(x1, x2, pad, k, md, s1, s2), 1e-12)


def test_flownet_reference_hand_checks():
    x1, x2 = _randn(2, 4, 6, 7, seed=11), _randn(2, 4, 6, 7, seed=12)
    # md = 0, k = 1, pad = 0: the channel mean of the product
    _assert_close(flownet_reference(x1, x2, 0, 1, 0, 1, 1)[:, 0], (x1 * x2).mean(1), 1e-12)
    # one displacement, checked element by element against the formula
    pad, k, md, s1, s2 = 1, 3, 2, 2, 2
    out = flownet_reference(x1, x2, pad, k, md, s1, s2)
    dr, D, C = 1, 3, 4
    tj, ti = 1, -1  # dy = +2, dx = -2
    for oy in range(out.shape[2]):
        for ox in range(out.shape[3]):
            cy, cx = oy * s1 + md - pad, ox * s1 + md - pad
            total = torch.zeros(2, dtype=F64)
            for j in (-1, 0, 1):
                for i in (-1, 0, 1):
                    y1, x1_ = cy + j, cx + i
                    y2, x2_ = y1 + tj * s2, x1_ + ti * s2
                    if 0 <= y1 < 6 and 0 <= x1_ < 7 and 0 <= y2 < 6 and 0 <= x2_ < 7:
                        total += (x1[:, :, y1, x1_] * x2[:, :, y2, x2_]).sum(1)
            _assert_close(out[:, (tj + dr) * D + (ti + dr), oy, ox], total / (k * k * C), 1e-12)


# ---------------------------------------------------------------------------
# (b) CorrTorch == FlowNet2 with k=1, s1=s2=1, pad=md
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("H,W,md", [(7, 9, 0), (7, 9, 1), (9, 8, 3), (5, 11, 4)])
def test_corrtorch_reference_equals_flownet_k1(H, W, md):
    x1 = _randn(2, 3, H, W, seed=21)
    x2 = _randn(2, 3, H, W, seed=22)
    out = corrtorch_reference(x1, x2, pad_size=md, max_displacement=md)
    assert out.shape == (2, (2 * md + 1) ** 2, H, W)
    _assert_close(out, flownet_reference(x1, x2, md, 1, md, 1, 1), 1e-12)
    # and the sampler flattened dy-major, divided by C
    P = 2 * md + 1
    _assert_close(out, correlate_reference(x1, x2, patch_size=P).reshape(2, P * P, H, W) / 3, 1e-12)


def test_corrtorch_reference_rejects_pad_not_md():
    x = _randn(1, 1, 4, 4, seed=0)
    with pytest.raises(ValueError):
        corrtorch_reference(x, x, pad_size=2, max_displacement=3)


# ---------------------------------------------------------------------------
# (b) 1-D / 2-D / 3-D consistency
# ---------------------------------------------------------------------------

_3D_CASES = [
    # (kernel, patch, stride, padding, dilation, dilation_patch) for (h, w);
    # depth gets kernel 1, patch 1, padding 0 and arbitrary stride/dilations.
    (1, 1, 1, 0, 1, 1),
    (1, 5, 1, 0, 1, 1),
    ((3, 2), (4, 3), (2, 1), (1, 2), (1, 2), (2, 1)),
    (2, (2, 5), 3, 2, 2, 3),
]


@pytest.mark.parametrize("case", range(len(_3D_CASES)))
def test_3d_reference_with_unit_depth_matches_2d(case):
    k, patch, st, pad, dil, dil_p = _3D_CASES[case]
    x1 = _randn(2, 3, 7, 10, seed=31 + case)
    x2 = _randn(2, 3, 7, 10, seed=41 + case)

    def t3(value, depth):
        return (depth, *torch.nn.modules.utils._pair(value))

    out2 = correlate_reference(x1, x2, k, patch, st, pad, dil, dil_p)
    out3 = correlate_reference(
        x1.unsqueeze(2), x2.unsqueeze(2),
        t3(k, 1), t3(patch, 1), t3(st, 3), t3(pad, 0), t3(dil, 2), t3(dil_p, 4),
    )
    B, PH, PW, oH, oW = out2.shape
    assert out3.shape == (B, 1, PH, PW, 1, oH, oW)
    _assert_close(out3[:, 0, :, :, 0], out2, 1e-12)


def test_3d_reference_depth_kernel_and_patch_match_sum_of_2d_slices():
    """Along depth, the 3-D reference is a sum over kernel taps of 2-D ones."""
    D, H, W = 5, 4, 6
    x1 = _randn(2, 2, D, H, W, seed=51)
    x2 = _randn(2, 2, D, H, W, seed=52)
    kd, pd, sd, padd, dild, dpd = 2, 4, 2, 1, 2, 1
    k2, p2 = (2, 1), (3, 2)
    out3 = correlate_reference(
        x1, x2, (kd, *k2), (pd, *p2), (sd, 1, 1), (padd, 0, 1), (dild, 1, 1), (dpd, 2, 1)
    )
    oD = (D + 2 * padd - ((kd - 1) * dild + 1)) // sd + 1
    out2_shape = correlate_reference(x1[:, :, 0], x2[:, :, 0], k2, p2, 1, (0, 1), 1, (2, 1)).shape
    assert out3.shape == (2, pd, *p2, oD, *out2_shape[-2:])
    for ipd in range(pd):
        dz = (ipd - (pd - 1) // 2) * dpd
        for od in range(oD):
            expected = torch.zeros(out2_shape, dtype=F64)
            for i in range(kd):
                z = od * sd - padd + i * dild
                if 0 <= z < D and 0 <= z + dz < D:
                    expected += correlate_reference(
                        x1[:, :, z], x2[:, :, z + dz], k2, p2, 1, (0, 1), 1, (2, 1)
                    )
            _assert_close(out3[:, ipd, :, :, od], expected[:, :, :], 1e-12)


def test_1d_reference_matches_2d_with_unit_height():
    x1 = _randn(3, 2, 13, seed=61)
    x2 = _randn(3, 2, 13, seed=62)
    out1 = correlate_reference(x1, x2, 3, 4, 2, 1, 2, 3)
    out2 = correlate_reference(
        x1.unsqueeze(2), x2.unsqueeze(2), (1, 3), (1, 4), (5, 2), (0, 1), (3, 2), (2, 3)
    )
    assert out1.shape == (3, 4, out2.shape[-1])
    _assert_close(out2[:, 0, :, 0], out1, 1e-12)
