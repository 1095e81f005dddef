"""Violation-of-expectation (VoE) accuracy: is an impossible twin less likely under the model?

For each (possible clip, impossible twin, kind) pair (lamo_cli.data.world.voe_pairs) both clips are
rendered in the backbone's video format, VAE-encoded (scaled posterior mean) and scored by the
caption-conditioned denoising loss averaged over a FIXED set of timesteps with FIXED noise, the same
noise for both clips of a pair, so the only difference between the two losses is the video.
A pair counts as correct when loss(impossible) > loss(possible) (ties are not correct).
No sampling: one forward pass per (clip, timestep).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from lamo_cli.data import world
from lamo_cli.motion.drift import diffusion_loss, x0_from_v

DEFAULT_NUM_TIMESTEPS = 8
DEFAULT_BOOTSTRAP = 2000


def default_timesteps(count: int = DEFAULT_NUM_TIMESTEPS, low: int = 50, high: int = 950) -> list[int]:
    """`count` integer timesteps evenly spaced in [low, high] (8 -> 50, 179, ..., 950)."""
    if count < 1:
        raise ValueError("need at least one timestep")
    return [int(round(t)) for t in np.linspace(low, high, count)]


# ---------------------------------------------------------------- world clip <-> backbone format
def render_for_format(clip: world.Clip, video_format) -> tuple[np.ndarray, int]:
    """uint8 [F, H, W, 3] in the backbone's format, and the left padding in pixels.

    The world is square: it is rendered at the format's height, its first `num_frames` frames are
    kept, and a wider format is padded left/right with the background colour (the physics is not
    cropped). Raises ValueError(reason) when the clip cannot fit.
    """
    height, width, frames = video_format.height, video_format.width, video_format.num_frames
    if clip.num_frames < frames:
        raise ValueError(f"clip has {clip.num_frames} frames; the backbone needs {frames} (make world clips with --frames {frames} or more)")
    if width < height:
        raise ValueError(f"backbone format {width}x{height} is narrower than tall; the square world cannot be padded into it")
    video = world.render_clip(clip, size=height)[:frames]
    pad = width - height
    if pad == 0:
        return video, 0
    left = pad // 2
    canvas = np.empty((frames, height, width, 3), dtype=np.uint8)
    canvas[:] = np.asarray(world.BACKGROUND, dtype=np.uint8)
    canvas[:, :, left:left + height] = video
    return canvas, left


def crop_to_world(frames: np.ndarray, left: int) -> np.ndarray:
    """Undo `render_for_format`'s padding: the square world region of [F, H, W, 3] frames."""
    height = frames.shape[1]
    return frames[:, :, left:left + height] if frames.shape[2] != height else frames


def clip_latents(backbone, clip: world.Clip) -> torch.Tensor:
    """SCALED VAE posterior mean of the clip in the backbone's format: float32 [1, T, C, h, w]."""
    video, _ = render_for_format(clip, backbone.video_format)
    mean, _ = backbone.encode_video(video[None])
    return mean * backbone.scaling_factor


def vae_reconstruction(backbone, clip: world.Clip) -> np.ndarray:
    """The clip rendered in the backbone's format, VAE-encoded, decoded, cropped back: uint8 [F, S, S, 3]."""
    (frames,) = vae_reconstructions(backbone, [clip])
    if isinstance(frames, ValueError):
        raise frames
    return frames


def vae_reconstructions(backbone, clips: Sequence[world.Clip]) -> list[np.ndarray | ValueError]:
    """`vae_reconstruction` of several clips with one VAE encode and one decode call for all that
    fit the backbone's format (the caller hands as many as `clips_per_vae_call()`); a clip that
    cannot fit gets its ValueError(reason) in its place."""
    rendered: list[tuple[int, np.ndarray, int]] = []
    out: list[np.ndarray | ValueError | None] = []
    for index, clip in enumerate(clips):
        try:
            video, left = render_for_format(clip, backbone.video_format)
        except ValueError as exc:
            out.append(exc)
            continue
        out.append(None)  # its frames, after the one VAE call below
        rendered.append((index, video, left))
    if rendered:
        mean, _ = backbone.encode_video(np.stack([video for _, video, _ in rendered]))
        decoded = backbone.decode_latents(mean * backbone.scaling_factor)
        for (index, _, left), frames in zip(rendered, decoded):
            out[index] = crop_to_world(frames, left)
    return out


# ---------------------------------------------------------------- the loss
@torch.no_grad()
def denoising_losses(
    backbone,
    x0: torch.Tensor,
    text: torch.Tensor,
    timesteps: Sequence[int],
    noise: torch.Tensor,
    transformer: torch.nn.Module | None = None,
    alphas_cumprod: torch.Tensor | None = None,
    batch_size: int = 4,
) -> list[float]:
    """Per-timestep diffusion loss of scaled latents x0 [1, T, C, h, w] with text [1, L, D].

    noise: [K, T, C, h, w], one slice per timestep. Computed in chunks of `batch_size` timesteps
    with a fixed chunking, so identical inputs give bit-identical losses."""
    alphas = alphas_cumprod if alphas_cumprod is not None else backbone.alphas_cumprod()
    dtype, device = backbone.dtype, backbone.device
    x0 = x0.to(device, torch.float32)
    losses: list[float] = []
    for start in range(0, len(timesteps), batch_size):
        chunk = list(timesteps[start:start + batch_size])
        count = len(chunk)
        t = torch.tensor(chunk, dtype=torch.long, device=device)
        abar = alphas[torch.tensor(chunk, dtype=torch.long)].to(torch.float64).to(device)
        eps = noise[start:start + count].to(device, torch.float32)
        x0_batch = x0.expand(count, *x0.shape[1:])
        shape = (-1,) + (1,) * (x0.dim() - 1)
        x_t = abar.sqrt().float().reshape(shape) * x0_batch + (1.0 - abar).sqrt().float().reshape(shape) * eps
        text_batch = text.to(device, dtype).expand(count, *text.shape[1:])
        v = backbone.predict_v(x_t.to(dtype), t, text_batch, transformer=transformer).float()
        x0_hat = x0_from_v(x_t, v, abar)
        for i in range(count):
            losses.append(float(diffusion_loss(x0_hat[i:i + 1], x0_batch[i:i + 1], abar[i])))
    return losses


def pair_noise(seed: int, index: int, count: int, latent_shape: Sequence[int]) -> torch.Tensor:
    """The fixed noise of pair `index`: [count, *latent_shape] from a CPU generator seeded by (seed, index)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + int(index))
    return torch.randn((count, *latent_shape), generator=generator, dtype=torch.float32)


# ---------------------------------------------------------------- accuracy
def bootstrap_interval(values: np.ndarray, seed: int, resamples: int = DEFAULT_BOOTSTRAP) -> list[float] | None:
    """Percentile 95% interval of the mean of `values` over pairs resampled with replacement (seeded)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[picks].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarise(losses_possible: Sequence[float], losses_impossible: Sequence[float], kinds: Sequence[str],
              seed: int = 0, resamples: int = DEFAULT_BOOTSTRAP) -> dict[str, Any]:
    """Accuracy (impossible loss strictly higher), mean gap, bootstrap intervals; overall and per kind."""
    possible = np.asarray(losses_possible, dtype=np.float64)
    impossible = np.asarray(losses_impossible, dtype=np.float64)
    gaps = impossible - possible
    correct = (gaps > 0).astype(np.float64)
    kinds = list(kinds)

    def block(mask: np.ndarray) -> dict[str, Any]:
        n = int(mask.sum())
        if n == 0:
            return {"n": 0, "accuracy": None, "mean_gap": None, "ties": 0}
        return {"n": n, "accuracy": float(correct[mask].mean()), "mean_gap": float(gaps[mask].mean()),
                "ties": int((gaps[mask] == 0).sum())}

    overall = block(np.ones(len(kinds), dtype=bool))
    overall["accuracy_ci95"] = bootstrap_interval(correct, seed, resamples)
    overall["mean_gap_ci95"] = bootstrap_interval(gaps, seed, resamples)
    per_kind = {kind: block(np.array([k == kind for k in kinds], dtype=bool)) for kind in world.TWIN_KINDS}
    for kind in sorted(set(kinds) - set(world.TWIN_KINDS)):
        per_kind[kind] = block(np.array([k == kind for k in kinds], dtype=bool))
    return {"overall": overall, "per_kind": per_kind}


def voe_accuracy(
    backbone,
    pairs: Sequence[tuple[world.Clip, world.Clip, str]],
    timesteps: Sequence[int] | None = None,
    seed: int = 0,
    transformer: torch.nn.Module | None = None,
    progress: Callable[[int], None] | None = None,
    resamples: int = DEFAULT_BOOTSTRAP,
) -> dict[str, Any]:
    """VoE accuracy of `backbone` (or `transformer`, e.g. a LoRA-wrapped copy) over (possible, twin, kind) pairs.

    Returns {"overall": {n, accuracy, mean_gap, ties, accuracy_ci95, mean_gap_ci95}, "per_kind": {...},
    "pairs": [{index, family, kind, caption, loss_possible, loss_impossible, gap}], "timesteps", "seed"}.
    `progress(1)` is called after each pair.
    """
    steps = list(timesteps) if timesteps is not None else default_timesteps()
    alphas = backbone.alphas_cumprod()
    bad = [t for t in steps if not 0 <= int(t) < len(alphas)]
    if bad:
        raise ValueError(f"timesteps {bad} outside [0, {len(alphas) - 1}]")
    records = []
    for index, (possible, impossible, kind) in enumerate(pairs):
        if possible.caption != impossible.caption:
            raise ValueError(f"pair {index}: the twin's caption differs from the possible clip's")
        text = backbone.encode_text([possible.caption])
        x0_possible = clip_latents(backbone, possible)
        x0_impossible = clip_latents(backbone, impossible)
        noise = pair_noise(seed, index, len(steps), x0_possible.shape[1:])
        loss_possible = float(np.mean(denoising_losses(backbone, x0_possible, text, steps, noise, transformer, alphas)))
        loss_impossible = float(np.mean(denoising_losses(backbone, x0_impossible, text, steps, noise, transformer, alphas)))
        records.append({"index": index, "family": possible.family, "kind": kind, "caption": possible.caption,
                        "loss_possible": loss_possible, "loss_impossible": loss_impossible,
                        "gap": loss_impossible - loss_possible})
        if progress is not None:
            progress(1)
    summary = summarise([r["loss_possible"] for r in records], [r["loss_impossible"] for r in records],
                        [r["kind"] for r in records], seed=seed, resamples=resamples)
    return {**summary, "pairs": records, "timesteps": steps, "seed": seed}
