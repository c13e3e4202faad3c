"""``profiling/bench.py``'s tiny-call, contention and thread-scaling parts, at tiny sizes.

Nothing here times anything worth reading: the tests check that the busy
processes of ``--contend`` run only when resumed and never outlive the
benchmark, that the tables compute and show what their headers say, and that
a ``--tiny-only`` run (with contention and two thread counts) writes its JSON
and its docs sections. About 10 s on 2 cores, most of it starting torch in the
busy processes.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    """profiling/bench.py as the module ``bench`` (as gpu_check.py imports it)."""
    if "bench" in sys.modules:
        return sys.modules["bench"]
    spec = importlib.util.spec_from_file_location("bench", ROOT / "profiling" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


def _gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(pid) for pid in pids)


def test_busy_processes_spin_only_when_resumed_and_are_reaped():
    with bench.BusyProcesses(1, spin_up=0.1) as pool:
        procs = [psutil.Process(p.pid) for p in pool.procs]
        pids = [p.pid for p in procs]
        assert len(procs) == 1 and all(p.status() == psutil.STATUS_STOPPED for p in procs)
        before = _cpu_seconds(procs)
        time.sleep(0.5)
        assert _cpu_seconds(procs) - before < 0.02  # paused: no CPU at all
        with pool.busy():
            before = _cpu_seconds(procs)
            time.sleep(1.0)
            spun = _cpu_seconds(procs) - before
        assert spun > 0.05, spun  # resumed: a CPU-bound loop (even on a shared machine)
        assert all(p.status() == psutil.STATUS_STOPPED for p in procs)
    assert _gone(pids) and pool.procs == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_busy_processes_are_killed_when_the_measurement_fails(error):
    with pytest.raises(error):
        with bench.BusyProcesses(2, spin_up=0.0) as pool:
            pids = [p.pid for p in pool.procs]
            with pool.busy():  # fails while they run
                raise error("measurement failed")
    assert len(pids) == 2 and _gone(pids)
    assert not psutil.Process().children(recursive=True)


def test_slowdowns_are_median_over_median_and_relative_to_matmul():
    quiet = [{"matmul": 1.0, "tiled_fwd": 2.0}, {"matmul": 1.4, "tiled_fwd": 2.4}, {"matmul": 1.2, "tiled_fwd": 9.0}]
    contended = [{"matmul": 3.0, "tiled_fwd": 8.0}, {"matmul": 2.0, "tiled_fwd": 6.0}, {"matmul": 2.6, "tiled_fwd": 5.0}]
    s = bench.slowdowns(quiet, contended)
    assert s["quiet_s"] == {"matmul": 1.2, "tiled_fwd": 2.4}
    assert s["contended_s"] == {"matmul": 2.6, "tiled_fwd": 6.0}
    assert s["slowdown"]["tiled_fwd"] == pytest.approx(6.0 / 2.4)
    assert s["vs_matmul"]["tiled_fwd"] == pytest.approx((6.0 / 2.4) / (2.6 / 1.2))
    assert s["vs_matmul"]["matmul"] == 1.0
    assert s["phases"] == {"quiet": quiet, "contended": contended}


def test_contention_table_shows_slowdowns_and_marks_missing_contenders():
    quiet = [{"matmul": 0.010, "tiled_fwd": 0.004, "tiled_fwdbwd": 0.010, "copy": 0.001}]
    contended = [{"matmul": 0.034, "tiled_fwd": 0.0176, "tiled_fwdbwd": 0.081, "copy": 0.002}]
    row = {"name": "mmtracker", "threads": 2, "busy_processes": 2, **bench.slowdowns(quiet, contended)}
    line = bench.format_contention([row]).splitlines()
    header = [c.strip() for c in line[0].strip("|").split("|")]
    cells = dict(zip(header, (c.strip() for c in line[2].strip("|").split("|"))))
    assert len(line) == 3 and line[1].count("---") == len(header)
    assert cells["config"] == "mmtracker" and cells["busy"] == "2" and cells["tiled fwd ms quiet"] == "4"
    assert cells["matmul x"] == "3.40"
    assert cells["tiled fwd"] == f"4.40 ({4.4 / 3.4:.2f})"
    assert cells["tiled fwd+bwd"] == f"8.10 ({8.1 / 3.4:.2f})"
    assert cells["naive fwd"] == cells["C++ fwd+bwd"] == "n/a"


def test_tiny_table_in_microseconds_with_ratios():
    tiny = {"threads": 2, "tiled_fwd_us": 610.0, "ref_fwd_us": 40.0, "naive_fwd_us": 200.0,
            "tiled_fwdbwd_us": 1370.0, "ref_fwdbwd_us": None, "naive_fwdbwd_us": 685.0}
    lines = bench.format_tiny([tiny]).splitlines()
    assert lines[2] == f"| fwd | 2 | 610 | 40 | {610 / 40:.2f} | 200 | {610 / 200:.2f} |"
    assert lines[3] == "| fwd+bwd | 2 | 1370 | n/a | n/a | 685 | 2.00 |"


def test_thread_table_has_every_count_per_config():
    def row(name, ms, gflops, mm):
        return {"name": name, "tiled_fwd_s": ms / 1e3, "tiled_fwd_gflops": gflops, "matmul_gflops": mm}

    runs = [{"threads": 1, "rows": [row("a", 10.0, 20.0, 100.0), row("b", 4.0, 5.0, 50.0)]},
            {"threads": 2, "rows": [row("a", 6.0, 33.0, 150.0), row("b", 3.0, 6.0, 60.0)]}]
    lines = bench.format_threads(runs).splitlines()
    assert "fwd ms (1 thr)" in lines[0] and "matmul GFLOP/s (2 thr)" in lines[0]
    assert lines[2] == "| a | 10.0 | 20% | 100 | 6.0 | 22% | 150 |"
    assert lines[3] == "| b | 4.0 | 10% | 50 | 3.0 | 10% | 60 |"


@pytest.mark.parametrize("argv, message", [(["--threads", "1,x"], "comma-separated integers, got '1,x'"),
                                           (["--threads", "0"], "must be >= 1, got '0'"),
                                           (["--tiny-only", "--no-tiny"], "not allowed with argument --tiny-only")])
def test_bad_command_lines_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_tiny_only_run_with_contention_and_two_thread_counts(tmp_path, capsys):
    out, docs = tmp_path / "bench.json", tmp_path / "performance.md"
    docs.write_text("# Performance\n\nkept\n")
    threads = torch.get_num_threads()
    code = bench.main(["--tiny-only", "--repeat", "2", "--tiny-calls", "3", "--contend", "1", "--alternations", "1",
                       "--threads", "1,2", "--out", str(out), "--docs", str(docs)])
    assert code == 0 and torch.get_num_threads() == threads
    assert not psutil.Process().children(recursive=True)
    data = json.loads(out.read_text())
    assert data["threads"] == [1, 2] and [run["threads"] for run in data["runs"]] == [1, 2]
    assert data["rows"] == [] and data["tiny"] == data["runs"][1]["tiny"]
    for run in data["runs"]:
        tiny = run["tiny"]
        assert tiny["threads"] == run["threads"] and tiny["calls_per_round"] == 3
        assert all(tiny[f"{who}_{label}_us"] > 0 for who in ("tiled", "naive") for label in ("fwd", "fwdbwd"))
        (row,) = run["contend"]
        assert row["name"] == "tiny" and row["threads"] == run["threads"]
        assert len(row["phases"]["quiet"]) == len(row["phases"]["contended"]) == 1
        assert row["slowdown"]["tiled_fwd"] == pytest.approx(
            row["phases"]["contended"][0]["tiled_fwd"] / row["phases"]["quiet"][0]["tiled_fwd"])
    text = docs.read_text()
    assert text.startswith("# Performance\n\nkept\n")
    for section in ("cpu-float32-tiny", "cpu-float32-contend1"):
        assert text.count(f"<!-- bench:{section} -->") == text.count(f"<!-- /bench:{section} -->") == 1
    assert "<!-- bench:cpu-float32 -->" not in text and "bench:cpu-float32-threads" not in text  # no main rows
    tiny_block = text.split("<!-- bench:cpu-float32-tiny -->")[1].split("<!-- /")[0]
    assert tiny_block.count("| fwd+bwd |") == 2
    assert f"| fwd | 2 | {data['runs'][1]['tiny']['tiled_fwd_us']:.0f} |" in tiny_block
    assert "saved" in capsys.readouterr().out


def test_no_docs_leaves_the_docs_alone(tmp_path):
    docs = tmp_path / "performance.md"
    assert bench.main(["--tiny-only", "--repeat", "1", "--tiny-calls", "2", "--no-reference", "--no-docs",
                       "--out", str(tmp_path / "b.json"), "--docs", str(docs)]) == 0
    assert not docs.exists()
    assert json.loads((tmp_path / "b.json").read_text())["tiny"]["ref_fwd_us"] is None
