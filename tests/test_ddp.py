"""Scale-out: a small network with a correlation layer trains inside
DistributedDataParallel (gloo, 2 CPU processes), and its gradients and
parameters equal a single-process run on the same global batch."""

from __future__ import annotations

import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import tiledcorr

WORLD = 2
STEPS = 2
BATCH = 4  # global; each process takes BATCH // WORLD


class FlowNet(nn.Module):
    """Features, a cost volume, a head: the shape of FlowNetC-like models."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 6, 3, padding=1)
        self.corr = tiledcorr.SpatialCorrelation(patch_size=5, normalize="channels", flatten=True, memory_budget="32KiB")
        self.head = nn.Conv2d(25, 2, 1)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        return self.head(self.corr(self.features(img1), self.features(img2)))


def make_problem():
    """The same model and data in every process (seeded)."""
    torch.manual_seed(0)
    model = FlowNet().double()
    g = torch.Generator().manual_seed(1)
    data = [tuple(torch.randn(BATCH, *shape, generator=g, dtype=torch.float64) for shape in ((3, 9, 10), (3, 9, 10), (2, 9, 10)))
            for _ in range(STEPS)]
    return model, data


def train(model: nn.Module, data, rows: slice) -> list[list[torch.Tensor]]:
    """SGD steps on ``rows`` of each batch; returns each step's gradients.

    (A plain update rather than torch.optim, whose import of torch._dynamo
    costs seconds in every process.)
    """
    grads = []
    for img1, img2, target in data:
        model.zero_grad()
        loss = nn.functional.mse_loss(model(img1[rows], img2[rows]), target[rows])
        loss.backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    return grads


def _train_and_save(rank: int, path: str) -> None:
    model, data = make_problem()
    ddp = nn.parallel.DistributedDataParallel(model)
    share = BATCH // WORLD
    grads = train(ddp, data, slice(rank * share, (rank + 1) * share))
    if rank == 0:
        torch.save({"grads": grads, "params": [p.detach() for p in model.parameters()]}, path)


def _worker(rank: int, port: int, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))  # fail, rather than hang, if a peer dies
    try:
        # The DDP wrapper lives and dies inside this call. Its Reducer must not hold the
        # last reference to the process group: freeing the group from the Reducer keeps
        # the GIL while joining gloo's worker thread, which may need the GIL (a deadlock;
        # pytorch/pytorch#56297). Freed by destroy_process_group, the GIL is released.
        _train_and_save(rank, path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_ddp_gradients_equal_single_process(tmp_path):
    path = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(_free_port(), path), nprocs=WORLD, join=True)
    result = torch.load(path)
    model, data = make_problem()
    expected = train(model, data, slice(None))
    for step, (ddp_grads, grads) in enumerate(zip(result["grads"], expected)):
        for got, want in zip(ddp_grads, grads):
            assert want.abs().max() > 0
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"step {step}")
    for got, want in zip(result["params"], model.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
