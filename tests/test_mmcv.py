"""mmcv's ``Correlation`` drop-in (:class:`tiledcorr.MMCVCorrelation`, :func:`tiledcorr.mmcv_correlation`).

mmcv's definition (docs/semantics.md, "mmcv"): the sampler with
``patch_size = 2*max_displacement + 1``, a plain sum. Checked against the
float64 reference :func:`tiledcorr.reference.correlate_reference` over a grid
of every constructor argument, on odd non-square sizes, forward and both
input gradients, and with ``gradcheck`` through the Module.
"""

from __future__ import annotations

import pytest
import torch

import tiledcorr
from tiledcorr import ArgumentTypeError, ArgumentValueError, MMCVCorrelation, ShapeError, mmcv_correlation
from tiledcorr.reference import correlate_reference

from support import assert_matches_reference

F64 = torch.float64


def _inputs(shape, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=F64, generator=g).to(dtype), torch.randn(*shape, dtype=F64, generator=g).to(dtype)


# (kernel_size, max_displacement, stride, padding, dilation, dilation_patch): every argument away from
# its default at least twice, pairs for the tuple-taking ones, md = 0 (one displacement).
GRID = [
    (1, 1, 1, 0, 1, 1),
    (1, 0, 1, 0, 1, 1),
    (1, 4, 1, 0, 1, 1),
    (3, 2, 1, 1, 1, 1),
    (1, 3, 2, 0, 1, 2),
    (3, 1, 2, 2, 2, 1),
    (2, 2, 3, 1, 1, 3),
    ((1, 3), 2, (1, 2), (0, 1), (1, 2), (2, 1)),
    (3, 3, 1, 0, 2, 2),
]


@pytest.mark.parametrize("args", GRID, ids=str)
def test_matches_reference(args):
    kernel_size, md, stride, padding, dilation, dilation_patch = args
    x1, x2 = _inputs((2, 3, 9, 13), seed=len(str(args)))
    layer = MMCVCorrelation(kernel_size, md, stride, padding, dilation, dilation_patch)   # mmcv's positional order

    def reference(a, b):
        return correlate_reference(a, b, kernel_size, 2 * md + 1, stride, padding, dilation, dilation_patch)

    out, expected = assert_matches_reference(layer, reference, x1, x2, rtol=1e-10, atol=1e-10)
    assert out.shape[1:3] == (2 * md + 1, 2 * md + 1)
    # The functional form is the same computation.
    torch.testing.assert_close(mmcv_correlation(x1, x2, *args), expected, rtol=1e-10, atol=1e-10)


def test_output_shape_is_mmcvs():
    """(B, 2md+1, 2md+1, oH, oW) with oH = (H + 2p - ((k-1)l + 1)) // s + 1, as mmcv's ``_output_size``."""
    x1, x2 = _inputs((1, 4, 17, 10), seed=1, dtype=torch.float32)
    out = MMCVCorrelation(kernel_size=3, max_displacement=2, stride=2, padding=1, dilation=2)(x1, x2)
    assert out.shape == (1, 5, 5, (17 + 2 - 5) // 2 + 1, (10 + 2 - 5) // 2 + 1)
    assert out.dtype == torch.float32 and out.is_contiguous()


def test_zero_displacement_is_the_centre():
    """The centre of the patch is the zero displacement: the correlation of input1 with itself."""
    x1, _ = _inputs((2, 5, 7, 8), seed=2)
    out = MMCVCorrelation(max_displacement=2)(x1, x1)
    torch.testing.assert_close(out[:, 2, 2], (x1 * x1).sum(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("args", [(3, 1, 2, 1, 1, 2), (2, 2, 1, 0, 2, 1)], ids=str)
def test_gradcheck(args):
    x1, x2 = _inputs((1, 2, 5, 6), seed=3)
    layer = MMCVCorrelation(*args)
    assert torch.autograd.gradcheck(layer, (x1.requires_grad_(), x2.requires_grad_()))


def test_memory_budget_is_passed_on(smallest_budget):
    """A budget just above the smallest gives the same numbers; below it, tiledcorr's error."""
    x1, x2 = _inputs((1, 4, 9, 11), seed=4)
    minimum = smallest_budget(tuple(x1.shape), patch_size=7, dtype=F64)
    tight = MMCVCorrelation(max_displacement=3, memory_budget=minimum)(x1, x2)
    torch.testing.assert_close(tight, correlate_reference(x1, x2, 1, 7), rtol=1e-10, atol=1e-10)
    with pytest.raises(tiledcorr.MemoryBudgetError):
        mmcv_correlation(x1, x2, max_displacement=3, memory_budget=minimum // 4)


@pytest.mark.parametrize("value,error", [
    (-1, ArgumentValueError), (1.0, ArgumentTypeError), (True, ArgumentTypeError), ((1, 1), ArgumentTypeError),
])
def test_bad_max_displacement(value, error):
    with pytest.raises(error, match="max_displacement"):
        MMCVCorrelation(max_displacement=value)
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(error, match="max_displacement"):
        mmcv_correlation(x, x, 1, value)


def test_bad_inputs_are_named():
    with pytest.raises(ShapeError):
        MMCVCorrelation()(torch.randn(1, 2, 3, 5, 5), torch.randn(1, 2, 3, 5, 5))   # mmcv takes images only
    with pytest.raises(ArgumentValueError, match="padding"):
        MMCVCorrelation(padding=-1)(torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5))


def test_repr_lists_mmcvs_arguments():
    text = repr(MMCVCorrelation(3, 4, stride=2))
    assert text.startswith("MMCVCorrelation(")
    for part in ("kernel_size=3", "max_displacement=4", "stride=2", "padding=0", "dilation=1", "dilation_patch=1"):
        assert part in text
    assert "memory_budget" not in text and "memory_budget='1GiB'" in repr(MMCVCorrelation(memory_budget="1GiB"))


def test_not_flownets_correlation():
    """tiledcorr.Correlation is FlowNet2's (divided by k*k*C): the names must not be confused."""
    x1, x2 = _inputs((1, 6, 9, 9), seed=5)
    mmcv = MMCVCorrelation(max_displacement=2)(x1, x2).reshape(1, 25, 9, 9)
    flownet = tiledcorr.Correlation(pad_size=2, kernel_size=1, max_displacement=2, stride1=1, stride2=1)(x1, x2)
    torch.testing.assert_close(flownet * 6, mmcv, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(flownet, mmcv)
