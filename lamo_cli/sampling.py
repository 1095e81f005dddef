"""Our own CogVideoX denoising loop, with Motion Prior Guidance (METHOD.md section 3).

diffusers' `callback_on_step_end` runs after the scheduler step and cannot change the noise
prediction, so guidance needs a loop of its own. This one follows `CogVideoXPipeline.__call__`
step for step (initial noise, timesteps, CFG batch, dynamic CFG, DDIM / second-order DPM step), so
with guidance off it reproduces the pipeline's latents; inside the guidance window it replaces the
CFG-combined v-prediction by `guide_v(...)` before the scheduler step. Pure of files.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch

from lamo_cli.motion.guidance import first_guided_step, guidance_loss, guide_v, in_guidance_window

SAMPLERS = ("ddim", "dpm")

# callback(step_index, timestep, latents, step_info) after every scheduler step; step_index counts
# in the full schedule (video-to-video starts at info["first_step"]).
StepCallback = Callable[[int, int, torch.Tensor, dict], None]


def dynamic_cfg_scale(cfg_scale: float, timestep: float, num_steps: int) -> float:
    """CogVideoX's dynamic CFG, exactly as `CogVideoXPipeline` computes it.

    Note: like diffusers (and the official CogVideoX code) it plugs the integer TIMESTEP t (0..999),
    not the step index, into `(num_steps - t) / num_steps`; we keep that so guidance-free samples
    match the reference pipeline bit for bit.
    """
    return 1 + cfg_scale * ((1 - math.cos(math.pi * ((num_steps - timestep) / num_steps) ** 5.0)) / 2)


def initial_latents(backbone, batch: int, generator: Optional[torch.Generator], dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise [B, T, C, h, w] of the backbone's video format (unscaled by init_noise_sigma).

    Drawn like `CogVideoXPipeline.prepare_latents` (diffusers' `randn_tensor`): a CPU generator gives
    the same noise on every device.
    """
    from diffusers.utils.torch_utils import randn_tensor

    fmt = backbone.video_format
    channels = int(backbone.transformer.config.in_channels)
    shape = (batch, fmt.latent_frames, channels, fmt.latent_height, fmt.latent_width)
    return randn_tensor(shape, generator=generator, device=backbone.device, dtype=dtype)


def steps_to_run(num_steps: int, strength: float) -> int:
    """How many of the schedule's last steps a video-to-video run takes: `int(num_steps * strength)`,
    as `CogVideoXVideoToVideoPipeline` counts them (strength 1 runs the whole schedule)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return min(int(num_steps * strength + 1e-9), num_steps)


def _sync(device: torch.device) -> None:
    # Honest timings on GPU: kernels run asynchronously.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample(
    backbone,
    text_cond: torch.Tensor,
    text_uncond: Optional[torch.Tensor] = None,
    num_steps: int = 50,
    cfg_scale: float = 6.0,
    dynamic_cfg: bool = True,
    sampler: str = "ddim",
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    field: Optional[torch.nn.Module] = None,
    field_text_pooled: Optional[torch.Tensor] = None,
    guidance_scale: float = 15.0,
    guidance_window: float = 0.8,
    eta: float = 0.0,
    latents: Optional[torch.Tensor] = None,
    callback: Optional[StepCallback] = None,
    transformer: Optional[torch.nn.Module] = None,
    init_latents: Optional[torch.Tensor] = None,
    strength: float = 1.0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Denoise from noise to a clean SCALED latent video [B, T, C, h, w] (float32).

    text_cond / text_uncond: [B, L, D] positive / negative embeddings; CFG runs (one batched
    backbone pass, uncond first, like diffusers) when text_uncond is given and cfg_scale > 1.
    field + field_text_pooled ([B, D], pooled POSITIVE prompt, or None for the field's null prompt):
    Motion Prior Guidance in the last `guidance_window` fraction of steps; guidance_scale 0 or no
    field gives exactly the unguided loop. generator (or seed -> CPU generator) draws the initial
    noise when `latents` is not given, and the DPM sampler's step noise. eta is passed to the
    scheduler (the CogVideoX schedulers ignore it). transformer overrides the backbone's own.

    init_latents (clean SCALED latents [B, T, C, h, w]) + strength: video-to-video (SDEdit), as
    `CogVideoXVideoToVideoPipeline` does it: the clip is noised to the timestep where the last
    `steps_to_run(num_steps, strength)` steps of the num_steps schedule begin, and only those run
    (`latents`, if also given, is the noise). Guidance and dynamic CFG see the step indices and
    timesteps of the full schedule.

    info: timesteps, cfg scales, per-step guide_loss / grad_norm (None outside the window),
    first_guided_step, final_guide_loss (L_guide of the result, when a field is given), timings
    (backbone_s, guidance_s, total_s).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if text_cond.dim() != 3:
        raise ValueError(f"text_cond must be [B, L, D], got {tuple(text_cond.shape)}")
    if text_uncond is not None and text_uncond.shape != text_cond.shape:
        raise ValueError(f"text_uncond {tuple(text_uncond.shape)} must match text_cond {tuple(text_cond.shape)}")
    if generator is None and seed is not None:
        generator = torch.Generator("cpu").manual_seed(int(seed))

    device = backbone.device
    model_dtype = backbone.dtype
    batch = text_cond.shape[0]
    do_cfg = text_uncond is not None and cfg_scale > 1.0
    guided = field is not None and guidance_scale != 0
    if field is not None and field_text_pooled is not None and field_text_pooled.shape[0] not in (1, batch):
        raise ValueError(f"field_text_pooled must be [1 or {batch}, D], got {tuple(field_text_pooled.shape)}")

    scheduler = backbone.make_scheduler(sampler)
    scheduler.set_timesteps(num_steps, device=device)
    first_step = 0 if init_latents is None else num_steps - steps_to_run(num_steps, strength)
    if first_step >= num_steps:
        raise ValueError(f"strength {strength} with {num_steps} steps leaves no step to run")
    timesteps = scheduler.timesteps[first_step:]
    alphas_cumprod = scheduler.alphas_cumprod

    if latents is None:
        latents = initial_latents(backbone, batch, generator)
    if init_latents is None:
        latents = latents.to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
    else:
        if init_latents.shape != latents.shape:
            raise ValueError(f"init_latents {tuple(init_latents.shape)} must be {tuple(latents.shape)}")
        noise = latents.to(device=device, dtype=torch.float32)  # q(x_t | x_0) at the first step run
        latents = scheduler.add_noise(init_latents.to(device=device, dtype=torch.float32), noise, timesteps[:1])

    text = torch.cat([text_uncond, text_cond]) if do_cfg else text_cond
    text = text.to(device=device, dtype=model_dtype)
    pooled = field_text_pooled.to(device) if field_text_pooled is not None else None
    rotary = None
    if backbone.uses_rope:
        rotary = backbone.rotary_embedding(latents.shape[1], latents.shape[3], latents.shape[4])

    info: dict[str, Any] = {
        "sampler": sampler,
        "num_steps": num_steps,
        "first_step": first_step,  # > 0 for video-to-video: the steps before it are skipped
        "timesteps": [int(t) for t in timesteps],
        "cfg_scales": [],
        "guided": guided,
        "first_guided_step": first_guided_step(num_steps, guidance_window) if guided else None,
        "guide_loss": [],
        "grad_norm": [],
    }
    backbone_s = guidance_s = 0.0
    old_pred_original_sample = None
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for i, t in enumerate(timesteps, start=first_step):
            tick = time.perf_counter()
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            v = backbone.predict_v(
                model_input.to(model_dtype), t.expand(model_input.shape[0]), text, transformer=transformer, rotary=rotary
            ).float()
            scale = dynamic_cfg_scale(cfg_scale, t.item(), num_steps) if dynamic_cfg else cfg_scale
            if do_cfg:
                v_uncond, v_cond = v.chunk(2)
                v = v_uncond + scale * (v_cond - v_uncond)
            info["cfg_scales"].append(float(scale) if do_cfg else None)
            _sync(device)
            backbone_s += time.perf_counter() - tick

            step_info: dict[str, Any] = {"guide_loss": None, "grad_norm": None}
            if guided and in_guidance_window(i, num_steps, guidance_window):
                tick = time.perf_counter()
                abar_t = float(alphas_cumprod[int(t)])  # the scheduler's own table, indexed on the CPU
                v, guide_info = guide_v(v, latents, abar_t, field, pooled, scale=guidance_scale)
                _sync(device)
                guidance_s += time.perf_counter() - tick
                step_info = {"guide_loss": guide_info["guide_loss"], "grad_norm": guide_info["grad_norm"]}
            info["guide_loss"].append(step_info["guide_loss"])
            info["grad_norm"].append(step_info["grad_norm"])

            if sampler == "ddim":
                latents = scheduler.step(v, t, latents, eta=eta, generator=generator, return_dict=False)[0]
            else:
                previous_t = timesteps[i - first_step - 1] if i > first_step else None
                latents, old_pred_original_sample = scheduler.step(
                    v, old_pred_original_sample, t, previous_t, latents, eta=eta, generator=generator, return_dict=False
                )
            latents = latents.float()
            if callback is not None:
                callback(i, int(t), latents, step_info)
    _sync(device)
    total_s = time.perf_counter() - start
    if field is not None:
        with torch.no_grad():
            info["final_guide_loss"] = float(guidance_loss(latents, field, pooled))
    info["timing"] = {
        "total_s": total_s,
        "per_step_s": total_s / len(timesteps),
        "backbone_s": backbone_s,
        "guidance_s": guidance_s,
        "guidance_fraction": guidance_s / total_s if total_s > 0 else 0.0,
    }
    return latents, info
