"""torch.compile: a model calling correlate compiles, gives the eager results and trains."""

from __future__ import annotations

import pytest
import torch

import tiledcorr


class FlowHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.corr = tiledcorr.SpatialCorrelation(patch_size=5, normalize="channels", flatten=True)
        self.head = torch.nn.Conv2d(25, 2, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(self.corr(self.features(a), self.features(b)).relu())


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_model_matches_eager(backend):
    torch.manual_seed(0)
    net = FlowHead().double()
    a, b = torch.randn(2, 3, 9, 11, dtype=torch.float64), torch.randn(2, 3, 9, 11, dtype=torch.float64)
    expected = net(a, b)
    expected.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(net)(a, b)
    assert explained.graph_break_count == 1  # only at the correlation call (torch.compiler.disable)
    compiled = torch.compile(net, backend=backend)
    out = compiled(a, b)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    for p, g in zip(net.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
