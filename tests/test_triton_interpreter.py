"""The Triton kernels, run by the Triton interpreter on CPU, against the float64 reference.

Every function of ``tiledcorr/strategies/triton_kernels.py`` (the volume, both
input gradients, the fused max/top-k/soft-argmax and their gradients) on tiny
problems that put every parameter away from its default, B > 1, channel
counts that are not a multiple of the channel block, widths that are not a
multiple of the column block, several displacement blocks per row and every
kind of width lattice (``gcd(stride, dilation_patch)`` cases). Expectations
are ``correlate_reference`` (float64) and autograd through it.

The interpreter ignores ``input_precision`` and does not check dot shapes
(tests/test_triton_aot.py compiles for real GPUs); it computes bfloat16 dots
wrongly, so the kernels upcast bfloat16 operands to float32 when interpreted.
Each kernel program costs ~20 ms here: keep the problems tiny.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from tiledcorr.reference import correlate_reference  # noqa: E402
from triton_support import load_kernels  # noqa: E402

tk = load_kernels(interpret=True)

#: Largest error relative to the largest reference magnitude, per dtype (as in test_correlate.py).
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# (B, C, H, W), patch, stride, padding, dilation_patch, scale, dtype, config or None
CASES = {
    "plain": ((2, 20, 5, 13), (3, 5), (1, 1), (0, 0), (1, 1), 1.0, torch.float32, None),
    "strided-even-ragged-C": ((1, 40, 7, 13), (4, 6), (2, 3), (1, 2), (2, 1), 0.5, torch.float32, None),
    "gcd-lattice": ((1, 17, 5, 13), (3, 3), (1, 2), (1, 1), (3, 4), 1.0, torch.float32, None),
    "split-displacements": ((1, 24, 3, 40), (2, 21), (1, 1), (0, 3), (1, 2), 1.0, torch.float32, (16, 32)),
    "stride3-dil2": ((1, 16, 9, 13), (3, 4), (3, 3), (1, 1), (2, 2), 1.0, torch.float32, None),
    "step2-tiny-blocks": ((1, 16, 7, 11), (3, 5), (2, 2), (1, 0), (1, 1), 1.0, torch.float32, (16, 32)),
    "float16": ((2, 20, 5, 13), (2, 5), (2, 1), (1, 0), (1, 2), 0.25, torch.float16, None),
    "bfloat16": ((1, 20, 9, 13), (3, 5), (2, 1), (1, 0), (1, 2), 0.25, torch.bfloat16, None),
}


class Problem:
    """Inputs, the kernels' keyword arguments and the float64 reference volume (with autograd)."""

    def __init__(self, name: str, seed: int = 0):
        shape, patch, stride, padding, dp, scale, dtype, cfg = CASES[name]
        gen = torch.Generator().manual_seed(seed)
        self.dtype, self.patch, self.dp = dtype, patch, dp
        self.x1 = torch.randn(shape, generator=gen).to(dtype)
        self.x2 = torch.randn(shape, generator=gen).to(dtype)
        self.kw = dict(patch=patch, stride=stride, padding=padding, dilation_patch=dp, scale=scale,
                       config=None if cfg is None else tk.BlockConfig(*cfg))
        self.a = self.x1.double().requires_grad_()
        self.b = self.x2.double().requires_grad_()
        # dilation (the kernel's) has no effect with kernel_size 1; pass 2 to the reference anyway.
        self.volume = correlate_reference(self.a, self.b, 1, patch, stride, padding, 2, dp) * scale
        self.flat = self.volume.detach().flatten(1, 2)
        self.gen = gen

    def random(self, shape, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen).to(dtype)

    def reference_grads(self, output: torch.Tensor, grad: torch.Tensor):
        return torch.autograd.grad(output, (self.a, self.b), grad.double(), retain_graph=True)

    def check(self, actual: torch.Tensor, expected: torch.Tensor, tol: float | None = None) -> None:
        tol = TOL[self.dtype] if tol is None else tol
        scale = expected.abs().max().clamp_min(1e-12)
        err = (actual.double() - expected).abs().max() / scale
        assert err <= tol, f"relative error {err.item():.3g} > {tol}"
        assert actual.shape == expected.shape


def _displacements(p: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    (PH, PW), (dH, dW) = p.patch, p.dp
    dy = torch.tensor([(j - (PH - 1) // 2) * dH for j in range(PH)], dtype=torch.float64)
    dx = torch.tensor([(j - (PW - 1) // 2) * dW for j in range(PW)], dtype=torch.float64)
    return dy, dx


@pytest.mark.parametrize("name", list(CASES))
def test_volume_and_its_gradients(name):
    p = Problem(name)
    out = torch.empty(p.volume.shape, dtype=p.dtype)
    tk.volume_forward(p.x1, p.x2, out, **p.kw)
    assert out.dtype == p.dtype
    p.check(out, p.volume.detach())

    grad_out = p.random(out.shape, p.dtype)
    r1, r2 = p.reference_grads(p.volume, grad_out)
    # The buffers are accumulated into, not overwritten.
    start1, start2 = p.random(p.x1.shape), p.random(p.x2.shape)
    g1, g2 = start1.clone(), start2.clone()
    tk.volume_backward(grad_out, p.x1, p.x2, g1, g2, **p.kw)
    grad_tol = TOL[torch.float32] * 4  # float32 sums of exact products (grad_out is in the input dtype)
    p.check(g1 - start1, r1, grad_tol)
    p.check(g2 - start2, r2, grad_tol)


@pytest.mark.parametrize("name", ["plain", "split-displacements", "float16"])
def test_volume_gradient_of_one_input_only(name):
    p = Problem(name, seed=1)
    grad_out = p.random(p.volume.shape, p.dtype)
    r1, r2 = p.reference_grads(p.volume, grad_out)
    g1 = torch.zeros(p.x1.shape)
    tk.volume_backward(grad_out, p.x1, p.x2, g1, None, **p.kw)
    p.check(g1, r1, 4e-5)
    g2 = torch.zeros(p.x2.shape)
    tk.volume_backward(grad_out, p.x1, p.x2, None, g2, **p.kw)
    p.check(g2, r2, 4e-5)


def test_volume_into_a_strided_output():
    """``out`` may be a view with any strides (e.g. a slice of a larger volume)."""
    p = Problem("gcd-lattice")
    big = torch.full((*p.volume.shape[:-1], p.volume.shape[-1] + 3), 7.0)
    out = big[..., 1:-2]
    tk.volume_forward(p.x1, p.x2, out, **p.kw)
    p.check(out, p.volume.detach())
    assert (big[..., 0] == 7).all() and (big[..., -2:] == 7).all()


@pytest.mark.parametrize(
    "name, reduction",
    [(name, "topk") for name in CASES] + [(name, "max") for name in ("plain", "gcd-lattice", "float16")],
)
def test_selection_and_its_gradients(name, reduction):
    p = Problem(name, seed=2)
    k = 1 if reduction == "max" else 4
    kw = dict(reduction=reduction, k=k, temperature=1.0, **p.kw)
    values, index = tk.reduce_forward(p.x1, p.x2, **kw)
    assert values.dtype == torch.float32 and index.dtype == torch.int64
    expected, expected_index = p.flat.sort(dim=1, descending=True, stable=True)
    p.check(values, expected[:, :k])
    if p.dtype == torch.float32:  # half sums may reorder near-equal values
        assert torch.equal(index, expected_index[:, :k])
    else:
        p.check(p.flat.gather(1, index), expected[:, :k])

    grad = p.random(values.shape)
    r1, r2 = p.reference_grads(p.volume.flatten(1, 2).gather(1, index), grad)
    start = p.random(p.x1.shape)
    g1, g2 = start.clone(), torch.zeros(p.x2.shape)
    tk.reduce_backward(grad, p.x1, p.x2, (values, index), g1, g2, **kw)
    p.check(g1 - start, r1, 4e-5)
    p.check(g2, r2, 4e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_softargmax_and_its_gradients(name):
    p = Problem(name, seed=3)
    T = 0.7
    kw = dict(reduction="softargmax", k=None, temperature=T, **p.kw)
    E, m, z = tk.reduce_forward(p.x1, p.x2, **kw)
    logits = p.volume.flatten(1, 2) / T
    prob = torch.softmax(logits, dim=1).view(p.volume.shape)
    dy, dx = _displacements(p)
    ref_E = torch.stack([(prob * dy.view(1, -1, 1, 1, 1)).sum((1, 2)), (prob * dx.view(1, 1, -1, 1, 1)).sum((1, 2))], 1)
    ref_m = logits.detach().amax(1)
    p.check(E, ref_E.detach())
    p.check(m, ref_m)
    p.check(z, (logits.detach() - ref_m.unsqueeze(1)).exp().sum(1))

    grad = p.random(E.shape)
    r1, r2 = p.reference_grads(ref_E, grad)
    g1, g2 = torch.zeros(p.x1.shape), torch.zeros(p.x2.shape)
    tk.reduce_backward(grad, p.x1, p.x2, (E, m, z), g1, g2, **kw)
    # the band gradient p * g.(d - E) / T is rounded to the input dtype for the half products
    tol = 4e-5 if p.dtype == torch.float32 else 2 * TOL[p.dtype]
    p.check(g1, r1, tol)
    p.check(g2, r2, tol)


def test_ties_go_to_the_lowest_index():
    """Integer inputs make exact ties everywhere (and zeros at the padded border)."""
    gen = torch.Generator().manual_seed(4)
    x1 = torch.randint(-1, 2, (2, 16, 3, 9), generator=gen).float()
    x2 = torch.randint(-1, 2, (2, 16, 3, 9), generator=gen).float()
    geometry = dict(patch=(3, 4), stride=(1, 2), padding=(1, 2), dilation_patch=(1, 2), scale=1.0)
    flat = correlate_reference(x1, x2, 1, (3, 4), (1, 2), (1, 2), 1, (1, 2)).flatten(1, 2)
    values, index = tk.reduce_forward(x1, x2, reduction="argmax", k=None, temperature=1.0, **geometry)
    assert torch.equal(index, flat.argmax(1, keepdim=True))
    values, index = tk.reduce_forward(x1, x2, reduction="topk", k=5, temperature=1.0, **geometry)
    expected, expected_index = flat.sort(dim=1, descending=True, stable=True)
    assert torch.equal(index, expected_index[:, :5])
    assert torch.equal(values.double(), expected[:, :5])


def test_zero_channels():
    x = torch.empty(2, 0, 5, 7)
    out = torch.full((2, 3, 3, 5, 7), 1.0)
    geometry = dict(patch=3, stride=1, padding=0, dilation_patch=1, scale=1.0)
    tk.volume_forward(x, x, out, **geometry)
    assert (out == 0).all()
    values, index = tk.reduce_forward(x, x, reduction="topk", k=2, temperature=1.0, **geometry)
    assert (values == 0).all() and (index[:, 0] == 0).all() and (index[:, 1] == 1).all()
    E, m, z = tk.reduce_forward(x, x, reduction="softargmax", k=None, temperature=1.0, **geometry)
    assert (E == 0).all() and (z == 9).all()


def test_supports_and_refusals():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    kw = dict(ndim=2, kernel=(1, 1), dtype=torch.float16)
    assert tk.supports(device=cpu, **kw) is None  # interpreted kernels take CPU tensors
    assert tk.supports(device=cuda, **kw) is None
    assert tk.supports(device=cuda, ndim=2, kernel=(3, 3), dtype=torch.float32) == "kernel_size > 1"
    assert tk.supports(device=cuda, ndim=2, kernel=(1, 1), dtype=torch.float64) == "float64"
    assert tk.supports(device=cuda, ndim=3, kernel=(1, 1, 1), dtype=torch.float32) == "3-D volumes"
    assert tk.supports(device=cuda, stride=(1, 9), dilation_patch=(1, 1), **kw) is not None  # m = 9
    assert tk.supports(device=cuda, stride=(1, 18), dilation_patch=(1, 2), **kw) is not None
    assert tk.supports(device=cuda, stride=(1, 16), dilation_patch=(1, 2), **kw) is None  # m = 8
    with pytest.raises(ValueError, match="lattice step"):
        tk.choose_config(3, 9, 1)
    with pytest.raises(ValueError, match="dtype must be"):
        tk.choose_config(3, 1, 1, torch.float64)
    for reduction in ("max", "argmax", "topk", "softargmax"):
        assert tk.reduction_supported(reduction) is None
    assert tk.reduction_supported("mean") is not None
    assert tk.workspace_bytes() == 0


def test_compiled_kernels_refuse_cpu_tensors():
    compiled = load_kernels(interpret=False)
    reason = compiled.supports(ndim=2, kernel=(1, 1), dtype=torch.float32, device=torch.device("cpu"))
    assert reason == "CPU tensors without TRITON_INTERPRET=1"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("patch_w", [1, 2, 5, 9, 21, 41, 65, 81, 201])
@pytest.mark.parametrize("stride_w, dilation_w", [(1, 1), (1, 2), (2, 1), (2, 4), (3, 2), (4, 1), (8, 1), (16, 2)])
def test_block_choice_fits_and_is_shipped(patch_w, stride_w, dilation_w, dtype):
    cfg = tk.choose_config(patch_w, stride_w, dilation_w, dtype)
    assert cfg in tk.BLOCK_CONFIGS[dtype]
    m = stride_w // math.gcd(stride_w, dilation_w)
    bp = cfg.displacements_per_block(patch_w, m)
    assert 1 <= bp <= patch_w and (cfg.bw - 1) * m + bp <= cfg.br
    assert min(cfg.bw, cfg.br, cfg.bc) >= 16  # hardware dot shapes


@pytest.mark.parametrize("patch_w", [1, 9, 33, 49, 65, 97, 113, 129])
@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_float32_blocks_cost_no_more_work_than_the_half_ones(patch_w, m):
    """float32 ships fewer blocks (the widest spill); the padded work per column stays the same."""
    def work(cfg):
        return -(-patch_w // cfg.displacements_per_block(patch_w, m)) * cfg.br

    half = tk.choose_config(patch_w, m, 1, torch.float16)
    single = tk.choose_config(patch_w, m, 1, torch.float32)
    assert work(single) == work(half)
    assert single.bw <= half.bw


def test_tf32_only_when_allowed():
    assert tk.dot_precision(torch.float16) == "ieee"
    matmul = torch.backends.cuda.matmul
    allow, previous = matmul.allow_tf32, torch.get_float32_matmul_precision()
    try:
        matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        assert tk.dot_precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert tk.dot_precision(torch.float32) == "tf32"
        torch.set_float32_matmul_precision("highest")
        matmul.allow_tf32 = True
        assert tk.dot_precision(torch.float32) == "tf32"
    finally:
        matmul.allow_tf32 = allow
        torch.set_float32_matmul_precision(previous)


def test_bad_arguments():
    x = torch.randn(1, 16, 5, 7)
    geometry = dict(patch=3, stride=1, padding=0, dilation_patch=1, scale=1.0)
    with pytest.raises(ValueError, match="out must be"):
        tk.volume_forward(x, x, torch.empty(1, 3, 3, 5, 6), **geometry)
    with pytest.raises(ValueError, match="k must be"):
        tk.reduce_forward(x, x, reduction="topk", k=10, temperature=1.0, **geometry)
    with pytest.raises(ValueError, match="grad1 must be"):
        tk.volume_backward(torch.zeros(1, 3, 3, 5, 7), x, x, torch.zeros(1, 16, 5, 7, dtype=torch.float64), None,
                           **geometry)
