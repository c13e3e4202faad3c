"""Deployment: torch.jit.script, torch.jit.trace, torch.export (dynamic shapes) and ONNX, on every Module.

Each deployed model is compared with the eager Module at the size it was
deployed at and at a second size (another batch, height and width).
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch

import tiledcorr
from tiledcorr.errors import ArgumentValueError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

C = 6
SIZES = ((2, C, 9, 11), (1, C, 12, 8))

#: name -> (Module factory, number of spatial dims of its input)
MODULES = {
    "SpatialCorrelation": lambda: tiledcorr.SpatialCorrelation(
        kernel_size=3, patch_size=3, stride=2, padding=1, dilation_patch=2, normalize="channels", flatten=True),
    "SpatialCorrelation-5d": lambda: tiledcorr.SpatialCorrelation(patch_size=(1, 3, 3), normalize="sqrt_channels"),
    "SpatialCorrelationSampler": lambda: tiledcorr.SpatialCorrelationSampler(1, 3, 1, 0, 1),
    "SpatialCorrelationSampler-k3": lambda: tiledcorr.SpatialCorrelationSampler(3, 3, 1, 1, 1),
    "FlowNetCorrelation": lambda: tiledcorr.Correlation(4, 1, 4, 1, 2, 1),
    "FlowNetCorrelation-k3": lambda: tiledcorr.FlowNetCorrelation(3, 3, 2, 1, 2, 1),
    "CorrTorch": lambda: tiledcorr.CorrTorch(pad_size=1, kernel_size=1, max_displacement=1, stride1=1, stride2=1),
    "CorrelationReduce-max": lambda: tiledcorr.CorrelationReduce(patch_size=3, reduction="max"),
    "CorrelationReduce-argmax": lambda: tiledcorr.CorrelationReduce(patch_size=3, dilation_patch=2, reduction="argmax"),
    "CorrelationReduce-softargmax": lambda: tiledcorr.CorrelationReduce(
        patch_size=3, reduction="softargmax", temperature=0.5, normalize="channels"),
    "CorrelationReduce-topk": lambda: tiledcorr.CorrelationReduce(kernel_size=3, patch_size=3, reduction="topk", k=2),
}


class Model(torch.nn.Module):
    """A small model around a correlation Module: a shared convolution, the correlation, a head."""

    def __init__(self, corr: torch.nn.Module, volumetric: bool = False) -> None:
        super().__init__()
        self.features = (torch.nn.Conv3d if volumetric else torch.nn.Conv2d)(C, C, 1)
        self.corr = corr

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        return self.corr(self.features(a), self.features(b))


def _integral(name: str) -> bool:
    # Displacements are compared exactly: with small integers every sum is exact in float32 whatever the order
    # of the additions, so near-ties cannot flip and the many exact ties check that the lowest index wins.
    return "argmax" in name or "topk" in name


def _model(name: str) -> Model:
    torch.manual_seed(0)
    model = Model(MODULES[name](), volumetric=name.endswith("5d")).eval()
    if _integral(name):
        with torch.no_grad():
            model.features.weight.copy_(torch.randint(-1, 2, model.features.weight.shape))
            model.features.bias.zero_()
    return model


def _inputs(name: str, size: tuple[int, ...], dtype=torch.float32, seed: int = 0):
    size = size[:2] + (3,) + size[2:] if name.endswith("5d") else size
    g = torch.Generator().manual_seed(seed)
    if _integral(name):
        return tuple(torch.randint(-2, 3, size, generator=g).to(dtype) for _ in range(2))
    return torch.randn(size, generator=g, dtype=dtype), torch.randn(size, generator=g, dtype=dtype)


def _assert_same(out, expected, rtol=1e-6, atol=1e-6):
    if isinstance(expected, tuple):
        assert isinstance(out, tuple) and len(out) == len(expected)
        for o, e in zip(out, expected):
            _assert_same(o, e, rtol, atol)
        return
    if not expected.is_floating_point():  # displacements: exactly
        assert torch.equal(out, expected)
        return
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol * max(1.0, expected.abs().max().item()))


def _dynamic_shapes(name: str):
    batch, height, width = torch.export.Dim("B"), torch.export.Dim("H", min=6), torch.export.Dim("W", min=6)
    dims = {0: batch, 3: height, 4: width} if name.endswith("5d") else {0: batch, 2: height, 3: width}
    return (dims, dims)


@pytest.mark.parametrize("name", MODULES)
def test_script_matches_eager_at_two_sizes_and_calls_the_operator(name):
    model = _model(name).double()
    scripted = torch.jit.script(model)
    op = "tiledcorr::correlate_reduce" if "Reduce" in name else "tiledcorr::correlate"
    assert op in str(scripted.corr.inlined_graph)
    for i, size in enumerate(SIZES):
        a, b = _inputs(name, size, torch.float64, seed=i)
        out, expected = scripted(a, b), model(a, b)
        _assert_same(out, expected, 1e-12, 1e-12)
        if isinstance(expected, tiledcorr.TopK):  # a NamedTuple with the same fields
            assert out._fields == expected._fields
    # saved and loaded, it still runs the operator
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    _assert_same(loaded(a, b), model(a, b), 1e-12, 1e-12)


def test_scripted_module_is_differentiable():
    model = _model("SpatialCorrelation").double()
    scripted = torch.jit.script(model)
    a, b = _inputs("SpatialCorrelation", SIZES[0], torch.float64)
    model(a, b).square().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    scripted(a, b).square().sum().backward()
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", MODULES)
def test_trace_matches_eager_at_two_sizes_and_calls_the_operator(name):
    model = _model(name).double()
    a, b = _inputs(name, SIZES[0], torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # nothing is specialised to the traced size
        traced = torch.jit.trace(model, (a, b))
    op = "tiledcorr::correlate_reduce" if "Reduce" in name else "tiledcorr::correlate"
    assert op in str(traced.inlined_graph)
    for i, size in enumerate(SIZES):
        a, b = _inputs(name, size, torch.float64, seed=i)
        _assert_same(traced(a, b), model(a, b), 1e-12, 1e-12)


@pytest.mark.parametrize("name", MODULES)
def test_export_with_dynamic_shapes_matches_eager_at_two_sizes(name):
    model = _model(name).double()
    a, b = _inputs(name, SIZES[0], torch.float64)
    program = torch.export.export(model, (a, b), dynamic_shapes=_dynamic_shapes(name))
    op = "tiledcorr.correlate_reduce" if "Reduce" in name else "tiledcorr.correlate"
    assert any(op in m.code for m in program.graph_module.modules())  # argmax's runs under no_grad, in a submodule
    for i, size in enumerate(SIZES):
        a, b = _inputs(name, size, torch.float64, seed=i)
        _assert_same(program.module()(a, b), model(a, b), 1e-12, 1e-12)


def _run_onnx(path_or_bytes, a, b):
    session = ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, dict(zip(names, (a.numpy(), b.numpy()))))
    return tuple(torch.from_numpy(o) for o in outputs)


def _assert_standard_onnx(model_proto):
    onnx.checker.check_model(model_proto)
    assert {node.domain for node in model_proto.graph.node} <= {"", "ai.onnx"}
    assert not [f for f in model_proto.functions if f.domain not in ("", "ai.onnx")]


def _check_onnx(model, name, model_proto, serialized):
    _assert_standard_onnx(model_proto)
    for i, size in enumerate(SIZES):
        a, b = _inputs(name, size, seed=i)
        expected = model(a, b)
        out = _run_onnx(serialized, a, b)
        _assert_same(out if isinstance(expected, tuple) else out[0], expected, 1e-5, 1e-5)


#: The dynamo exporter costs seconds per model on two cores: one model of each kind.
ONNX_DYNAMO = ["SpatialCorrelation", "SpatialCorrelationSampler", "FlowNetCorrelation-k3", "CorrTorch",
               "CorrelationReduce-argmax", "CorrelationReduce-topk"]


@pytest.mark.parametrize("name", ONNX_DYNAMO)
def test_onnx_dynamo_export_runs_in_onnxruntime_at_two_sizes(name):
    model = _model(name)
    a, b = _inputs(name, SIZES[0])
    program = torch.onnx.export(model, (a, b), dynamo=True, dynamic_shapes=_dynamic_shapes(name), verbose=False)
    _check_onnx(model, name, program.model_proto, program.model_proto.SerializeToString())


@pytest.mark.parametrize("name", MODULES)
def test_onnx_torchscript_export_runs_in_onnxruntime_at_two_sizes(name):
    model = _model(name)
    a, b = _inputs(name, SIZES[0])
    axes = {0: "B", 3: "H", 4: "W"} if name.endswith("5d") else {0: "B", 2: "H", 3: "W"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (a, b), buffer, dynamo=False, input_names=["a", "b"],
                          dynamic_axes={"a": axes, "b": axes})
    _check_onnx(model, name, onnx.load_from_string(buffer.getvalue()), buffer.getvalue())


def test_functional_api_traces_and_exports():
    def f(a, b):
        return tiledcorr.correlate(a, b, kernel_size=3, patch_size=3, padding=1, normalize="channels", flatten=True)

    a, b = _inputs("f", SIZES[0], torch.float64)
    traced = torch.jit.trace(f, (a, b))
    a2, b2 = _inputs("f", SIZES[1], torch.float64, seed=1)
    _assert_same(traced(a2, b2), f(a2, b2), 1e-12, 1e-12)


def test_unsupported_paths_say_what_is_supported():
    a, b = _inputs("f", SIZES[0])
    plan = tiledcorr.plan(a.shape, patch_size=3)
    with pytest.raises(ArgumentValueError, match="plan= is not supported under torch.jit.trace"):
        torch.jit.trace(lambda x, y: tiledcorr.correlate(x, y, patch_size=3, plan=plan), (a, b))
    # a bad argument is reported when the Module is scripted, by name
    with pytest.raises(ArgumentValueError, match="patch_size"):
        torch.jit.script(tiledcorr.SpatialCorrelation(patch_size=0))
    # inputs the Module does not take, at run time, with what it takes
    scripted = torch.jit.script(tiledcorr.SpatialCorrelationSampler(1, 3))
    with pytest.raises(Exception, match="4-D"):
        scripted(a[0], b[0])
