"""Compile every Triton kernel ahead of time for real GPUs and print its resources (no GPU needed).

For each kernel variant (kernel x dtype x block config shipped for that dtype), and each
target (sm_80, sm_86, sm_89, sm_90), ``triton.compile`` runs the full pipeline
down to a cubin with the ptxas shipped in the triton wheel; ``cuobjdump
-res-usage`` (also shipped) then reads the cubin's registers per thread and
local memory (spills go to local memory, so 0 bytes means no spills), and
``metadata.shared`` gives the shared memory per program, checked against
:data:`SHARED_LIMIT` (the most one block may use on each target).

Usage::

    python profiling/triton_resources.py            # every variant, a markdown table
    python profiling/triton_resources.py --arch 90  # one target

The test tests/test_triton_aot.py imports :func:`variants` and :func:`compile_variant`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHS = (80, 86, 89, 90)
DTYPES = ("fp16", "bf16", "fp32")
#: Largest shared memory per block (opt-in), bytes: A100 163 KB, sm_86/sm_89 99 KB, H100 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}

_POINTER_ARGS = {
    # kernel -> {argument: "in" (input dtype) | other pointer type}
    "_volume_fwd_kernel": {"x1": "in", "x2": "in", "out": "in"},
    "_dense_bwd_kernel": {"gout": "in", "x1": "in", "x2": "in", "g1": "fp32", "g2": "fp32",
                          "E": "fp32", "mx": "fp32", "zn": "fp32"},
    "_select_fwd_kernel": {"x1": "in", "x2": "in", "values": "fp32", "index": "i64"},
    "_softargmax_fwd_kernel": {"x1": "in", "x2": "in", "E": "fp32", "mx": "fp32", "zn": "fp32"},
    "_select_bwd_kernel": {"grad": "fp32", "index": "i64", "x1": "in", "x2": "in", "g1": "fp32", "g2": "fp32"},
}
_FLOAT_ARGS = {"scale", "inv_t"}


def load_module():
    """A copy of the kernels module with compiled (not interpreted) kernels."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        name = "_tiledcorr_triton_kernels_aot"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, ROOT / "tiledcorr" / "strategies" / "triton_kernels.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


@dataclass(frozen=True)
class Variant:
    """One compiled specialisation of a kernel."""

    kernel: str
    dtype: str
    label: str  # config and mode, for the table
    constexprs: tuple  # ((name, value), ...)
    num_warps: int
    num_stages: int = 3


def config_tag(cfg) -> str:
    """A block config as the table writes it, e.g. ``BW16 BR32 BC32 w8 s3``."""
    return f"BW{cfg.bw} BR{cfg.br} BC{cfg.bc} w{cfg.num_warps} s{cfg.num_stages}"


def variants(dtypes=DTYPES) -> list[Variant]:
    """Every specialisation the module can launch: each kernel, dtype and block config shipped for it."""
    import torch

    tk = load_module()
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    out = []
    for dtype in dtypes:
        precisions = ("ieee", "tf32") if dtype == "fp32" else ("ieee",)
        for cfg in tk.BLOCK_CONFIGS[torch_dtype[dtype]]:
            for precision in precisions:
                blocks = dict(BW=cfg.bw, BR=cfg.br, BC=cfg.bc, PRECISION=precision, UPCAST=False)
                tag = config_tag(cfg) + (" tf32" if precision == "tf32" else "")

                def add(kernel, label, **extra):
                    out.append(Variant(kernel, dtype, f"{tag} {label}".strip(),
                                       tuple(sorted({**blocks, **extra}.items())), cfg.num_warps, cfg.num_stages))

                add("_volume_fwd_kernel", "")
                add("_dense_bwd_kernel", "volume", SOFT=False, HAS_G1=True, HAS_G2=True)
                add("_dense_bwd_kernel", "softargmax", SOFT=True, HAS_G1=True, HAS_G2=True)
                add("_select_fwd_kernel", f"max (KP{tk._top_slots(1)})", KP=tk._top_slots(1))
                add("_select_fwd_kernel", "topk KP8", KP=8)
                add("_softargmax_fwd_kernel", "")
        out.append(Variant("_select_bwd_kernel", dtype, f"BW{tk._SELECT_BW} BC{tk._SELECT_BC} w4", tuple(sorted(
            dict(HAS_G1=True, HAS_G2=True, BW=tk._SELECT_BW, BC=tk._SELECT_BC).items())), 4))
    return out


@dataclass(frozen=True)
class Resources:
    regs: int
    local_bytes: int  # spills (and stack) live in local memory
    shared_bytes: int


def _signature(fn, variant: Variant) -> dict[str, str]:
    constexprs = dict(variant.constexprs)
    pointers = _POINTER_ARGS[variant.kernel]
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            kind = pointers[name]
            sig[name] = "*" + (variant.dtype if kind == "in" else kind)
        elif name in _FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _cuobjdump() -> str:
    import triton

    return str(pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


@functools.lru_cache(maxsize=None)
def compile_variant(variant: Variant, arch: int) -> Resources:
    """Compile one variant for ``sm_<arch>`` and read its resources (cached per process)."""
    import triton
    from triton.backends.compiler import GPUTarget

    tk = load_module()
    fn = getattr(tk, variant.kernel)
    constexprs = dict(variant.constexprs)
    src = triton.compiler.ASTSource(fn, signature=_signature(fn, variant), constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": variant.num_warps,
                                                                                "num_stages": variant.num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([_cuobjdump(), "-res-usage", f.name], check=True, capture_output=True,
                               text=True).stdout
    line = next(line for line in usage.splitlines() if "REG:" in line)
    fields = dict(re.findall(r"(\w+):(\d+)", line))
    return Resources(int(fields["REG"]), int(fields["LOCAL"]) + int(fields["STACK"]), int(compiled.metadata.shared))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="target sm_XX (default: 80, 86, 89, 90)")
    parser.add_argument("--dtype", action="append", choices=DTYPES)
    args = parser.parse_args(argv)
    import triton

    archs = tuple(args.arch or ARCHS)
    print(f"triton {triton.__version__}; registers per thread, local (spill) bytes, shared bytes per program "
          f"(config: BW x BR block, BC channels per step, w warps, s pipeline stages)\n")
    print("| kernel | dtype | config | arch | regs | spills (local B) | shared B |")
    print("|---|---|---|---|---|---|---|")
    summary = {arch: [0, 0, 0, 0] for arch in archs}  # max regs, variants spilling, max shared, over the limit
    for variant in variants(tuple(args.dtype or DTYPES)):
        for arch in archs:
            r = compile_variant(variant, arch)
            s = summary[arch]
            s[0], s[1] = max(s[0], r.regs), s[1] + (r.local_bytes > 0)
            s[2], s[3] = max(s[2], r.shared_bytes), s[3] + (r.shared_bytes > SHARED_LIMIT[arch])
            print(f"| {variant.kernel.strip('_')} | {variant.dtype} | {variant.label} | sm_{arch} | {r.regs} "
                  f"| {r.local_bytes} | {r.shared_bytes} |", flush=True)
    print("\n| arch | max regs | variants spilling | max shared B | shared limit B | variants over it |")
    print("|---|---|---|---|---|---|")
    for arch, (regs, spilling, shared, over) in summary.items():
        print(f"| sm_{arch} | {regs} | {spilling} | {shared} | {SHARED_LIMIT[arch]} | {over} |")


if __name__ == "__main__":
    main()
