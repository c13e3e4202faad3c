"""tiledcorr.tools.measure: what a CPU peak counts."""

from __future__ import annotations

import mmap
import sys

import pytest
import torch

from tiledcorr.tools.measure import peak_memory


def test_peak_counts_what_the_call_allocates():
    _, peak = peak_memory(lambda: torch.ones(16 << 20, dtype=torch.uint8).numel())
    assert 15 * 2**20 <= peak <= 20 * 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_leaves_out_file_pages_the_call_touches(tmp_path):
    """Library code and data pages faulted in on a first call are not memory the call allocated."""
    path = tmp_path / "pages"
    path.write_bytes(b"\1" * (16 << 20))
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        touched = lambda: sum(m[i] for i in range(0, len(m), 4096))  # noqa: E731
        total, peak = peak_memory(touched)
    assert total == (16 << 20) // 4096
    assert peak < 2 * 2**20, peak
