"""Volumetric correlation: 5-D inputs (B, C, D, H, W) with a 3-D patch, against the float64 3-D reference.

The engine and planner are N-dimensional; these tests hold them to the same
guarantees in 3-D as in 2-D: exact values and gradients in many tiles, the
fused reductions, the planned workspace within the budget and measured, and
the configuration of the volumetric pure-PyTorch ports (padding = maximum
displacement, kernel 1, mean over channels).
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F

import tiledcorr
from tiledcorr.tools.measure import peak_memory
from tiledcorr.reference import correlate_reference

from support import assert_matches_reference, cpu_strategies

STRATEGIES = cpu_strategies()

F64 = torch.float64


def _random_config(rng: random.Random) -> tuple[tuple[int, ...], dict]:
    """Small odd volumes; kernel, stride, dilations > 1 somewhere; even patches."""
    shape = (rng.randint(1, 2), rng.randint(1, 3), rng.choice([3, 5]), rng.choice([4, 5]), rng.choice([5, 6]))
    kw = dict(
        kernel_size=(1, rng.randint(1, 2), rng.randint(1, 2)),
        patch_size=(rng.choice([2, 3]), rng.choice([1, 3, 4]), 3),
        stride=(1, rng.randint(1, 2), rng.randint(1, 2)),
        padding=(rng.randint(0, 1), rng.randint(0, 1), 1),
        dilation=(1, 1, rng.randint(1, 2)),
        dilation_patch=(rng.randint(1, 2), 1, rng.randint(1, 2)),
    )
    return shape, kw


CONFIGS = [_random_config(random.Random(100 + seed)) for seed in range(4)]


def _inputs(shape, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g, dtype=F64).to(dtype) for _ in range(2))


def _tiny_plan(shape, dtype, strategy, factor=4, **kw) -> tiledcorr.Plan:
    """The plan of ``factor`` times the smallest feasible budget (forward and backward)."""
    try:
        tiledcorr.plan(shape, dtype=dtype, memory_budget=1, strategy=strategy, requires_grad=True, **kw)
    except tiledcorr.MemoryBudgetError as exc:
        budget = factor * exc.minimum_bytes
    return tiledcorr.plan(shape, dtype=dtype, memory_budget=budget, strategy=strategy, requires_grad=True, **kw)


@pytest.mark.parametrize("index", range(len(CONFIGS)))
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_forward_and_gradients_match_the_3d_reference(index, strategy):
    shape, kw = CONFIGS[index]
    x1, x2 = _inputs(shape, seed=index)
    plan = _tiny_plan(shape, F64, strategy, **kw)
    assert plan.passes >= 4 and plan.peak_workspace_bytes <= plan.budget_bytes
    out, ref = assert_matches_reference(
        lambda a, b: tiledcorr.correlate(a, b, **kw, plan=plan), lambda a, b: correlate_reference(a, b, **kw),
        x1, x2, rtol=1e-10, atol=1e-10,
    )
    assert out.shape == ref.shape and out.dim() == 7  # (B, PD, PH, PW, oD, oH, oW)


def test_float32_matches_the_3d_reference():
    shape, kw = CONFIGS[0]
    x1, x2 = _inputs(shape, torch.float32, seed=20)
    out = tiledcorr.correlate(x1, x2, **kw, plan=_tiny_plan(shape, torch.float32, "tile_matmul", **kw))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, correlate_reference(x1, x2, **kw).float(), rtol=1e-5, atol=1e-5)


def test_gradcheck_3d_across_several_tiles():
    kw = dict(kernel_size=(1, 2, 1), patch_size=(2, 3, 3), stride=(1, 1, 2), padding=1, dilation_patch=(1, 2, 1))
    shape = (1, 2, 3, 4, 4)
    x1, x2 = _inputs(shape, seed=3)
    plan = _tiny_plan(shape, F64, "tile_matmul", **kw)
    assert plan.passes > 4
    fn = lambda a, b: tiledcorr.correlate(a, b, **kw, plan=plan)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x1.requires_grad_(), x2.requires_grad_()), fast_mode=True)


def _port_3d(input1: torch.Tensor, input2: torch.Tensor, max_displacement: int) -> torch.Tensor:
    """The volumetric CorrTorch ports of registration code, transcribed: ConstantPad3d(md) on input2,
    then for every shift (dz, dy, dx) in [0, 2md]^3, dz-major, the mean over channels of input1 * shifted input2."""
    md = max_displacement
    padded = F.pad(input2, [md] * 6)
    D, H, W = input1.shape[2:]
    planes = [
        (input1 * padded[:, :, dz : dz + D, dy : dy + H, dx : dx + W]).mean(dim=1)
        for dz, dy, dx in itertools.product(range(2 * md + 1), repeat=3)
    ]
    return torch.stack(planes, dim=1)  # (B, (2md+1)**3, D, H, W)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_ports_configuration_pad_md_kernel_1_channel_mean(dtype):
    """patch_size = 2*md + 1 (implicit zero padding replaces the ports' ConstantPad3d), normalize="channels"."""
    md = 2
    x1, x2 = _inputs((2, 5, 5, 6, 7), dtype, seed=4)
    out = tiledcorr.correlate(x1, x2, patch_size=2 * md + 1, normalize="channels", flatten=True, memory_budget="64KiB")
    expected = _port_3d(x1.double(), x2.double(), md)
    assert out.shape == expected.shape == (2, 125, 5, 6, 7)
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(out, expected.to(dtype), rtol=tol, atol=tol)


def test_reductions_in_3d_against_the_reference():
    """argmax gives (dz, dy, dx); every reduction equals the torch reduction of the reference volume."""
    shape, kw = CONFIGS[1]
    x1, x2 = _inputs(shape, seed=5)
    plan = _tiny_plan(shape, F64, "shift", **kw)
    volume = correlate_reference(x1, x2, **kw).flatten(1, 3)  # (B, PD*PH*PW, *out)
    per_dim = [[(j - (P - 1) // 2) * q for j in range(P)] for P, q in zip(kw["patch_size"], kw["dilation_patch"])]
    table = torch.tensor(list(itertools.product(*per_dim)))  # (J, 3): (dz, dy, dx), dz-major
    argmax = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="argmax", plan=plan)
    assert argmax.shape == (shape[0], 3, *volume.shape[2:])
    assert torch.equal(argmax, table[volume.argmax(1)].movedim(-1, 1))
    torch.testing.assert_close(tiledcorr.correlate_reduce(x1, x2, **kw, reduction="max", plan=plan), volume.amax(1))
    soft = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="softargmax", temperature=0.5, plan=plan)
    expected = torch.einsum("bj...,jc->bc...", torch.softmax(volume / 0.5, 1), table.double())
    torch.testing.assert_close(soft, expected, rtol=1e-12, atol=1e-12)
    top = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="topk", k=5, plan=plan)
    values, index = torch.sort(volume, dim=1, descending=True, stable=True)
    torch.testing.assert_close(top.values, values[:, :5])
    assert torch.equal(top.displacements, table[index[:, :5]].movedim(-1, 2))


def test_softargmax_gradient_in_3d():
    shape, kw = CONFIGS[2]
    x1, x2 = _inputs(shape, seed=6)
    plan = _tiny_plan(shape, F64, "tile_matmul", **kw)
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate_reduce(a, b, **kw, reduction="softargmax", plan=plan)
    ra, rb = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    volume = correlate_reference(ra, rb, **kw).flatten(1, 3)
    per_dim = [[(j - (P - 1) // 2) * q for j in range(P)] for P, q in zip(kw["patch_size"], kw["dilation_patch"])]
    table = torch.tensor(list(itertools.product(*per_dim)), dtype=F64)
    ref = torch.einsum("bj...,jc->bc...", torch.softmax(volume, 1), table)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-10, atol=1e-10)


def test_3d_plan_fits_the_budget_and_the_measured_peak():
    """The planner's 3-D workspace is within the budget, and the measured CPU peak within workspace + output."""
    shape, kw = (1, 8, 12, 14, 16), dict(patch_size=5, padding=2)
    x1, x2 = _inputs(shape, torch.float32, seed=7)
    plan = tiledcorr.plan(shape, memory_budget="1MiB", **kw)
    assert plan.forward_workspace_bytes <= 1024 * 1024 and plan.passes > 1
    assert "patch 5x5x5" in str(plan) and "5x5x5" in str(plan).split("displacements")[1]
    run = lambda: tiledcorr.correlate(x1, x2, **kw, plan=plan)  # noqa: E731
    peak_memory(run)  # warm-up
    out, peak = peak_memory(run)
    assert peak <= plan.forward_workspace_bytes + plan.output_bytes + 256 * 1024, (peak, plan.forward_workspace_bytes)
    torch.testing.assert_close(out, correlate_reference(x1, x2, **kw).float(), rtol=1e-5, atol=1e-5)
