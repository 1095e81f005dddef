"""Motion Prior Guidance: one guided step on the noise (v) prediction (METHOD.md section 3).

Given the CFG-combined v-prediction, the clean estimate `x0_hat = sqrt(abar) x_t - sqrt(1-abar) v`
should follow the frozen field: `x0^(i) + f(x0^(i), c_pos) ~= x0^(i+1)`. The guided prediction is
`v - scale * dL_guide/dv`. One forward + backward of the small field, no backbone pass.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from lamo_cli.motion.drift import x0_from_v


def _prompt_rows(text_pooled: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
    """Pooled prompt as `[batch, D]`; accepts `[D]`, `[1, D]` (broadcast) or `[batch, D]`; None stays None."""
    if text_pooled is None:
        return None
    if text_pooled.dim() == 1:
        text_pooled = text_pooled.unsqueeze(0)
    if text_pooled.dim() != 2 or text_pooled.shape[0] not in (1, batch):
        raise ValueError(f"pooled prompt must be [D], [1, D] or [{batch}, D], got {tuple(text_pooled.shape)}")
    return text_pooled.expand(batch, -1)


def _field_dtype(field: nn.Module) -> torch.dtype:
    parameter = next(field.parameters(), None)
    return parameter.dtype if parameter is not None else torch.float32


def guidance_loss(x0_hat: torch.Tensor, field: nn.Module, text_pooled_pos: Optional[torch.Tensor]) -> torch.Tensor:
    """`L_guide = mean((x0^(i) + f(x0^(i), c_pos) - x0^(i+1))^2)` over all adjacent pairs and elements.

    x0_hat `[B, T, C, H, W]`; text_pooled_pos `[B, D]` (or `[D]` / `[1, D]`, or None for the null
    prompt). Differentiable w.r.t. x0_hat through both frames and through the field's input. The field
    runs in its own parameter dtype; the residual is formed in x0_hat's dtype.
    """
    if x0_hat.dim() != 5:
        raise ValueError(f"x0_hat must be [B, T, C, H, W], got {tuple(x0_hat.shape)}")
    batch, frames = x0_hat.shape[:2]
    if frames < 2:
        raise ValueError(f"guidance needs at least 2 latent frames, got T={frames}")
    pairs = frames - 1
    current = x0_hat[:, :-1].reshape(batch * pairs, *x0_hat.shape[2:])
    following = x0_hat[:, 1:].reshape(batch * pairs, *x0_hat.shape[2:])
    text = _prompt_rows(text_pooled_pos, batch)
    if text is not None:
        text = text.repeat_interleave(pairs, dim=0)  # clip b's prompt for each of its pairs (b-major)
    field_dtype = _field_dtype(field)
    predicted_change = field(current.to(field_dtype), None if text is None else text.to(field_dtype))
    residual = current + predicted_change.to(x0_hat.dtype) - following
    return residual.pow(2).mean()


def guide_v(
    v_cfg: torch.Tensor,
    x_t: torch.Tensor,
    abar_t: Union[float, torch.Tensor],
    field: nn.Module,
    text_pooled_pos: Optional[torch.Tensor],
    scale: float = 15.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`v_guided = v_cfg - scale * dL_guide/dv_cfg` (METHOD §3 steps 2-4).

    Gradient taken with `torch.autograd.grad` w.r.t. a detached clone of v: the field's weights get
    no `.grad` and no backbone graph is touched; runs under `enable_grad` (the sampler is no_grad).
    Computed in float32 (float64 stays float64), returned in v_cfg's dtype.
    `scale == 0` returns `v_cfg` itself without calling the field; info then has guide_loss = nan.
    info: "guide_loss" (L_guide at v_cfg) and "grad_norm" (L2 norm of dL/dv over the whole batch).
    """
    if scale == 0:
        return v_cfg, {"guide_loss": math.nan, "grad_norm": 0.0}
    if v_cfg.shape != x_t.shape:
        raise ValueError(f"v_cfg {tuple(v_cfg.shape)} and x_t {tuple(x_t.shape)} must have the same shape")
    dtype = torch.float64 if v_cfg.dtype == torch.float64 else torch.float32
    with torch.enable_grad():
        v = v_cfg.detach().to(dtype).clone().requires_grad_(True)
        x0_hat = x0_from_v(x_t.detach().to(dtype), v, abar_t)
        loss = guidance_loss(x0_hat, field, text_pooled_pos)
        (grad,) = torch.autograd.grad(loss, v)
    v_guided = (v.detach() - scale * grad).to(v_cfg.dtype)
    return v_guided, {"guide_loss": float(loss.detach()), "grad_norm": float(grad.norm())}


def first_guided_step(num_steps: int, rho: float = 0.8) -> int:
    """Index of the first guided step: `int((1 - rho) * num_steps)`.

    A 1e-9 tolerance undoes float round-off: in plain python `int((1 - 0.8) * 50)` is 9 because
    `1 - 0.8 == 0.19999999999999996`; the intended "last 80% of 50 steps" starts at index 10.
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"guidance window fraction rho must be in [0, 1], got {rho}")
    return int(math.floor((1.0 - rho) * num_steps + 1e-9))


def in_guidance_window(step_index: int, num_steps: int, rho: float = 0.8) -> bool:
    """True for the last `rho` fraction of sampling steps (counted from high noise, index 0)."""
    return step_index >= first_guided_step(num_steps, rho)
