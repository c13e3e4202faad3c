"""The package's layers, lowest first: a module may import only from its own layer's component or a lower layer.

This tuple is the one declaration of the import order; ``tests/test_architecture.py``
builds the import graph from the source (every ``import``, inside functions
too) and fails on a cycle or on an import against this order.
``docs/architecture.md`` explains each layer.

Each entry names top-level modules (``checks`` is ``tiledcorr/checks.py``) or
subpackages (``planning`` is ``tiledcorr/planning/``); ``__init__`` is the
package itself, which re-exports the public API. ``reference`` stands apart:
it imports nothing of tiledcorr, so that tests can trust it.
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "typing", "dtypes", "layers", "reference", "version"),  # no tiledcorr imports
    ("checks", "memo"),  # validation helpers and typed errors; cached properties
    ("geometry", "budget"),  # pure arithmetic of shapes; the memory_budget argument
    ("planning",),  # shapes only: tilings, the strategy registry, cost models, plans
    ("execution",),  # the tile loop, workspace, gather/scatter, sinks, NaN/Inf path, retries
    ("strategies",),  # one module per strategy; each registers itself in planning.registry
    ("reductions",),  # the fused reductions as a table of sinks, costs and gradient sources
    ("library",),  # torch.library operators and their one autograd registration
    ("ops",),  # the public functions and Modules, one operation per module
    ("compat",),  # drop-in replacements of other libraries' layers
    ("tools",),  # command line, demo, profiling, measurement
    ("__init__", "__main__"),  # the public namespace; python -m tiledcorr
)

#: Modules that must not import anything of tiledcorr at all.
STANDALONE = ("reference", "layers", "version")
