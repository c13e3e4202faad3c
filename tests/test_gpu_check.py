"""``profiling/gpu_check.py --smoke``: the GPU acceptance run's code, on the CPU at tiny sizes.

The run on a lent GPU happens rarely and has minutes; this test runs the same
code in CI so that it cannot fail there on anything a CPU would catch. One
subprocess run (about 70 s on 2 cores) writes the JSON the tests below read.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiledcorr.planning.registry import names as _strategy_names

STRATEGIES = _strategy_names()

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "profiling" / "gpu_check.py"
BENCH_CONFIGS = ("mmtracker", "flownetc", "pwcnet", "large", "larger", "kernel3")
CONFIGS = BENCH_CONFIGS + ("big", "argmax81", "tiny")
DTYPES = ("float32", "tf32", "float16", "bfloat16")
REDUCTIONS = ("max", "argmax", "softargmax", "topk")
SHIMS = ("SpatialCorrelationSampler", "Correlation", "CorrTorch")

# The smoke run's own pytest stage must not start this file again.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("GPU_CHECK_INNER") == "1", reason="inside gpu_check")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """The JSON of one ``--smoke`` run, plus its folder and output."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("OUT", None)
    # Budgets four times the nominal: CI's and the developers' machines are shared and differ (the whole
    # correctness grid took 41 s on one 2-core VM and 90 s on another, 2026-12-02); the device run keeps 1.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--budget-scale", "4", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert "gpu-cpu.json" in files and "gpu-cpu.md" in files, files
    result = json.loads((out / "gpu-cpu.json").read_text())
    result["_out"], result["_stdout"] = out, proc.stdout
    return result


def test_top_level_schema(smoke):
    for key in ("device", "torch", "triton", "cuda", "rows", "workspace_over_budget_max", "correctness", "memory",
                "threads", "stages", "machine", "strategies"):
        assert key in smoke, key
    assert smoke["device"] == "cpu" and smoke["smoke"] is True and smoke["cuda"] is None or isinstance(smoke["cuda"], str)
    assert set(STRATEGIES) <= set(smoke["strategies"])


def test_every_stage_ran_within_its_budget(smoke):
    stages = smoke["stages"]
    assert list(stages) == ["tests", "correctness", "memory", "sampler", "timing", "threads"]
    for name, info in stages.items():
        assert not str(info["status"]).startswith("failed"), (name, info)
        assert 0 <= info["seconds"] <= info["budget_s"] + 15, (name, info)
    assert stages["tests"]["exit_status"] in (0, 5), stages["tests"]  # 5: no test selected
    assert stages["timing"]["skipped_for_budget"] == [], stages["timing"]


def test_correctness_rows_pass_for_every_strategy_dtype_and_reduction(smoke):
    rows = smoke["correctness"]
    bad = [r for r in rows if r["status"] not in ("pass", "refused")]
    assert not bad, bad[:5]
    for r in rows:
        if r["status"] == "pass":
            assert r["error"] is not None and math.isfinite(r["error"]) and r["error"] <= r["tolerance"], r
    passed = {(r["strategy"], r["dtype"], r["check"]) for r in rows if r["status"] == "pass"}
    expected_checks = ["forward", "grad1", "grad2", "max", "max.grad1", "max.grad2", "argmax", "softargmax",
                       "softargmax.grad1", "softargmax.grad2", "topk", "topk.displacements", "topk.grad1", "topk.grad2"]
    for strategy in STRATEGIES:
        # The smoke run keeps the slow Triton interpreter to float32 (test_triton_interpreter.py has the rest).
        for dtype in DTYPES if strategy != "triton" else ("float32",):
            for check in expected_checks:
                assert (strategy, dtype, check) in passed, (strategy, dtype, check)
    for shim in SHIMS:
        for dtype in DTYPES:
            assert {"forward", "grad1", "grad2"} <= {r["check"] for r in rows if r["check_group"] == shim
                                                       and r["dtype"] == dtype and r["status"] == "pass"}, (shim, dtype)
    # Some cases must really run in several tiles (the budgets force them).
    assert any(r["detail"].split(" tiles")[0].isdigit() and int(r["detail"].split(" tiles")[0]) > 1
               for r in rows if r["status"] == "pass" and " tiles" in r["detail"])
    # A strategy not registered (triton before it lands) is refused, never failed.
    for r in rows:
        if r["strategy"] not in STRATEGIES and r["strategy"] != "auto":
            assert r["status"] == "refused", r


def test_timing_rows_cover_every_configuration_and_contender(smoke):
    rows = smoke["rows"]
    for r in rows:
        for key in ("config", "dtype", "contender", "forward_ms", "forward_backward_ms", "peak_bytes"):
            assert key in r, (key, r)
    assert {r["config"] for r in rows} == set(CONFIGS)
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}  # the smoke run's two
    for config in CONFIGS:
        for dtype in ("float32", "bfloat16"):
            got = {r["contender"]: r for r in rows if r["config"] == config and r["dtype"] == dtype}
            for name in [f"tiledcorr:{s}" for s in STRATEGIES] + ["naive", "cublas", "copy"]:
                if name == "tiledcorr:triton" and "not timed in --smoke" in got[name]["note"]:
                    continue  # the interpreter's speed says nothing (the correctness stage checks it)
                assert got[name]["forward_ms"] and got[name]["forward_ms"] > 0, (config, dtype, name, got.get(name))
                if config != "argmax81" and name != "copy":
                    assert got[name]["forward_backward_ms"] and got[name]["forward_backward_ms"] > 0, (config, dtype, name)
            assert sum(r["planned_forward"] for r in got.values()) == 1, (config, dtype)
            assert "cpp_sampler" in got


def test_memory_and_thread_rows(smoke):
    memory = smoke["memory"]
    assert [(r["config"], r["mode"]) for r in memory] == (
        [("mem41", "forward")] * 3 + [("mem41", "forward_backward")] * 3 + [("argmax81", "forward")] * 3)
    for r in memory:
        assert "error" not in r, r
        assert r["predicted_bytes"] > 0 and r["passes"] >= 1
    # Smaller budgets give more tiles.
    assert memory[0]["passes"] >= memory[1]["passes"] >= memory[2]["passes"]
    assert [r["threads"] for r in smoke["threads"]["rows"]] == [1, 2]
    assert all(r["forward_ms"] > 0 for r in smoke["threads"]["rows"])


def test_markdown_report(smoke):
    text = (smoke["_out"] / "gpu-cpu.md").read_text()
    for heading in ("## Stages", "## Correctness", "## Timing", "## Memory", "## CPU threads", "## Targets"):
        assert heading in text, heading
    assert "| flownetc | float32 | cublas |" in text
    assert "## Targets" in smoke["_stdout"]  # the end of the output carries the targets
