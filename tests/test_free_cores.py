"""A call runs on the cores other processes leave free (tiledcorr.execution.threads), and gives the setting back."""

from __future__ import annotations

import pytest
import torch

import tiledcorr
from tiledcorr.execution import engine, threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _threads_inside_call(monkeypatch, runnable: int) -> list[int]:
    """``torch.get_num_threads()`` inside the engine during one forward+backward, with ``runnable`` threads reported."""
    monkeypatch.setattr(threads, "runnable_threads", lambda: runnable)
    monkeypatch.setattr(threads, "_CORES", 2)
    seen: list[int] = []
    # the operator kernels import the engine's functions through execution.volume
    from tiledcorr.execution import volume

    # This small call runs as one tile's program (one_tile_*), larger ones through the tile loop (run_*).
    for name in ("run_forward", "run_backward", "one_tile_volume", "one_tile_gradients"):
        original = getattr(engine, name)

        def spy(*args, _original=original, **kwargs):
            seen.append(torch.get_num_threads())
            return _original(*args, **kwargs)

        monkeypatch.setattr(engine, name, spy)
        monkeypatch.setattr(volume, name, spy)
    x1 = torch.randn(1, 4, 9, 7, requires_grad=True)
    x2 = torch.randn(1, 4, 9, 7, requires_grad=True)
    out = tiledcorr.correlate(x1, x2, patch_size=3)
    out.sum().backward()
    return seen


def test_a_quiet_machine_keeps_every_thread(monkeypatch, two_threads):
    assert _threads_inside_call(monkeypatch, runnable=2) == [2, 2]
    assert torch.get_num_threads() == 2


def test_a_busy_machine_runs_on_the_free_cores_and_gives_the_setting_back(monkeypatch, two_threads):
    assert _threads_inside_call(monkeypatch, runnable=6) == [1, 1]
    assert torch.get_num_threads() == 2


def test_the_setting_comes_back_after_an_error(monkeypatch, two_threads):
    monkeypatch.setattr(threads, "runnable_threads", lambda: 9)

    def fail():
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        threads.on_free_cores(fail)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("runnable, cores, wanted, expected", [
    (2, 2, 2, 2), (3, 2, 2, 1), (6, 2, 2, 1), (0, 2, 2, 2),  # 0: no /proc reading
    (20, 16, 16, 12), (40, 16, 16, 1), (9, 16, 16, 16), (5, 16, 1, 1),
])
def test_threads_for_call(monkeypatch, runnable, cores, wanted, expected):
    monkeypatch.setattr(threads, "runnable_threads", lambda: runnable)
    monkeypatch.setattr(threads, "_CORES", cores)
    assert threads.threads_for_call(wanted) == expected


def test_runnable_threads_reads_linux():
    count = threads.runnable_threads()
    assert count >= 1 or not __import__("os").path.exists("/proc/loadavg")


def test_a_load_counts_only_when_two_readings_see_it(monkeypatch):
    """A spike seen once (another process's threads spinning after a region) does not take a thread away."""
    counts = iter([2, 9, 9])
    clock = iter([100.0, 100.1, 100.2])
    monkeypatch.setattr(threads, "_readings", [])
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))

    class Loadavg:
        def __init__(self, *args):
            self.text = f"0.5 0.5 0.5 {next(counts)}/400 1"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return self.text

    monkeypatch.setattr("builtins.open", Loadavg)
    assert threads.runnable_threads() == 2  # the first reading
    assert threads.runnable_threads() == 2  # 2 then 9: the spike alone does not count
    assert threads.runnable_threads() == 9  # seen twice: a load
