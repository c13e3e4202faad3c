"""Test helpers for the Triton kernels: a private copy of the module, interpreted or compiled.

``triton.jit`` decides at decoration time whether a kernel is interpreted
(``TRITON_INTERPRET=1``) or compiled, so each test file loads its own copy of
``tiledcorr/strategies/triton_kernels.py`` with the variable set or unset
while it loads, and restores the environment afterwards; other test files and
the package's own import are unaffected.

It also makes triton 3.6's interpreter work with numpy >= 2.4
(:func:`tiledcorr.strategies.triton.fix_interpreter_for_numpy`).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
from types import ModuleType

from tiledcorr.strategies.triton import fix_interpreter_for_numpy

_SOURCE = pathlib.Path(__file__).resolve().parents[1] / "tiledcorr" / "strategies" / "triton_kernels.py"


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
