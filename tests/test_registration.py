"""The operators' two routes (tiledcorr.library.registration.call): straight to the kernels, or through the dispatcher.

Plain eager tensors skip the dispatcher; everything that watches or
transforms a call (modes, fake tensors, functorch, tracing, the profiler)
must still see the operator. Both routes must give the same numbers and the
same autograd behaviour.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tiledcorr
from tiledcorr.library import registration
from tiledcorr.library.correlate import correlate_op
from tiledcorr.library.registration import DOUBLE_BACKWARD_MESSAGE, dispatcher_needed

SHAPE = (2, 5, 7, 9)
PARAMS = dict(kernel_size=3, patch_size=(3, 5), stride=(1, 2), padding=1, dilation_patch=(2, 1))


def _inputs(requires_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(SHAPE, generator=gen, dtype=torch.float64).requires_grad_(requires_grad) for _ in range(2))


class _OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class _FunctionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _Subclass(torch.Tensor):
    pass


def test_plain_tensors_and_parameters_skip_the_dispatcher():
    a, b = _inputs()
    assert not dispatcher_needed((a, b))
    assert not dispatcher_needed((torch.nn.Parameter(a.detach()), b))
    with torch.no_grad(), torch.inference_mode():
        assert not dispatcher_needed((a, b))


@pytest.mark.parametrize("context", ["dispatch mode", "function mode", "profiler", "vmap", "jit trace"])
def test_anything_watching_the_call_takes_the_dispatcher(context):
    a, b = _inputs(requires_grad=False)
    seen: list[bool] = []

    def probe(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(dispatcher_needed((x, y)))
        return x + y

    if context == "dispatch mode":
        with _OpLog():
            probe(a, b)
    elif context == "function mode":
        with _FunctionMode():
            probe(a, b)
    elif context == "profiler":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
            probe(a, b)
    elif context == "vmap":
        torch.vmap(probe)(a, b)
    else:
        torch.jit.trace(probe, (a, b), check_trace=False)
    assert seen and all(seen), seen


def test_fake_meta_and_subclass_tensors_take_the_dispatcher():
    from torch._subclasses.fake_tensor import FakeTensorMode

    a, b = _inputs(requires_grad=False)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(a)
    assert dispatcher_needed((fake, fake))
    assert dispatcher_needed((a.to("meta"), b.to("meta")))
    assert dispatcher_needed((a.as_subclass(_Subclass), b))


def test_the_eager_route_skips_the_dispatcher_and_a_mode_still_sees_the_operator():
    a, b = _inputs()
    with _OpLog() as log:
        tiledcorr.correlate(a, b, **PARAMS).sum().backward()
    assert "tiledcorr.correlate.default" in log.ops and "tiledcorr.correlate_backward.default" in log.ops, log.ops
    # Without a mode, the eager entry runs (counted), not the dispatcher's autograd kernel.
    eager, tensors = registration._EAGER[correlate_op]
    calls = []

    def counting(*args):
        calls.append(1)
        return eager(*args)

    registration._EAGER[correlate_op] = counting, tensors
    try:
        tiledcorr.correlate(a, b, **PARAMS)
    finally:
        registration._EAGER[correlate_op] = eager, tensors
    assert calls == [1]


def test_the_profiler_records_the_operator_by_name():
    a, b = _inputs()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        tiledcorr.correlate(a, b, **PARAMS).sum().backward()
    names = {event.name for event in prof.events()}
    assert "tiledcorr::correlate" in names and "tiledcorr::correlate_backward" in names, sorted(names)[:20]


@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_both_routes_give_the_same_volume_and_gradients(needs):
    a, b = _inputs()
    a.requires_grad_(needs[0])
    b.requires_grad_(needs[1])
    grad = torch.randn((2, 3, 5, 7, 5), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for route in ("eager", "dispatcher"):
        a.grad = b.grad = None
        if route == "eager":
            out = tiledcorr.correlate(a, b, **PARAMS)
        else:
            with _OpLog():
                out = tiledcorr.correlate(a, b, **PARAMS)
        out.backward(grad)
        results.append((out.detach(), a.grad, b.grad))
    (v1, a1, b1), (v2, a2, b2) = results
    assert torch.equal(v1, v2)
    for x, y, need in ((a1, a2, needs[0]), (b1, b2, needs[1])):
        assert (x is None) == (not need) and (y is None) == (not need)
        if need:
            assert torch.equal(x, y)


def test_the_eager_route_refuses_a_double_backward():
    a, b = _inputs()
    out = tiledcorr.correlate(a, b, **PARAMS)
    (g1,) = torch.autograd.grad(out.sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match=re.escape(DOUBLE_BACKWARD_MESSAGE)):
        g1.sum().backward()


def test_the_eager_route_of_the_reductions_and_the_lookup_matches_the_dispatcher():
    a, b = _inputs()
    eager = tiledcorr.correlate_reduce(a, b, **PARAMS, reduction="softargmax", temperature=0.5)
    with _OpLog() as log:
        watched = tiledcorr.correlate_reduce(a, b, **PARAMS, reduction="softargmax", temperature=0.5)
    assert "tiledcorr.correlate_reduce.default" in log.ops
    assert torch.equal(eager, watched)
    f1, f2 = (torch.randn(1, 4, 8, 10, dtype=torch.float64, requires_grad=True) for _ in range(2))
    coords = torch.rand(1, 2, 8, 10, dtype=torch.float64) * 7
    eager = tiledcorr.correlate_lookup(f1, f2, coords, radius=1, num_levels=2)
    with _OpLog() as log:
        watched = tiledcorr.correlate_lookup(f1, f2, coords, radius=1, num_levels=2)
    assert "tiledcorr.correlate_lookup.default" in log.ops
    assert torch.equal(eager, watched)
    grads = [torch.autograd.grad(v.sum(), (f1, f2)) for v in (eager, watched)]
    assert all(torch.equal(x, y) for x, y in zip(*grads))
