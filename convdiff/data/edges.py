"""Edge maps in torch (Sobel, Canny) for ControlNet conditioning images and for measuring control adherence.

Inputs are (N, C, H, W) images in [0, 1] (several channels are averaged to grey); outputs are (N, 1, H, W)
in [0, 1]. Everything is plain convolutions and comparisons, so it runs batched on any device.
"""

import math

import torch
import torch.nn.functional as F

EDGE_DETECTORS = ("sobel", "canny")

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _grey(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4:
        raise ValueError(f"edge maps need (batch, channels, height, width) images in [0, 1], got shape {tuple(images.shape)}.")
    return images.float().mean(dim=1, keepdim=True)


def sobel_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical Sobel responses of the grey image (replicate padding: no border edges)."""
    grey = F.pad(_grey(images), (1, 1, 1, 1), mode="replicate")
    kx = _SOBEL_X.to(grey.device)[None, None]
    return F.conv2d(grey, kx), F.conv2d(grey, kx.transpose(-1, -2))


def sobel_edges(images: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Gradient magnitude scaled to [0, 1] (4 = the largest a [0, 1] image can give); binary if `threshold`."""
    gx, gy = sobel_gradients(images)
    magnitude = (torch.sqrt(gx**2 + gy**2) / 4.0).clamp(0, 1)
    return magnitude if threshold is None else (magnitude > threshold).float()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))


def canny_edges(images: torch.Tensor, low: float = 0.1, high: float = 0.2, sigma: float = 0.8) -> torch.Tensor:
    """Binary Canny edges: Gaussian blur, Sobel, non-maximum suppression along the gradient, hysteresis.

    `low` / `high` are thresholds on the Sobel magnitude scaled as in `sobel_edges`.
    """
    grey = _grey(images)
    if sigma > 0:
        grey = gaussian_blur(grey, sigma)
    gx, gy = sobel_gradients(grey)
    magnitude = torch.sqrt(gx**2 + gy**2) / 4.0
    # Quantise the gradient direction to 0, 45, 90, 135 degrees and keep pixels not smaller than both
    # neighbours along it.
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180
    direction = (((angle + 22.5) // 45) % 4).long()
    padded = F.pad(magnitude, (1, 1, 1, 1))
    h, w = magnitude.shape[-2:]

    def shifted(dy, dx):
        return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    offsets = [((0, 1), (0, -1)), ((1, 1), (-1, -1)), ((1, 0), (-1, 0)), ((1, -1), (-1, 1))]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for d, (a, b) in enumerate(offsets):
        keep |= (direction == d) & (magnitude >= shifted(*a)) & (magnitude >= shifted(*b))
    thin = magnitude * keep
    strong, weak = thin > high, thin > low
    # Hysteresis: grow the strong edges through 8-connected weak pixels until nothing changes.
    edges = strong
    for _ in range(h * w):
        grown = (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0) & weak
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.float()


def edge_map(images: torch.Tensor, detector: str = "sobel", **options) -> torch.Tensor:
    """Dispatch by name: "sobel" (soft magnitude, or binary with threshold=) or "canny" (binary)."""
    if detector == "sobel":
        return sobel_edges(images, **options)
    if detector == "canny":
        return canny_edges(images, **options)
    raise ValueError(f"Unknown edge detector {detector!r}; choose one of {', '.join(EDGE_DETECTORS)}.")


def edge_iou(edges_a: torch.Tensor, edges_b: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Per-image IoU of two binary edge maps; `tolerance` pixels of slack (each side's edges may match the
    other's dilated by that many pixels), the usual allowance for edges that are off by one."""
    a, b = edges_a > 0.5, edges_b > 0.5
    if tolerance:
        size = 2 * tolerance + 1
        a_wide = F.max_pool2d(a.float(), size, stride=1, padding=tolerance) > 0
        b_wide = F.max_pool2d(b.float(), size, stride=1, padding=tolerance) > 0
        intersection = ((a & b_wide).flatten(1).sum(1) + (b & a_wide).flatten(1).sum(1)) / 2
    else:
        intersection = (a & b).flatten(1).sum(1).float()
    union = a.flatten(1).sum(1) + b.flatten(1).sum(1) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union, dtype=torch.float32))
