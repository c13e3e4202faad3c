"""Flow conventions: :func:`tiledcorr.displacement_to_flow`, :func:`tiledcorr.index_to_displacement`,
:func:`tiledcorr.volume_to_flow`.

Checked against hand-computed displacements, against the fused reductions
(the same displacements without the volume), and against the convention
optical-flow code uses (``flow[:, 0] = u`` horizontal, ``flow[:, 1] = v``
vertical, ``frame2[y + v, x + u] == frame1[y, x]``), written here without
torchvision.
"""

from __future__ import annotations

import pytest
import torch

import tiledcorr
from tiledcorr import (
    ArgumentTypeError,
    ArgumentValueError,
    ShapeError,
    correlate,
    correlate_reduce,
    displacement_to_flow,
    index_to_displacement,
    volume_to_flow,
)

F64 = torch.float64


def _randn(*shape, seed, dtype=F64):
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --------------------------------------------------------------------------- displacement_to_flow


def test_displacement_to_flow_swaps_dy_dx():
    dydx = torch.tensor([[[[3]], [[-2]]]])                     # (1, 2, 1, 1): dy = 3, dx = -2
    assert displacement_to_flow(dydx).flatten().tolist() == [-2, 3]
    assert displacement_to_flow(dydx).dtype == torch.int64


def test_displacement_to_flow_volumes_and_other_axes():
    dzdydx = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1)  # (dz, dy, dx)
    assert displacement_to_flow(dzdydx).flatten().tolist() == [3.0, 2.0, 1.0]   # (dx, dy, dz)
    topk = torch.arange(2 * 4 * 2 * 5 * 6).view(2, 4, 2, 5, 6)  # TopK.displacements: (B, k, N, oH, oW)
    flow = displacement_to_flow(topk, dim=2)
    assert torch.equal(flow[:, :, 0], topk[:, :, 1]) and torch.equal(flow[:, :, 1], topk[:, :, 0])
    assert torch.equal(displacement_to_flow(topk, dim=-3), flow)


def test_displacement_to_flow_is_differentiable():
    d = _randn(1, 2, 3, 4, seed=0).requires_grad_()
    displacement_to_flow(d)[:, 0].sum().backward()               # u = dx gets the gradient of channel 0
    assert torch.equal(d.grad[:, 1], torch.ones(1, 3, 4, dtype=F64)) and not d.grad[:, 0].any()


@pytest.mark.parametrize("args,error,match", [
    ((torch.zeros(1, 4, 2, 2),), ShapeError, "2 \\(dy, dx\\) or 3"),
    ((torch.zeros(1, 2, 2, 2), 4), ArgumentValueError, "dim must be in"),
    ((torch.zeros(1, 2, 2, 2), 1.0), ArgumentTypeError, "dim must be an int"),
    (([[1, 2]],), ArgumentTypeError, "displacements must be a Tensor"),
])
def test_displacement_to_flow_errors(args, error, match):
    with pytest.raises(error, match=match):
        displacement_to_flow(*args)


# --------------------------------------------------------------------------- index_to_displacement


def test_index_to_displacement_by_hand():
    index = torch.arange(9)
    d = index_to_displacement(index, patch_size=3, dim=0)        # (2, 9): dy-major, radius 1
    assert d[0].tolist() == [-1, -1, -1, 0, 0, 0, 1, 1, 1]
    assert d[1].tolist() == [-1, 0, 1, -1, 0, 1, -1, 0, 1]


def test_index_to_displacement_even_patch_dilation_and_dim():
    # patch (4, 5), dilation_patch (2, 3): j = jy*5 + jx -> ((jy - 1)*2, (jx - 2)*3)
    index = torch.tensor([[0, 7], [19, 12]])
    d = index_to_displacement(index, patch_size=(4, 5), dilation_patch=(2, 3), dim=-1)
    assert d.shape == (2, 2, 2)
    expected = [[[(0 - 1) * 2, (0 - 2) * 3], [(1 - 1) * 2, (2 - 2) * 3]],
                [[(3 - 1) * 2, (4 - 2) * 3], [(2 - 1) * 2, (2 - 2) * 3]]]
    assert d.tolist() == expected
    assert index_to_displacement(index, patch_size=(4, 5), dilation_patch=(2, 3), dim=0).permute(1, 2, 0).tolist() \
        == expected


def test_index_to_displacement_volumes():
    # patch (3, 3, 3), j = jz*9 + jy*3 + jx; 3-D from the length of patch_size (dilation_patch an int)
    d = index_to_displacement(torch.tensor([0, 5, 26]), patch_size=(3, 3, 3), dilation_patch=2, dim=1)
    assert d.tolist() == [[-2, -2, -2], [-2, 0, 2], [2, 2, 2]]


def test_index_to_displacement_matches_the_fused_argmax():
    x1, x2 = _randn(2, 6, 11, 13, seed=1), _randn(2, 6, 11, 13, seed=2)
    kwargs = dict(patch_size=(5, 7), stride=2, dilation_patch=(1, 2))
    volume = correlate(x1, x2, **kwargs)
    d = index_to_displacement(volume.flatten(1, 2).argmax(1), patch_size=(5, 7), dilation_patch=(1, 2))
    assert torch.equal(d, correlate_reduce(x1, x2, reduction="argmax", **kwargs))


@pytest.mark.parametrize("index,kwargs,error,match", [
    (torch.tensor([9]), dict(patch_size=3), ArgumentValueError, "must lie in \\[0, 9\\)"),
    (torch.tensor([-1]), dict(patch_size=3), ArgumentValueError, "must lie in"),
    (torch.tensor([0.0]), dict(patch_size=3), ArgumentTypeError, "index must be an integer Tensor"),
    (torch.tensor([0]), dict(patch_size=0), ArgumentValueError, "patch_size"),
    (torch.tensor([0]), dict(patch_size=(3, 3), dilation_patch=(1, 1, 1)), ArgumentValueError, "dilation_patch"),
    (torch.tensor([0]), dict(patch_size=3, dim=3), ArgumentValueError, "dim must be in"),
])
def test_index_to_displacement_errors(index, kwargs, error, match):
    with pytest.raises(error, match=match):
        index_to_displacement(index, **kwargs)


# --------------------------------------------------------------------------- volume_to_flow


def test_volume_to_flow_follows_the_optical_flow_convention():
    """Frame 2 is frame 1 moved by (u, v) = (-1, 2): frame2[y + v, x + u] == frame1[y, x]."""
    u, v = -1, 2
    frame1 = _randn(1, 128, 14, 17, seed=3)   # many channels: the true match dominates
    frame2 = torch.roll(frame1, shifts=(v, u), dims=(2, 3))
    flow = volume_to_flow(correlate(frame1, frame2, patch_size=7))
    assert flow.shape == (1, 2, 14, 17) and flow.dtype == F64
    interior = flow[0, :, 3:-3, 3:-3]
    assert (interior[0] == u).all() and (interior[1] == v).all()
    y, x = 5, 9   # the convention itself, at one pixel
    assert torch.equal(frame2[0, :, y + int(flow[0, 1, y, x]), x + int(flow[0, 0, y, x])], frame1[0, :, y, x])


def test_volume_to_flow_argmax_equals_the_fused_reduction():
    x1, x2 = _randn(2, 5, 12, 9, seed=4), _randn(2, 5, 12, 9, seed=5)
    kwargs = dict(kernel_size=3, patch_size=9, stride=(1, 2), padding=1, dilation_patch=2)
    flow = volume_to_flow(correlate(x1, x2, **kwargs), dilation_patch=2)
    assert torch.equal(flow, displacement_to_flow(correlate_reduce(x1, x2, reduction="argmax", **kwargs)).to(F64))


def test_volume_to_flow_softargmax_equals_the_fused_reduction():
    x1, x2 = _randn(1, 4, 10, 11, seed=6), _randn(1, 4, 10, 11, seed=7)
    flow = volume_to_flow(correlate(x1, x2, patch_size=(5, 3)), reduction="softargmax", temperature=0.5)
    fused = correlate_reduce(x1, x2, patch_size=(5, 3), reduction="softargmax", temperature=0.5)
    torch.testing.assert_close(flow, displacement_to_flow(fused), rtol=1e-10, atol=1e-10)


def test_volume_to_flow_softargmax_gradcheck():
    volume = _randn(1, 3, 3, 2, 3, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: volume_to_flow(v, reduction="softargmax", temperature=2.0), (volume,))


def test_volume_to_flow_flattened_volumes():
    """FlowNet-style (B, P*P, oH, oW) volumes need patch_size; the result is the same."""
    x1, x2 = _randn(2, 3, 8, 10, seed=9), _randn(2, 3, 8, 10, seed=10)
    flat = correlate(x1, x2, patch_size=5, dilation_patch=3, flatten=True)
    assert flat.shape == (2, 25, 8, 10)
    expected = volume_to_flow(correlate(x1, x2, patch_size=5, dilation_patch=3), dilation_patch=3)
    assert torch.equal(volume_to_flow(flat, patch_size=5, dilation_patch=3), expected)
    assert torch.equal(volume_to_flow(flat.view(2, 5, 5, 8, 10), patch_size=5, dilation_patch=3), expected)


def test_volume_to_flow_volumes_are_dx_dy_dz():
    """3-D: frame 2 moved by (dz, dy, dx) = (1, -1, 2) gives (dx, dy, dz) = (2, -1, 1)."""
    frame1 = _randn(1, 128, 7, 8, 9, seed=11)
    frame2 = torch.roll(frame1, shifts=(1, -1, 2), dims=(2, 3, 4))
    flow = volume_to_flow(correlate(frame1, frame2, patch_size=5))
    assert flow.shape == (1, 3, 7, 8, 9)
    assert flow[0, :, 2:-2, 2:-2, 2:-2].flatten(1).unique(dim=1).tolist() == [[2.0], [-1.0], [1.0]]


@pytest.mark.parametrize("volume,kwargs,error,match", [
    (torch.zeros(1, 9, 4, 4), {}, ShapeError, "pass patch_size"),
    (torch.zeros(1, 9, 4, 4), dict(patch_size=5), ShapeError, "patch_size=\\(5, 5\\)"),
    (torch.zeros(1, 3, 3, 4, 4), dict(reduction="max"), ArgumentValueError, "reduction"),
    (torch.zeros(1, 3, 3, 4, 4), dict(reduction="softargmax", temperature=0), ArgumentValueError, "temperature"),
    (torch.zeros(1, 3, 3, 4, 4, dtype=torch.long), {}, ArgumentTypeError, "floating Tensor"),
])
def test_volume_to_flow_errors(volume, kwargs, error, match):
    with pytest.raises(error, match=match):
        volume_to_flow(volume, **kwargs)


def test_exported():
    for name in ("displacement_to_flow", "index_to_displacement", "volume_to_flow"):
        assert name in tiledcorr.__all__ and getattr(tiledcorr, name).__module__ == "tiledcorr.ops.flow"
