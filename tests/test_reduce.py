"""correlate_reduce(): each reduction against the same torch reduction of the float64 reference volume.

Integer-valued inputs make every sum exact in float32 and float64 alike and
full of ties, so values and displacements are compared exactly there (ties go
to the lowest flat index, as torch.argmax and a stable descending sort).
Continuous inputs check the values to a tolerance. Plans come from tiny
budgets, so every case runs in many tiles (several displacement blocks too).
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

import tiledcorr
from tiledcorr.execution.engine import workspace_elements
from tiledcorr.tools.measure import peak_memory
from tiledcorr.planning.planner import make_geometry, plan_geometry
from tiledcorr.reductions import REDUCTIONS, sink_cost
from tiledcorr.reference import correlate_reference

from support import cpu_strategies  # noqa: E402

STRATEGIES = cpu_strategies()

F64 = torch.float64


def _random_config(rng: random.Random) -> tuple[tuple[int, ...], dict]:
    """Odd sizes, kernel and stride > 1, dilations, even and odd patches, B > 1."""
    shape = (rng.randint(1, 2), rng.randint(1, 4), rng.choice([7, 9, 11]), rng.choice([5, 8, 13]))
    kw = dict(
        kernel_size=(rng.randint(1, 3), rng.randint(1, 2)),
        patch_size=(rng.choice([1, 3, 4, 5]), rng.choice([2, 3, 6])),
        stride=(rng.randint(1, 2), rng.randint(1, 3)),
        padding=(rng.randint(0, 2), rng.randint(0, 1)),
        dilation=(rng.randint(1, 2), 1),
        dilation_patch=(rng.randint(1, 2), rng.randint(1, 3)),
    )
    return shape, kw


CONFIGS = [_random_config(random.Random(seed)) for seed in range(6)]


def _tiny_plan(shape, dtype, strategy, requires_grad=False, factor=4, **kw) -> tiledcorr.Plan:
    """The plan of ``factor`` times the smallest feasible budget: many small tiles."""
    try:
        tiledcorr.plan(shape, dtype=dtype, memory_budget=1, strategy=strategy, requires_grad=requires_grad, **kw)
    except tiledcorr.MemoryBudgetError as exc:
        budget = factor * exc.minimum_bytes
    return tiledcorr.plan(shape, dtype=dtype, memory_budget=budget, strategy=strategy, requires_grad=requires_grad, **kw)


def _shift_table(patch, dilation_patch) -> torch.Tensor:
    """(prod(patch), N) displacement in pixels of each flat index, from the semantics."""
    per_dim = [[(j - (P - 1) // 2) * q for j in range(P)] for P, q in zip(patch, dilation_patch)]
    return torch.tensor(list(itertools.product(*per_dim)), dtype=torch.long)


def _expected(volume: torch.Tensor, ndim: int, table: torch.Tensor, k: int, temperature: float) -> dict:
    """The four reductions of a stored volume ``(B, *patch, *out)``, with torch ops."""
    v = volume.flatten(1, ndim)  # (B, J, *out)
    to_disp = lambda idx, dim: table[idx].movedim(-1, dim)  # noqa: E731
    top_values, top_index = torch.sort(v, dim=1, descending=True, stable=True)
    weights = torch.softmax(v / temperature, dim=1)
    return {
        "max": v.amax(dim=1),
        "argmax": to_disp(v.argmax(dim=1), 1),
        "softargmax": torch.einsum("bj...,jc->bc...", weights, table.to(v.dtype)),
        "topk": (top_values[:, :k], to_disp(top_index[:, :k], 2)),
    }


def _integer_inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(-2, 3, shape, generator=g).to(dtype) for _ in range(2))


def _normal_inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g, dtype=F64).to(dtype) for _ in range(2))


@pytest.mark.parametrize("index", range(len(CONFIGS)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reductions_equal_the_reduced_volume(index, dtype):
    """Each configuration runs two strategies (one per dtype); over the configurations each strategy runs both dtypes."""
    shape, kw = CONFIGS[index]
    names = sorted(STRATEGIES)
    strategy = names[(index + (dtype == F64)) % len(names)]
    plan = _tiny_plan(shape, dtype, strategy, **kw)
    assert plan.passes >= 4
    table = _shift_table(plan.geometry.patch, plan.geometry.dilation_patch)
    k = min(3, len(table))
    for inputs, exact in ((_integer_inputs(shape, dtype, index), True), (_normal_inputs(shape, dtype, index), False)):
        x1, x2 = inputs
        expected = _expected(correlate_reference(x1, x2, **kw), 2, table, k, 0.7)
        got = {
            r: tiledcorr.correlate_reduce(x1, x2, **kw, reduction=r, plan=plan, k=k if r == "topk" else None, temperature=0.7)
            for r in REDUCTIONS
        }
        tol = 0.0 if exact else (1e-12 if dtype == F64 else 2e-5)
        torch.testing.assert_close(got["max"], expected["max"].to(dtype), rtol=tol, atol=tol)
        torch.testing.assert_close(got["topk"].values, expected["topk"][0].to(dtype), rtol=tol, atol=tol)
        tol = 1e-12 if dtype == F64 else 1e-4
        torch.testing.assert_close(got["softargmax"], expected["softargmax"].to(dtype), rtol=tol, atol=tol)
        assert got["argmax"].dtype == got["topk"].displacements.dtype == torch.long
        if exact or dtype == F64:  # continuous float32 sums may reorder near-ties
            assert torch.equal(got["argmax"], expected["argmax"])
            assert torch.equal(got["topk"].displacements, expected["topk"][1])


def test_float32_near_ties_pick_a_maximal_displacement():
    """Where float32 rounding may reorder near-ties, the chosen displacement still holds the max value."""
    shape, kw = CONFIGS[0]
    x1, x2 = _normal_inputs(shape, torch.float32, 7)
    plan = _tiny_plan(shape, torch.float32, "tile_matmul", **kw)
    volume = correlate_reference(x1, x2, **kw).flatten(1, 2)
    table = _shift_table(plan.geometry.patch, plan.geometry.dilation_patch)
    disp = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="argmax", plan=plan)  # (B, 2, *out)
    index = (disp.movedim(1, -1)[..., None, :] == table).all(-1).long().argmax(-1)  # back to flat indices
    chosen = volume.gather(1, index.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(chosen, volume.amax(1), rtol=2e-5, atol=2e-5)


def test_shapes_and_dtypes():
    x1, x2 = _normal_inputs((2, 3, 9, 7), torch.float32, 0)
    kw = dict(kernel_size=3, patch_size=(5, 4), stride=2, padding=1)
    out = (5, 4)  # oH = (9 + 2 - 3)//2 + 1, oW = (7 + 2 - 3)//2 + 1
    assert tiledcorr.correlate_reduce(x1, x2, **kw, reduction="max").shape == (2, *out)
    assert tiledcorr.correlate_reduce(x1, x2, **kw, reduction="argmax").shape == (2, 2, *out)
    soft = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="softargmax")
    assert soft.shape == (2, 2, *out) and soft.dtype == torch.float32
    top = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="topk", k=20)
    assert isinstance(top, tiledcorr.TopK)
    assert top.values.shape == (2, 20, *out) and top.displacements.shape == (2, 20, 2, *out)


def test_softargmax_is_stable_for_large_values():
    """Scores of ~1e4 / temperature 0.01: a naive exp overflows; the online softmax does not."""
    x1, x2 = _normal_inputs((1, 8, 9, 9), F64, 3)
    x1, x2 = 30 * x1, 30 * x2
    kw = dict(patch_size=5, padding=2)
    plan = _tiny_plan(x1.shape, F64, "shift", **kw)
    got = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="softargmax", temperature=0.01, plan=plan)
    expected = _expected(correlate_reference(x1, x2, **kw), 2, _shift_table((5, 5), (1, 1)), 1, 0.01)["softargmax"]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_normalize_and_temperature_scale_the_scores():
    x1, x2 = _normal_inputs((1, 4, 8, 8), F64, 4)
    kw = dict(patch_size=3, padding=1)
    a = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="softargmax", normalize="channels", temperature=0.5)
    b = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="softargmax", temperature=2.0)  # (v/4)/0.5 == v/2
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    top = tiledcorr.correlate_reduce(x1, x2, **kw, reduction="topk", k=2, normalize="channels")
    torch.testing.assert_close(top.values * 4, tiledcorr.correlate_reduce(x1, x2, **kw, reduction="topk", k=2).values)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["max", "softargmax", "topk"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_backward_matches_the_reference_volume(name, strategy):
    """normalize="channels": the backward also carries the forward's scale."""
    shape, kw = CONFIGS[0]
    x1, x2 = _normal_inputs(shape, F64, 11)
    plan = _tiny_plan(shape, F64, strategy, requires_grad=True, **kw)
    k = 3 if name == "topk" else None
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = tiledcorr.correlate_reduce(a, b, **kw, reduction=name, k=k, temperature=0.8, normalize="channels", plan=plan)
    out = out.values if name == "topk" else out
    ra, rb = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    table = _shift_table(plan.geometry.patch, plan.geometry.dilation_patch)
    ref = _expected(correlate_reference(ra, rb, **kw) / shape[1], 2, table, k or 1, 0.8)[name]
    ref = ref[0] if name == "topk" else ref
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["softargmax", "topk", "max"])
def test_gradcheck_across_several_tiles(name):
    kw = dict(kernel_size=2, patch_size=(3, 4), stride=(2, 1), padding=1, dilation_patch=(1, 2))
    shape = (2, 2, 5, 6)
    x1, x2 = _normal_inputs(shape, F64, 5)
    plan = _tiny_plan(shape, F64, "tile_matmul", requires_grad=True, **kw)
    assert plan.passes > 4
    k = 4 if name == "topk" else None

    def fn(a, b):
        out = tiledcorr.correlate_reduce(a, b, **kw, reduction=name, k=k, temperature=0.5, plan=plan)
        return out.values if name == "topk" else out

    assert torch.autograd.gradcheck(fn, (x1.requires_grad_(), x2.requires_grad_()), fast_mode=True)


def test_gradcheck_softargmax_one_tile():
    x1, x2 = _normal_inputs((1, 2, 4, 4), F64, 6)
    fn = lambda a, b: tiledcorr.correlate_reduce(a, b, patch_size=3, padding=1, reduction="softargmax", temperature=0.3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x1.requires_grad_(), x2.requires_grad_()))


def test_argmax_and_displacements_carry_no_gradient():
    x1, x2 = _normal_inputs((1, 2, 6, 6), torch.float32, 8)
    x1.requires_grad_()
    assert not tiledcorr.correlate_reduce(x1, x2, patch_size=3, reduction="argmax").requires_grad
    top = tiledcorr.correlate_reduce(x1, x2, patch_size=3, reduction="topk", k=2)
    assert top.values.requires_grad and not top.displacements.requires_grad
    top.values.sum().backward()  # the unused int64 output needs no gradient
    assert x1.grad is not None and torch.isfinite(x1.grad).all()


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("name,k", [("max", None), ("softargmax", None), ("topk", 5)])
def test_plan_counts_the_reduction_temporaries(name, k):
    """The planned workspace is the engine's buffers plus the sink's term, and it fits the budget."""
    g = make_geometry((2, 3, 40, 40), None, 1, 15, 1, 0, 1, 1)
    cost = sink_cost(name, k, 2, torch.float32)
    plan = plan_geometry(g, memory_budget=200_000, requires_grad=True, sink_cost=cost)
    t = plan.tiling
    engine = {b: 4 * sum(workspace_elements(g, t, backward=b).values()) for b in (False, True)}
    T = math.prod(min(u, o) for u, o in zip(t.tile, g.out_size))
    band, positions = min(t.batch_tile, 2) * plan.displacement_chunk * T, min(t.batch_tile, 2) * T
    assert plan.forward_workspace_bytes == engine[False] + cost.bytes(band, positions, backward=False)
    assert plan.backward_workspace_bytes == engine[True] + cost.bytes(band, positions, backward=True)
    assert plan.peak_workspace_bytes <= 200_000 and cost.band > 0


def test_peak_memory_is_the_planned_workspace_plus_results():
    """Measured CPU peak of a forward and a backward: within the plan's figures plus the results,
    far below the 5.6 MiB the volume (1, 25, 25, 48, 48) would take."""
    x1, x2 = _normal_inputs((1, 4, 48, 48), torch.float32, 9)
    kw = dict(patch_size=25)
    g = make_geometry(x1.shape, None, 1, 25, 1, 0, 1, 1)
    small = x1[..., :8, :8].contiguous()
    for name, k in (("softargmax", None), ("topk", 4)):
        plan = plan_geometry(g, memory_budget="1MiB", requires_grad=True, sink_cost=sink_cost(name, k, 2, torch.float32))
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        # warm-up on a small input: the kernels' first-use allocations and the allocator's set-up
        peak_memory(lambda: tiledcorr.correlate_reduce(small, small, **kw, reduction=name, k=k))
        out, peak = peak_memory(lambda: tiledcorr.correlate_reduce(a, b, **kw, reduction=name, k=k, plan=plan))
        values = out.values if name == "topk" else out
        results = sum(t.numel() * t.element_size() for t in (out if name == "topk" else (out,)))
        state = 48 * 48 * 8 * (k or 3)  # the index (int64) or m, z (and the sums) kept beside the results
        slack = 256 * 1024
        assert peak <= plan.forward_workspace_bytes + results + state + slack, (name, peak, plan.forward_workspace_bytes)
        grad = torch.ones_like(values)
        _, peak = peak_memory(lambda: values.backward(grad))
        grads = 2 * x1.numel() * 4
        assert peak <= plan.backward_workspace_bytes + grads + slack, (name, peak, plan.backward_workspace_bytes)


# --------------------------------------------------------------------------- API


def test_module_matches_function_and_shows_arguments():
    x1, x2 = _normal_inputs((1, 3, 8, 9), torch.float32, 10)
    layer = tiledcorr.CorrelationReduce(patch_size=5, reduction="topk", k=3, normalize="channels")
    assert repr(layer) == "CorrelationReduce(patch_size=5, reduction='topk', k=3, normalize='channels')"
    a, b = layer(x1, x2), tiledcorr.correlate_reduce(x1, x2, patch_size=5, reduction="topk", k=3, normalize="channels")
    assert torch.equal(a.values, b.values) and torch.equal(a.displacements, b.displacements)


def test_half_precision_returns_input_dtype():
    x1, x2 = _normal_inputs((1, 8, 10, 10), torch.float32, 12)
    for name in ("max", "softargmax"):
        half = tiledcorr.correlate_reduce(x1.half(), x2.half(), patch_size=5, reduction=name)
        full = tiledcorr.correlate_reduce(x1.half().float(), x2.half().float(), patch_size=5, reduction=name)
        assert half.dtype == torch.float16
        torch.testing.assert_close(half.float(), full, rtol=2e-3, atol=2e-2)


def test_non_contiguous_inputs():
    x1, x2 = _normal_inputs((2, 3, 9, 12), F64, 13)
    a, b = x1.transpose(2, 3).contiguous().transpose(2, 3), x2[..., :, :]
    for name in ("argmax", "softargmax"):
        assert torch.equal(
            tiledcorr.correlate_reduce(a, b, patch_size=5, reduction=name),
            tiledcorr.correlate_reduce(x1.contiguous(), x2.contiguous(), patch_size=5, reduction=name),
        )


def test_empty_inputs():
    for shape in ((0, 2, 5, 5), (1, 2, 1, 5)):
        x = torch.randn(shape)
        out = tiledcorr.correlate_reduce(x, x, kernel_size=3, patch_size=3, reduction="topk", k=2)
        assert out.values.shape == (shape[0], 2, max(0, shape[2] - 2), 3) and out.values.numel() == 0
    # no channels: every sum is empty, the volume is 0 everywhere: the first displacement wins
    x = torch.randn(2, 0, 4, 5)
    assert torch.equal(tiledcorr.correlate_reduce(x, x, patch_size=3, reduction="max"), torch.zeros(2, 4, 5))
    argmax = tiledcorr.correlate_reduce(x, x, patch_size=3, reduction="argmax")
    assert torch.equal(argmax, torch.full((2, 2, 4, 5), -1, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(reduction="mean"), tiledcorr.ArgumentValueError, ["reduction", "'mean'", "'argmax'", "'softargmax'", "'topk'"]),
        (dict(reduction=None), tiledcorr.ArgumentTypeError, ["reduction", "None"]),
        (dict(reduction="topk"), tiledcorr.ArgumentValueError, ["topk", "k"]),
        (dict(reduction="topk", k=0), tiledcorr.ArgumentValueError, ["k", "0"]),
        (dict(reduction="topk", k=10), tiledcorr.ArgumentValueError, ["k", "10", "9"]),
        (dict(reduction="topk", k=2.0), tiledcorr.ArgumentTypeError, ["k", "2.0"]),
        (dict(reduction="max", k=2), tiledcorr.ArgumentValueError, ["k", "topk", "max"]),
        (dict(reduction="softargmax", temperature=0), tiledcorr.ArgumentValueError, ["temperature", "> 0"]),
        (dict(reduction="softargmax", temperature=-1.5), tiledcorr.ArgumentValueError, ["temperature", "-1.5"]),
        (dict(reduction="softargmax", temperature=math.inf), tiledcorr.ArgumentValueError, ["temperature", "inf"]),
        (dict(reduction="softargmax", temperature="1"), tiledcorr.ArgumentTypeError, ["temperature", "'1'"]),
        (dict(reduction="max", normalize="mean"), tiledcorr.ArgumentValueError, ["normalize", "'mean'"]),
    ],
)
def test_errors_name_the_argument(kwargs, error, words):
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(error) as info:
        tiledcorr.correlate_reduce(x, x, patch_size=3, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_a_reduction_plan_says_the_volume_is_never_stored():
    geometry = make_geometry((1, 4, 9, 11), None, 1, 5, 1, 0, 1, 1)
    fused = str(plan_geometry(geometry, sink_cost=sink_cost("argmax", None, 2, torch.float32)))
    stored = str(plan_geometry(geometry))
    assert "volume (B, *patch, *out)   (1, 5, 5, 9, 11)" in fused and "never stored" in fused
    assert "output (B, *patch, *out)   (1, 5, 5, 9, 11)" in stored and "never stored" not in stored


@pytest.mark.parametrize("reduction, k", [("max", None), ("argmax", None), ("softargmax", None), ("topk", 4)])
def test_plan_with_a_reduction_is_the_plan_correlate_reduce_makes(reduction, k):
    """tiledcorr.plan(reduction=...) counts the sink's temporaries as the fused call does."""
    shape, kw = (2, 6, 21, 19), dict(patch_size=9, padding=1)
    x1, x2 = _normal_inputs(shape, torch.float32, 3)
    grad = reduction != "argmax"
    p = tiledcorr.plan(shape, **kw, memory_budget="96KiB", requires_grad=grad, reduction=reduction, k=k)
    a, b = x1.clone().requires_grad_(grad), x2.clone().requires_grad_(grad)
    geometry = make_geometry(shape, None, 1, 9, 1, 1, 1, 1)
    made = plan_geometry(geometry, memory_budget="96KiB", requires_grad=grad, sink_cost=sink_cost(reduction, k, 2, torch.float32))
    assert p == made and p.sink_cost != tiledcorr.plan(shape, **kw, memory_budget="96KiB", requires_grad=grad).sink_cost
    assert p.passes > 2
    out = tiledcorr.correlate_reduce(a, b, **kw, reduction=reduction, k=k, memory_budget="96KiB")
    given = tiledcorr.correlate_reduce(a, b, **kw, reduction=reduction, k=k, plan=p)
    for got, want in zip(out if reduction == "topk" else (out,), given if reduction == "topk" else (given,)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("kw, message", [
    (dict(reduction="mean"), "reduction must be one of"),
    (dict(k=2), "no reduction"),
    (dict(reduction="topk"), "needs k"),
    (dict(reduction="max", k=2), "only used by reduction='topk'"),
    (dict(reduction="argmax", requires_grad=True), "argmax has no gradient"),
])
def test_plan_with_a_bad_reduction_says_why(kw, message):
    with pytest.raises(tiledcorr.TiledCorrError, match=message):
        tiledcorr.plan((1, 4, 9, 9), patch_size=5, **kw)


def test_a_gradient_source_needs_its_upstream_gradient():
    """Without it the exact NaN/Inf path could not see a non-finite gradient of the results."""
    from tiledcorr.execution.volume import backward_inputs

    x = torch.randn(1, 2, 6, 6)
    p = tiledcorr.plan(x.shape, patch_size=3, requires_grad=True)
    with pytest.raises(TypeError, match="upstream"):
        backward_inputs(x, x, lambda ctx, tile: None, p, 1.0, True, True)
