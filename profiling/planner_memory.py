"""Measured vs predicted workspace for the planner's memory model (docs/memory.md).

Runs ``tiledcorr sweep --json`` (each in a fresh process, so the RSS peak
belongs to that run alone) for B=4, C=128, 96x96, patch 41, forward and
forward+backward, and writes the table to ``docs/memory.md``.

Usage: ``python profiling/planner_memory.py [--budgets 64MiB,256MiB,1GiB] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tiledcorr.budget import format_bytes, resolve_budget

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(budgets: str, device: str, backward: bool) -> dict:
    cmd = [sys.executable, "-m", "tiledcorr", "sweep", "--shape", "4,128,96,96", "--patch-size", "41",
           "--budgets", budgets, "--device", device, "--repeat", "3", "--json"] + (["--backward"] if backward else [])
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="64MiB,256MiB,1GiB")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    lines = ["| pass | budget | tiling (positions, displacements) | predicted workspace | measured workspace "
             "| measured/predicted | measured/budget | median time |",
             "|---|---|---|---|---|---|---|---|"]
    machine = None
    for backward in (False, True):
        data = run_sweep(args.budgets, args.device, backward)
        machine = data.get("machine", machine)
        for row in data["rows"]:
            r, p = row["result"], row["plan"]
            budget = resolve_budget(row["budget"])
            m, pred = r["measured_workspace_bytes"], r["predicted_workspace_bytes"]
            tiling = f"{p['strategy']} {'x'.join(map(str, p['position_tile']))}, {'x'.join(map(str, p['displacement_tile']))}"
            lines.append(f"| {'fwd+bwd' if backward else 'fwd'} | {row['budget']} | {tiling} | {format_bytes(pred)} | {format_bytes(m)} "
                         f"| {m / pred:.2f} | {m / budget:.3f} | {r['median_s']:.2f} s |")
    cpu = (machine or {}).get("cpu", "unknown CPU")
    text = ("# Measured memory of the planner's plans\n\n"
            f"B=4, C=128, 96x96, patch 41, float32 on {args.device} ({cpu}), measured {time.strftime('%Y-%m-%d')} with "
            "`python profiling/planner_memory.py`. Workspace = peak allocated during the call minus what it returns "
            "(the output; with the backward also the two input gradients and not the output gradient, which exists before). "
            "CPU peaks are the RSS high-water mark of a fresh process (see `tiledcorr/tools/measure.py`).\n\n"
            + "\n".join(lines) + "\n")
    (ROOT / "docs" / "memory.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
