"""The RAFT-style look-up (issue 21) against RAFT's all-pairs CorrBlock, written from semantics.md section 5."""

from __future__ import annotations

import doctest
import json
import math

import pytest
import torch
import torch.nn.functional as F

from tiledcorr.errors import ArgumentTypeError, ArgumentValueError, MemoryBudgetError, ShapeError
from tiledcorr.execution.lookup import lookup_backward, lookup_forward
from tiledcorr.tools.measure import peak_memory
from tiledcorr.planning import lookup as planning
from tiledcorr.planning.lookup import plan_lookup
from tiledcorr.ops import lookup as ops
from tiledcorr.reference import raft_corr_block_reference
from tiledcorr import CorrBlock, CorrelationLookup, correlate_lookup


def _inputs(batch, channels, height, width, *, dtype=torch.float64, reach=None, seed=0):
    """Feature maps and coords, some reaching ``reach`` pixels outside the image (default 2r+3 for r=4)."""
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64).to(dtype)
    f2 = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64).to(dtype)
    reach = 11 if reach is None else reach
    size = torch.tensor([width, height], dtype=torch.float64).view(1, 2, 1, 1)
    coords = torch.rand(batch, 2, height, width, generator=g, dtype=torch.float64) * (size + 2 * reach) - reach
    coords[:, :, 0, :3] = torch.round(coords[:, :, 0, :3])  # integer positions: zero fractions
    coords[:, 0, 1, 0], coords[:, 1, 1, 1] = -1.0, float(height - 1)  # on the borders
    return f1, f2, coords.to(dtype)


def _minimum_budget(shape, *, requires_grad=True, **kwargs) -> int:
    with pytest.raises(MemoryBudgetError) as info:
        plan_lookup(shape, memory_budget=1, requires_grad=requires_grad, **kwargs)
    return info.value.minimum_bytes


def _budget_for(shape, positions, *, backward=True, **kwargs) -> int:
    """The budget whose largest tile has ``positions`` positions."""
    return planning.workspace_bytes(planning.lookup_buffers(shape, tile_positions=positions, backward=backward, **kwargs))


def _grads(fn, f1, f2, grad_out=None):
    a, b = f1.clone().requires_grad_(), f2.clone().requires_grad_()
    out = fn(a, b)
    grad_out = torch.randn_like(out) if grad_out is None else grad_out
    out.backward(grad_out)
    return out, a.grad, b.grad, grad_out


# --------------------------------------------------------------------------- exactness


CASES = [  # (B, C, H, W, num_levels, radius)
    (2, 3, 17, 19, 4, 1),
    (1, 4, 17, 21, 4, 4),
    (3, 2, 9, 13, 3, 2),
    (2, 5, 11, 7, 2, 3),
    (1, 3, 6, 5, 1, 4),
    (2, 1, 16, 18, 3, 1),
]


@pytest.mark.parametrize("batch, channels, height, width, num_levels, radius", CASES)
def test_equals_raft_corr_block_values_and_gradients_with_many_tiles(batch, channels, height, width, num_levels, radius):
    f1, f2, coords = _inputs(batch, channels, height, width, reach=2 * radius + 3)
    shape = (batch, channels, height, width)
    budget = _budget_for(shape, 5, num_levels=num_levels, radius=radius, dtype=torch.float64)
    plan = plan_lookup(shape, num_levels=num_levels, radius=radius, dtype=torch.float64, memory_budget=budget,
                       requires_grad=True)
    assert plan.tile_positions == 5 and plan.num_tiles >= batch * height * width // 5  # tiles of a few positions
    out, g1, g2, grad_out = _grads(lambda a, b: correlate_lookup(a, b, coords, radius, num_levels,
                                                                 memory_budget=budget), f1, f2)
    expected, e1, e2, _ = _grads(lambda a, b: raft_corr_block_reference(a, b, coords, num_levels, radius), f1, f2,
                                 grad_out)
    assert out.dtype == torch.float64 and out.shape == (batch, num_levels * (2 * radius + 1) ** 2, height, width)
    assert out.abs().max() > 0.1  # the window points are not all outside
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(g1, e1, rtol=0, atol=1e-10)
    torch.testing.assert_close(g2, e2, rtol=0, atol=1e-10)


def test_row_tiles_with_a_partial_last_tile():
    f1, f2, coords = _inputs(2, 6, 23, 17)
    shape, kwargs = f1.shape, dict(num_levels=3, radius=2, dtype=torch.float64)
    fixed = planning.workspace_bytes(planning.lookup_buffers(shape, tile_positions=0, backward=True, **kwargs))
    per_row = planning.workspace_bytes(planning.lookup_buffers(shape, tile_positions=17, backward=True, **kwargs)) - fixed
    budget = fixed + 5 * per_row + per_row // 2
    plan = plan_lookup(shape, memory_budget=budget, requires_grad=True, **kwargs)
    assert (plan.tile_rows, plan.tile_cols, plan.num_tiles) == (5, 17, 2 * 5)  # 23 rows = 4 x 5 + 3
    out, g1, g2, grad_out = _grads(lambda a, b: correlate_lookup(a, b, coords, 2, 3, memory_budget=budget), f1, f2)
    expected, e1, e2, _ = _grads(lambda a, b: raft_corr_block_reference(a, b, coords, 3, 2), f1, f2, grad_out)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(g1, e1, rtol=0, atol=1e-10)
    torch.testing.assert_close(g2, e2, rtol=0, atol=1e-10)


def test_gradcheck():
    f1, f2, coords = _inputs(2, 2, 4, 5, reach=3)
    budget = _budget_for(f1.shape, 3, num_levels=2, radius=1, dtype=torch.float64)
    fn = lambda a, b: correlate_lookup(a, b, coords, 1, 2, memory_budget=budget)  # noqa: E731
    inputs = (f1.clone().requires_grad_(), f2.clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("normalize, divisor", [(None, lambda c: 1.0), ("channels", lambda c: c)])
def test_other_normalisations(normalize, divisor):
    f1, f2, coords = _inputs(1, 7, 9, 10)
    out = correlate_lookup(f1, f2, coords, 2, 2, normalize=normalize)
    expected = raft_corr_block_reference(f1, f2, coords, 2, 2) * math.sqrt(7) / divisor(7)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_level_of_size_one_is_the_bilinear_value_where_raft_divides_by_zero():
    # A 1 x 1 level: the window point at (x, y) weighs the single pixel by (1-|x|)(1-|y|) inside (-1, 1)^2.
    f1, f2, coords = _inputs(1, 3, 3, 2, reach=1)
    out = correlate_lookup(f1, f2, coords, 1, 2)[:, 9:]  # level 1 is 1 x 1
    pooled = F.avg_pool2d(f2, 2)[0, :, 0, 0]  # (C,)
    corr = torch.einsum("chw,c->hw", f1[0], pooled) / math.sqrt(3)
    d = torch.arange(-1.0, 2.0, dtype=torch.float64)
    x = coords[0, 0] / 2 + d.view(3, 1, 1, 1)  # [a, 1, h, w]
    y = coords[0, 1] / 2 + d.view(1, 3, 1, 1)  # [1, b, h, w]
    weight = (1 - x.abs()).clamp(min=0) * (1 - y.abs()).clamp(min=0)
    torch.testing.assert_close(out[0], (weight * corr).reshape(9, 3, 2), rtol=0, atol=1e-12)
    assert raft_corr_block_reference(f1, f2, coords, 2, 1)[:, 9:].isnan().any()  # RAFT's own result


def test_far_and_non_finite_coords():
    f1, f2, coords = _inputs(1, 2, 8, 9)
    coords[0, 0, 0, 0], coords[0, 1, 0, 1] = 1e30, -1e30
    coords[0, 0, 1, 0], coords[0, 1, 1, 1], coords[0, 0, 1, 2] = float("nan"), float("inf"), -float("inf")
    out = correlate_lookup(f1, f2, coords, 1, 2)
    expected = raft_corr_block_reference(f1, f2, coords, 2, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10, equal_nan=True)
    assert (out[0, :, 0, :2] == 0).all() and out[0, :, 1, :3].isnan().all()


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 2e-1)])
def test_low_precision_accumulates_in_float32(dtype, atol):
    f1, f2, coords = _inputs(2, 16, 12, 11, dtype=dtype)
    out, g1, g2, grad_out = _grads(lambda a, b: correlate_lookup(a, b, coords, 3, 3), f1, f2)
    expected, e1, e2, _ = _grads(lambda a, b: raft_corr_block_reference(a, b, coords.double(), 3, 3), f1.double(),
                                 f2.double(), grad_out.double())
    assert out.dtype == torch.float32 and g1.dtype == g2.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=atol)
    torch.testing.assert_close(g1.double(), e1, rtol=atol, atol=atol * 10)
    torch.testing.assert_close(g2.double(), e2, rtol=atol, atol=atol * 10)


def test_non_contiguous_inputs():
    f1, f2, coords = _inputs(2, 4, 10, 12)
    expected = correlate_lookup(f1, f2, coords, 2, 2)
    nc = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    coords_view = coords.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    torch.testing.assert_close(correlate_lookup(nc(f1), nc(f2), coords_view, 2, 2), expected, rtol=0, atol=1e-12)


def test_corr_block_and_module_twin():
    f1, f2, coords = _inputs(1, 8, 16, 20)
    block = CorrBlock(f1, f2, memory_budget="2MiB")
    expected = raft_corr_block_reference(f1, f2, coords, 4, 4)
    torch.testing.assert_close(block(coords), expected, rtol=0, atol=1e-10)
    assert (block.num_levels, block.radius) == (4, 4)
    module = CorrelationLookup(2, num_levels=3, normalize="channels")
    assert "radius=2, num_levels=3, normalize='channels'" in repr(module)
    torch.testing.assert_close(module(f1, f2, coords), correlate_lookup(f1, f2, coords, 2, 3, "channels"))


def test_empty_batch():
    f1, f2, coords = _inputs(0, 3, 8, 8)
    a = f1.clone().requires_grad_()
    out = correlate_lookup(a, f2, coords, 2, 2)
    assert out.shape == (0, 50, 8, 8)
    out.sum().backward()
    assert a.grad.shape == a.shape


# --------------------------------------------------------------------------- plan and memory


def test_workspace_the_plan_predicts_is_what_the_execution_allocates():
    f1, f2, coords = _inputs(2, 5, 13, 15)
    plan = plan_lookup(f1.shape, num_levels=3, radius=2, dtype=torch.float64, memory_budget="220KiB",
                       requires_grad=True)
    assert plan.num_tiles > 2
    allocated = []
    hook = lambda name, tensor: allocated.append(tensor.numel() * tensor.element_size())  # noqa: E731
    out = lookup_forward(f1, f2, coords, plan, 0.5, on_allocate=hook)
    assert sum(allocated) == plan.workspace_forward_bytes
    allocated.clear()
    lookup_backward(torch.randn_like(out), f1, f2, coords, plan, 0.5, True, True, on_allocate=hook)
    assert sum(allocated) == plan.workspace_backward_bytes <= plan.budget_bytes
    for need1, need2 in ((True, False), (False, True)):
        allocated.clear()
        lookup_backward(torch.randn_like(out), f1, f2, coords, plan, 0.5, need1, need2, on_allocate=hook)
        expected = planning.workspace_bytes(plan.buffers(backward=True, need_fmap1=need1, need_fmap2=need2))
        assert sum(allocated) == expected < plan.workspace_backward_bytes


def test_measured_peak_is_the_predicted_workspace():
    f1, f2, coords = _inputs(1, 64, 40, 56, dtype=torch.float32)
    plan = plan_lookup(f1.shape, num_levels=4, radius=3, dtype=torch.float32, memory_budget="6MiB")
    scale = 1 / 8
    lookup_forward(f1, f2, coords, plan, scale)  # warm-up: kernels, thread pools
    # The largest of three readings: one can read low (0 after certain earlier tests) where the
    # allocator hands back pages it already held resident.
    peak = max(peak_memory(lambda: lookup_forward(f1, f2, coords, plan, scale))[1] for _ in range(3))
    predicted = plan.workspace_forward_bytes + plan.output_bytes
    assert 0.75 * predicted <= peak <= predicted + 2 * 2**20, (peak, predicted)


def test_plan_report_and_dict():
    plan = plan_lookup((1, 256, 136, 240), (1, 2, 136, 240), num_levels=4, radius=4, memory_budget="256MiB",
                       requires_grad=True)
    assert plan.workspace_backward_bytes <= 256 * 2**20 < plan.workspace_backward_bytes + 2 * 2**20 * plan.tile_cols
    cells = 136 * 240 + 68 * 120 + 34 * 60 + 17 * 30
    assert plan.all_pairs_bytes == 136 * 240 * cells * 4
    text = str(plan)
    for fragment in ("tile:", "workspace: forward", "backward", "all-pairs pyramid", "5.3 GiB", "(1, 324, 136, 240)"):
        assert fragment in text, text
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["num_tiles"] == plan.num_tiles and data["dtype"] == "float32" and data["tile_cols"] == 240


def test_budget_too_small_names_the_minimum():
    with pytest.raises(MemoryBudgetError, match="memory_budget") as info:
        plan_lookup((1, 8, 20, 20), num_levels=2, radius=3, memory_budget="10KiB")
    minimum = info.value.minimum_bytes
    assert plan_lookup((1, 8, 20, 20), num_levels=2, radius=3, memory_budget=minimum).tile_positions == 1
    f1, f2, coords = _inputs(1, 8, 20, 20, dtype=torch.float32)
    with pytest.raises(MemoryBudgetError):
        correlate_lookup(f1, f2, coords, 3, 2, memory_budget=minimum - 1)


# --------------------------------------------------------------------------- training and compile


def _train(lookup, steps=3, iters=3):
    """A tiny RAFT: features, then per iteration a look-up around detached coords and a conv updating the flow."""
    torch.manual_seed(0)
    encoder = torch.nn.Conv2d(3, 6, 3, padding=1).double()
    update = torch.nn.Conv2d(2 * 9 + 2, 2, 3, padding=1).double()
    optimizer = torch.optim.SGD([*encoder.parameters(), *update.parameters()], lr=0.05)
    g = torch.Generator().manual_seed(1)
    image1, image2 = torch.randn(2, 3, 16, 18, generator=g).double(), torch.randn(2, 3, 16, 18, generator=g).double()
    target = torch.randn(2, 2, 16, 18, generator=g).double()
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(18.0), indexing="ij")
    coords0 = torch.stack([xs, ys]).double().expand(2, 2, 16, 18)
    losses = []
    for _ in range(steps):
        fmap1, fmap2 = encoder(image1), encoder(image2)
        coords1, loss = coords0.clone(), 0.0
        for _ in range(iters):
            coords1 = coords1.detach()
            corr = lookup(fmap1, fmap2, coords1)
            coords1 = coords1 + update(torch.cat([corr, coords1 - coords0], dim=1))
            loss = loss + (coords1 - coords0 - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_raft_like_training_loop_has_the_all_pairs_losses():
    budget = _budget_for((2, 6, 16, 18), 20, num_levels=2, radius=1, dtype=torch.float64)
    plan = lambda grad: plan_lookup((2, 6, 16, 18), num_levels=2, radius=1, dtype=torch.float64,  # noqa: E731
                                    memory_budget=budget, requires_grad=grad)
    assert plan(False).num_tiles >= 8 and plan(True).num_tiles > 10
    ours = _train(lambda f1, f2, c: CorrBlock(f1, f2, num_levels=2, radius=1, memory_budget=budget)(c))
    reference = _train(lambda f1, f2, c: raft_corr_block_reference(f1, f2, c, 2, 1))
    assert ours[0] != ours[-1]  # it trains
    assert all(abs(a - b) <= 1e-9 for a, b in zip(ours, reference)), (ours, reference)


def test_compiles_without_graph_break():
    f1, f2, coords = _inputs(1, 4, 9, 11)

    def fn(a, b):
        return (correlate_lookup(a, b, coords, 2, 2, memory_budget="1MiB") ** 2).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a, b = f1.clone().requires_grad_(), f2.clone().requires_grad_()
    value = compiled(a, b)
    value.backward()
    ea, eb = f1.clone().requires_grad_(), f2.clone().requires_grad_()
    expected = fn(ea, eb)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(a.grad, ea.grad)
    torch.testing.assert_close(b.grad, eb.grad)


def test_no_double_backward_and_no_coords_gradient():
    f1, f2, coords = _inputs(1, 2, 6, 7)
    a = f1.clone().requires_grad_()
    (grad,) = torch.autograd.grad(correlate_lookup(a, f2, coords, 1, 1).sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        grad.sum().backward()
    with pytest.raises(ArgumentValueError, match=r"no gradient to coords .*coords.detach\(\)"):
        correlate_lookup(a, f2, coords.clone().requires_grad_(), 1, 1)
    with torch.no_grad():  # no gradient asked for: fine
        correlate_lookup(a, f2, coords.clone().requires_grad_(), 1, 1)


# --------------------------------------------------------------------------- bad input


def _bad_cases():
    f1, f2, coords = _inputs(1, 3, 8, 8)
    ok = dict(fmap1=f1, fmap2=f2, coords=coords, radius=1)
    return [
        (dict(ok, fmap1=f1.numpy()), ArgumentTypeError, "fmap1 must be a torch.Tensor"),
        (dict(ok, fmap2=f2[0]), ShapeError, r"fmap2 must be 4-D, got shape \(3, 8, 8\)"),
        (dict(ok, fmap1=f1.int()), ArgumentTypeError, "fmap1 must have a floating dtype"),
        (dict(ok, fmap2=f2.float()), ArgumentTypeError, "fmap1 and fmap2 must have the same dtype"),
        (dict(ok, fmap2=f2[:, :, :7]), ShapeError, r"same shape \(B, C, H, W\)"),
        (dict(ok, coords=coords[:, :1]), ShapeError, r"coords must have shape \(B, 2, H, W\) = \(1, 2, 8, 8\)"),
        (dict(ok, coords=coords.long()), ArgumentTypeError, "coords must have a floating dtype"),
        (dict(ok, radius=-1), ArgumentValueError, "radius must be >= 0, got -1"),
        (dict(ok, radius=1.5), ArgumentTypeError, "radius must be an int"),
        (dict(ok, num_levels=0), ArgumentValueError, "num_levels must be >= 1, got 0"),
        (dict(ok, num_levels=5), ShapeError, "num_levels=5 needs fmap1 and fmap2 of at least 16 pixels"),
        (dict(ok, normalize="mean"), ArgumentValueError, "normalize must be one of"),
        (dict(ok, normalize=1), ArgumentTypeError, "normalize must be None or a string"),
        (dict(ok, memory_budget=-5), ArgumentValueError, "memory_budget as bytes must be a positive int"),
        (dict(ok, memory_budget=[1]), ArgumentTypeError, "memory_budget must be"),
    ]


@pytest.mark.parametrize("kwargs, error, message", _bad_cases())
def test_bad_input_names_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        correlate_lookup(**kwargs)


def test_bad_plan_and_block_arguments():
    with pytest.raises(ShapeError, match=r"coords_shape must be \(B, 2, H, W\) = \(1, 2, 8, 9\)"):
        plan_lookup((1, 3, 8, 9), (1, 2, 9, 8), num_levels=1, radius=1)
    with pytest.raises(ShapeError, match="fmap_shape must be 4"):
        plan_lookup((1, 3, 8), num_levels=1, radius=1)
    with pytest.raises(ArgumentTypeError, match="radius must be an int"):
        CorrBlock(torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8), radius="4")


def test_doctests():
    for module in (ops, planning):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0
