"""Huge-page advice for large fresh CPU tensors (tiledcorr.execution.hugepages)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tiledcorr.execution import hugepages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_small_tensors_are_left_alone():
    assert not hugepages.advise(torch.empty(1000))
    assert not hugepages.advise(torch.empty(hugepages.MIN_BYTES // 4 - 1))


@pytest.mark.skipif(not sys.platform.startswith("linux") or not THP.exists() or "[never]" in THP.read_text(),
                    reason="needs Linux with transparent huge pages")
def test_large_tensors_are_advised_and_keep_their_values():
    t = torch.empty(16 << 20, dtype=torch.uint8)
    assert hugepages.advise(t)
    t.fill_(7)
    assert int(t.min()) == int(t.max()) == 7


def test_advice_does_not_change_results():
    """A cost volume large enough to be advised equals the same volume computed in float64."""
    import tiledcorr

    x1, x2 = torch.randn(1, 4, 48, 48), torch.randn(1, 4, 48, 48)
    out = tiledcorr.correlate(x1, x2, patch_size=25)
    assert out.numel() * 4 >= hugepages.MIN_BYTES
    ref = tiledcorr.correlate(x1.double(), x2.double(), patch_size=25)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
