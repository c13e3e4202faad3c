"""Make triton 3.6's interpreter work with numpy >= 2.4 (triton-lang/triton issue 9171).

The interpreter turns a scalar kernel argument used as a ``range`` bound into a
Python int with ``int(array)``, where the array has shape ``(1,)``; numpy 2.4
no longer converts arrays with ``ndim > 0`` implicitly. :func:`apply` wraps the
interpreter's tensor patching so ``__index__`` takes the single element with
``.item()`` instead. It changes nothing where that conversion still works.
"""

from __future__ import annotations


def apply() -> None:
    """Install the fix once (idempotent); a no-op without the interpreter module."""
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover - triton absent
        return
    original = interpreter._patch_lang_tensor
    if getattr(original, "_tiledcorr_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._tiledcorr_fixed = True
    interpreter._patch_lang_tensor = patched
