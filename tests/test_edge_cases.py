"""Edge cases that must work: empty dimensions, tiny images, huge patches and padding,
unusual memory layouts, grad modes, autocast, devices.

Every value is compared with the float64 reference, forward and backward.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

import tiledcorr
from tiledcorr import compat
from tiledcorr import correlate_reduce
from tiledcorr.reference import correlate_reference

F64 = torch.float64


def _randn(*shape, dtype=F64, seed=0):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def check_against_reference(x1, x2, tol=1e-10, **kw):
    """Forward and both gradients of correlate against the reference; returns the output."""
    a, b = x1.detach().requires_grad_(), x2.detach().requires_grad_()
    out = tiledcorr.correlate(a, b, **kw)
    ra, rb = x1.detach().double().requires_grad_(), x2.detach().double().requires_grad_()
    ref = correlate_reference(ra, rb, **kw)
    assert out.shape == ref.shape and out.dtype == x1.dtype and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    grad = _randn(*ref.shape, seed=9)
    out.backward(grad.to(out.dtype))
    if ref.requires_grad:  # the reference builds no graph when an input is empty
        ref.backward(grad)
    for mine, theirs in ((a.grad, ra.grad), (b.grad, rb.grad)):
        assert mine.shape == x1.shape
        torch.testing.assert_close(mine.double(), theirs if theirs is not None else torch.zeros_like(mine.double()),
                                   rtol=tol, atol=tol)
    return out


@pytest.mark.parametrize("shape, kw, out_shape", [
    ((0, 3, 5, 6), dict(patch_size=3), (0, 3, 3, 5, 6)),
    ((2, 0, 5, 6), dict(patch_size=3, normalize="channels"), (2, 3, 3, 5, 6)),
    ((2, 3, 2, 6), dict(kernel_size=3), (2, 1, 1, 0, 4)),
    ((2, 3, 5, 6), dict(kernel_size=(2, 9), patch_size=5), (2, 5, 5, 4, 0)),
    ((1, 2, 0, 4), dict(patch_size=3, padding=1), (1, 3, 3, 2, 6)),
    ((0, 2, 3, 4, 5), dict(patch_size=3), (0, 3, 3, 3, 3, 4, 5)),
], ids=["B=0", "C=0", "kernel-taller-than-image", "empty-width", "H=0-padded", "B=0-volume"])
def test_empty_dimensions(shape, kw, out_shape):
    normalize = kw.pop("normalize", None)
    x1, x2 = _randn(*shape), _randn(*shape, seed=1)
    out = tiledcorr.correlate(x1, x2, normalize=normalize, **kw)
    assert out.shape == out_shape
    assert not out.any()  # empty, or sums of no terms
    check_against_reference(x1, x2, **kw)


@pytest.mark.parametrize("shape, kw", [
    ((2, 3, 1, 1), dict(patch_size=3)),
    ((2, 3, 1, 1), dict(kernel_size=3, patch_size=5, padding=2)),
    ((1, 2, 3, 4), dict(patch_size=(9, 11))),  # patch larger than the image
    ((1, 2, 3, 4), dict(patch_size=7, dilation_patch=3, stride=2)),
    ((1, 2, 3, 2), dict(padding=5, patch_size=3)),  # padding larger than the image
    ((2, 2, 2, 3), dict(kernel_size=2, padding=(6, 4), patch_size=(3, 5), dilation=3)),
    ((1, 2, 1, 5), dict(kernel_size=(1, 3), patch_size=(5, 3))),
], ids=["1x1", "1x1-padded", "patch>image", "dilated-patch>image", "padding>image", "padding>image-k2", "1-row"])
def test_small_images_large_patches_and_padding(shape, kw):
    out = check_against_reference(_randn(*shape), _randn(*shape, seed=1), **kw)
    assert out.numel() > 0


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same values as ``x`` in several memory layouts."""
    B, C, H, W = x.shape
    wide = torch.zeros(B, 2 * C, H, 2 * W, dtype=x.dtype)
    wide[:, ::2, :, ::2] = x
    return {
        "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "strided": wide[:, ::2, :, ::2],
        "offset": torch.nn.functional.pad(x, (2, 1, 1, 1))[:, :, 1:-1, 2:-1],
    }


@pytest.mark.parametrize("layout", ["transposed", "channels_last", "strided", "offset"])
def test_memory_layouts(layout):
    kw = dict(kernel_size=2, patch_size=5, padding=1, stride=(1, 2))
    x1, x2 = _randn(2, 3, 7, 8), _randn(2, 3, 7, 8, seed=1)
    a, b = _layouts(x1)[layout], _layouts(x2)[layout]
    assert torch.equal(a, x1)
    check_against_reference(a, b, **kw)


def test_expanded_stride0_inputs_and_their_gradients():
    """Broadcast views (stride 0) work, and gradients flow back to the small tensors."""
    kw = dict(patch_size=3, kernel_size=2, padding=1)
    row = _randn(1, 3, 1, 6).requires_grad_()  # one row, repeated over batch and height
    chan = _randn(2, 1, 5, 6, seed=1).requires_grad_()  # one channel, repeated
    a, b = row.expand(2, 3, 5, 6), chan.expand(2, 3, 5, 6)
    assert 0 in a.stride() and 0 in b.stride()
    out = tiledcorr.correlate(a, b, **kw)
    ra, rb = row.detach().clone().requires_grad_(), chan.detach().clone().requires_grad_()
    ref = correlate_reference(ra.expand(2, 3, 5, 6), rb.expand(2, 3, 5, 6), **kw)
    torch.testing.assert_close(out, ref)
    grad = _randn(*ref.shape, seed=2)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(row.grad, ra.grad)
    torch.testing.assert_close(chan.grad, rb.grad)


def test_same_tensor_as_both_inputs():
    x = _randn(1, 2, 5, 5).requires_grad_()
    out = tiledcorr.correlate(x, x, patch_size=3)
    out.sum().backward()
    r = x.detach().clone().requires_grad_()
    correlate_reference(r, r, patch_size=3).sum().backward()
    torch.testing.assert_close(x.grad, r.grad)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_grad_modes(mode):
    x1, x2 = _randn(1, 2, 5, 6).requires_grad_(), _randn(1, 2, 5, 6, seed=1).requires_grad_()
    expected = correlate_reference(x1.detach(), x2.detach(), patch_size=3)
    with getattr(torch, mode)():
        out = tiledcorr.correlate(x1, x2, patch_size=3)
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, expected)
    if mode == "inference_mode":
        assert out.is_inference()


def test_no_grad_plans_for_the_forward_only():
    """Inside no_grad the backward need not fit the budget (it will not run)."""
    x = _randn(1, 4, 16, 16, dtype=torch.float32).requires_grad_()
    with torch.no_grad():
        tiledcorr.correlate(x, x, patch_size=9, memory_budget="64KiB")
    fwd = tiledcorr.plan(x.shape, patch_size=9, memory_budget="64KiB")
    assert fwd.forward_workspace_bytes <= 64 * 1024 and not fwd.requires_grad


def test_cpu_autocast_bfloat16_gives_the_dtype_of_matmul():
    x1, x2 = _randn(1, 4, 6, 7, dtype=torch.float32).requires_grad_(), _randn(1, 4, 6, 7, dtype=torch.float32, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiledcorr.correlate(x1, x2, patch_size=3)
        mm = torch.mm(x1[0, 0], x2[0, 0].T)
        kept = tiledcorr.correlate(x1.double(), x2.double(), patch_size=3)
    assert out.dtype == mm.dtype == torch.bfloat16
    assert kept.dtype == torch.float64  # like matmul, autocast leaves float64 alone
    expected = correlate_reference(x1.detach().bfloat16(), x2.bfloat16(), patch_size=3)
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2)
    out.float().sum().backward()
    assert x1.grad.dtype == torch.float32 and torch.isfinite(x1.grad).all()


@pytest.mark.cuda
def test_cuda_autocast_float16():
    x1, x2 = _randn(1, 4, 6, 7, dtype=torch.float32).cuda(), _randn(1, 4, 6, 7, dtype=torch.float32, seed=1).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        out = tiledcorr.correlate(x1, x2, patch_size=3)
        mm = torch.mm(x1[0, 0], x2[0, 0].T)
    assert out.dtype == mm.dtype == torch.float16 and out.device == x1.device
    expected = correlate_reference(x1.half().cpu(), x2.half().cpu(), patch_size=3)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=2e-3, atol=2e-3)


def test_every_device_matches_the_reference(device):
    x1, x2 = _randn(2, 3, 7, 8), _randn(2, 3, 7, 8, seed=1)
    kw = dict(kernel_size=2, patch_size=5, padding=1)
    out = tiledcorr.correlate(x1.to(device), x2.to(device), **kw)
    torch.testing.assert_close(out.cpu(), correlate_reference(x1, x2, **kw))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_inputs_on_two_cuda_devices_are_rejected():
    x = _randn(1, 2, 4, 4, dtype=torch.float32)
    with pytest.raises(tiledcorr.DeviceError, match="same device.*cuda:0.*cuda:1"):
        tiledcorr.correlate(x.to("cuda:0"), x.to("cuda:1"))


def checksum(x: torch.Tensor) -> str:
    """The exact bytes of ``x``'s values (NaN payloads and signed zeros included)."""
    return hashlib.sha256(x.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


CALLS = {
    "correlate": lambda a, b: tiledcorr.correlate(a, b, kernel_size=3, patch_size=5, padding=2, normalize="channels"),
    "tiny plan": lambda a, b: tiledcorr.correlate(a, b, patch_size=5, stride=2, memory_budget=4096),
    "volume": lambda a, b: tiledcorr.correlate(a[..., None], b[..., None], patch_size=3, padding=1),
    "sampler": lambda a, b: compat.spatial_correlation_sample(a, b, 1, 3, 1, 1),
    "flownet": lambda a, b: compat.flownet_correlation(a, b, 2, 3, 2, 1, 2),
    "softargmax": lambda a, b: correlate_reduce(a, b, patch_size=5, reduction="softargmax", normalize="sqrt_channels"),
    "max": lambda a, b: correlate_reduce(a, b, patch_size=3, reduction="max"),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("special", [False, True], ids=["finite", "nan-inf"])
def test_inputs_are_never_modified(call, dtype, special):
    """Checksums of the inputs (and of the upstream gradient) before and after forward and backward."""
    x1, x2 = _randn(2, 3, 7, 8).to(dtype), _randn(2, 3, 7, 8, seed=1).to(dtype)
    if special:
        x1[0, 1, 0, 0], x2[1, 2, 3, 4], x2[0, 0, -1, -1] = math.nan, math.inf, -0.0
    layouts = (x1.contiguous(memory_format=torch.channels_last), x2.transpose(2, 3).contiguous().transpose(2, 3))
    a, b = (t.requires_grad_() for t in layouts)
    before = [checksum(a), checksum(b)]
    out = CALLS[call](a, b)
    assert [checksum(a), checksum(b)] == before
    grad = torch.ones_like(out)
    grad_sum = checksum(grad)
    out.backward(grad)
    assert [checksum(a), checksum(b), checksum(grad)] == [*before, grad_sum]
