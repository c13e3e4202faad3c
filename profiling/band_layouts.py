"""Alternative layouts of ``row_matmul``'s forward, timed round-robin against the one it uses.

Issue 20 item 3 asks to close the gap to matmul where the measurement points:
the band copy (a strided transpose into the displacement-major volume) and
the wasted products of the last dimension. This script rebuilds the forward
loop of a ``row_matmul`` plan outside the engine (same tile shapes, region
and input1 copies, one ``bmm`` per tile, one band copy into a huge-page
advised volume) and times, in one run and round-robin, these variants, each
with and without its band copy (``nc``: the matmul and gathers alone):

* ``orig``: what ``row_matmul`` does: ``A^T (UN x K) @ B (K x J1*EN)`` per
  row of positions, output position-major; the band is a strided view.
* ``tr``: the transposed product ``B^T @ A``, so the output's contiguous
  dimension is the positions, as in the volume: the band copy reads a
  diagonal of a small block instead of one element per row.
* ``stack2``: two rows of positions per matmul item (``M = 2*UN``, one
  more region row each): a taller matmul for one extra region row.
* ``tr-stack2``: both.
* ``halves``: the 16 positions of a row as two 8-wide matmuls, each with its
  own region block (waste ``(8+JN-1)/JN`` instead of ``(16+JN-1)/JN``), their
  outputs interleaved so that the band is one view with 16-wide runs.
* ``strip64``: four 16-wide blocks side by side, outputs placed so that the
  band of the whole 64-wide strip is one view (64-element runs in the volume).

With ``dilation_patch > 1`` (FlowNetC) one lattice of positions is timed (the
plan's tiles lie on those lattices). The band copy is also timed alone (``copy eager``), as three
copies with contiguous inner dimensions through a blocked 2-D transpose (``copy 3-step``), and with
``--inductor`` compiled by ``torch.compile`` (Inductor's C++ backend, needs a C++ compiler; the
compile time is printed).

Usage: ``python profiling/band_layouts.py [--only large,larger] [--threads 1] [--repeat 5] [--inductor]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CONFIGS  # noqa: E402

import tiledcorr  # noqa: E402
from tiledcorr.execution import hugepages  # noqa: E402


def _empty(n: int) -> torch.Tensor:
    buf = torch.empty(n)
    hugepages.advise(buf)
    return buf


class Problem:
    """One configuration's inputs, padded input2, volume, and the plan's forward tile (``U1 x UN``)."""

    def __init__(self, name: str) -> None:
        shape, kw = CONFIGS[name]
        plan = tiledcorr.plan(shape, **kw)
        assert plan.strategy == "row_matmul", plan.strategy
        g = plan.geometry
        self.B, self.K, self.H, self.W = shape[0], shape[1], g.out_shape[-2], g.out_shape[-1]
        self.J1, self.JN = g.out_shape[1], g.out_shape[2]
        self.U1, self.UN = plan.tiling.tile
        step = kw.get("dilation_patch", 1)
        # Positions on one lattice of the patch dilation: that lattice's rows and columns only.
        self.H, self.W = -(-self.H // step), -(-self.W // step)
        self.U1 = min(self.U1, self.H)
        x1, x2 = torch.randn(self.B, self.K, self.H, self.W), torch.randn(self.B, self.K, self.H, self.W)
        r1, rn = (self.J1 - 1) // 2, (self.JN - 1) // 2
        self.x1 = x1
        # Padded so that every tile's region is in range, also past the last full tile.
        self.x2p = torch.nn.functional.pad(x2, (rn, rn + 64, r1, r1 + self.U1))
        self.vol = _empty(self.B * self.J1 * self.JN * self.H * self.W).view(self.B, self.J1, self.JN, self.H, self.W)
        self.useful = 2 * self.B * self.H * self.W * self.J1 * self.JN * self.K

    def tiles(self, width: int):
        """``(b, a0, u0)`` of every tile of ``U1 x width`` positions (the last ones clipped at the volume's edge)."""
        for b in range(self.B):
            for a0 in range(0, self.H - self.U1 + 1, self.U1):
                for u0 in range(0, self.W - width + 1, width):
                    yield b, a0, u0


def _variant(p: Problem, transposed: bool, stack: int, copy: bool):
    """``orig`` / ``tr`` / ``stack2`` / ``tr-stack2`` as a closure over all full tiles."""
    U1, UN, J1, JN, K, s = p.U1, p.UN, p.J1, p.JN, p.K, stack
    E1, EN = U1 + J1 - 1, UN + JN - 1
    reg, x1t = torch.empty(K, E1, EN), torch.empty(K, U1, UN)
    N, nb, M = (J1 + s - 1) * EN, U1 // s, s * UN
    y = _empty(nb * M * N)
    if transposed:
        y = y.view(nb, N, M)
        band = y.as_strided((J1, JN, nb, s, UN), (EN * M, M, N * M, EN * M + UN, M + 1))
    else:
        y = y.view(nb, M, N)
        band = y.as_strided((J1, JN, nb, s, UN), (EN, 1, M * N, UN * N + EN, N + 1))

    def run():
        for b, a0, u0 in p.tiles(UN):
            reg.copy_(p.x2p[b, :, a0 : a0 + E1, u0 : u0 + EN])
            x1t.copy_(p.x1[b, :, a0 : a0 + U1, u0 : u0 + UN])
            A = x1t.as_strided((nb, K, M), (M, U1 * UN, 1))
            Bv = reg.as_strided((nb, K, N), (s * EN, E1 * EN, 1))
            if transposed:
                torch.bmm(Bv.transpose(1, 2), A, out=y)
            else:
                torch.bmm(A.transpose(1, 2), Bv, out=y)
            if copy:
                p.vol[b, :, :, a0 : a0 + U1, u0 : u0 + UN].view(J1, JN, nb, s, UN).copy_(band)
    return run


def _blocks(p: Problem, block: int, blocks: int, copy: bool):
    """``halves`` (``blocks`` of ``block`` < UN positions) and ``strip64`` (16-wide blocks side by side).

    Block ``q``'s output rows start ``q * block * (L + 1)`` elements into a shared
    buffer (rows of ``L = J1 * EN`` elements, rows of positions ``width * (L + 1)``
    apart): then element ``(j1, jn, a, u)`` of the band is at
    ``a * width * (L + 1) + u * (L + 1) + j1 * EN + jn`` for every ``u``, one view.
    """
    U1, J1, JN, K = p.U1, p.J1, p.JN, p.K
    width = block * blocks
    E1, EN = U1 + J1 - 1, block + JN - 1
    L, step = J1 * EN, width * (J1 * EN + 1)
    reg, x1t = torch.empty(K, E1, EN), torch.empty(K, U1, width)
    y = _empty(U1 * step + width)
    outs = [y.as_strided((U1, block, L), (step, L, 1), q * block * (L + 1)) for q in range(blocks)]
    band = y.as_strided((J1, JN, U1, width), (EN, 1, step, L + 1))

    def run():
        for b, a0, u0 in p.tiles(width):
            x1t.copy_(p.x1[b, :, a0 : a0 + U1, u0 : u0 + width])
            for q in range(blocks):
                c0 = u0 + q * block
                reg.copy_(p.x2p[b, :, a0 : a0 + E1, c0 : c0 + EN])
                A = x1t.as_strided((U1, K, block), (width, U1 * width, 1), q * block)
                torch.bmm(A.transpose(1, 2), reg.as_strided((U1, K, L), (EN, E1 * EN, 1)), out=outs[q])
            if copy:
                p.vol[b, :, :, a0 : a0 + U1, u0 : u0 + width].copy_(band)
    return run


def _copies(p: Problem, inductor: bool):
    """The ``orig`` band copy alone: eager, in three contiguous copies, and compiled by Inductor (if asked and it compiles)."""
    U1, UN, J1, JN = p.U1, p.UN, p.J1, p.JN
    EN = UN + JN - 1
    y = torch.randn(U1, UN, J1 * EN)

    def extract(y: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(y.as_strided((J1, JN, U1, UN), (EN, 1, UN * J1 * EN, J1 * EN + 1)))

    eager = lambda: [extract(y, p.vol[b, :, :, a0 : a0 + U1, u0 : u0 + UN]) for b, a0, u0 in p.tiles(UN)]  # noqa: E731
    # Three copies that each have a contiguous inner dimension on both sides: the band into a dense
    # position-major block, a 2-D transpose (PyTorch's blocked path for a transposed matrix), the block
    # into the volume in runs of UN.
    band = y.as_strided((U1, UN, J1, JN), (UN * J1 * EN, J1 * EN + 1, EN, 1))
    dense, dense_t = torch.empty(U1 * UN, J1 * JN), torch.empty(J1 * JN, U1 * UN)

    def three_step(out: torch.Tensor) -> None:
        dense.view(U1, UN, J1, JN).copy_(band)
        dense_t.copy_(dense.t())
        out.copy_(dense_t.view(J1, JN, U1, UN))

    variants = {"copy eager": eager,
                "copy 3-step": lambda: [three_step(p.vol[b, :, :, a0 : a0 + U1, u0 : u0 + UN]) for b, a0, u0 in p.tiles(UN)]}
    if not inductor:
        return variants
    try:
        compiled = torch.compile(extract, dynamic=False, fullgraph=True)
        start = time.perf_counter()
        compiled(y, p.vol[0, :, :, :U1, :UN])
        print(f"  inductor compile {time.perf_counter() - start:.1f} s")
    except Exception as exc:  # no compiler, or Inductor unavailable: report and skip
        print(f"  inductor unavailable: {type(exc).__name__}: {exc}"[:200])
        return variants
    variants["copy inductor"] = lambda: [compiled(y, p.vol[b, :, :, a0 : a0 + U1, u0 : u0 + UN]) for b, a0, u0 in p.tiles(UN)]
    return variants


def compare(name: str, repeat: int, inductor: bool) -> None:
    p = Problem(name)
    variants = {}
    for label, tr, s in (("orig", False, 1), ("tr", True, 1), ("stack2", False, 2), ("tr-stack2", True, 2)):
        if p.U1 % s == 0:
            for copy in (True, False):
                variants[label + ("" if copy else " nc")] = _variant(p, tr, s, copy)
    if p.UN == 16:
        for label, block, blocks in (("halves", 8, 2), ("strip64", 16, 4)):
            if p.W >= block * blocks:
                for copy in (True, False):
                    variants[label + ("" if copy else " nc")] = _blocks(p, block, blocks, copy)
    variants.update(_copies(p, inductor))
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    variants["matmul"] = lambda: a @ b
    for fn in variants.values():
        fn()
    times = {k: [] for k in variants}
    for _ in range(repeat):
        for k, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = 2 * n**3 / med.pop("matmul")
    # Each variant covers its full tiles only: count the useful flops of those.
    rows = (p.H // p.U1) * p.U1 / p.H
    covered = {}
    for k in med:
        width = 16 * 4 if k.startswith("strip") else p.UN
        covered[k] = p.useful * rows * (p.W // width) * width / p.W
    print(f"{name}: tile {p.U1}x{p.UN}, patch {p.J1}x{p.JN}, K={p.K}; matmul {rate / 1e9:.0f} GFLOP/s")
    for k, t in med.items():
        print(f"  {k:16s} {t * 1e3:8.1f} ms  {covered[k] / t / rate * 100:4.0f}% of matmul")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="flownetc,large,larger,mmtracker,pwcnet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--inductor", action="store_true", help="also time the band copy compiled by Inductor")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.only.split(","):
        compare(name, args.repeat, args.inductor)


if __name__ == "__main__":
    main()
