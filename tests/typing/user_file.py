"""A user's file calling tiledcorr's public API, checked with ``mypy --strict`` (tests/test_packaging.py).

It is never run by pytest (no ``test_`` prefix); it only has to type-check.
``reveal_type`` is avoided so the file also runs as a plain script.
"""

from __future__ import annotations

import torch
from torch import nn

import tiledcorr
import tiledcorr.compat
from tiledcorr import TopK


def cost_volume(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    return tiledcorr.correlate(x1, x2, patch_size=9, memory_budget="256MiB")


def flow_from_argmax(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    displacements: torch.Tensor = tiledcorr.correlate_reduce(x1, x2, patch_size=9, reduction="argmax")
    return tiledcorr.displacement_to_flow(displacements).float()


def soft_flow(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    return tiledcorr.correlate_reduce(x1, x2, patch_size=9, reduction="softargmax", temperature=0.1)


def best_values(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    best: torch.Tensor = tiledcorr.correlate_reduce(x1, x2, patch_size=9, reduction="max")
    return best


def top_matches(x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top: TopK = tiledcorr.correlate_reduce(x1, x2, patch_size=9, reduction="topk", k=4)
    flows = tiledcorr.displacement_to_flow(top.displacements, dim=2)
    return top.values, flows


def reduce_by_name(x1: torch.Tensor, x2: torch.Tensor, name: str) -> torch.Tensor | TopK:
    return tiledcorr.correlate_reduce(x1, x2, patch_size=9, reduction=name, k=4 if name == "topk" else None)


def planned(shape: tuple[int, int, int, int]) -> int:
    plan: tiledcorr.Plan = tiledcorr.plan(shape, patch_size=21, memory_budget="64MiB")
    return plan.output_bytes


def layers() -> list[nn.Module]:
    return [
        tiledcorr.SpatialCorrelation(patch_size=9),
        tiledcorr.SpatialCorrelationSampler(1, 9, 1, 0, 1),
        tiledcorr.Correlation(pad_size=20, kernel_size=1, max_displacement=20, stride1=1, stride2=2),
        tiledcorr.CorrTorch(),
        tiledcorr.MMCVCorrelation(kernel_size=1, max_displacement=4),
        tiledcorr.CorrelationReduce(patch_size=9, reduction="softargmax"),
    ]


def flow_fields(volume: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flow = tiledcorr.volume_to_flow(volume, reduction="softargmax", temperature=0.5)
    displacement = tiledcorr.index_to_displacement(index, patch_size=9, dilation_patch=2)
    return flow, displacement


def functional(x1: torch.Tensor, x2: torch.Tensor) -> list[torch.Tensor]:
    return [
        tiledcorr.spatial_correlation_sample(x1, x2, 1, 9),
        tiledcorr.flownet_correlation(x1, x2, 4, 1, 4, 1, 1),
        tiledcorr.corr_torch(x1, x2),
        tiledcorr.mmcv_correlation(x1, x2, max_displacement=4),
    ]


def switch_third_party_code() -> bool:
    try:
        tiledcorr.compat.install()
    except tiledcorr.compat.SamplerAlreadyImportedError as exc:
        print(exc)
        return False
    finally:
        tiledcorr.compat.uninstall()
    return True


def budget_error(x1: torch.Tensor, x2: torch.Tensor) -> int | None:
    try:
        tiledcorr.correlate(x1, x2, patch_size=41, memory_budget=1)
    except tiledcorr.MemoryBudgetError as exc:
        return exc.minimum_bytes
    return None


if __name__ == "__main__":
    a, b = torch.randn(1, 8, 12, 14), torch.randn(1, 8, 12, 14)
    print(cost_volume(a, b).shape, flow_from_argmax(a, b).shape, top_matches(a, b)[1].shape, planned((1, 8, 12, 14)))
