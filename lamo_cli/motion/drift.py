"""Macro motion drift and the Motion Drift Loss (METHOD.md section 1).

Everything here is pure torch. Latent videos are `[..., T, C, H, W]` (the core uses `[B, T, C, H, W]`).

Precision policy: losses are computed in "at least float32": half / bfloat16 inputs are upcast to
float32, float32 stays float32 and float64 stays float64 (so float64 tests are exact). This is what
METHOD.md's "computed in float32" asks for in practice (bf16 training never computes the loss in bf16).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

_MIN_DIFFUSION_DENOMINATOR = 1e-6

ScalarOrTensor = Union[float, torch.Tensor]


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Upcast low-precision floats to float32; keep float32 / float64 as they are."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.to(torch.float32)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_tau(tau: int) -> None:
    if isinstance(tau, bool) or not isinstance(tau, int) or tau < 1:
        raise ValueError(f"tau must be a positive integer frame lag, got {tau!r}")


def lagged_difference(z: torch.Tensor, tau: int) -> torch.Tensor:
    """`D_tau z^(i) = z^(i+tau) - z^(i)` for every i with i + tau < T.

    z: `[..., T, C, H, W]` -> `[..., T - tau, C, H, W]`. Raises ValueError if `T <= tau`.
    """
    _check_video(z, tau)
    return z[..., tau:, :, :, :] - z[..., :-tau, :, :, :]


def _check_video(z: torch.Tensor, tau: int) -> None:
    _check_tau(tau)
    if z.dim() < 4:
        raise ValueError(f"expected a latent video [..., T, C, H, W], got shape {tuple(z.shape)}")
    num_frames = z.shape[-4]
    if num_frames <= tau:
        raise ValueError(f"need more than tau={tau} latent frames for a lagged difference, got T={num_frames}")


def macro_drift(z: torch.Tensor, tau: int = 2) -> torch.Tensor:
    """Drift `mu^(i)`: spatial mean over (H, W) of the lagged difference. `[..., T, C, H, W] -> [..., T-tau, C]`.

    Pooled first, differenced second: the same value (both are linear) at a fraction of the memory
    traffic, which matters at 13 x 16 x 60 x 90 latents.
    """
    _check_video(z, tau)
    pooled = z.mean(dim=(-2, -1))
    return pooled[..., tau:, :] - pooled[..., :-tau, :]


def _drift_pair(x0_hat: torch.Tensor, x0: torch.Tensor, tau: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu_hat, mu_star) in the compute dtype; mu_star carries no graph."""
    if x0_hat.shape != x0.shape:
        raise ValueError(f"x0_hat {tuple(x0_hat.shape)} and x0 {tuple(x0.shape)} must have the same shape")
    dtype = _compute_dtype(x0_hat, x0)
    mu_hat = macro_drift(x0_hat.to(dtype), tau)
    mu_star = macro_drift(x0.detach().to(dtype), tau)
    return mu_hat, mu_star


def drift_loss(x0_hat: torch.Tensor, x0: torch.Tensor, tau: int = 2, eps: float = 1e-8) -> torch.Tensor:
    """Motion Drift Loss: mean over (b, i) of `||mu_hat - mu*||^2 / stopgrad(max(||mu*||^2, eps))`.

    The norm is over the C channels of one frame pair's drift. Computed in (at least) float32;
    gradients flow into `x0_hat` only (`x0` is detached, the denominator is a constant).
    """
    mu_hat, mu_star = _drift_pair(x0_hat, x0, tau)
    squared_error = (mu_hat - mu_star).pow(2).sum(dim=-1)
    denominator = mu_star.pow(2).sum(dim=-1).clamp_min(eps).detach()
    return (squared_error / denominator).mean()


def drift_loss_terms(x0_hat: torch.Tensor, x0: torch.Tensor, tau: int = 2, eps: float = 1e-8) -> dict[str, torch.Tensor]:
    """The drift loss and its split into magnitude and direction errors (detached, for logging).

    With `a = |mu_hat|`, `r = |mu*|`, `cos = <mu_hat, mu*> / (a r)` and `d = max(r^2, eps)`:
        `|mu_hat - mu*|^2 = (a - r)^2 + 2 a r (1 - cos)`   (law of cosines), so per pair
        `drift = (a - r)^2 / d  +  2 a r (1 - cos) / d`.
    Returned (each a 0-dim tensor, mean over (b, i)):
      - "drift": the loss itself (same value as `drift_loss`),
      - "magnitude": mean of `(a - r)^2 / d` (normalised magnitude error),
      - "direction": mean of `1 - cos` (raw direction error in [0, 2]; cos := 0 if a vector is zero),
      - "direction_weighted": mean of `2 a r (1 - cos) / d`; `magnitude + direction_weighted == drift`.
    """
    with torch.no_grad():
        mu_hat, mu_star = _drift_pair(x0_hat.detach(), x0, tau)
        a = mu_hat.norm(dim=-1)
        r = mu_star.norm(dim=-1)
        denominator = (r * r).clamp_min(eps)
        norms_product = a * r
        dot = (mu_hat * mu_star).sum(dim=-1)
        tiny = torch.finfo(dot.dtype).tiny
        cosine = torch.where(norms_product > 0, dot / norms_product.clamp_min(tiny), torch.zeros_like(dot))
        squared_error = (mu_hat - mu_star).pow(2).sum(dim=-1)
        return {
            "drift": (squared_error / denominator).mean(),
            "magnitude": ((a - r).pow(2) / denominator).mean(),
            "direction": (1.0 - cosine).mean(),
            "direction_weighted": (2.0 * norms_product * (1.0 - cosine) / denominator).mean(),
        }


def noise_weight(
    timesteps: Union[int, torch.Tensor],
    kind: str = "release",
    alphas_cumprod: Optional[torch.Tensor] = None,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """Noise-level weight `w` of the drift term (a 0-dim float32 tensor, no graph).

    - "release": mean over the batch of `max(0, 1 - (t / num_train_timesteps)^2)`.
    - "abar": mean over the batch of `alphas_cumprod[t]` (the scheduler's own table; required).
    Both vanish at high noise.
    """
    t = torch.as_tensor(timesteps).reshape(-1)
    if t.numel() == 0:
        raise ValueError("noise_weight needs at least one timestep")
    if kind == "release":
        fraction = t.to(torch.float64) / float(num_train_timesteps)
        return (1.0 - fraction * fraction).clamp_min(0.0).mean().to(torch.float32)
    if kind == "abar":
        if alphas_cumprod is None:
            raise ValueError('noise_weight(kind="abar") needs the scheduler\'s alphas_cumprod')
        table = torch.as_tensor(alphas_cumprod)
        return table[t.to(device=table.device, dtype=torch.long)].to(torch.float64).mean().to(torch.float32)
    raise ValueError(f'unknown noise weight kind {kind!r}: use "release" or "abar"')


def _per_sample(abar_t: ScalarOrTensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """abar as a tensor broadcastable against `like` `[B, ...]`: scalar stays 0-dim, `[B]` -> `[B, 1, ...]`."""
    abar = torch.as_tensor(abar_t, device=like.device).to(dtype)
    if abar.dim() == 0:
        return abar
    abar = abar.reshape(-1)
    if abar.numel() != like.shape[0]:
        raise ValueError(f"abar_t has {abar.numel()} entries but the batch has {like.shape[0]} samples")
    return abar.reshape((-1,) + (1,) * (like.dim() - 1))


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, abar_t: ScalarOrTensor) -> torch.Tensor:
    """Clean estimate from a v-prediction: `sqrt(abar) x_t - sqrt(1 - abar) v`.

    abar_t: python float, 0-dim tensor, or `[B]` (broadcast over the dims after the batch).
    The coefficients are cast to the inputs' dtype (as diffusers' `get_velocity` does).
    """
    dtype = torch.result_type(x_t, v)
    abar = _per_sample(abar_t, x_t, torch.float64)
    sqrt_abar = abar.sqrt().to(dtype)
    sqrt_one_minus_abar = (1.0 - abar).clamp_min(0.0).sqrt().to(dtype)
    return sqrt_abar * x_t - sqrt_one_minus_abar * v


def diffusion_loss(x0_hat: torch.Tensor, x0: torch.Tensor, abar_t: ScalarOrTensor,
                   cell_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CogVideoX training loss `mean((x0_hat - x0)^2 / (1 - abar_t))` (equals the v-MSE).

    The per-sample denominator `1 - abar_t` is clamped at 1e-6: at the terminal step abar=0 gives
    1 (fine); a table with abar -> 1 at t=0 (set_alpha_to_one-style) would otherwise divide by zero.
    CogVideoX-2B's smallest value is 1 - abar[0] ~ 2.5e-3, so the clamp never bites there.
    `cell_weight` (optional, broadcastable to x0, e.g. `moving_cell_weights`) multiplies each
    squared error before the mean. Computed in (at least) float32.
    """
    if x0_hat.shape != x0.shape:
        raise ValueError(f"x0_hat {tuple(x0_hat.shape)} and x0 {tuple(x0.shape)} must have the same shape")
    dtype = _compute_dtype(x0_hat, x0)
    abar = _per_sample(abar_t, x0_hat, torch.float64)
    weight = (1.0 / (1.0 - abar).clamp_min(_MIN_DIFFUSION_DENOMINATOR)).to(dtype)
    squared = (x0_hat.to(dtype) - x0.detach().to(dtype)).pow(2) * weight
    if cell_weight is not None:
        squared = squared * cell_weight.detach().to(dtype)
    return squared.mean()


def moving_cells(x0: torch.Tensor, threshold: float) -> torch.Tensor:
    """Soft mask of the latent cells where something moves: `[B, T, C, H, W] -> [B, T, 1, H, W]` in [0, 1].

    A cell's deviation is the channel norm of `x0 - median over T of x0` at that position: the
    temporal median is the static background wherever an object passes through in fewer than half
    the frames. The mask is `min(1, deviation / threshold)`, so cells at or above `threshold` count
    fully and faint ones partly.
    """
    if x0.dim() != 5:
        raise ValueError(f"expected latent videos [B, T, C, H, W], got shape {tuple(x0.shape)}")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold!r}")
    z = _at_least_float32(x0.detach())
    background = z.median(dim=1, keepdim=True).values
    deviation = (z - background).norm(dim=2, keepdim=True)
    return (deviation / threshold).clamp(max=1.0)


def moving_cell_weights(x0: torch.Tensor, boost: float, threshold: float) -> torch.Tensor:
    """Per-cell weights `1 + boost * moving_cells(x0)`, rescaled to mean 1 in every clip.

    Where a small object moves over a still background (the physics world, static-camera footage),
    it covers a few percent of the cells yet carries most of the diffusion error; the weights spend
    more of the loss there without changing the loss's overall scale (so the learning rate keeps
    its meaning). A clip with nothing moving gets weight 1 everywhere. `[B, T, 1, H, W]`, no graph.
    """
    if not boost >= 0:
        raise ValueError(f"boost must be >= 0, got {boost!r}")
    weights = 1.0 + boost * moving_cells(x0, threshold)
    return weights / weights.mean(dim=(1, 2, 3, 4), keepdim=True)


def lamo_objective(
    x0_hat: torch.Tensor,
    x0: torch.Tensor,
    abar_t: ScalarOrTensor,
    timesteps: Union[int, torch.Tensor],
    drift_weight: float = 0.4,
    tau: int = 2,
    weight_kind: str = "release",
    alphas_cumprod: Optional[torch.Tensor] = None,
    cell_weight: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`L = L_diff + drift_weight * w * L_drift` and its terms as python floats.

    metrics: "loss", "diffusion", "drift", "drift_weight_w" (the noise weight w). With
    `drift_weight == 0` the drift is not computed (plain fine-tune baseline) and "drift" is nan.
    `cell_weight` reweights the diffusion term only (`diffusion_loss`); the drift is unchanged.
    """
    diffusion = diffusion_loss(x0_hat, x0, abar_t, cell_weight)
    w = noise_weight(timesteps, weight_kind, alphas_cumprod).to(device=diffusion.device, dtype=diffusion.dtype)
    if drift_weight == 0:
        loss = diffusion
        drift_value = math.nan
    else:
        drift = drift_loss(x0_hat, x0, tau)
        loss = diffusion + drift_weight * w * drift
        drift_value = float(drift.detach())
    metrics = {
        "loss": float(loss.detach()),
        "diffusion": float(diffusion.detach()),
        "drift": drift_value,
        "drift_weight_w": float(w),
    }
    return loss, metrics
