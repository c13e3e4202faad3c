"""Test helpers for the Triton kernels: a private copy of the module, interpreted or compiled.

``triton.jit`` decides at decoration time whether a kernel is interpreted
(``TRITON_INTERPRET=1``) or compiled, so each test file loads its own copy of
``tiledcorr/strategies/triton_kernels.py`` with the variable set or unset
while it loads, and restores the environment afterwards; other test files and
the package's own import are unaffected.

It also makes triton 3.6's interpreter work with numpy >= 2.4
(triton-lang/triton issue 9171): the interpreter turns a scalar kernel
argument used as a ``range`` bound into an int with ``int(array)`` on a
shape-``(1,)`` array, which numpy 2.4 refuses.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from types import ModuleType

_SOURCE = pathlib.Path(__file__).resolve().parents[1] / "tiledcorr" / "strategies" / "triton_kernels.py"


def fix_interpreter_for_numpy() -> None:
    """Let the interpreter's ``__index__`` take the single element (idempotent)."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_tiledcorr_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._tiledcorr_fixed = True
    interpreter._patch_lang_tensor = patched


def load_kernels(*, interpret: bool) -> ModuleType:
    """A fresh copy of the kernels module, its kernels interpreted or compiled."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        name = f"_tiledcorr_triton_kernels_{'interpreted' if interpret else 'compiled'}"
        spec = importlib.util.spec_from_file_location(name, _SOURCE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and triton look the module up by name
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
    if interpret:
        fix_interpreter_for_numpy()
    return module
