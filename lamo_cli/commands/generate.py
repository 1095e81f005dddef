"""CLI for `lamo generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lamo_cli.commands._common import console, handle_errors
from lamo_cli.recipes import resolve_options


@handle_errors
def command(
    ctx: typer.Context,
    prompt: Annotated[Optional[str], typer.Argument(help="What the video should show (or use --prompts-file; with --init-video it defaults to each clip's caption).", show_default=False)] = None,
    backbone: Annotated[
        Optional[str],
        typer.Option(help="tiny, tiny-random, cogvideox-2b, cogvideox-5b, or a local diffusers CogVideoX folder (default: tiny when installed, else tiny-random).", show_default=False),
    ] = None,
    lora: Annotated[Optional[str], typer.Option(help="A run folder written by `lamo finetune` (LoRA or full weights), or one of its checkpoints (RUN/checkpoints/step-N: its moving average where the run keeps one).")] = None,
    lora_scale: Annotated[Optional[float], typer.Option(help="LoRA scale; default: the run's alpha/rank.")] = None,
    prior: Annotated[Optional[str], typer.Option(help="Prior folder from `lamo fit-prior` (default ./lamo-prior if it exists; 'none' for no guidance).")] = None,
    guidance_scale: Annotated[float, typer.Option(help="Motion Prior Guidance strength lambda_guide; 0 turns guidance off.")] = 15.0,
    guidance_window: Annotated[float, typer.Option(help="Guide the last fraction rho of the steps (low noise).")] = 0.8,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 50,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 6.0,
    dynamic_cfg: Annotated[bool, typer.Option("--dynamic-cfg/--no-dynamic-cfg", help="CogVideoX's dynamic CFG schedule.")] = True,
    sampler: Annotated[Optional[str], typer.Option(help="ddim or dpm (default: the backbone's own scheduler).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first video; video k uses seed + k.")] = 42,
    negative_prompt: Annotated[str, typer.Option(help="Negative prompt for CFG.")] = "",
    num_videos: Annotated[int, typer.Option(help="Videos per prompt.")] = 1,
    prompts_file: Annotated[Optional[str], typer.Option(help=".txt (one prompt per line) or .jsonl ({\"prompt\": ...}); writes OUT_DIR/NNN-slug.mp4.")] = None,
    out: Annotated[str, typer.Option(help="Output .mp4 (with --prompts-file: a folder, or the folder named after the .mp4 stem).")] = "out.mp4",
    fps: Annotated[Optional[float], typer.Option(help="Frames per second of the mp4 (default: the backbone's, 8).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="fp32, bf16 or fp16 (default: fp32 on CPU, bf16 on GPU).")] = None,
    init_video: Annotated[
        Optional[list[str]],
        typer.Option(help="Video-to-video (SDEdit): start from this clip (file or folder; repeat for more), prompted by PROMPT or its NAME.txt caption.", show_default=False),
    ] = None,
    strength: Annotated[
        Optional[float],
        typer.Option(help="With --init-video: the fraction of the --steps schedule to run from the noised clip (1 = from pure noise; default 0.8).", show_default=False),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar over the steps.")] = True,
    recipe: Annotated[Optional[str], typer.Option(help="Recipe TOML (path or name in recipes/); its generate table fills the options not given.")] = None,
) -> None:
    """Generate a video from a prompt, with Motion Prior Guidance from a fitted prior.

    Writes OUT.mp4, OUT.json (prompt, settings, seed, versions, per-step guidance losses, timings)
    and OUT.latent.safetensors (the final latent, read by `lamo heatmap`). Several processes
    (`torchrun --nproc_per_node N -m lamo_cli.cli generate --prompts-file P ...`) share the videos,
    one GPU each; rank 0 reports them all.
    """
    from lamo_cli.backbones import default_backbone
    from lamo_cli.stages.generate import generate

    values = dict(
        prompt=prompt, backbone=backbone or default_backbone(), lora=lora, lora_scale=lora_scale, prior=prior, guidance_scale=guidance_scale,
        guidance_window=guidance_window, steps=steps, cfg=cfg, dynamic_cfg=dynamic_cfg, sampler=sampler, seed=seed,
        negative_prompt=negative_prompt, num_videos=num_videos, prompts_file=prompts_file, out=out, fps=fps,
        device=device, dtype=dtype, init_video=init_video, strength=strength,
    )
    options = resolve_options(ctx, "generate", values, recipe)
    summary = generate(**options, progress=progress)
    if summary.rank != 0:  # rank 0 reports every process's videos; the others only share the exit code
        if summary.failures:
            raise typer.Exit(1)
        return

    console.print(summary.prior_note, soft_wrap=True)
    for video in summary.videos:
        loss = "" if video.final_guide_loss is None else f"  L_guide {video.final_guide_loss:.4g}"
        console.print(f"wrote {video.video}  (seed {video.seed}, {video.sampling_s:.2f} s{loss})", soft_wrap=True)
    if summary.videos:
        console.print(
            f"{len(summary.videos)} video(s){f' on {summary.world_size} processes' if summary.world_size > 1 else ''}, "
            f"{summary.backbone}, {summary.sampler} x {summary.steps_run} steps: "
            f"{summary.per_step_s:.3f} s/step; guidance overhead {summary.guidance_s:.2f} s of {summary.sampling_s:.2f} s "
            f"sampling ({100 * summary.guidance_fraction:.1f}%); load {summary.load_s:.1f} s, total {summary.total_s:.1f} s",
            soft_wrap=True,
        )
    if summary.failures:
        for which, why in summary.failures:
            console.print(f"[red]failed[/] {which}: {why}", soft_wrap=True)
        what = "clip(s) skipped or failed" if init_video else "prompt(s) failed"
        console.print(f"[red]{len(summary.failures)} {what}[/]; the others were written")
        raise typer.Exit(1)
