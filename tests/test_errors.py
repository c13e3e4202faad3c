"""Bad input raises a typed exception whose message names the argument and the value.

One row per case of semantics.md section 4 and of issue 5, for every public
entry point: correlate, SpatialCorrelation, plan, the drop-in shims and
correlate_reduce. Each row is ``(id, call, exception type, fragments that
the message must contain)``; the type is checked exactly, and against the
built-in exception it derives from.
"""

from __future__ import annotations

import math

import pytest
import torch

import tiledcorr
from tiledcorr import compat
from tiledcorr.errors import ArgumentTypeError, ArgumentValueError, DeviceError, MemoryBudgetError, ShapeError
from tiledcorr import CorrelationReduce, correlate_reduce

BUILTIN = {ShapeError: ValueError, ArgumentTypeError: TypeError, ArgumentValueError: ValueError,
           DeviceError: ValueError, MemoryBudgetError: RuntimeError}

X = torch.randn(2, 3, 6, 7)
SHAPE = (2, 3, 6, 7)
SIZE_PARAMS = ("kernel_size", "patch_size", "stride", "dilation", "dilation_patch")


def corr(**kw):
    return lambda: tiledcorr.correlate(kw.pop("input1", X), kw.pop("input2", X), **kw)


def module(**kw):
    return lambda: tiledcorr.SpatialCorrelation(**kw)(X, X)


def plan(shape=SHAPE, **kw):
    return lambda: tiledcorr.plan(shape, **kw)


CASES = [
    # tensors
    ("3-D input", corr(input1=X[0], input2=X[0]), ShapeError, ["input1", "(3, 6, 7)", "3-D"]),
    ("6-D input", corr(input1=X[None, None], input2=X[None, None]), ShapeError, ["input1", "(1, 1, 2, 3, 6, 7)"]),
    ("shape mismatch", corr(input2=X[:, :2]), ShapeError, ["input1", "input2", "(2, 3, 6, 7)", "(2, 2, 6, 7)"]),
    ("smaller input2", corr(input2=X[..., :5, :]), ShapeError, ["input2", "(2, 3, 5, 7)"]),
    ("dtype mismatch", corr(input2=X.double()), ArgumentTypeError, ["input2", "torch.float32", "torch.float64"]),
    ("int dtype", corr(input1=X.long(), input2=X.long()), ArgumentTypeError, ["input1", "torch.int64"]),
    ("bool dtype", corr(input1=X > 0, input2=X > 0), ArgumentTypeError, ["input1", "torch.bool"]),
    ("complex dtype", corr(input1=X.cfloat(), input2=X.cfloat()), ArgumentTypeError, ["input1", "torch.complex64"]),
    ("not a tensor", corr(input1=X.numpy()), ArgumentTypeError, ["input1", "ndarray"]),
    ("None input2", corr(input2=None), ArgumentTypeError, ["input2", "NoneType"]),
    ("sparse", corr(input1=X.to_sparse(), input2=X.to_sparse()), ArgumentTypeError, ["input1", "sparse_coo"]),
    ("meta input1", corr(input1=X.to("meta"), input2=X.to("meta")), DeviceError, ["input1", "meta"]),
    ("meta input2", corr(input2=X.to("meta")), DeviceError, ["input2", "meta"]),
    # parameters: non-positive sizes, negative padding, wrong types and lengths
    *[(f"{p}=0", corr(**{p: 0}), ArgumentValueError, [p, "0"]) for p in SIZE_PARAMS],
    *[(f"{p}=(1, -2)", corr(**{p: (1, -2)}), ArgumentValueError, [p, "(1, -2)"]) for p in SIZE_PARAMS],
    ("padding=-1", corr(padding=-1), ArgumentValueError, ["padding", "-1"]),
    ("padding=(0, -3)", corr(padding=(0, -3)), ArgumentValueError, ["padding", "(0, -3)"]),
    *[(f"{p}={v!r}", corr(**{p: v}), ArgumentTypeError, [p, repr(v)])
      for p in ("kernel_size", "patch_size", "padding") for v in (1.0, "3", None, (1, 2.0), True)],
    *[(f"{p}=3-tuple", corr(**{p: (1, 1, 1)}), ArgumentValueError, [p, "(1, 1, 1)", "2"]) for p in SIZE_PARAMS],
    ("normalize", corr(normalize="mean"), ArgumentValueError, ["normalize", "'mean'"]),
    ("flatten", corr(flatten=1), ArgumentTypeError, ["flatten", "1"]),
    ("plan type", corr(plan="fast"), ArgumentTypeError, ["plan", "str"]),
    ("plan for other shapes", corr(plan=tiledcorr.plan((1, 3, 6, 7))), ArgumentValueError, ["plan", "B=1", "B=2"]),
    ("plan for other dtype", corr(plan=tiledcorr.plan(SHAPE, dtype=torch.float64)), ArgumentValueError,
     ["plan", "float64", "float32"]),
    # memory budget
    ("budget NaN", corr(memory_budget=math.nan), ArgumentValueError, ["memory_budget", "nan"]),
    ("budget -1", corr(memory_budget=-1), ArgumentValueError, ["memory_budget", "-1"]),
    ("budget 0", corr(memory_budget=0), ArgumentValueError, ["memory_budget", "0"]),
    ("budget -0.5", corr(memory_budget=-0.5), ArgumentValueError, ["memory_budget", "-0.5"]),
    ("budget 1.5", corr(memory_budget=1.5), ArgumentValueError, ["memory_budget", "1.5"]),
    ("budget inf", corr(memory_budget=math.inf), ArgumentValueError, ["memory_budget", "inf"]),
    ("budget '-5MB'", corr(memory_budget="-5MB"), ArgumentValueError, ["memory_budget", "'-5MB'"]),
    ("budget '1e400'", corr(memory_budget="1e400"), ArgumentValueError, ["memory_budget", "'1e400'"]),
    ("budget '12 parsecs'", corr(memory_budget="12 parsecs"), ArgumentValueError, ["memory_budget", "'12 parsecs'"]),
    ("budget list", corr(memory_budget=[1]), ArgumentTypeError, ["memory_budget", "[1]", "list"]),
    ("budget bool", corr(memory_budget=True), ArgumentTypeError, ["memory_budget", "True"]),
    ("budget too small", corr(patch_size=5, memory_budget=8), MemoryBudgetError, ["memory_budget", "8 bytes"]),
    # the Module checks its arguments when called
    ("module kernel_size=0", module(kernel_size=0), ArgumentValueError, ["kernel_size", "0"]),
    ("module stride='2'", module(stride="2"), ArgumentTypeError, ["stride", "'2'"]),
    ("module normalize", module(normalize=1), ArgumentValueError, ["normalize", "1"]),
    ("module budget", module(memory_budget=-3), ArgumentValueError, ["memory_budget", "-3"]),
    # plan() from shapes
    ("plan 3-D shape", plan((1, 2, 3)), ShapeError, ["input1_shape", "(1, 2, 3)"]),
    ("plan float dim", plan((1, 2, 3.0, 4)), ShapeError, ["input1_shape", "3.0"]),
    ("plan negative dim", plan((1, -2, 3, 4)), ShapeError, ["input1_shape", "-2"]),
    ("plan shape int", plan(5), ArgumentTypeError, ["input1_shape", "5", "int"]),
    ("plan shape None", plan(None), ArgumentTypeError, ["input1_shape", "None"]),
    ("plan shapes differ", lambda: tiledcorr.plan(SHAPE, (2, 3, 6, 8)), ShapeError, ["(2, 3, 6, 7)", "(2, 3, 6, 8)"]),
    ("plan dtype int", plan(dtype=torch.int32), ArgumentTypeError, ["dtype", "torch.int32"]),
    ("plan dtype str", plan(dtype="float32"), ArgumentTypeError, ["dtype", "'float32'"]),
    ("plan device", plan(device="tpu9"), DeviceError, ["device", "'tpu9'"]),
    ("plan device type", plan(device=1.5), ArgumentTypeError, ["device", "1.5"]),
    ("plan strategy", plan(strategy="fft"), ArgumentValueError, ["strategy", "'fft'", "tile_matmul"]),
    ("plan requires_grad", plan(requires_grad="yes"), ArgumentTypeError, ["requires_grad", "'yes'"]),
    ("plan stride 0", plan(stride=0), ArgumentValueError, ["stride", "0"]),
    ("plan budget NaN", plan(memory_budget=math.nan), ArgumentValueError, ["memory_budget", "nan"]),
    ("plan budget too small", plan(memory_budget=1), MemoryBudgetError, ["memory_budget", "1 bytes"]),
    # drop-in shims
    ("sampler 5-D", lambda: compat.spatial_correlation_sample(X[None], X[None]), ShapeError, ["input1", "5-D"]),
    ("sampler stride 0", lambda: compat.spatial_correlation_sample(X, X, stride=0), ArgumentValueError, ["stride", "0"]),
    ("sampler dtype", lambda: compat.SpatialCorrelationSampler(patch_size=3)(X, X.half()), ArgumentTypeError,
     ["input2", "float16"]),
    *[(f"flownet kernel_size={k}", lambda k=k: compat.flownet_correlation(X, X, 0, k, 1, 1, 1), ArgumentValueError,
       ["kernel_size", str(k)]) for k in (0, -1, 2)],
    ("flownet kernel_size float", lambda: compat.flownet_correlation(X, X, 0, 1.0, 1, 1, 1), ArgumentTypeError,
     ["kernel_size", "1.0"]),
    ("flownet stride1 0", lambda: compat.FlowNetCorrelation(0, 1, 2, 0, 1)(X, X), ArgumentValueError, ["stride1", "0"]),
    ("flownet pad_size -1", lambda: compat.flownet_correlation(X, X, -1, 1, 1, 1, 1), ArgumentValueError,
     ["pad_size", "-1"]),
    ("flownet corr_multiply", lambda: compat.flownet_correlation(X, X, 0, 1, 1, 1, 1, "2"), ArgumentTypeError,
     ["corr_multiply", "'2'"]),
    ("flownet 3-D input", lambda: compat.flownet_correlation(X[0], X[0], 0, 1, 1, 1, 1), ShapeError, ["input1"]),
    ("corrtorch kernel_size", lambda: compat.corr_torch(X, X, 4, 3, 4), ArgumentValueError, ["kernel_size", "3"]),
    ("corrtorch pad != md", lambda: compat.CorrTorch(pad_size=3, max_displacement=4)(X, X), ArgumentValueError,
     ["pad_size", "3", "4"]),
    # fused reductions
    ("reduce reduction", lambda: correlate_reduce(X, X, reduction="median"), ArgumentValueError,
     ["reduction", "'median'"]),
    ("reduce reduction type", lambda: correlate_reduce(X, X, reduction=None), ArgumentTypeError, ["reduction", "None"]),
    ("reduce k=0", lambda: correlate_reduce(X, X, patch_size=3, reduction="topk", k=0), ArgumentValueError,
     ["k", "0"]),
    ("reduce k too large", lambda: correlate_reduce(X, X, patch_size=3, reduction="topk", k=10), ArgumentValueError,
     ["k", "10"]),
    ("reduce temperature", lambda: correlate_reduce(X, X, reduction="softargmax", temperature=-1.0),
     ArgumentValueError, ["temperature", "-1.0"]),
    ("reduce temperature NaN", lambda: correlate_reduce(X, X, reduction="softargmax", temperature=math.nan),
     ArgumentValueError, ["temperature", "nan"]),
    ("reduce patch_size", lambda: correlate_reduce(X, X, patch_size=-1, reduction="max"), ArgumentValueError,
     ["patch_size", "-1"]),
    ("reduce meta", lambda: correlate_reduce(X.to("meta"), X.to("meta"), reduction="max"), DeviceError,
     ["input1", "meta"]),
    ("reduce budget", lambda: correlate_reduce(X, X, reduction="max", memory_budget="lots"), ArgumentValueError,
     ["memory_budget", "'lots'"]),
    ("reduce module reduction", lambda: CorrelationReduce(reduction="mean"), ArgumentValueError,
     ["reduction", "'mean'"]),
    ("reduce module k", lambda: CorrelationReduce(patch_size=3, reduction="topk", k=2.0)(X, X), ArgumentTypeError,
     ["k", "2.0"]),
    ("reduce module dilation", lambda: CorrelationReduce(dilation=(1, 0), reduction="max")(X, X), ArgumentValueError,
     ["dilation", "(1, 0)"]),
]


@pytest.mark.parametrize("call, exc_type, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_typed_error_naming_argument_and_value(call, exc_type, fragments):
    with pytest.raises(BaseException) as info:
        call()
    assert type(info.value) is exc_type, f"{type(info.value).__name__}: {info.value}"
    assert isinstance(info.value, BUILTIN[exc_type]) and isinstance(info.value, tiledcorr.TiledCorrError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_memory_budget_error_states_the_smallest_budget_that_works():
    with pytest.raises(MemoryBudgetError) as info:
        tiledcorr.plan(SHAPE, patch_size=5, memory_budget=8)
    smallest = info.value.minimum_bytes
    assert str(smallest) in str(info.value)
    tiledcorr.plan(SHAPE, patch_size=5, memory_budget=smallest)  # and it does work


@pytest.mark.cuda
def test_cpu_and_cuda_inputs_are_rejected():
    with pytest.raises(DeviceError, match="input1 and input2 must be on the same device.*cpu.*cuda"):
        tiledcorr.correlate(X, X.cuda())


def test_no_exception_escapes_untyped_for_odd_but_legal_values():
    """Legal edge values are accepted: big ints, lists, torch.Size, budgets in every form."""
    tiledcorr.correlate(X, X, patch_size=[3, 5], padding=torch.Size([1, 2]), memory_budget="1.5MiB")
    tiledcorr.correlate(X, X, kernel_size=99)  # larger than the image: an empty output
    tiledcorr.correlate(X, X, memory_budget=10**30)
    tiledcorr.correlate(X, X, memory_budget=0.25)


_BIG = torch.zeros(2, 64, 48, 48)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: tiledcorr.plan(_BIG, _BIG), "input1_shape"),
        (lambda: tiledcorr.correlate(X, X, patch_size=_BIG), "patch_size"),
        (lambda: tiledcorr.correlate(X, X, memory_budget=_BIG), "memory_budget"),
        (lambda: correlate_reduce(X, X, reduction=_BIG), "reduction"),
        (lambda: tiledcorr.correlate(X, X, normalize=_BIG), "normalize"),
        (lambda: tiledcorr.correlate(X, X, stride=list(range(-1, 5000))), "stride"),
        (lambda: tiledcorr.correlate(X, X, memory_budget="x" * 5000), "memory_budget"),
    ],
)
def test_a_large_bad_value_is_named_briefly(call, name):
    """A tensor or a long value passed by mistake is described, not printed in full."""
    with pytest.raises((ArgumentTypeError, ArgumentValueError, ShapeError)) as info:
        call()
    message = str(info.value)
    assert name in message
    assert len(message) < 600, message
    if "Tensor" in message:
        assert "a Tensor of shape (2, 64, 48, 48), dtype torch.float32" in message
    else:
        assert "[...]" in message


def test_show_names_arrays_and_keeps_scalars():
    import numpy as np

    from tiledcorr.checks import show

    assert show(np.zeros((3, 4), dtype=np.float32)) == "an array of shape (3, 4), dtype float32"
    assert "0.5" in show(np.float64(0.5)) and "array" not in show(np.float64(0.5))
    assert show(torch.zeros(2, 3)) == "a Tensor of shape (2, 3), dtype torch.float32"
