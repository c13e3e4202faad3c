"""Shared test configuration: hypothesis profiles, the ``device`` and ``smallest_budget``
fixtures, CUDA skips.

Hypothesis profiles (select with the ``HYPOTHESIS_PROFILE`` environment variable):

* ``ci`` (the default): 25 examples per property, no deadline, so the suite
  stays fast and timing noise on a shared 2-core machine cannot fail it;
* ``dev``: hypothesis' default number of examples (100), no deadline;
* ``thorough``: 1000 examples, for a long run before a release.

See docs/testing.md.
"""

from __future__ import annotations

import os

import pytest
import torch

import tiledcorr

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a dev dependency; only the property tests need it
    settings = None

if settings is not None:
    _common = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("ci", max_examples=25, **_common)
    settings.register_profile("dev", **_common)
    settings.register_profile("thorough", max_examples=1000, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Devices the tests can run on here: the CPU, and the first GPU when there is one.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each available device in turn (the CPU, plus ``cuda`` where a GPU is present)."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def smallest_budget():
    """``smallest_budget(shape, **plan_kwargs)``: the smallest ``memory_budget`` that
    :func:`tiledcorr.plan` accepts (from :class:`tiledcorr.MemoryBudgetError`)."""

    def find(shape, **kwargs) -> int:
        try:
            tiledcorr.plan(shape, memory_budget=1, **kwargs)
        except tiledcorr.MemoryBudgetError as exc:
            return exc.minimum_bytes
        return 1

    return find


def pytest_collection_modifyitems(config, items) -> None:
    """Skip tests marked ``cuda`` when no GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
