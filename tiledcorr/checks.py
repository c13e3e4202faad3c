"""Validation of user input, in one place.

Every public entry point calls these helpers before doing any work, so a bad
argument is reported by name, with its value and what was expected, and never
reaches a kernel that could crash or read out of bounds.
"""

from __future__ import annotations

import operator
from typing import Any, Sequence

import torch

from .errors import ArgumentTypeError, ArgumentValueError, DeviceError, ShapeError

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


#: Longest representation of a bad value an error message quotes.
_MAX_SHOWN = 120


def show(value: Any, *, typed: bool = False) -> str:
    """A bad argument as an error message quotes it: its repr, kept short.

    A tensor or array (passed where a shape or a size belongs, say) is named
    by type, shape and dtype instead of its values, and any other repr longer
    than 120 characters is cut. ``typed`` adds the type of other values.
    """
    if isinstance(value, torch.Tensor):
        return f"a Tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    shape = getattr(value, "shape", None)
    if shape and hasattr(value, "dtype"):  # an array; a 0-d one (a numpy scalar) is short enough to print
        return f"an array of shape {tuple(shape)}, dtype {value.dtype}"
    text = repr(value)
    text = text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 5] + "[...]"
    return f"{text} of type {type(value).__name__}" if typed else text


def as_tuple(name: str, value: Any, ndim: int, *, minimum: int) -> tuple[int, ...]:
    """Normalise an int-or-tuple parameter to one int per spatial dimension.

    Args:
        name: the argument's name, used in error messages.
        value: an int, or a sequence of ``ndim`` ints.
        ndim: number of spatial dimensions.
        minimum: the smallest accepted value (1 for sizes, 0 for padding).

    Raises:
        ArgumentTypeError: ``value`` is not an int or a sequence of ints.
        ArgumentValueError: wrong length, or an element below ``minimum``.
    """
    if _is_int(value):
        items = (_as_int(value),) * ndim
    elif isinstance(value, (tuple, list, torch.Size)):
        if not all(_is_int(v) for v in value):
            raise ArgumentTypeError(
                f"{name} must be an int or a tuple of {ndim} ints, got {show(value)}"
            )
        if len(value) != ndim:
            raise ArgumentValueError(
                f"{name} must be an int or a tuple of {ndim} ints (one per spatial "
                f"dimension), got {show(value)} of length {len(value)}"
            )
        items = tuple(_as_int(v) for v in value)
    else:
        raise ArgumentTypeError(
            f"{name} must be an int or a tuple of {ndim} ints, got {show(value, typed=True)}"
        )
    if any(v < minimum for v in items):
        expected = "positive" if minimum == 1 else f">= {minimum}"
        raise ArgumentValueError(f"{name} must be {expected}, got {show(value)}")
    _check_int64(name, items, value)
    return items


#: Largest int a parameter may take: torch carries sizes as int64.
INT64_MAX = 2**63 - 1


def _is_int(value: Any) -> bool:
    """An integer: ``int`` or anything with ``__index__`` (``numpy.int64``, a 0-d integer tensor...), bool excluded.

    The originals take such values (pybind11 and Python arithmetic both call ``__index__``).
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, torch.SymInt)):  # first: torch.compile traces sizes as SymInts
        return True
    if isinstance(value, (float, torch.SymFloat)) or type(value).__name__ == "bool_":  # numpy.bool_ has __index__
        return False
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _as_int(value: Any) -> Any:
    """An :func:`_is_int` value as a Python int (a SymInt stays symbolic)."""
    return value if isinstance(value, torch.SymInt) else operator.index(value)


def _check_int64(name: str, items: Sequence[int], value: Any) -> None:
    if any(v > INT64_MAX for v in items):
        raise ArgumentValueError(f"{name} must fit in int64 (at most 2**63 - 1), got {show(value)}")


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """Check a scalar int argument (FlowNet's ``kernel_size``, ``stride1``...); returns a Python int.

    Any ``__index__`` integer (``numpy.int64``...) is accepted, bool is not.
    """
    if not _is_int(value):
        raise ArgumentTypeError(f"{name} must be an int, got {show(value, typed=True)}")
    value = _as_int(value)
    if value < minimum:
        raise ArgumentValueError(f"{name} must be >= {minimum}, got {show(value)}")
    _check_int64(name, (value,), value)
    return value


def check_bool(name: str, value: Any) -> bool:
    """Check a flag (``flatten``, ``requires_grad``): a bool, not merely something truthy."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a bool, got {show(value, typed=True)}")
    return value


def check_shape(name: str, value: Any, *, spatial_dims: Sequence[int] = (2, 3)) -> tuple[int, ...]:
    """Check a shape ``(B, C, *spatial)`` given without a tensor (:func:`tiledcorr.plan`).

    Raises:
        ArgumentTypeError: not a tuple, list or ``torch.Size``.
        ShapeError: wrong length, or an entry that is not a non-negative int.
    """
    if not isinstance(value, (tuple, list, torch.Size)):
        raise ArgumentTypeError(
            f"{name} must be a tuple of ints (B, C, *spatial), got {show(value, typed=True)}"
        )
    shape = tuple(value)
    if len(shape) - 2 not in spatial_dims or not all(_is_int(v) and 0 <= _as_int(v) <= INT64_MAX for v in shape):
        expected = " or ".join(f"{d + 2}" for d in spatial_dims)
        raise ShapeError(f"{name} must be {expected} non-negative ints (B, C, *spatial) that fit in int64, got {show(value)}")
    return tuple(_as_int(v) for v in shape)


def check_dtype(name: str, value: Any) -> torch.dtype:
    """Check a dtype argument: one of the floating dtypes tiledcorr computes in."""
    if value not in _FLOAT_DTYPES:
        raise ArgumentTypeError(
            f"{name} must be a floating torch.dtype (float16, bfloat16, float32 or float64), got {show(value)}"
        )
    return value


def check_device(name: str, value: Any) -> torch.device:
    """Check a device argument (a ``torch.device``, a string such as ``"cuda:0"``, or a GPU index)."""
    if isinstance(value, bool) or not isinstance(value, (torch.device, str, int)):
        raise ArgumentTypeError(
            f"{name} must be a torch.device, a device string or an index, got {show(value, typed=True)}"
        )
    try:
        return torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"{name} {show(value)} is not a device torch knows: {exc}") from None


def check_inputs(input1: Any, input2: Any, *, spatial_dims: Sequence[int] = (2, 3)) -> int:
    """Check the two feature maps and return their number of spatial dimensions.

    Args:
        input1: tensor of shape ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        input2: tensor of the same shape, dtype and device.
        spatial_dims: accepted numbers of spatial dimensions.

    Raises:
        ArgumentTypeError: not a tensor, not a dense (strided) tensor, or a
            dtype that is not floating point.
        ShapeError: wrong number of dimensions or different shapes.
        DeviceError: different devices, or the meta device.
    """
    for name, x in (("input1", input1), ("input2", input2)):
        if not isinstance(x, torch.Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.layout != torch.strided:
            raise ArgumentTypeError(f"{name} must be a dense tensor, got layout {x.layout}; call .to_dense() first")
        if x.dtype not in _FLOAT_DTYPES:
            raise ArgumentTypeError(
                f"{name} must have a floating dtype (float16, bfloat16, float32 or "
                f"float64), got {x.dtype}"
            )
        if x.dim() - 2 not in spatial_dims:
            expected = " or ".join(f"{d + 2}-D" for d in spatial_dims)
            raise ShapeError(
                f"{name} must be {expected} (B, C, *spatial), got shape "
                f"{tuple(x.shape)} ({x.dim()}-D)"
            )
        check_not_transformed(name, x)
        if x.is_meta:
            raise DeviceError(
                f"{name} is on the meta device, which holds no data; use "
                "tiledcorr.plan() to plan from shapes alone"
            )
    if input1.dtype != input2.dtype:
        raise ArgumentTypeError(
            f"input1 and input2 must have the same dtype, got {input1.dtype} and {input2.dtype}"
        )
    if input1.device != input2.device:
        raise DeviceError(
            f"input1 and input2 must be on the same device, got {input1.device} and {input2.device}"
        )
    if input1.shape != input2.shape:
        raise ShapeError(
            "input1 and input2 must have the same shape, got "
            f"{tuple(input1.shape)} and {tuple(input2.shape)}"
        )
    return input1.dim() - 2


def check_real(name: str, value: Any) -> float:
    """Check a finite real scalar (a temperature, a scale).

    Written with comparisons only (no ``math.isfinite``), so that
    ``torch.compile(dynamic=True, fullgraph=True)`` traces it with a symbolic float.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.SymInt, torch.SymFloat)):
        raise ArgumentTypeError(f"{name} must be a real number, got {show(value)}")
    if not -_FLOAT_MAX <= value <= _FLOAT_MAX:  # False for NaN and for +-inf
        raise ArgumentValueError(f"{name} must be finite, got {show(value)}")
    # A SymFloat stands for a float while the compiler traces; callers use it as one.
    return value if isinstance(value, (float, torch.SymFloat)) else float(value)  # type: ignore[return-value]


_FLOAT_MAX = 1.7976931348623157e308


#: torch's test for a tensor wrapped by a functorch transform (looked up once: every call checks both inputs).
_is_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)


def check_not_transformed(name: str, value: torch.Tensor) -> None:
    """Refuse a tensor wrapped by a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``...).

    tiledcorr's operators are differentiable through ``torch.autograd``
    (``backward``, ``torch.autograd.grad``), under ``torch.compile`` and
    ``torch.export``; torch's custom-operator autograd does not support the
    functorch transforms, which would fail deep inside torch.
    """
    if _is_functorch_wrapped is not None and not torch.compiler.is_compiling() and _is_functorch_wrapped(value):
        raise ArgumentTypeError(
            f"{name} is a tensor inside a torch.func transform (grad, vmap, jacrev, jvp...), which tiledcorr "
            "does not support; differentiate with torch.autograd instead (loss.backward() or "
            "torch.autograd.grad(loss, inputs)), which also works under torch.compile"
        )
