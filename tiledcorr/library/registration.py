"""How tiledcorr's operators are registered: one kernel for every device, a fake kernel, one autograd kernel.

``torch.library.custom_op`` would do all of this, but its generic wrappers
(an autograd wrapper that refills the schema's defaults on every call, an
aliasing check and a ``torch._dynamo`` guard around every kernel) cost more
than a tiny call's work: with a trivial kernel, about 20 us without a gradient
and 160 us for a forward and backward, against 11 and 113 us for what this
module registers (scratch measurements at the same moment on the 2-core
development machine; a bare ``torch.autograd.Function`` took 55 us). So the
operators are defined with ``torch.library.Library`` directly:

* :func:`define`: the schema, the kernel (``CompositeExplicitAutograd``: every
  device; on CPU run on the cores other processes leave free,
  :mod:`tiledcorr.execution.threads`) and the fake kernel (``torch.compile``
  and ``torch.export`` get the output shapes from it);
* :func:`register_backward`: the operator's one autograd kernel. With a
  gradient to track it records one autograd node whose backward calls the
  backward operator; without, it goes straight to the kernel;
* :func:`call`: how the public functions run an operator. Plain eager
  tensors, with nothing watching (:func:`dispatcher_needed`), go straight to
  the operator's autograd step and kernel in Python: each crossing of the
  dispatcher into a Python kernel cost 45-50 us even for a trivial kernel
  (2026-12-02, the 2-core AMD EPYC VM), a sixth of a tiny forward and more
  with the backward. Everything else (``torch.compile``, ``torch.export``,
  TorchScript, fake tensors, dispatch and function modes, functorch
  transforms, tensor subclasses, the profiler) goes through the dispatcher,
  to the same kernels.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Sequence

import torch
from torch._ops import OpOverload

from ..execution.threads import on_free_cores

#: The ``tiledcorr`` operator namespace (``torch.ops.tiledcorr.*``).
LIBRARY = torch.library.Library("tiledcorr", "FRAGMENT")

DOUBLE_BACKWARD_MESSAGE = (
    "tiledcorr's correlation is differentiable once: its gradient cannot be differentiated "
    "again (double backward, e.g. a gradient penalty with create_graph=True through the correlation)"
)

_BELOW_AUTOGRAD = torch._C._after_autograd_keyset

#: Each operator's device kernel and its eager entry (what :func:`call` runs without the dispatcher).
_KERNELS: dict[OpOverload, Callable] = {}
_EAGER: dict[OpOverload, tuple[Callable, int]] = {}

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)

#: A context that does nothing (reusable): entering ``torch.no_grad`` where grad mode is off cost 1.3 us, this 0.2.
_NOTHING = contextlib.nullcontext()


def dispatcher_needed(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether a call on ``tensors`` must go through the dispatcher: anything but plain eager tensors, unwatched.

    That is: a tensor subclass (fake and functional tensors among them) or a
    device other than CPU and CUDA; or ``torch.compile`` tracing, a dispatch
    or function mode, a functorch transform, ``torch.jit.trace``, or the
    profiler (which records the operator by name).
    """
    for t in tensors:
        if type(t) not in _PLAIN_TYPES or not (t.is_cpu or t.is_cuda):  # flags: cheaper than t.device.type
            return True
    return (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._is_torch_function_mode_enabled() or torch._C._functorch.peek_interpreter_stack() is not None
            or torch._C._get_tracing_state() is not None or torch.autograd._profiler_enabled())


def call(op: OpOverload, *inputs: Any) -> Any:
    """``op(*inputs)``: straight to its autograd step and kernel for plain eager tensors, else through the dispatcher.

    ``op`` is an operator of :func:`register_backward`; both routes run the
    same kernels and record the same autograd node.
    """
    eager, tensors = _EAGER[op]
    if dispatcher_needed(inputs[:tensors]):
        return op(*inputs)
    return eager(*inputs)


def define(schema: str, kernel: Callable, fake: Callable) -> OpOverload:
    """Define ``tiledcorr::<schema>`` with ``kernel`` for every device and ``fake`` for shapes; its overload.

    Args:
        schema: e.g. ``"correlate(Tensor input1, Tensor input2, ...) -> Tensor"``.
        kernel: the implementation, called with the schema's arguments.
        fake: the same signature; returns empty tensors of the results' shapes and dtypes.
    """
    name = schema.partition("(")[0]
    LIBRARY.define(schema)

    @functools.wraps(kernel)
    def run(*args: Any) -> Any:
        if args[0].is_cpu:  # the first argument is a tensor of the call's device
            return on_free_cores(kernel, *args)
        return kernel(*args)

    LIBRARY.impl(name, run, "CompositeExplicitAutograd")
    torch.library.register_fake(f"tiledcorr::{name}", fake, lib=LIBRARY)
    overload = getattr(torch.ops.tiledcorr, name).default
    _KERNELS[overload] = run
    return overload


def register_backward(op: OpOverload, backward_op: OpOverload, *, differentiable: int = 2, save_results: bool = False,
                      check: Callable[[Sequence[bool]], None] | None = None) -> None:
    """Make ``op(x_1, .., x_n, *args)`` differentiable once in its first ``n = differentiable`` tensors.

    ``backward_op(grad, x_1, .., x_n, *results, *args, need_1, need_2)`` gets
    the gradient of ``op``'s (first) result, and with ``save_results`` every
    result ``op`` returned (the reductions' indices or softmax statistics); it
    returns the gradients of ``x_1`` and ``x_2`` (the others get none).
    ``check(needs_input_grad)`` may refuse a gradient before any work. A
    double backward raises :data:`DOUBLE_BACKWARD_MESSAGE`
    (:func:`refuse_double_backward`).
    """

    kernel, backward_kernel = _KERNELS[op], _KERNELS[backward_op]

    class Differentiate(torch.autograd.Function):
        """The operator's autograd node, recorded by its autograd kernel or, for :func:`call`'s eager route, directly.

        ``keyset`` is the dispatcher's (``None`` on the eager route, which
        calls the kernels themselves).
        """

        @staticmethod
        def forward(ctx: Any, keyset: Any, *inputs: Any) -> Any:
            if keyset is None:
                output = kernel(*inputs)
            else:
                with torch._C._AutoDispatchBelowAutograd():
                    output = op.redispatch(keyset & _BELOW_AUTOGRAD, *inputs)
            results = output if isinstance(output, tuple) else (output,)
            ctx.save_for_backward(*inputs[:differentiable], *(results if save_results else ()))
            ctx.args, ctx.eager = inputs[differentiable:], keyset is None
            return output

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor, *_other_grads: Any) -> tuple:
            needs = ctx.needs_input_grad[1 : 1 + differentiable]
            if check is not None:
                check(needs)
            saved = ctx.saved_tensors
            if ctx.eager and not dispatcher_needed((grad, *saved[:differentiable])):
                # Under create_graph, record nothing (refuse_double_backward guards); else grad mode is off already.
                with torch.no_grad() if torch.is_grad_enabled() else _NOTHING:
                    grads = backward_kernel(grad, *saved, *ctx.args, needs[0], needs[1])
            else:
                with torch._C._AutoDispatchBelowAutograd():
                    grads = backward_op(grad, *saved, *ctx.args, needs[0], needs[1])
            grad1, grad2 = refuse_double_backward(grads)
            rest = (None,) * (differentiable - 2 + len(ctx.args))
            return (None, grad1 if needs[0] else None, grad2 if needs[1] else None, *rest)

    def needs_node(inputs: Sequence[Any]) -> bool:
        return torch.is_grad_enabled() and torch._C._any_requires_grad(*inputs[:differentiable])

    def autograd_kernel(keyset: Any, *inputs: Any) -> Any:
        if needs_node(inputs):
            return Differentiate.apply(keyset, *inputs)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & _BELOW_AUTOGRAD, *inputs)

    # ``Function.apply`` without its functorch preamble (a pytree walk over the arguments, a third of a trivial
    # Function's cost): the eager route runs only where no functorch transform is active (dispatcher_needed),
    # and check_inputs has refused the transforms' tensors.
    record_node = super(torch.autograd.Function, Differentiate).apply

    def eager(*inputs: Any) -> Any:
        if needs_node(inputs):
            return record_node(None, *inputs)
        return kernel(*inputs)

    LIBRARY.impl(op._schema.name.split("::")[1], autograd_kernel, "Autograd", with_keyset=True)
    _EAGER[op] = eager, differentiable


def refuse_double_backward(grads: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
    """``grads``, each made to raise :data:`DOUBLE_BACKWARD_MESSAGE` if differentiated again.

    Only under ``create_graph=True`` (grad mode on inside a backward) can the
    gradients be differentiated again. The backward operator runs below
    autograd, so its results record no graph: each floating gradient is made
    to require a gradient, with a hook that raises when one reaches it.
    """
    if torch.is_grad_enabled():
        for g in grads:
            if g.is_floating_point() and g.numel():
                if not g.requires_grad:
                    g.requires_grad_()
                g.register_hook(_raise_double_backward)
    return grads


def _raise_double_backward(grad: torch.Tensor) -> None:
    raise RuntimeError(DOUBLE_BACKWARD_MESSAGE)
