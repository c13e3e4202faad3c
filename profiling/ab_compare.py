"""Two source trees of tiledcorr timed round-robin in one run: bench.py's configurations and the tiny call.

Each tree runs in a persistent worker process (``PYTHONPATH=<tree>``) that
builds the inputs once; the driver asks the workers in turn for one timed
step at a time (config x forward / forward+backward x tree, round after
round), so both trees see the same machine load, and reports medians and
the ratio after/before.

Usage (a checkout of the old commit as the first tree)::

    git worktree add --detach /tmp/before <commit>
    python profiling/ab_compare.py /tmp/before . --repeat 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, statistics, sys, time, torch
sys.path.insert(0, sys.argv[1])
import tiledcorr
assert tiledcorr.__file__.startswith(sys.argv[1]), tiledcorr.__file__
CONFIGS = {name: (tuple(shape), kw) for name, (shape, kw) in json.loads(sys.argv[2]).items()}
torch.set_num_threads(int(sys.argv[3]))
steps = {}
for name, (shape, kw) in CONFIGS.items():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()

    def fb(a=a, b=b, kw=kw):
        a.grad = b.grad = None
        out = tiledcorr.correlate(a, b, **kw)
        out.backward(torch.ones_like(out))

    steps[name, "fwd"] = lambda x1=x1, x2=x2, kw=kw: tiledcorr.correlate(x1, x2, **kw)
    steps[name, "fwd+bwd"] = fb
print("ready", flush=True)
for line in sys.stdin:
    name, kind, calls = line.split()
    step = steps[name, kind]
    step()  # warm (plan cached, pages touched)
    times = []
    for _ in range(int(calls)):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps(statistics.median(times)), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="source tree of the old version (its tiledcorr/ is imported)")
    parser.add_argument("after", help="source tree of the new version")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per configuration (median over them)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny-calls", type=int, default=200, help="calls per tiny-call sample (median)")
    parser.add_argument("--calls", type=int, default=1, help="calls per sample of the other configurations (median)")
    parser.add_argument("--only", default="", help="comma-separated configurations (default: all, and tiny)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import CONFIGS  # the configurations only: the workers import nothing of this tree but its package

    configs = dict(CONFIGS, tiny=((1, 8, 8, 8), dict(patch_size=3)))
    if args.only:
        unknown = set(args.only.split(",")) - set(configs)
        if unknown:
            parser.error(f"--only: unknown configurations {sorted(unknown)}; choose from {sorted(configs)}")
        configs = {n: configs[n] for n in args.only.split(",")}
    workers = {}
    for label, tree in (("before", args.before), ("after", args.after)):
        # -I: no user site and no current directory on the path, so each worker imports its own tree's tiledcorr.
        proc = subprocess.Popen([sys.executable, "-I", "-c", WORKER, str(Path(tree).resolve()), json.dumps(configs),
                                 str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        workers[label] = proc
    names = list(configs)
    samples = {(n, k, w): [] for n in names for k in ("fwd", "fwd+bwd") for w in workers}
    for _ in range(args.repeat):
        for name in names:
            for kind in ("fwd", "fwd+bwd"):
                for label, proc in workers.items():
                    proc.stdin.write(f"{name} {kind} {args.tiny_calls if name == 'tiny' else args.calls}\n")
                    proc.stdin.flush()
                    samples[name, kind, label].append(json.loads(proc.stdout.readline()))
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    rows = []
    # after/before: the ratio of the medians; in brackets the median of each round's own ratio (the two
    # trees' samples of one round are taken back to back, so that one is the steadier on a drifting machine).
    print("| config | before fwd ms | after fwd ms | after/before | before fwd+bwd ms | after fwd+bwd ms | after/before |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        med = {(k, w): statistics.median(samples[name, k, w]) * 1e3 for k in ("fwd", "fwd+bwd") for w in workers}
        unit = 1e3 if name == "tiny" else 1.0  # the tiny call in microseconds
        cells = [f"{med[k, w] * unit:.{0 if name == 'tiny' else 1}f}" for k in ("fwd", "fwd+bwd") for w in workers]
        ratio = [med[k, "after"] / med[k, "before"] for k in ("fwd", "fwd+bwd")]
        paired = [statistics.median(a / b for a, b in zip(samples[name, k, "after"], samples[name, k, "before"]))
                  for k in ("fwd", "fwd+bwd")]
        label = "tiny (us)" if name == "tiny" else name
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio[0]:.2f} ({paired[0]:.2f}) | {cells[2]} | {cells[3]} "
              f"| {ratio[1]:.2f} ({paired[1]:.2f}) |")
        rows.append({"config": name, **{f"{w}_{k}_ms": med[k, w] for k in ("fwd", "fwd+bwd") for w in workers},
                     "paired_fwd": paired[0], "paired_fwd+bwd": paired[1]})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
