"""``tiledcorr demo``: recover a large displacement field from a cost volume.

A procedural texture (multi-scale smoothed noise) is warped by a known,
smooth displacement field inside the search window (9 to 22 pixels, 16 on
average, with the default patch of 41). Fixed random filters turn both images into
``C``-channel features, normalised per pixel, so that correlating them gives
the cosine similarity of every pixel of image 1 with every pixel of image 2
within the search window. The displacement of each pixel is the argmax of its
``PH x PW`` slice of the cost volume; the endpoint error against the truth
says whether the volume is right, and the memory figures say what it cost.

The sign convention is the cost volume's: image 1 at ``p`` matches image 2 at
``p + flow(p)``, with ``flow = (dy, dx)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .measure import peak_memory
from ..ops.correlate import correlate
from ..ops.correlate_reduce import correlate_reduce
from ..ops.plan import plan
from ..planning.planner import Plan
from .plotting import import_pyplot
from .progress import Progress
from ..typing import BudgetLike

#: Half-width of the feature filters; features closer than this to the border are not trusted.
FILTER_RADIUS = 4

#: Blur scales of :func:`texture`, and the smallest image its reflected borders allow (pad < size).
TEXTURE_SCALES = ((0.8, 0.5), (2.0, 1.0), (5.0, 1.0), (12.0, 0.7))
DEMO_MIN_SIZE = math.ceil(3 * max(sigma for sigma, _ in TEXTURE_SCALES)) + 1


@dataclass(frozen=True)
class DemoConfig:
    """Options of the demo (the CLI's flags).

    Attributes:
        size: height and width of the images.
        patch_size: displacements searched per dimension (odd; radius ``(P-1)//2``).
        channels: feature channels ``C``.
        memory_budget: workspace budget of the correlation.
        device: where the correlation runs.
        seed: seed of the texture and the filters.
    """

    size: int = 256
    patch_size: int = 41
    channels: int = 32
    memory_budget: BudgetLike = "64MiB"
    device: str = "cpu"
    seed: int = 0

    @property
    def radius(self) -> int:
        return (self.patch_size - 1) // 2


# --------------------------------------------------------------------------- synthetic data


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, 1, H, W)`` with reflected borders."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def texture(size: int, generator: torch.Generator) -> torch.Tensor:
    """Multi-scale smoothed noise, zero mean and unit standard deviation.

    Returns:
        Tensor of shape ``(1, 1, size, size)``, float32.
    """
    image = torch.zeros(1, 1, size, size)
    for sigma, weight in TEXTURE_SCALES:
        layer = _gaussian_blur(torch.randn(1, 1, size, size, generator=generator), sigma)
        image += weight * layer / layer.std()
    return (image - image.mean()) / image.std()


def true_flow(size: int, radius: int) -> torch.Tensor:
    """A smooth displacement field: a translation plus a sinusoidal warp.

    Each component stays within ``0.85 * radius``, so every displacement is
    inside the search window; the magnitude reaches ``1.12 * radius`` (22.5 px
    for radius 20). The warp stretches the image locally by up to 14% at 256 px.

    Returns:
        Tensor ``(2, size, size)``: ``dy`` (down is positive) and ``dx`` in pixels.
    """
    t = torch.arange(size, dtype=torch.float32) * (2 * math.pi / size)
    y, x = torch.meshgrid(t, t, indexing="ij")
    dy = 0.5 * radius + 0.28 * radius * torch.sin(x + 0.7)
    dx = -0.6 * radius + 0.21 * radius * torch.cos(y - 0.4)
    return torch.stack([dy, dx])


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` sampled at ``p + flow(p)`` (bilinear, reflected outside).

    Args:
        image: ``(1, C, H, W)``.
        flow: ``(2, H, W)``, ``(dy, dx)`` in pixels.

    Returns:
        ``(1, C, H, W)``: so that ``image`` at ``p + flow(p)`` equals the result at ``p``.
    """
    H, W = image.shape[-2:]
    y, x = torch.meshgrid(torch.arange(H, dtype=flow.dtype), torch.arange(W, dtype=flow.dtype), indexing="ij")
    grid = torch.stack([2 * (x + flow[1]) / (W - 1) - 1, 2 * (y + flow[0]) / (H - 1) - 1], dim=-1)
    return F.grid_sample(image, grid[None], mode="bilinear", padding_mode="reflection", align_corners=True)


def features(image: torch.Tensor, channels: int, generator: torch.Generator) -> torch.Tensor:
    """``channels`` fixed random zero-mean 9x9 filters, then unit length per pixel.

    Args:
        image: ``(1, 1, H, W)``.

    Returns:
        ``(1, channels, H, W)``; the dot product of two feature vectors is their cosine similarity.
    """
    k = 2 * FILTER_RADIUS + 1
    filters = torch.randn(channels, 1, k, k, generator=generator)
    filters -= filters.mean(dim=(2, 3), keepdim=True)  # flat regions give zero response
    return F.normalize(F.conv2d(image, filters, padding=FILTER_RADIUS), dim=1, eps=1e-6)


# --------------------------------------------------------------------------- volume -> argmax


def displacement_of_index(index: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Flat displacement index (dy-major) -> ``(dy, dx)`` in pixels.

    Args:
        index: ``(B, H, W)`` integers in ``[0, P*P)``.

    Returns:
        ``(B, 2, H, W)`` float32.
    """
    radius = (patch_size - 1) // 2
    return torch.stack([index // patch_size - radius, index % patch_size - radius], dim=1).float()


def argmax_stored_volume(feat1: torch.Tensor, feat2: torch.Tensor, patch_size: int, memory_budget: BudgetLike) -> torch.Tensor:
    """Best displacement per pixel: store the ``(B, P, P, H, W)`` volume, then argmax.

    Returns:
        ``(B, 2, H, W)``: ``(dy, dx)`` maximising the correlation at each pixel.
    """
    volume = correlate(feat1, feat2, patch_size=patch_size, memory_budget=memory_budget)  # (B, P, P, H, W)
    return displacement_of_index(volume.flatten(1, 2).argmax(dim=1), patch_size)


def stored_volume_peak(feat1: torch.Tensor, patch_size: int, memory_budget: BudgetLike) -> int:
    """Predicted peak of :func:`argmax_stored_volume`: the volume plus the plan's workspace."""
    p = plan(feat1.shape, patch_size=patch_size, dtype=feat1.dtype, device=feat1.device, memory_budget=memory_budget)
    return p.output_bytes + p.forward_workspace_bytes


def argmax_fused(feat1: torch.Tensor, feat2: torch.Tensor, patch_size: int, memory_budget: BudgetLike) -> torch.Tensor:
    """Best displacement per pixel without storing the volume (:func:`tiledcorr.reduce.correlate_reduce`).

    Returns:
        ``(B, 2, H, W)``: ``(dy, dx)``, ties to the lowest flat index as :func:`argmax_stored_volume`.
    """
    return correlate_reduce(feat1, feat2, patch_size=patch_size, reduction="argmax", memory_budget=memory_budget).float()


def fused_peak(feat1: torch.Tensor, patch_size: int, memory_budget: BudgetLike) -> int:
    """Predicted peak of :func:`argmax_fused`: workspace and sink temporaries, running max and index, result."""
    p = plan(feat1.shape, patch_size=patch_size, dtype=feat1.dtype, device=feat1.device, memory_budget=memory_budget,
             reduction="argmax")
    g = p.geometry
    per_position = p.compute_dtype.itemsize + 8 + 2 * 8  # running max, its int64 index, (dy, dx) int64
    return p.forward_workspace_bytes + g.batch * g.num_positions * per_position


@dataclass(frozen=True)
class ArgmaxMethod:
    """One way to get the argmax displacement, and its predicted peak memory.

    Attributes:
        name: printed in front of its figures.
        run: ``(feat1, feat2, patch_size, memory_budget) -> (B, 2, H, W)`` displacements.
        predicted_peak: ``(feat1, patch_size, memory_budget) -> bytes`` it is predicted to allocate.
    """

    name: str
    run: Callable[[torch.Tensor, torch.Tensor, int, BudgetLike], torch.Tensor]
    predicted_peak: Callable[[torch.Tensor, int, BudgetLike], int]


#: The methods the demo runs, in order; the first one's displacements are scored and drawn.
ARGMAX_METHODS = (
    ArgmaxMethod("stored volume + argmax", argmax_stored_volume, stored_volume_peak),
    ArgmaxMethod("fused argmax", argmax_fused, fused_peak),
)


# --------------------------------------------------------------------------- scoring


def valid_mask(flow: torch.Tensor, radius: int, margin: int) -> torch.Tensor:
    """Pixels that can be scored: displacement inside the search window, both ends away from the border.

    Args:
        flow: ``(2, H, W)`` true displacements.
        radius: search radius in pixels.
        margin: pixels at the border whose features are affected by zero padding.

    Returns:
        ``(H, W)`` bool.
    """
    H, W = flow.shape[-2:]
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    inside = lambda a, n: (a >= margin) & (a <= n - 1 - margin)  # noqa: E731
    in_window = (flow.abs() <= radius).all(dim=0)
    return in_window & inside(y, H) & inside(x, W) & inside(y + flow[0], H) & inside(x + flow[1], W)


def endpoint_error(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-pixel Euclidean distance of two ``(2, H, W)`` flows -> ``(H, W)``."""
    return (estimate - truth).norm(dim=0)


# --------------------------------------------------------------------------- flow colours


def color_wheel() -> np.ndarray:
    """The Middlebury flow colour wheel (Baker et al., 2011): 55 hues, RGB in [0, 1].

    Red -> yellow -> green -> cyan -> blue -> magenta -> red, with more steps
    where the eye separates hues better (15, 6, 4, 11, 13, 6).

    Returns:
        ``(55, 3)`` float array.
    """
    segments = [  # (steps, start colour, end colour)
        (15, (1, 0, 0), (1, 1, 0)), (6, (1, 1, 0), (0, 1, 0)), (4, (0, 1, 0), (0, 1, 1)),
        (11, (0, 1, 1), (0, 0, 1)), (13, (0, 0, 1), (1, 0, 1)), (6, (1, 0, 1), (1, 0, 0)),
    ]
    rows = []
    for steps, start, end in segments:
        f = np.arange(steps)[:, None] / steps
        rows.append((1 - f) * np.array(start) + f * np.array(end))
    return np.concatenate(rows)


def flow_to_color(flow: np.ndarray, max_magnitude: float) -> np.ndarray:
    """Colour-code a flow field: hue is the direction, saturation the magnitude.

    Args:
        flow: ``(2, H, W)`` array, ``(dy, dx)`` in pixels (down is positive).
        max_magnitude: the magnitude drawn fully saturated; larger ones are darkened.

    Returns:
        ``(H, W, 3)`` RGB in [0, 1]; zero motion is white.
    """
    wheel = color_wheel()
    n = len(wheel)
    v, u = flow[0], flow[1]
    rad = np.hypot(u, v) / max(max_magnitude, 1e-12)
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (n - 1)  # in [0, n-1]
    k0 = np.floor(position).astype(int)
    k1 = (k0 + 1) % n
    f = (position - k0)[..., None]
    color = (1 - f) * wheel[k0] + f * wheel[k1]
    inside = (rad <= 1)[..., None]
    return np.where(inside, 1 - rad[..., None] * (1 - color), 0.75 * color)


def color_key(size: int = 129) -> np.ndarray:
    """The colour wheel as an image: flow ``(dy, dx)`` over a disc of radius 1 -> ``(size, size, 3)``."""
    t = np.linspace(-1, 1, size)
    dy, dx = np.meshgrid(t, t, indexing="ij")
    key = flow_to_color(np.stack([dy, dx]), 1.0)
    key[np.hypot(dx, dy) > 1] = 1.0
    return key


# --------------------------------------------------------------------------- the demo


@dataclass(frozen=True)
class MethodResult:
    """Time and memory of one :class:`ArgmaxMethod` (bytes above what existed before the call).

    ``agreement``: fraction of pixels where it finds the same displacement as the first method.
    """

    name: str
    seconds: float
    peak_bytes: int
    predicted_peak_bytes: int
    agreement: float


@dataclass(frozen=True)
class DemoResult:
    """What the demo found; see :func:`run_demo`."""

    config: DemoConfig
    plan: Plan
    flow_magnitude: tuple[float, float, float]  # min, mean, max of the true displacement, pixels
    scored_pixels: int
    mean_epe: float
    within_1px: float
    methods: tuple[MethodResult, ...]
    figure: Path


def make_pair(config: DemoConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two images ``(1, 1, S, S)`` and the true flow ``(2, S, S)``: image1(p) = image2(p + flow(p))."""
    gen = torch.Generator().manual_seed(config.seed)
    image2 = texture(config.size, gen)
    flow = true_flow(config.size, config.radius)
    return warp(image2, flow), image2, flow


def demo_steps() -> int:
    """Steps :func:`run_demo` reports to its progress bar: the data, the warm-up, each method, the figure."""
    return 3 + len(ARGMAX_METHODS)


def run_demo(config: DemoConfig, out_dir: str | Path, progress: Progress | None = None) -> DemoResult:
    """Build the image pair, recover the displacements with each method, score them, draw the figure.

    Args:
        config: sizes, budget, device and seed.
        out_dir: folder for the figure ``demo.png`` (created if missing).
        progress: advanced by one at each of the :func:`demo_steps` steps.

    Returns:
        The :class:`DemoResult`; the figure is written as a side effect.
    """
    step = progress.advance if progress is not None else (lambda steps=1, label=None: None)
    step(0, label="image pair and features")
    image1, image2, flow = make_pair(config)
    filters_seed = config.seed + 1  # the same filters for both images
    feat1 = features(image1, config.channels, torch.Generator().manual_seed(filters_seed)).to(config.device)
    feat2 = features(image2, config.channels, torch.Generator().manual_seed(filters_seed)).to(config.device)
    plan_ = plan(feat1.shape, patch_size=config.patch_size, device=config.device, memory_budget=config.memory_budget)
    step(1, label="warm-up")

    # Warm-up on a corner: starts the thread pools and the allocator, so the first method is not charged for it.
    correlate(feat1[..., :16, :16], feat2[..., :16, :16], patch_size=config.patch_size)
    methods, estimate = [], None
    step(1, label=ARGMAX_METHODS[0].name)
    for i, method in enumerate(ARGMAX_METHODS):
        call = lambda: method.run(feat1, feat2, config.patch_size, config.memory_budget)  # noqa: E731
        start = time.perf_counter()
        result, peak = peak_memory(call, config.device)
        seconds = time.perf_counter() - start
        result = result[0].cpu()
        if estimate is None:
            estimate = result
        agreement = (result == estimate).all(dim=0).float().mean().item()
        predicted = method.predicted_peak(feat1, config.patch_size, config.memory_budget)
        methods.append(MethodResult(method.name, seconds, peak, predicted, agreement))
        step(1, label=ARGMAX_METHODS[i + 1].name if i + 1 < len(ARGMAX_METHODS) else "figure")

    assert estimate is not None  # ARGMAX_METHODS is not empty
    mask = valid_mask(flow, config.radius, FILTER_RADIUS + 1)
    epe = endpoint_error(estimate, flow)
    scored = epe[mask]
    magnitude = flow.norm(dim=0)
    figure = draw_figure(image1, image2, flow, estimate, epe, mask, config, Path(out_dir) / "demo.png")
    step(1)
    return DemoResult(
        config=config, plan=plan_,
        flow_magnitude=(magnitude.min().item(), magnitude.mean().item(), magnitude.max().item()),
        scored_pixels=int(mask.sum()), mean_epe=scored.mean().item() if scored.numel() else float("nan"),
        within_1px=(scored <= 1).float().mean().item() if scored.numel() else float("nan"),
        methods=tuple(methods), figure=figure,
    )


def draw_figure(
    image1: torch.Tensor, image2: torch.Tensor, flow: torch.Tensor, estimate: torch.Tensor,
    epe: torch.Tensor, mask: torch.Tensor, config: DemoConfig, path: Path,
) -> Path:
    """Images, colour key, true and recovered flow, endpoint error; written to ``path`` (PNG)."""
    plt = import_pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.2), layout="constrained")
    # Both flows on one colour scale; +1 px so that rounded estimates near the maximum are not darkened.
    scale = float(flow.norm(dim=0).max()) + 1
    panels = [
        (image1[0, 0].numpy(), "image 1", dict(cmap="gray")),
        (image2[0, 0].numpy(), "image 2 (image 1 at p matches image 2 at p + flow)", dict(cmap="gray")),
        (color_key(), f"flow colour key (disc radius {scale:.1f} px; dx right, dy down)", {}),
        (flow_to_color(flow.numpy(), scale), "true flow", {}),
        (flow_to_color(estimate.numpy(), scale), "recovered flow (argmax of the cost volume)", {}),
    ]
    for ax, (img, title, kw) in zip(axes.flat, panels):
        ax.imshow(img, **kw)
        ax.set_title(title, fontsize=9)
    err = np.ma.masked_array(epe.numpy(), mask=~mask.numpy())
    cmap = plt.get_cmap("magma").with_extremes(bad="0.75")
    shown = axes[1, 2].imshow(err, cmap=cmap, vmin=0, vmax=3)
    axes[1, 2].set_title("endpoint error (px; grey: not scored)", fontsize=9)
    fig.colorbar(shown, ax=axes[1, 2], shrink=0.8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(
        f"tiledcorr demo: {config.size}x{config.size}, C={config.channels}, patch {config.patch_size}x{config.patch_size}, "
        f"budget {config.memory_budget}", fontsize=11,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
