"""The ``tiledcorr`` command on tiny problems: exit codes, key lines, JSON keys, figures."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tiledcorr
from tiledcorr.tools import cli, profile
from tiledcorr.tools.demo import DemoConfig, color_wheel, flow_to_color, run_demo
from tiledcorr.tools.machine import describe_machine
from tiledcorr.tools.progress import Progress

from support import cpu_strategies  # noqa: E402

STRATEGIES = cpu_strategies()

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--shape", "1,2,8,8", "--patch-size", "3"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_png(path: Path) -> None:
    """A PNG file with a plausible size, readable as an image."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width > 300 and height > 200
    image = pytest.importorskip("matplotlib.image").imread(path)
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.05  # not a blank canvas


# --------------------------------------------------------------------------- argument types


def test_argument_types():
    assert cli.int_or_pair("3") == 3 and cli.int_or_pair("3,5") == (3, 5)
    assert cli.shape("4,128,96,96") == (4, 128, 96, 96)
    # Budgets are checked and passed on as written: the API reads "0.25" as a fraction, as the CLI does.
    assert cli.budget("1GiB") == "1GiB" and cli.budget("0.25") == "0.25" and cli.budget("1.5GiB") == "1.5GiB"
    assert cli.budget_list("64MiB, 1GiB") == ["64MiB", "1GiB"]


@pytest.mark.parametrize("argv,message", [
    (["plan", "--shape", "1,2,8", "--patch-size", "3"], "B,C,H,W"),
    (["plan", "--shape", "1,2,8,8", "--patch-size", "three"], "comma-separated ints"),
    (["plan", "--patch-size", "3"], "--shape"),
])
def test_malformed_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- plan


def test_plan_report(capsys):
    code, out, _ = _run(capsys, "plan", "--shape", "2,3,16,12", "--patch-size", "5,7", "--kernel-size", "3",
                        "--budget", "64KiB")
    expected = tiledcorr.plan((2, 3, 16, 12), patch_size=(5, 7), kernel_size=3, memory_budget="64KiB")
    assert code == 0
    assert out.strip() == str(expected)
    for key in ("naive unfold would need", "planned peak workspace", "passes", "chunk grid"):
        assert key in out


def test_plan_json_is_to_dict(capsys):
    code, out, _ = _run(capsys, "plan", *TINY, "--stride", "2", "--budget", "1MiB", "--backward", "--dtype", "float16", "--json")
    data = json.loads(out)
    expected = tiledcorr.plan((1, 2, 8, 8), patch_size=3, stride=2, memory_budget="1MiB", requires_grad=True,
                              dtype=torch.float16).to_dict()
    assert code == 0 and data == json.loads(json.dumps(expected))
    assert {"output_shape", "forward_workspace_bytes", "backward_workspace_bytes", "naive_bytes", "passes"} <= set(data)
    assert data["dtype"] == "float16" and data["stride"] == [2, 2]


def test_plan_of_a_fused_reduction(capsys):
    code, out, _ = _run(capsys, "plan", "--shape", "2,8,20,24", "--patch-size", "9", "--budget", "256KiB",
                        "--reduction", "topk", "--k", "3")
    expected = tiledcorr.plan((2, 8, 20, 24), patch_size=9, memory_budget="256KiB", reduction="topk", k=3)
    assert code == 0 and out.strip() == str(expected) and "never stored" in out
    code, _, err = _run(capsys, "plan", *TINY, "--reduction", "argmax", "--backward")
    assert code == 1 and "argmax has no gradient" in err


def test_plan_budget_too_small_exits_1(capsys):
    code, _, err = _run(capsys, "plan", *TINY, "--budget", "8")
    assert code == 1 and "too small" in err and "memory_budget" in err


def test_plan_cuda_without_budget_explains(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = _run(capsys, "plan", *TINY, "--device", "cuda")
    assert code == 1 and "--budget" in err


def test_python_dash_m_plan():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "tiledcorr", "plan", *TINY, "--budget", "1MiB", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["output_shape"] == [1, 3, 3, 8, 8]


# --------------------------------------------------------------------------- profile


def _result_rows(out: str) -> dict[str, str]:
    """The result table of ``tiledcorr profile``: implementation name -> the rest of its row."""
    table = out.split("workspace measured", 1)[1]
    rows = {}
    for line in table.splitlines()[1:]:
        for name in ("tiledcorr", "naive unfold"):
            if line.startswith(f"  {name} "):
                rows[name] = line[len(name) + 2:].strip()
    return rows


def test_profile_text_with_naive(capsys):
    code, out, _ = _run(capsys, "profile", *TINY, "--repeat", "2", "--compare", "naive")
    assert code == 0
    assert "tiledcorr plan:" in out and "profile: forward, 2 runs after 1 warm-up" in out
    rows = _result_rows(out)
    assert list(rows) == ["tiledcorr", "naive unfold"]
    for row in rows.values():  # median, min - max, peak, measured and predicted workspace
        assert row.count(" s") == 2 and row.count("B") == 3
    assert "workspace measured" in out and "predicted" in out


def test_profile_json_backward(capsys):
    code, out, _ = _run(capsys, "profile", "--shape", "2,3,10,9", "--patch-size", "5", "--backward", "--repeat", "2",
                        "--budget", "1MiB", "--json", "--compare", "naive")
    data = json.loads(out)
    assert code == 0 and data["backward"] is True and data["naive_skipped"] is None
    assert {"cpu", "torch", "torch_threads", "cuda_device"} <= set(data["machine"])
    tiled, naive = data["results"]
    assert tiled["name"] == "tiledcorr" and naive["name"] == "naive unfold"
    assert len(tiled["times_s"]) == 2 and tiled["min_s"] <= tiled["median_s"] <= tiled["max_s"]
    # returned: the output (2*5*5*10*9 floats) and both input gradients (2 * 2*3*10*9 floats)
    assert tiled["returned_bytes"] == 4 * (2 * 25 * 90 + 2 * 2 * 3 * 90)
    assert tiled["measured_workspace_bytes"] == max(0, tiled["peak_bytes"] - tiled["returned_bytes"])
    assert tiled["predicted_workspace_bytes"] >= data["plan"]["backward_workspace_bytes"]
    assert naive["predicted_peak_bytes"] > 2 * data["plan"]["naive_bytes"]


@pytest.mark.parametrize("reduction, k, result_elements", [
    ("max", None, 2 * 48 * 40), ("softargmax", None, 2 * 2 * 48 * 40), ("topk", 3, 2 * 3 * 48 * 40 * (1 + 2 * 2)),
])
def test_profile_of_a_fused_reduction(capsys, reduction, k, result_elements):
    """The fused call's result, its plan, and a measured workspace within the prediction."""
    argv = ["profile", "--shape", "2,8,48,40", "--patch-size", "15", "--budget", "2MiB", "--backward", "--repeat", "1",
            "--reduction", reduction, "--json", "--compare", "naive"] + (["--k", str(k)] if k else [])
    code, out, _ = _run(capsys, *argv)
    data = json.loads(out)
    (tiled,) = data["results"]
    expected = tiledcorr.plan((2, 8, 48, 40), patch_size=15, memory_budget="2MiB", requires_grad=True, reduction=reduction, k=k)
    assert code == 0 and data["plan"] == json.loads(json.dumps(expected.to_dict()))
    assert data["plan"]["fused_reduction"] is True and (data["reduction"], data["k"]) == (reduction, k)
    assert "no fused reductions" in data["naive_skipped"]
    # the result (float32 values; a top-k also int64 displacements: 2 floats each) and both input gradients
    assert tiled["returned_bytes"] == 4 * (result_elements + 2 * 8 * 48 * 40 * 2)
    assert 0 < tiled["measured_workspace_bytes"] <= tiled["predicted_workspace_bytes"] * 1.05 + 64 * 1024


def test_sweep_of_a_fused_argmax_and_its_backward_refused(capsys):
    code, out, _ = _run(capsys, "sweep", "--shape", "1,8,40,40", "--patch-size", "21", "--budgets", "256KiB,4MiB",
                        "--reduction", "argmax", "--repeat", "1")
    rows = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    assert code == 0 and "fused argmax" in out and rows[1:] == ["256KiB", "4MiB"]
    assert all(" s  " in line for line in out.splitlines()[2:] if line.strip())
    code, _, err = _run(capsys, "profile", *TINY, "--reduction", "argmax", "--backward")
    assert code == 1 and "argmax has no gradient" in err


def test_profile_skips_naive_when_it_does_not_fit(capsys, monkeypatch):
    monkeypatch.setattr(profile, "NAIVE_FRACTION", 1e-12)
    code, out, _ = _run(capsys, "profile", *TINY, "--repeat", "1", "--compare", "naive")
    rows = _result_rows(out)
    assert code == 0 and list(rows) == ["tiledcorr", "naive unfold"]
    assert rows["naive unfold"].startswith("skipped: predicted peak") and "free on cpu" in rows["naive unfold"]


def test_profile_without_cuda_device_exits_1(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = _run(capsys, "profile", *TINY, "--device", "cuda", "--budget", "1MiB")
    assert code == 1 and "no CUDA device" in err


# --------------------------------------------------------------------------- sweep


def test_sweep_table_and_figure(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "sweep.png"
    code, out, _ = _run(capsys, "sweep", "--shape", "1,4,12,12", "--patch-size", "5", "--repeat", "1", "--warmup", "0",
                        "--budgets", "16,4KiB,1MiB,4MiB", "--plot", str(figure))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("sweep: B=1 C=4 12x12, patch 5, float32 on cpu, forward")
    assert "workspace predicted" in lines[1] and "peak predicted" in lines[1]
    by_budget = {line.split()[0]: line for line in lines[2:6]}
    assert "too small" in by_budget["16"]
    assert any(name in by_budget["4KiB"] for name in STRATEGIES)
    # 1MiB and 4MiB give the same tiling: measured once.
    assert "same tiling as 1MiB" in by_budget["4MiB"]
    assert f"figure: {figure}" in out
    _assert_png(figure)


def test_plot_without_matplotlib_says_how_to_get_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    code, out, err = _run(capsys, "sweep", *TINY, "--budgets", "1MiB", "--plot", str(tmp_path / "s.png"))
    assert code == 1 and out == "" and "tiledcorr[plot]" in err
    assert not (tmp_path / "s.png").exists()


def test_sweep_json(capsys):
    code, out, _ = _run(capsys, "sweep", *TINY, "--repeat", "1", "--warmup", "0", "--budgets", "1MiB", "--json")
    data = json.loads(out)
    assert code == 0 and "machine" in data and len(data["rows"]) == 1
    row = data["rows"][0]
    assert row["budget"] == "1MiB" and row["plan"]["budget_bytes"] == 2**20 and row["result"]["peak_bytes"] >= 0


# --------------------------------------------------------------------------- demo


def test_demo_recovers_the_flow(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, _ = _run(capsys, "demo", "--out", str(tmp_path), "--size", "48", "--patch-size", "9", "--channels", "16")
    assert code == 0
    for key in ("true displacement", "cost volume", "naive unfold would need", "stored volume + argmax",
                "endpoint error", "figure"):
        assert key in out
    within = float(out.split("% within 1 px")[0].rsplit(" ", 1)[1])
    assert within > 90.0  # a wrong volume (or a flipped sign) gives a few percent
    fused = next(line for line in out.splitlines() if line.strip().startswith("fused argmax"))
    assert float(fused.split("same displacement as above at ")[1].split("%")[0]) > 95.0
    _assert_png(tmp_path / "demo.png")


def test_demo_scores_the_truth_against_itself(tmp_path, monkeypatch):
    """With a perfect displacement estimate the error is the rounding of the true flow only."""
    import tiledcorr.tools.demo as demo

    config = DemoConfig(size=40, patch_size=9, channels=8)
    _, _, flow = demo.make_pair(config)
    exact = demo.ArgmaxMethod("truth", lambda *_args: flow.round()[None], lambda *_args: 0)
    monkeypatch.setattr(demo, "ARGMAX_METHODS", (exact,))
    result = run_demo(config, tmp_path)
    assert result.within_1px == 1.0 and result.mean_epe <= 0.71
    assert result.flow_magnitude[2] <= config.radius * 1.13


def test_flow_colour_wheel():
    wheel = color_wheel()
    assert wheel.shape == (55, 3) and wheel.min() >= 0 and wheel.max() <= 1
    # zero motion is white; full-length motion to the right is red; beyond the maximum, darkened
    flow = np.array([[[0.0, 0.0, 0.0]], [[0.0, 1.0, 2.0]]])  # (2, 1, 3): dy, dx
    colors = flow_to_color(flow, max_magnitude=1.0)[0]
    np.testing.assert_allclose(colors[0], [1, 1, 1])
    np.testing.assert_allclose(colors[1], [1, 0, 0], atol=0.07)
    np.testing.assert_allclose(colors[2], 0.75 * colors[1], atol=1e-12)
    # left is cyan-ish, down (dy > 0) is yellow-ish
    left, down = flow_to_color(np.array([[[0.0, 1.0]], [[-1.0, 0.0]]]), 1.0)[0]
    assert left[0] < 0.1 and left[2] > 0.5 and down[0] > 0.9 and down[2] < 0.1


# --------------------------------------------------------------------------- helpers


def test_progress_bar_draws_only_after_its_delay():
    stream = io.StringIO()
    bar = Progress(4, "work", stream=stream, delay=3600)
    for _ in range(4):
        bar.advance()
    bar.close()
    assert stream.getvalue() == ""
    bar = Progress(4, "work", stream=stream, delay=0, enabled=True)
    bar.advance(2, label="half")
    bar.close()
    assert "2/4" in stream.getvalue() and "half" in stream.getvalue() and stream.getvalue().endswith("\n")


def test_describe_machine_is_json():
    machine = describe_machine()
    assert machine["torch"] == torch.__version__ and machine["logical_cores"] >= 1
    assert json.loads(json.dumps(machine)) == machine


# --------------------------------------------------------------------------- user errors: one line, exit 2 (issue 15: 11-14)


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["demo", "--size", "24"], "--size: expected an int >= 37"),
    (["plan", "--shape", "-1,2,8,8"], "--shape: expected non-negative sizes"),
    (["plan", "--shape", "1,2,8,8", "--budget", "1.5"], "'1.5' is not a budget"),
    (["sweep", "--shape", "1,2,8,8", "--budget", "1GiB"], "--budget is for plan and profile"),
    (["plan", "--patch-size", "3"], "--shape"),
])
def test_argument_errors_are_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in _one_line_error(capsys.readouterr().err)


def test_negative_parameter_values_reach_the_library_check(capsys):
    code, _, err = _run(capsys, "plan", "--shape", "1,2,8,8", "--padding", "-1")  # argparse took -1 for an option
    assert code == 1 and "padding must be >= 0, got -1" in _one_line_error(err)


def test_out_under_a_regular_file_is_refused_before_computing(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(cli, "run_demo", lambda *a, **k: pytest.fail("computed before checking --out"))
    regular = tmp_path / "file"
    regular.write_text("")
    for out in (regular, regular / "demo"):
        code, _, err = _run(capsys, "demo", "--out", str(out), "--size", "40")
        assert code == 2 and "a file, not a folder" in _one_line_error(err)


def test_plot_extension_is_checked_before_measuring(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(cli, "sweep", lambda *a, **k: pytest.fail("measured before checking --plot"))
    code, _, err = _run(capsys, "sweep", *TINY, "--budgets", "1MiB", "--plot", str(tmp_path / "out.txt"))
    assert code == 2 and "cannot write .txt figures" in _one_line_error(err)


def test_allocator_errors_are_one_line(capsys, monkeypatch):
    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 160000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(profile, "make_inputs", allocate)
    code, _, err = _run(capsys, "profile", "--shape", "4000,1000,100,100", "--repeat", "1", "--warmup", "0")
    assert code == 1 and "out of memory" in _one_line_error(err) and "160000000000 bytes" in err


def test_output_piped_into_head_ends_quietly(tmp_path):
    script = "import sys; sys.argv[0] = 'tiledcorr'; from tiledcorr.tools.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", script, "plan", "--shape", "1,2,8,8", "--patch-size", "3", "--json"]
    writer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    writer.stdout.close()  # what head does after its first lines; here before the writer (still importing) prints
    _, err = writer.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert writer.returncode == 141


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"tiledcorr {cli._version()}"
    for command in ("plan", "profile", "sweep", "demo"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "example:" in text and f"tiledcorr {command} " in text.split("example:")[1]
        if command != "demo":
            assert "B,C,D,H,W" in text and "5-D" in text


def test_budget_help_states_the_rule(capsys):
    with pytest.raises(SystemExit):
        cli.main(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a number with a decimal point is a fraction" in text and "1.5 without units is refused" in text


def test_progress_bars_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        bar = Progress(2, "work", stream=stream, delay=0)
        bar.advance()
        bar.close()
        assert ("\r" in stream.getvalue()) is drawn


def test_demo_reports_progress(tmp_path):
    pytest.importorskip("matplotlib")
    steps = []

    class Recorder:
        def advance(self, steps_=1, label=None):
            steps.append((steps_, label))

    config = DemoConfig(size=40, patch_size=5, channels=4, memory_budget="8MiB")
    run_demo(config, tmp_path, progress=Recorder())
    from tiledcorr.tools.demo import demo_steps

    assert sum(n for n, _ in steps) == demo_steps() and len(steps) > demo_steps() // 2
