"""ONNX export of the drop-in Modules: file size, ONNX Runtime time and peak memory against eager tiledcorr.

For each configuration of issue 17 the Module is exported with the dynamo
exporter (dynamic batch, height and width), checked against eager at the
exported size, then timed: the median of ``--repeats`` runs after
``--warmup`` runs, for ONNX Runtime (CPU provider) and for eager tiledcorr.
Peak memory: a fresh subprocess builds the inputs (and the ONNX Runtime
session), then runs once while a thread samples its RSS every 0.5 ms; the
figure is the highest sample minus the RSS just before the run (imports,
inputs and the loaded model are not counted; ONNX Runtime's first run
allocates its arena, which is counted).

Usage::

    python profiling/onnx_export.py [--threads N] [--repeats 10] [--warmup 2] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    # name: (constructor expression, input shape)
    "sampler k1 P9 (MM-Tracker)": ("tiledcorr.SpatialCorrelationSampler(1, 9, 1, 0, 1)", (1, 512, 19, 34)),
    "FlowNetC Correlation(20,1,20,1,2,1)": ("tiledcorr.Correlation(20, 1, 20, 1, 2, 1)", (1, 256, 48, 64)),
    "sampler k3 P9": ("tiledcorr.SpatialCorrelationSampler(3, 9, 1, 1, 1)", (1, 128, 32, 48)),
    "CorrTorch md4": ("tiledcorr.CorrTorch(4, 1, 4, 1, 1)", (2, 64, 48, 64)),
    "argmax P9 (fused)": ("tiledcorr.CorrelationReduce(patch_size=9, reduction='argmax')", (1, 512, 19, 34)),
}

_MEASURE = r"""
import sys, json, torch, tiledcorr
threads, which, path, expr, shape = sys.argv[1:6]
torch.set_num_threads(int(threads))
shape = tuple(json.loads(shape))
g = torch.Generator().manual_seed(0)
a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
if which == "onnx":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = dict(zip([i.name for i in session.get_inputs()], (a.numpy(), b.numpy())))
    run = lambda: session.run(None, feed)
else:
    module = eval(expr)
    def run():
        with torch.no_grad():
            return module(a, b)
import gc, threading, psutil
gc.collect()
process, peak, done = psutil.Process(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        done.wait(0.0005)
before = process.memory_info().rss
thread = threading.Thread(target=sample)
thread.start()
run()
done.set()
thread.join()
peak[0] = max(peak[0], process.memory_info().rss)
print(json.dumps({"peak_mib": (peak[0] - before) / 2**20}))
"""


def _peak_mib(which: str, path: str, expr: str, shape: tuple[int, ...], threads: int) -> float:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(threads), which, path, expr, json.dumps(shape)],
                         check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def _median_ms(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch_threads())
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", default=None, help="run the configurations whose name contains this")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    import tiledcorr

    torch.set_num_threads(args.threads)
    rows = []
    for name, (expr, shape) in CONFIGS.items():
        if args.only and args.only not in name:
            continue
        module = eval(expr, {"tiledcorr": tiledcorr})
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        dims = {0: torch.export.Dim("B"), 2: torch.export.Dim("H", min=8), 3: torch.export.Dim("W", min=8)}
        start = time.perf_counter()
        program = torch.onnx.export(module, (a, b), dynamo=True, dynamic_shapes=(dims, dims), verbose=False)
        export_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            program.save(path)
            size_kib = os.path.getsize(path) / 1024
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            feed = dict(zip([i.name for i in session.get_inputs()], (a.numpy(), b.numpy())))
            with torch.no_grad():
                expected = module(a, b)
            got = session.run(None, feed)[0]
            if expected.is_floating_point():
                error = float(np.abs(got - expected.numpy()).max() / max(1e-30, float(expected.abs().max())))
            else:
                error = float((got != expected.numpy()).mean())  # fraction of differing displacements
            onnx_ms = _median_ms(lambda: session.run(None, feed), args.repeats, args.warmup)
            with torch.no_grad():
                eager_ms = _median_ms(lambda: module(a, b), args.repeats, args.warmup)
            onnx_peak = _peak_mib("onnx", path, expr, shape, args.threads)
            eager_peak = _peak_mib("eager", path, expr, shape, args.threads)
        row = dict(config=name, shape="x".join(map(str, shape)), nodes=len(program.model_proto.graph.node),
                   onnx_kib=round(size_kib, 1), export_s=round(export_s, 1), error=error,
                   onnx_ms=round(onnx_ms, 2), eager_ms=round(eager_ms, 2), onnx_peak_mib=round(onnx_peak, 1),
                   eager_peak_mib=round(eager_peak, 1))
        print(json.dumps(row), flush=True)
        rows.append(row)
    print()
    print("| configuration | input | ONNX nodes | ONNX file | export | max error / scale | ORT median | eager median "
          "| ORT peak RSS | eager peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        err = f"{r['error']:.1e}" if "argmax" not in r["config"] else f"{100 * r['error']:.2f}% differ"
        print(f"| {r['config']} | {r['shape']} | {r['nodes']} | {r['onnx_kib']} KiB | {r['export_s']} s | {err} "
              f"| {r['onnx_ms']} ms | {r['eager_ms']} ms | {r['onnx_peak_mib']} MiB | {r['eager_peak_mib']} MiB |")


def torch_threads() -> int:
    return min(4, os.cpu_count() or 1)


if __name__ == "__main__":
    main()
