"""torch.compile: a model calling correlate compiles, gives the eager results and trains."""

from __future__ import annotations

import pytest
import torch

import tiledcorr

from support import assert_matches_reference


class FlowHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.corr = tiledcorr.SpatialCorrelation(patch_size=5, normalize="channels", flatten=True)
        self.head = torch.nn.Conv2d(25, 2, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(self.corr(self.features(a), self.features(b)).relu())


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_model_matches_eager(backend):
    torch.manual_seed(0)
    net = FlowHead().double()
    a, b = torch.randn(2, 3, 9, 11, dtype=torch.float64), torch.randn(2, 3, 9, 11, dtype=torch.float64)
    expected = net(a, b)
    expected.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(net)(a, b)
    assert explained.graph_break_count == 0  # correlate is the custom operator tiledcorr::correlate
    compiled = torch.compile(net, backend=backend, fullgraph=True)
    out = compiled(a, b)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    for p, g in zip(net.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64),
            torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64))


def _assert_compiles_like_eager(fn, a, b):
    """``fn`` compiled with fullgraph=True (aot_eager) gives eager's output and input gradients."""
    torch._dynamo.reset()
    assert torch._dynamo.explain(fn)(a, b).graph_break_count == 0
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    assert_matches_reference(compiled, fn, a, b, rtol=1e-12, atol=1e-12, make_grad=torch.ones_like)


@pytest.mark.parametrize("memory_budget", [None, 1 << 20, "64KiB", 0.5])
def test_fullgraph_with_every_budget_form(memory_budget):
    """Geometry parameters and every memory_budget form go through the operator; gradients match eager."""
    kw = dict(kernel_size=2, patch_size=(3, 5), stride=(1, 2), padding=1, dilation_patch=(2, 1))
    fn = lambda x, y: tiledcorr.correlate(x, y, normalize="sqrt_channels", memory_budget=memory_budget, **kw)  # noqa: E731
    _assert_compiles_like_eager(fn, *_inputs(1))


def test_operator_called_directly_equals_correlate():
    a, b = _inputs(2)
    p = tiledcorr.plan(a.shape, patch_size=3, dtype=a.dtype)
    from tiledcorr.library import common

    out = torch.ops.tiledcorr.correlate(a, b, common.geometry_args(p.geometry), 1.0, common.encode_budget(None), "")
    torch.testing.assert_close(out, tiledcorr.correlate(a, b, patch_size=3), rtol=0, atol=0)


def test_a_given_plan_compiles_without_a_graph_break():
    """A Plan's tiling travels to the operator as an argument: the compiled call runs that tiling."""
    a, b = _inputs(3)
    p = tiledcorr.plan(a.shape, patch_size=3, dtype=a.dtype, memory_budget="16KiB")
    assert p.passes > 1
    fn = lambda x, y: tiledcorr.correlate(x, y, patch_size=3, plan=p).relu()  # noqa: E731
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(a, b), fn(a, b), rtol=0, atol=0)


def test_bad_budget_under_compile_raises_the_usual_error():
    a, b = _inputs(4)
    torch._dynamo.reset()
    with pytest.raises(tiledcorr.ArgumentValueError, match="memory_budget"):
        torch.compile(lambda x, y: tiledcorr.correlate(x, y, patch_size=3, memory_budget="lots"), backend="eager")(a, b)
    torch._dynamo.reset()
    with pytest.raises(tiledcorr.ArgumentTypeError, match="memory_budget"):
        torch.compile(lambda x, y: tiledcorr.correlate(x, y, patch_size=3, memory_budget=[1]), backend="eager")(a, b)


def test_flownet_shim_compiles_without_graph_breaks():
    """FlowNet's negative engine padding and cropped output travel through the operator too."""
    from tiledcorr.compat.flownet import flownet_correlation

    fn = lambda x, y: flownet_correlation(x, y, 2, 3, 4, 1, 2).relu()  # noqa: E731
    _assert_compiles_like_eager(fn, *_inputs(5))


@pytest.mark.parametrize("reduction, k", [("max", None), ("softargmax", None), ("topk", 3)])
def test_fused_reductions_compile_without_graph_breaks(reduction, k):
    """correlate_reduce is the custom operator tiledcorr::correlate_reduce under compile; gradients match eager."""
    kw = dict(patch_size=(5, 3), padding=1, dilation_patch=(1, 2), normalize="channels", memory_budget="8KiB")

    def fn(x, y):
        out = tiledcorr.correlate_reduce(x, y, reduction=reduction, k=k, temperature=0.5, **kw)
        return out.values if reduction == "topk" else out

    a, b = _inputs(6)
    p = tiledcorr.plan(a.shape, dtype=a.dtype, requires_grad=True, reduction=reduction, k=k,
                       **{n: v for n, v in kw.items() if n != "normalize"})
    assert p.passes > 2  # several tiles, so the running reductions combine
    _assert_compiles_like_eager(fn, a, b)


def test_argmax_and_topk_displacements_compile_without_graph_breaks():
    kw = dict(patch_size=5, padding=2, memory_budget="8KiB")

    def fn(x, y):
        top = tiledcorr.correlate_reduce(x, y, reduction="topk", k=2, **kw)
        return tiledcorr.correlate_reduce(x, y, reduction="argmax", **kw), top.displacements

    a, b = _inputs(7)
    torch._dynamo.reset()
    assert torch._dynamo.explain(fn)(a, b).graph_break_count == 0
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    for got, expected in zip(compiled(a, b), fn(a, b)):
        assert got.dtype == torch.long and torch.equal(got, expected)


def test_reduction_operator_called_directly_equals_correlate_reduce():
    from tiledcorr.library import common

    a, b = _inputs(8)
    geometry = tiledcorr.plan(a.shape, patch_size=3, dtype=a.dtype).geometry
    values, index, _ = torch.ops.tiledcorr.correlate_reduce(
        a, b, common.geometry_args(geometry), 1.0, common.encode_budget(None), "", "topk", 2, 1.0)
    expected = tiledcorr.correlate_reduce(a, b, patch_size=3, reduction="topk", k=2)
    torch.testing.assert_close(values, expected.values, rtol=0, atol=0)
    assert index.shape == (2, 2, 9, 11) and index.dtype == torch.long
