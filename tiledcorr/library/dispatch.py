"""Where a public function's call goes outside eager mode: TorchScript-friendly code or the ONNX decomposition.

:func:`tiledcorr.library.deploy.mode` names the mode; eager calls never come here.
"""

from __future__ import annotations

from typing import Tuple

from torch import Tensor

from .deploy import DeployConfig, correlate, correlate_reduce, scripted
from .export import correlate_decomposed, correlate_reduce_decomposed


def run_volume(how: str, config: DeployConfig, input1: Tensor, input2: Tensor, flatten: bool) -> Tensor:
    """The cost volume, as a public function computes it when :func:`mode` is not ``"eager"``."""
    if how == "onnx":
        return correlate_decomposed(input1, input2, config, flatten)
    fn = scripted(correlate) if how == "trace" else correlate
    return fn(input1, input2, list(config.params), config.normalize, config.budget, config.ndims, flatten)


def run_reduction(how: str, config: DeployConfig, input1: Tensor, input2: Tensor, reduction: str, k: int,
                  temperature: float) -> Tuple[Tensor, Tensor]:
    """A fused reduction's ``(result, displacements)`` (see :func:`correlate_reduce`) outside eager mode."""
    if how == "onnx":
        return correlate_reduce_decomposed(input1, input2, config, reduction, k, temperature)
    fn = scripted(correlate_reduce) if how == "trace" else correlate_reduce
    return fn(input1, input2, list(config.params), config.normalize, config.budget, config.ndims, reduction, k,
              temperature)
