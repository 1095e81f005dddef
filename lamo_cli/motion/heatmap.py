"""Drift and field heatmaps of one generated clip (METHOD.md section 4).

All maps are computed on one clean latent clip `z [T, C, H, W]` and are `[H, W]` float tensors.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lamo_cli.motion.drift import lagged_difference, macro_drift


def _check_clip(z: torch.Tensor) -> None:
    if z.dim() != 4:
        raise ValueError(f"expected one latent clip [T, C, H, W], got {tuple(z.shape)}")


def _check_pair(z: torch.Tensor, t_star: int, lag: int) -> None:
    if not 0 <= t_star < z.shape[0] - lag:
        raise ValueError(f"t_star={t_star} out of range for T={z.shape[0]} frames and tau={lag}")


def most_moving_pair(z: torch.Tensor, tau: int = 2) -> int:
    """`t* = argmax_t ||b_t||` with `b_t = mean_hw(z^(t+tau) - z^(t))` (first index on ties)."""
    _check_clip(z)
    drift_norms = macro_drift(z, tau).norm(dim=-1)
    return int(torch.argmax(drift_norms))


def drift_heatmap(z: torch.Tensor, t_star: int, tau: int = 2) -> torch.Tensor:
    """`R(h, w) = |<D[:, h, w], b>| / ||b||`, `D = z^(t*+tau) - z^(t*)`, `b = mean_hw D`; zeros if b = 0."""
    _check_clip(z)
    _check_pair(z, t_star, tau)
    change = lagged_difference(z[t_star : t_star + tau + 1], tau)[0]  # [C, H, W]
    drift = change.mean(dim=(-2, -1))
    drift_norm = drift.norm()
    if drift_norm == 0:
        return torch.zeros(change.shape[-2:], dtype=change.dtype, device=change.device)
    return torch.einsum("chw,c->hw", change, drift).abs() / drift_norm


def field_heatmap(
    z: torch.Tensor, t_star: int, field: nn.Module, text_pooled: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """`R(h, w) = ||f(z^(t*), c) - f(z_static, c)||` over channels, `z_static = mean_t z^(t)`.

    text_pooled: `[D]`, `[1, D]` or None (the field's null prompt). No gradients are kept.
    """
    _check_clip(z)
    _check_pair(z, t_star, 0)
    parameter = next(field.parameters(), None)
    dtype = parameter.dtype if parameter is not None else z.dtype
    frames = torch.stack([z[t_star], z.mean(dim=0)]).to(dtype)
    text = None
    if text_pooled is not None:
        text = text_pooled.reshape(1, -1) if text_pooled.dim() == 1 else text_pooled
        if text.dim() != 2 or text.shape[0] != 1:
            raise ValueError(f"text_pooled must be [D] or [1, D], got {tuple(text_pooled.shape)}")
        text = text.expand(2, -1).to(dtype)
    with torch.no_grad():
        response = field(frames, text)
    return (response[0] - response[1]).norm(dim=0).to(z.dtype)


def upsample(heatmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize `[h, w] -> [H, W]` (align_corners=False)."""
    if heatmap.dim() != 2:
        raise ValueError(f"heatmap must be [h, w], got {tuple(heatmap.shape)}")
    return F.interpolate(heatmap[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]


def minmax_normalise(heatmap: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1]; a constant map becomes all zeros."""
    low, high = heatmap.min(), heatmap.max()
    if high <= low:
        return torch.zeros_like(heatmap)
    return (heatmap - low) / (high - low)


def pearson_r(a: Union[torch.Tensor, np.ndarray], b: Union[torch.Tensor, np.ndarray]) -> float:
    """Spatial Pearson correlation of two same-shape maps, in float64.

    Undefined when either map is constant: returns nan (never a warning or an exception); average
    such values with nanmean and report how many were nan.
    """
    x = torch.as_tensor(a).detach().to("cpu", torch.float64).reshape(-1)
    y = torch.as_tensor(b).detach().to("cpu", torch.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"maps must have the same number of elements, got {x.numel()} and {y.numel()}")
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    if denominator == 0 or not math.isfinite(denominator):
        return math.nan
    return max(-1.0, min(1.0, float((x * y).sum()) / denominator))


def colorize(map01: Union[torch.Tensor, np.ndarray], cmap: str = "inferno") -> np.ndarray:
    """Colour a `[H, W]` map in [0, 1] (clipped; nan -> 0) with a matplotlib colormap -> uint8 `[H, W, 3]`."""
    import matplotlib  # lazy: only the heatmap rendering needs it

    values = torch.as_tensor(map01).detach().to("cpu", torch.float64).numpy()
    if values.ndim != 2:
        raise ValueError(f"map must be [H, W], got shape {values.shape}")
    values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    rgba = matplotlib.colormaps[cmap](values)  # floats in [0, 1]; round (bytes=True would truncate)
    return np.ascontiguousarray(np.rint(rgba[..., :3] * 255.0), dtype=np.uint8)
