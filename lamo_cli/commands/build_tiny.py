"""CLI for `lamo build-tiny`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from lamo_cli.commands._common import console, handle_errors


@handle_errors
def command(
    out: Annotated[str, typer.Option(help="Work folder (world clips, VAE checkpoints, cache, runs); reruns continue here.")] = "tiny-build",
    clips: Annotated[int, typer.Option(help="Physics-world training clips.")] = 600,
    seed: Annotated[int, typer.Option(help="Seed of the world and the training runs.")] = 0,
    vae_steps: Annotated[int, typer.Option(help="VAE training steps.")] = 5000,
    vae_batch_size: Annotated[int, typer.Option(help="VAE batch size (windows of 9 frames).")] = 2,
    vae_small_crop_steps: Annotated[int, typer.Option(help="The first of those steps on 32x32 crops (4x cheaper; the 2x-temporal VAE of docs/RESULTS.md used 1500 of 3000), the rest on whole frames.")] = 0,
    motion_steps: Annotated[int, typer.Option(help="Then steps of fine-tuning the whole VAE with the frame-difference loss (0 = skip, as the shipped tiny).")] = 0,
    motion_weight: Annotated[float, typer.Option(help="Weight of the frame-difference loss (the motion phase, and the decoder phase after it).")] = 1.0,
    decoder_motion_weight: Annotated[Optional[float], typer.Option(help="Frame-difference weight of the decoder phase (default: --motion-weight after a motion phase, 0 without one); set it to continue an existing VAE's decoder alone with that loss (--vae-init-from, --vae-steps 0, --motion-steps 0).", show_default=False)] = None,
    moment_weight: Annotated[float, typer.Option(help="Weight of the moment loss (per colour: area, centroid and spread of the discs) in the motion and decoder phases (0 = off, as the shipped tiny).")] = 0.0,
    decoder_steps: Annotated[int, typer.Option(help="Then steps of fine-tuning the VAE decoder alone on noisy latents (0 = skip).")] = 800,
    temporal_compression: Annotated[int, typer.Option(help="Frames per latent frame: 4 (as the shipped tiny: 9 latent frames) or 2 (a sharper VAE; 17 latent frames at 33 frames, ~2.3x the transformer cost, or 9 with --frames 17).")] = 4,
    frames: Annotated[int, typer.Option(help="Frames per clip (8k+1, at least 8 latent frames): 33 (as the shipped tiny) or 17 with --temporal-compression 2 (9 latent frames: the 2x VAE at the 4x transformer cost).")] = 33,
    transformer_steps: Annotated[int, typer.Option(help="Transformer training steps (from scratch).")] = 6000,
    transformer_batch_size: Annotated[int, typer.Option(help="Transformer batch size.")] = 8,
    transformer_lr: Annotated[float, typer.Option(help="Transformer peak learning rate (cosine decay after warm-up).")] = 5e-4,
    transformer_ema_decay: Annotated[float, typer.Option(help="Decay of the weight moving average that is saved (0 = off).")] = 0.999,
    transformer_timestep_sampling: Annotated[str, typer.Option(help="Training timesteps of the transformer: uniform, or logit-normal (SD3's density; see `lamo finetune --timestep-sampling`).")] = "uniform",
    transformer_logit_mean: Annotated[float, typer.Option(help="Mean of the logit-normal timestep density (negative = more low-noise steps).")] = 0.0,
    transformer_logit_std: Annotated[float, typer.Option(help="Spread of the logit-normal timestep density.")] = 1.0,
    transformer_mixed_precision: Annotated[str, typer.Option(help="Transformer phase precision: auto (bf16 on CUDA, fp32 on CPU), no, bf16 (also on CPU: faster where it has AMX), fp16.")] = "auto",
    vae_init_from: Annotated[Optional[str], typer.Option(help="Start the VAE from these weights instead of random ones: a model folder (e.g. lamo_cli/weights/tiny), a diffusers VAE folder or a VAE checkpoint. A 4x VAE's weights start a 2x one (time is pooled without weights), at the 4x VAE's reconstruction quality; then --vae-steps 0 skips the plain phase.", show_default=False)] = None,
    transformer_init_from: Annotated[Optional[str], typer.Option(help="Start the transformer from a model folder's (e.g. lamo_cli/weights/tiny) instead of from scratch; a 4x model's starts a 2x one.", show_default=False)] = None,
    transformer_val_prompts: Annotated[Optional[str], typer.Option(help="Validation prompts of the transformer phase (`lamo finetune --val-prompts`): videos at its step 0 and every --transformer-val-every steps, in OUT/transformer-run/validation/.", show_default=False)] = None,
    transformer_val_every: Annotated[int, typer.Option(help="Steps between the transformer phase's validation videos (0 = at every checkpoint).")] = 0,
    transformer_val_sample_steps: Annotated[int, typer.Option(help="Denoising steps of each validation video.")] = 30,
    vae_minutes: Annotated[float, typer.Option(help="Train the VAE phases for about this long instead: probe steps measure their speed here, then --vae-steps, --motion-steps and --decoder-steps are scaled together to fit (0 = use the step counts).")] = 0.0,
    transformer_minutes: Annotated[float, typer.Option(help="Train the transformer for about this long instead of --transformer-steps (measured the same way; 0 = use the step count).")] = 0.0,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps in every training phase (and at each phase's end); a killed run resumes from the last one. Lower it where a step is slow, e.g. batch-16 VAE steps on a CPU.")] = 200,
    install: Annotated[bool, typer.Option("--install", help="Copy the finished model into lamo_cli/weights/tiny (the `tiny` backbone).")] = False,
    device: Annotated[Optional[str], typer.Option(help="Device of the VAE and encode phases, e.g. cpu or cuda (default: cuda when present); the transformer phase trains where `lamo finetune` would.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Train the embedded `tiny` backbone from scratch on the physics world, on a CPU or a GPU: world ->
    VAE -> encode -> transformer (-> install). Every phase resumes where a killed run stopped."""
    from lamo_cli.stages.build_tiny import build_tiny

    summary = build_tiny(out=out, clips=clips, seed=seed, vae_steps=vae_steps, vae_batch_size=vae_batch_size, vae_small_crop_steps=vae_small_crop_steps, motion_steps=motion_steps,
                         motion_weight=motion_weight, decoder_motion_weight=decoder_motion_weight, moment_weight=moment_weight, decoder_steps=decoder_steps,
                         temporal_compression=temporal_compression, num_frames=frames, transformer_steps=transformer_steps,
                         transformer_batch_size=transformer_batch_size, transformer_lr=transformer_lr,
                         transformer_ema_decay=transformer_ema_decay, transformer_timestep_sampling=transformer_timestep_sampling,
                         transformer_logit_mean=transformer_logit_mean, transformer_logit_std=transformer_logit_std,
                         transformer_mixed_precision=transformer_mixed_precision, vae_minutes=vae_minutes,
                         transformer_minutes=transformer_minutes, vae_init_from=vae_init_from,
                         transformer_init_from=transformer_init_from, transformer_val_prompts=transformer_val_prompts,
                         transformer_val_every=transformer_val_every, transformer_val_sample_steps=transformer_val_sample_steps,
                         save_every=save_every, install=install, device=device, progress=progress)
    for phase, state in summary.phases.items():
        console.print(f"{phase:12s} {state}")
    console.print(f"model folder: {summary.out / 'model'}" + (f"; installed into {summary.installed}" if summary.installed else ""), soft_wrap=True)
    console.print(f"done in {summary.seconds / 60:.1f} min")
