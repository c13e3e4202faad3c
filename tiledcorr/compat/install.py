"""``tiledcorr.compat.install()``: make ``import spatial_correlation_sampler`` give tiledcorr's drop-in.

For code you do not own (ptlflow, a vendored MM-Tracker) that does
``from spatial_correlation_sampler import SpatialCorrelationSampler``: call
:func:`install` once, before that code imports it, and the import resolves to
a module holding :class:`tiledcorr.SpatialCorrelationSampler` and
:func:`tiledcorr.spatial_correlation_sample`, with no C++ build.

How: a finder placed first on ``sys.meta_path`` answers for the names
``spatial_correlation_sampler`` and ``spatial_correlation_sampler.spatial_correlation_sampler``
(the submodule where the original defines both), so it wins over any
installed copy of the real package. A copy that is already imported cannot be
replaced (other modules hold references to its classes): :func:`install`
refuses with :class:`SamplerAlreadyImportedError`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Optional, Sequence

from ..errors import TiledCorrError
from .sampler import SpatialCorrelationSampler, spatial_correlation_sample

#: The package the original installs, and its submodule that defines the two names.
PACKAGE = "spatial_correlation_sampler"
NAMES = (PACKAGE, f"{PACKAGE}.{PACKAGE}")

#: Marks the modules this shim created (to tell them from the real package's).
_MARKER = "__tiledcorr_shim__"


class SamplerAlreadyImportedError(TiledCorrError, RuntimeError):
    """The real ``spatial_correlation_sampler`` was imported before :func:`install` was called."""


class _SamplerFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and loads the shim's modules for :data:`NAMES`; every other name falls through."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]], target: Optional[types.ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in NAMES:
            return None
        return importlib.util.spec_from_loader(
            fullname, self, origin="tiledcorr.compat.sampler", is_package=fullname == PACKAGE)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[types.ModuleType]:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        module.__doc__ = "tiledcorr's drop-in for spatial_correlation_sampler (from tiledcorr.compat.install())."
        module.SpatialCorrelationSampler = SpatialCorrelationSampler  # type: ignore[attr-defined]
        module.spatial_correlation_sample = spatial_correlation_sample  # type: ignore[attr-defined]
        module.__all__ = ["SpatialCorrelationSampler", "spatial_correlation_sample"]  # type: ignore[attr-defined]
        setattr(module, _MARKER, True)


_FINDER = _SamplerFinder()


def is_installed() -> bool:
    """Whether :func:`install` is in effect (its finder is on ``sys.meta_path``)."""
    return _FINDER in sys.meta_path


def install() -> types.ModuleType:
    """Make ``import spatial_correlation_sampler`` resolve to tiledcorr's drop-in module.

    After this call, in this process, ``import spatial_correlation_sampler``,
    ``from spatial_correlation_sampler import SpatialCorrelationSampler,
    spatial_correlation_sample`` and the same from
    ``spatial_correlation_sampler.spatial_correlation_sampler`` give
    :class:`tiledcorr.SpatialCorrelationSampler` and
    :func:`tiledcorr.spatial_correlation_sample` (same arguments, defaults
    and numbers; see ``docs/migration.md``). tiledcorr wins even where the
    real package is installed, as long as it has not been imported yet.
    Calling it again does nothing. Call it before the code that imports the
    sampler runs (at the top of your script, before importing the model).

    Returns:
        The drop-in module (``sys.modules["spatial_correlation_sampler"]``).

    Raises:
        SamplerAlreadyImportedError: the real ``spatial_correlation_sampler``
            is already imported in this process (its classes may already be
            in use, so swapping the module now would mix the two).

    Example (at the top of a script, before the model's code is imported; a
    fresh process is needed, so this is not a doctest: ``tests/test_compat_install.py``
    runs it)::

        import tiledcorr.compat
        tiledcorr.compat.install()
        from spatial_correlation_sampler import SpatialCorrelationSampler   # tiledcorr's
        assert SpatialCorrelationSampler is tiledcorr.SpatialCorrelationSampler
    """
    for name in NAMES:
        module = sys.modules.get(name)
        if module is not None and not getattr(module, _MARKER, False):
            raise SamplerAlreadyImportedError(
                f"{name!r} is already imported from {getattr(module, '__file__', None) or module!r}; "
                "tiledcorr.compat.install() must run before anything imports spatial_correlation_sampler "
                "(call it at the top of your script, before importing the model's code)")
    if not is_installed():
        sys.meta_path.insert(0, _FINDER)
    return importlib.import_module(PACKAGE)


def uninstall() -> None:
    """Undo :func:`install`: remove its finder and forget the drop-in modules it created.

    Modules that already did ``from spatial_correlation_sampler import ...``
    keep tiledcorr's objects; a later import finds the real package again,
    where it is installed.
    """
    if is_installed():
        sys.meta_path.remove(_FINDER)
    for name in NAMES:
        if getattr(sys.modules.get(name), _MARKER, False):
            del sys.modules[name]
