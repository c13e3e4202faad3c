"""The dtypes tiledcorr computes in."""

from __future__ import annotations

import torch

#: The floating dtypes tiledcorr accepts.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums are accumulated in: float32 for half types, else ``dtype``."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()
