"""Reliability: no hang, no garbage, no raw error, for any input a user can type (issue 15).

Each test names the class of failure it covers; each failed before its fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiledcorr
from tiledcorr.errors import TiledCorrError

#: Every parameter value of the property tests: small ones, and huge ones (2**40 to 2**62).
_VALUE = st.one_of(st.integers(0, 9), st.integers(2**40, 2**62), st.sampled_from([2**31 - 1, 2**31, 2**62]))
_PARAMS = ("kernel_size", "patch_size", "stride", "padding", "dilation", "dilation_patch")


def _timed(call):
    """``call()``'s result or its TiledCorrError, and the seconds it took; any other exception or warning fails."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            result = call()
        except TiledCorrError as exc:
            result = exc
    return result, time.perf_counter() - start


# --------------------------------------------------------------------------- 2, 3: bounded planning, typed errors


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=st.fixed_dictionaries({name: _VALUE for name in _PARAMS}),
       size=st.tuples(st.integers(0, 9), st.integers(0, 9)), batch=st.integers(0, 3),
       reduction=st.sampled_from([None, "max", "argmax", "softargmax"]))
def test_plan_returns_or_raises_typed_within_a_second(params, size, batch, reduction):
    """Any parameter up to 2**62: ``plan()`` answers (a plan or a typed error) in under 1 s."""
    result, seconds = _timed(lambda: tiledcorr.plan((batch, 2, *size), reduction=reduction, **params))
    assert seconds < 1.0, (params, seconds)
    if isinstance(result, TiledCorrError) and any(v >= 2**40 for v in params.values()):
        assert any(name in str(result) for name in (*_PARAMS, "memory_budget")), str(result)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=st.fixed_dictionaries({name: _VALUE for name in _PARAMS}),
       reduction=st.sampled_from([None, "max", "softargmax", "argmax"]))
def test_calls_with_huge_parameters_return_or_raise_typed(params, reduction):
    """correlate and correlate_reduce on a small image: a result or a TiledCorrError, never torch's or numpy's."""
    x1 = torch.randn(1, 2, 7, 6, requires_grad=reduction != "argmax")
    x2 = torch.randn(1, 2, 7, 6)
    plan_, _ = _timed(lambda: tiledcorr.plan(x1.shape, reduction=reduction, **params))
    if isinstance(plan_, tiledcorr.Plan) and plan_.passes * plan_.geometry.kernel_volume > 2000:
        return  # a legitimate but long computation (one tile per position, far apart): not what this test is about
    if reduction is None:
        out, _ = _timed(lambda: tiledcorr.correlate(x1, x2, **params))
    else:
        out, _ = _timed(lambda: tiledcorr.correlate_reduce(x1, x2, reduction=reduction, **params))
    if isinstance(out, torch.Tensor) and out.requires_grad:
        out.sum().backward()


def test_huge_dilation_patch_plans_at_once():
    """The issue's hang: dilation_patch=2**40 on an 8x8 image (the number of position classes was looped over)."""
    x = torch.randn(1, 2, 8, 8)
    tiledcorr.correlate(x, x)  # the first call of the operator in a process loads torch's machinery
    for call in (lambda: tiledcorr.plan(x.shape, patch_size=3, dilation_patch=2**40),
                 lambda: tiledcorr.correlate(x, x, patch_size=3, dilation_patch=2**40),
                 lambda: tiledcorr.correlate(x, x, patch_size=3, dilation_patch=10**5),
                 lambda: tiledcorr.flownet_correlation(x, x, 2, 1, 2, 1, 2**40)):
        result, seconds = _timed(call)
        assert seconds < 1.0 and not isinstance(result, TiledCorrError)
    out = tiledcorr.correlate(x.double(), x.double(), patch_size=3, dilation_patch=10**5)
    assert out[:, 1, 1].equal((x.double() * x.double()).sum(1)) and not out[:, 0].any()


@pytest.mark.parametrize("name, value, fn", [
    ("patch_size", 2**40, "correlate"), ("patch_size", 2**40, "correlate_reduce"),
    ("padding", 2**40, "correlate"), ("padding", 2**40, "correlate_reduce"),
    ("padding", 2**62, "correlate"), ("padding", 2**62, "plan"),
    ("dilation_patch", 2**62, "correlate"), ("patch_size", 2**64, "plan"),
])
def test_huge_values_give_a_typed_error_naming_the_parameter(name, value, fn):
    x = torch.randn(1, 2, 8, 8)
    kw = {name: value} if name != "dilation_patch" else {name: value, "patch_size": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(tiledcorr.ArgumentValueError, match=name):
            if fn == "plan":
                tiledcorr.plan(x.shape, **kw)
            elif fn == "correlate":
                tiledcorr.correlate(x, x, **kw)
            else:
                tiledcorr.correlate_reduce(x, x, reduction="max", **kw)


# --------------------------------------------------------------------------- 4: empty outputs need no workspace


@pytest.mark.parametrize("kernel_size", [1000, 2**40])
def test_empty_outputs_fit_any_budget(kernel_size):
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    out = tiledcorr.correlate(x, x, kernel_size=kernel_size, memory_budget="1MiB")
    assert out.shape == (1, 1, 1, 0, 0)
    out.sum().backward()
    assert x.grad.shape == x.shape and not x.grad.any()
    p = tiledcorr.plan(x.shape, kernel_size=kernel_size, memory_budget=1, requires_grad=True)
    assert p.peak_workspace_bytes == 0 and p.passes == 0
    for reduction in ("max", "argmax", "softargmax"):
        r = tiledcorr.correlate_reduce(x, x, kernel_size=kernel_size, reduction=reduction, memory_budget="1MiB")
        assert r.numel() == 0
    top = tiledcorr.correlate_reduce(x, x, kernel_size=kernel_size, patch_size=3, reduction="topk", k=2, memory_budget=1)
    assert top.values.shape == (1, 2, 0, 0)
    assert tiledcorr.spatial_correlation_sample(x, x, kernel_size, memory_budget=1).shape == (1, 1, 1, 0, 0)
    flownet_kernel = 1001 if kernel_size == 1000 else 2**40 + 1
    assert tiledcorr.flownet_correlation(x, x, 0, flownet_kernel, 0, 1, 1, memory_budget=1).shape == (1, 1, 0, 0)


def test_batch_zero_with_huge_kernel_needs_no_workspace():
    x = torch.randn(0, 2, 8, 8)
    out = tiledcorr.correlate_reduce(x, x, kernel_size=2**20, padding=2**20, reduction="max", memory_budget=1)
    assert out.shape[0] == 0


# --------------------------------------------------------------------------- 7: __index__ integers


def test_numpy_integers_are_ints_everywhere():
    np = pytest.importorskip("numpy")
    x1, x2 = torch.randn(1, 3, 7, 8, dtype=torch.float64), torch.randn(1, 3, 7, 8, dtype=torch.float64)
    expected = tiledcorr.spatial_correlation_sample(x1, x2, 1, 5)
    torch.testing.assert_close(tiledcorr.spatial_correlation_sample(x1, x2, 1, np.int64(5)), expected)
    torch.testing.assert_close(
        tiledcorr.spatial_correlation_sample(x1, x2, 1, (np.int32(5), 5), memory_budget=np.int64(2**20)), expected)
    torch.testing.assert_close(tiledcorr.CorrTorch(np.int64(2), 1, np.int64(2))(x1, x2), tiledcorr.CorrTorch(2, 1, 2)(x1, x2))
    torch.testing.assert_close(tiledcorr.Correlation(np.int64(2), np.int64(1), np.int64(2), 1, np.int64(1), 1)(x1, x2),
                               tiledcorr.Correlation(2, 1, 2, 1, 1, 1)(x1, x2))
    p = tiledcorr.plan((np.int64(1), 3, 7, 8), patch_size=np.int64(5), memory_budget=np.int64(2**20))
    assert p.geometry.patch == (5, 5) and type(p.geometry.patch[0]) is int and type(p.geometry.batch) is int
    assert tiledcorr.resolve_budget(np.int64(4096)) == 4096
    topk = tiledcorr.correlate_reduce(x1, x2, patch_size=3, reduction="topk", k=np.int64(2))
    assert topk.values.shape[1] == 2


@pytest.mark.parametrize("bad", [True, False, "np.bool_"])
def test_bools_are_not_ints(bad):
    np = pytest.importorskip("numpy")
    value = np.bool_(True) if bad == "np.bool_" else bad
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(tiledcorr.ArgumentTypeError):
        tiledcorr.correlate(x, x, patch_size=value)
    with pytest.raises(tiledcorr.ArgumentTypeError):
        tiledcorr.flownet_correlation(x, x, value, 1, 1, 1, 1)
    with pytest.raises(tiledcorr.ArgumentTypeError):
        tiledcorr.resolve_budget(value)


# --------------------------------------------------------------------------- 12: one budget rule


def test_one_budget_rule(monkeypatch):
    from tiledcorr import budget

    monkeypatch.setattr(budget, "free_memory", lambda device: 2**30)
    assert tiledcorr.resolve_budget(0.5) == tiledcorr.resolve_budget("0.5") == 2**29  # decimal point: a fraction
    assert tiledcorr.resolve_budget(1024) == tiledcorr.resolve_budget("1024") == 1024  # an integer: bytes
    assert tiledcorr.resolve_budget("1.5GiB") == int(1.5 * 2**30)  # units: bytes
    for ambiguous in ("1.5", 1.5, "2.0", "1e9"):
        with pytest.raises(tiledcorr.ArgumentValueError, match=r"fraction.*\(0, 1\]"):
            tiledcorr.resolve_budget(ambiguous)


# --------------------------------------------------------------------------- 5: a real CPU out-of-memory

_OOM_CHILD = """
import dataclasses, resource, sys, warnings
import torch
import tiledcorr
from tiledcorr.planning.tiling import Tiling

torch.set_num_threads(1)
x1, x2 = torch.randn(1, 16, 64, 64), torch.randn(1, 16, 64, 64)
tiledcorr.correlate(x1[..., :20, :20], x2[..., :20, :20], patch_size=21, memory_budget="1MiB")  # warm-up
base = tiledcorr.plan(x1.shape, patch_size=21, memory_budget="4GiB")
big = dataclasses.replace(base, tiling=Tiling("tile_matmul", 1, (64, 64), (21, 21)))  # ~130 MiB of workspace
expected = tiledcorr.correlate(x1, x2, patch_size=21, memory_budget="8MiB")
with open("/proc/self/status") as f:
    vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
# Address space for the output and 48 MiB more ("retry"), or for half the output ("output").
headroom = big.output_bytes + 48 * 2**20 if sys.argv[1] == "retry" else big.output_bytes // 2
resource.setrlimit(resource.RLIMIT_AS, (vm_size + headroom, vm_size + headroom))
try:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tiledcorr.correlate(x1, x2, patch_size=21, plan=big)
    retried = any("retrying" in str(w.message) for w in caught)
    print("RESULT", torch.allclose(out, expected, atol=1e-5), retried)
except tiledcorr.MemoryBudgetError as exc:
    print("MemoryBudgetError", exc)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
@pytest.mark.parametrize("mode, expected", [("retry", "RESULT True True"), ("output", "MemoryBudgetError out of memory")])
def test_cpu_out_of_memory_is_retried_then_a_budget_error(mode, expected):
    """Address space just above the output: the 130 MiB workspace fails in the CPU allocator, a smaller plan runs.

    Below the output: a MemoryBudgetError naming the output, not the allocator's RuntimeError.
    """
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _OOM_CHILD, mode], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert expected in done.stdout, done.stdout + done.stderr


def test_the_cpu_allocators_error_counts_as_out_of_memory():
    from tiledcorr.execution.retry import is_out_of_memory

    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't "
                                         "allocate memory: you tried to allocate 1 bytes. Error code 12"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory")) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


# --------------------------------------------------------------------------- 6: CUDA without CUDA


def test_planning_for_cuda_without_cuda_is_a_device_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(tiledcorr.DeviceError, match="no CUDA device.*absolute memory_budget"):
        tiledcorr.plan((1, 2, 6, 6), device="cuda")
    with pytest.raises(tiledcorr.DeviceError):
        tiledcorr.plan((1, 2, 6, 6), device="cuda", memory_budget=0.5)
    assert tiledcorr.plan((1, 2, 6, 6), device="cuda", memory_budget="1GiB").device_type == "cuda"


# --------------------------------------------------------------------------- 1: a user's Plan is checked, field by field


def _forgeries():
    """``(name, plan)``: plans for (2, 2, 6, 6), patch 3, each with one field forged."""
    import dataclasses

    from tiledcorr.geometry import Geometry
    from tiledcorr.planning.tiling import Tiling

    p = tiledcorr.plan((2, 2, 6, 6), patch_size=3)
    g = p.geometry
    tilings = {
        "negative batch tile": Tiling("tile_matmul", -1, (2, 2), (3, 3)),
        "zero tile": Tiling("tile_matmul", 1, (0, 2), (3, 3)),
        "short tile": Tiling("tile_matmul", 1, (2,), (3, 3)),
        "bool tile": Tiling("tile_matmul", True, (2, 2), (3, 3)),
        "float tile": Tiling("tile_matmul", 1, (2.0, 2), (3, 3)),
        "list tile": Tiling("tile_matmul", 1, [2, 2], (3, 3)),
        "unknown strategy": Tiling("fast", 1, (2, 2), (3, 3)),
        "strategy not a name": Tiling(3, 1, (2, 2), (3, 3)),
        "huge tile": Tiling("tile_matmul", 1, (2**64, 2), (3, 3)),
    }
    forged = [(name, dataclasses.replace(p, tiling=t)) for name, t in tilings.items()]
    forged += [
        ("tiling not a Tiling", dataclasses.replace(p, tiling=("tile_matmul", 1, (2, 2), (3, 3)))),
        ("geometry not a Geometry", dataclasses.replace(p, geometry=(2, 2, 6, 6))),
        ("other geometry, same shape", dataclasses.replace(p, geometry=dataclasses.replace(g, dilation_patch=(2, 2)))),
        ("other dtype", dataclasses.replace(p, dtype=torch.float64)),
        ("other device", dataclasses.replace(p, device_type="cuda")),
        ("bool budget", dataclasses.replace(p, budget_bytes=True)),
        ("float budget", dataclasses.replace(p, budget_bytes=1.5)),
        ("zero budget", dataclasses.replace(p, budget_bytes=0)),
    ]
    assert isinstance(g, Geometry)
    return forged


@pytest.mark.parametrize("name", [name for name, _ in _forgeries()])
def test_forged_plans_raise_a_typed_error(name):
    plan_ = dict(_forgeries())[name]
    x1, x2 = torch.randn(2, 2, 6, 6, requires_grad=True), torch.randn(2, 2, 6, 6)
    with pytest.raises(TiledCorrError, match="plan"):
        tiledcorr.correlate(x1, x2, patch_size=3, plan=plan_)
    with pytest.raises(TiledCorrError, match="plan"):
        tiledcorr.correlate_reduce(x1, x2, patch_size=3, reduction="softargmax", plan=plan_)
    with pytest.raises(TiledCorrError, match="plan"):
        tiledcorr.correlate_reduce(x1, x2, patch_size=3, reduction="topk", k=2, plan=plan_)


# --------------------------------------------------------------------------- 8: torch.compile with dynamic shapes, torch.func


def test_correlate_reduce_compiles_with_dynamic_shapes_in_one_graph():
    x1, x2 = torch.randn(1, 4, 9, 10, requires_grad=True), torch.randn(1, 4, 9, 10)

    def f(a, b, temperature):
        return tiledcorr.correlate_reduce(a, b, patch_size=3, reduction="softargmax", temperature=temperature)

    compiled = torch.compile(f, dynamic=True, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x1, x2, 0.5), f(x1, x2, 0.5))
    compiled(x1, x2, 0.5).sum().backward()
    assert x1.grad is not None
    torch.testing.assert_close(compiled(x1[..., :8], x2[..., :8], 0.25), f(x1[..., :8], x2[..., :8], 0.25))
    with pytest.raises(Exception, match="temperature must be finite"):
        compiled(x1, x2, float("inf"))


@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_torch_func_transforms_are_refused_clearly(transform):
    x1, x2 = torch.randn(2, 4, 6, 7), torch.randn(2, 4, 6, 7)
    with pytest.raises(tiledcorr.ArgumentTypeError, match=r"torch.func transform.*torch.autograd"):
        if transform == "grad":
            torch.func.grad(lambda a: tiledcorr.correlate(a, x2, patch_size=3).sum())(x1)
        else:
            torch.func.vmap(lambda a, b: tiledcorr.correlate(a[None], b[None], patch_size=3))(x1, x2)


# --------------------------------------------------------------------------- 9, 10: the drop-ins under autocast, keyword names


def test_drop_ins_compute_in_the_input_dtype_under_autocast():
    x1, x2 = torch.randn(1, 8, 9, 10), torch.randn(1, 8, 9, 10)
    expected = {
        "sampler": tiledcorr.spatial_correlation_sample(x1, x2, 1, 5),
        "sampler module": tiledcorr.SpatialCorrelationSampler(1, 5)(x1, x2),
        "corrtorch": tiledcorr.CorrTorch(2, 1, 2)(x1, x2),
        "flownet": tiledcorr.Correlation(2, 1, 2, 1, 1, 1)(x1, x2),
    }
    with torch.autocast("cpu", torch.bfloat16):
        got = {
            "sampler": tiledcorr.spatial_correlation_sample(x1, x2, 1, 5),
            "sampler module": tiledcorr.SpatialCorrelationSampler(1, 5)(x1, x2),
            "corrtorch": tiledcorr.CorrTorch(2, 1, 2)(x1, x2),
            "flownet": tiledcorr.Correlation(2, 1, 2, 1, 1, 1)(x1, x2),
        }
        follows = tiledcorr.correlate(x1, x2, patch_size=5)
    for name in expected:
        assert got[name].dtype == torch.float32, name
        torch.testing.assert_close(got[name], expected[name])
    assert follows.dtype == torch.bfloat16  # correlate keeps its documented autocast behaviour


def test_corrtorch_forward_takes_the_originals_keyword_names():
    x1, x2 = torch.randn(1, 3, 5, 6), torch.randn(1, 3, 5, 6)
    layer = tiledcorr.CorrTorch(1, 1, 1)
    torch.testing.assert_close(layer(in1=x1, in2=x2), layer(x1, x2))


# --------------------------------------------------------------------------- 15: the stated Python floor is true


def test_the_source_parses_at_the_stated_python_floor():
    """Every module parses with the grammar of pyproject's requires-python, and uses no newer builtin keyword."""
    import ast
    import re

    root = Path(__file__).resolve().parents[1]
    floor = re.search(r'requires-python\s*=\s*">=\s*3\.(\d+)"', (root / "pyproject.toml").read_text())
    assert floor, "requires-python must state a floor such as >=3.10"
    minor = int(floor.group(1))
    newer_calls = {"strict": 10}  # zip(strict=...) is 3.10+
    for path in sorted((root / "tiledcorr").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, minor))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "zip":
                for kw in node.keywords:
                    assert newer_calls.get(kw.arg, 0) <= minor, f"{path}: zip({kw.arg}=) needs 3.{newer_calls[kw.arg]}"
