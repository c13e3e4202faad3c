"""Ahead-of-time compiles of the Triton kernels for real GPUs (sm_80, sm_86, sm_89, sm_90), on CPU.

``triton.compile`` with a ``GPUTarget`` runs the whole pipeline down to a
cubin with the ptxas shipped in the triton wheel, so dot shapes, layouts and
register allocation are checked without a GPU (the interpreter checks none of
them). ``cuobjdump -res-usage`` reads the cubin: spills go to local memory, so
the test requires 0 local bytes on sm_90.

Coverage here, to stay fast: on sm_90 every kernel variant for float16 and
bfloat16 and the smallest and largest configs for float32; for sm_80/86/89
(registers and shared memory only: 99 KB is the limit on sm_86/89) every
kernel on the largest float16 and float32 configs (bfloat16's are float16's).
``python profiling/triton_resources.py`` compiles every variant for every
target and prints the resource table (profiling/triton_resources.md). Compiles
are cached in the process and in triton's cache directory.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "profiling" / "triton_resources.py"
_spec = importlib.util.spec_from_file_location("_tiledcorr_triton_resources", _SCRIPT)
resources = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = resources
_spec.loader.exec_module(resources)

VARIANTS = resources.variants()
_TK = resources.load_module()
_TORCH_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _id(v) -> str:
    return f"{v.kernel.strip('_')}-{v.dtype}-{v.label}".replace(" ", "_")


def _on(v, position: int) -> bool:
    """Whether a variant is compiled for the config at ``position`` of its dtype's ``BLOCK_CONFIGS``."""
    tag = resources.config_tag(_TK.BLOCK_CONFIGS[_TORCH_DTYPE[v.dtype]][position])
    return v.label == tag or v.label.startswith(tag + " ")


def _edge(v) -> bool:
    """The select backward, or a variant on its dtype's smallest or largest config."""
    return v.kernel == "_select_bwd_kernel" or _on(v, 0) or _on(v, -1)


def test_every_shipped_config_and_dtype_is_covered():
    labels = {(v.kernel, v.dtype, v.label.split(" tf32")[0]) for v in VARIANTS}
    for dtype in resources.DTYPES:
        for cfg in _TK.BLOCK_CONFIGS[_TORCH_DTYPE[dtype]]:
            assert ("_volume_fwd_kernel", dtype, resources.config_tag(cfg)) in labels
    assert {v.kernel for v in VARIANTS} == {name for name in dir(_TK) if name.endswith("_kernel")}
    # max/argmax compile with the KP the host launches them with
    assert any(v.kernel == "_select_fwd_kernel" and ("KP", _TK._top_slots(1)) in v.constexprs for v in VARIANTS)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.dtype != "fp32" or _edge(v)], ids=_id)
def test_compiles_for_sm90_without_spills(variant):
    r = resources.compile_variant(variant, 90)
    assert r.local_bytes == 0, f"{r.local_bytes} bytes of local memory (spills) on sm_90"
    assert 0 < r.regs <= 255
    assert r.shared_bytes <= resources.SHARED_LIMIT[90]


@pytest.mark.parametrize("arch", [80, 86, 89])
@pytest.mark.parametrize("variant", [v for v in VARIANTS if _on(v, -1) and v.dtype != "bf16"], ids=_id)
def test_compiles_for_ampere_and_ada(variant, arch):
    r = resources.compile_variant(variant, arch)
    assert 0 < r.regs <= 255
    assert r.shared_bytes <= resources.SHARED_LIMIT[arch], f"{r.shared_bytes} B of shared memory on sm_{arch}"
