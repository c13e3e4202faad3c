"""Fused reductions over displacements: max, argmax, soft-argmax and top-k of a cost volume, never stored.

:func:`tiledcorr.correlate_reduce` runs the same plan as :func:`tiledcorr.correlate`,
but each tile's band of the volume, shape ``(Bt, *J, *U)`` (``J``
displacements of the tile per patch dimension, ``U`` output positions per
spatial dimension), goes to a *sink* (:mod:`.sinks`) that folds it into a
running result of size ``(B, *out_size)`` per statistic and lets it go. The
volume, of size ``B * prod(patch) * prod(out_size)``, never exists; memory is
the inputs, the results, the plan's workspace and the sink's per-tile
temporaries, which the planner counts against the budget
(:class:`tiledcorr.planning.costs.SinkCost`).

Displacement indices (:mod:`.indices`) are the flat, row-major index over
``patch_size`` (dy-major in 2-D), exactly as ``volume.flatten(1, N)``; ties go
to the lowest index, as ``torch.argmax`` over that flattened volume.

Gradients (:mod:`.grads`): "max" and "topk" send each value's gradient to the
displacement it was selected from (no recomputation needed); "softargmax"
recomputes each tile's band in the backward and uses the softmax statistics
(running max and normaliser) saved by the forward. Both run through the
engine's backward with their own gradient source, so the backward holds one
tile too. :mod:`.table` describes each reduction; :mod:`.run` runs them.
"""

from .table import REDUCTIONS, Reduction, TopK, get, sink_cost

__all__ = ["REDUCTIONS", "Reduction", "TopK", "get", "sink_cost"]
