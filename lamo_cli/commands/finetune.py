"""CLI for `lamo finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lamo_cli.commands._common import console, handle_errors
from lamo_cli.commands.fit_prior import default_recipe
from lamo_cli.errors import LamoError
from lamo_cli.recipes import resolve_options


@handle_errors
def command(
    ctx: typer.Context,
    cache: Annotated[Path, typer.Argument(help="Latent cache folder written by `lamo encode`.")] = Path("lamo-cache"),
    backbone: Annotated[Optional[str], typer.Option(help="Backbone to fine-tune (name or diffusers folder); default: the one the cache was encoded with.", show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="Run folder (weights, checkpoints, logs).")] = Path("lamo-run"),
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2000,
    drift_weight: Annotated[float, typer.Option(help="lambda_drift of the Motion Drift Loss; 0 = plain fine-tune baseline.")] = 0.4,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 128,
    full: Annotated[bool, typer.Option("--full", help="Train all transformer weights instead of a LoRA.")] = False,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (scale alpha/rank).")] = 64.0,
    lora_targets: Annotated[str, typer.Option(help="Comma-separated module names that get LoRA.")] = "to_q,to_k,to_v,to_out.0",
    lr: Annotated[float, typer.Option(help="AdamW learning rate (peak, after warm-up).")] = 5e-5,
    optimizer_kind: Annotated[str, typer.Option("--optimizer", help="adamw (torch), or adamw8bit (bitsandbytes: the two moments in 8 bits, 2 bytes a trained weight instead of 8; for full fine-tunes of large models).")] = "adamw",
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 200,
    lr_schedule: Annotated[str, typer.Option(help="After warm-up: constant, or cosine (down to 0 at the last step).")] = "constant",
    ema_decay: Annotated[float, typer.Option(help="Keep a moving average of the trained weights with this decay and save it (e.g. 0.999 when training from scratch); 0 = off.")] = 0.0,
    timestep_sampling: Annotated[str, typer.Option(help="Training timesteps: uniform (CogVideoX's own), or logit-normal (SD3: more steps at middle noise levels).")] = "uniform",
    logit_mean: Annotated[float, typer.Option(help="Mean of the logit-normal timestep density (negative: toward less noise).")] = 0.0,
    logit_std: Annotated[float, typer.Option(help="Spread of the logit-normal timestep density.")] = 1.0,
    moving_weight: Annotated[float, typer.Option(help="Weigh the diffusion loss of latent cells that move (deviate from the clip's temporal median) up to 1 + this, renormalised to mean 1 per clip: for small movers on still backgrounds. 0 = uniform, as in the paper.")] = 0.0,
    moving_threshold: Annotated[float, typer.Option(help="Latent deviation (channel norm, scaled latents) at which a cell counts as fully moving for --moving-weight.")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Clips per process per micro-step.")] = 1,
    grad_accum: Annotated[int, typer.Option(help="Micro-steps per optimizer step.")] = 1,
    tau: Annotated[int, typer.Option(help="Frame lag of the macro drift (paper: 2).")] = 2,
    weight_kind: Annotated[str, typer.Option(help="Noise weight of the drift term: release = 1 - (t/1000)^2, abar = alphas_cumprod[t].")] = "release",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in backward (less memory).")] = True,
    mixed_precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), no, bf16 or fp16. bf16 on a CPU with AMX (e.g. Xeon Sapphire Rapids) trains the tiny transformer 1.4-1.6x faster than fp32; without AMX it is far slower.")] = "auto",
    save_every: Annotated[int, typer.Option(help="Write a checkpoint every N steps (and at the end); the last 2 are kept.")] = 500,
    max_minutes: Annotated[float, typer.Option(help="Stop after about this many minutes of training (e.g. a job's wall-time limit): checkpoint and final weights are written at that step, and --resume continues. 0 = no limit.")] = 0.0,
    val_cache: Annotated[Optional[Path], typer.Option(help="Held-out latent cache (encoded by the same backbone): log the diffusion loss on its clips at fixed timesteps with fixed noise, at step 0 and every --val-every steps (the moving average's, with --ema-decay), into metrics.jsonl and loss.png.", show_default=False)] = None,
    val_clips: Annotated[int, typer.Option(help="Held-out clips used (the first N of --val-cache).")] = 16,
    val_every: Annotated[int, typer.Option(help="Held-out loss (--val-cache) and validation videos (--val-prompts) every N steps; 0 = every --save-every steps.")] = 0,
    val_timesteps: Annotated[str, typer.Option(help="Training timesteps at which the held-out loss is measured (comma-separated).")] = "100,300,500,700,900",
    val_prompts: Annotated[Optional[Path], typer.Option(help="Validation prompts (.txt, one a line, or .jsonl): sampled at step 0 and every --val-every steps with the weights that would be saved, into OUT/validation/step-N/ (mp4 + latent + sidecar, so `lamo eval` and `lamo heatmap` read them); prompt i always from seed 42 + i; several processes share them.", show_default=False)] = None,
    val_sample_steps: Annotated[int, typer.Option(help="Denoising steps of each validation video (CFG 6, dynamic, no guidance).")] = 30,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in OUT/checkpoints (same data position and schedule).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the LoRA init, data order and noise.")] = 42,
    caption_dropout: Annotated[float, typer.Option(help="Probability of training a clip with the empty prompt.")] = 0.0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything a run would (settings, cache, backbone, a --resume checkpoint) and print what it would train: data, batches, epochs, schedule, timesteps, weights and optimizer memory. Trains and writes nothing.")] = False,
    recipe: Annotated[Optional[str], typer.Option(help="Recipe TOML (path or name in recipes/); its [finetune] table fills options not given. Default: recipes/<backbone>.toml if present.", show_default=False)] = None,
) -> None:
    """Fine-tune the backbone's transformer (LoRA or --full) with the Motion Drift Loss on a latent cache.

    L = L_diff + drift_weight * w(t) * L_drift. Writes OUT/run.json, metrics.jsonl (every term and
    per-phase timing), loss.png, checkpoints/, and pytorch_lora_weights.safetensors + lora.json
    (loadable by CogVideoXPipeline.load_lora_weights) or transformer/ with --full. Several processes:
    `torchrun --nproc_per_node N -m lamo_cli.cli finetune ...` or `accelerate launch --multi_gpu ...`.
    """
    from lamo_cli.stages.finetune import finetune

    rank_source = ctx.get_parameter_source("lora_rank")
    # typer vendors its own click: compare the enum by name, not by identity with click's
    if full and rank_source is not None and rank_source.name not in ("DEFAULT", "DEFAULT_MAP"):
        raise LamoError("--full and --lora-rank exclude each other: --full trains every weight, --lora-rank sets the LoRA size")
    values = dict(
        cache=cache, backbone=backbone, out=out, steps=steps, drift_weight=drift_weight, lora_rank=lora_rank, full=full,
        lora_alpha=lora_alpha, lora_targets=lora_targets, lr=lr, warmup=warmup, batch_size=batch_size,
        grad_accum=grad_accum, tau=tau, weight_kind=weight_kind, gradient_checkpointing=gradient_checkpointing,
        mixed_precision=mixed_precision, save_every=save_every, resume=resume, seed=seed, caption_dropout=caption_dropout,
        lr_schedule=lr_schedule, ema_decay=ema_decay, timestep_sampling=timestep_sampling, logit_mean=logit_mean,
        logit_std=logit_std, moving_weight=moving_weight, moving_threshold=moving_threshold, max_minutes=max_minutes,
        val_cache=val_cache, val_clips=val_clips, val_every=val_every, val_timesteps=val_timesteps,
        val_prompts=val_prompts, val_sample_steps=val_sample_steps, optimizer_kind=optimizer_kind,
    )
    options = resolve_options(ctx, "finetune", values, default_recipe(recipe, cache, backbone))
    summary = finetune(**options, progress=progress, dry_run=dry_run)
    if not summary.is_main:
        return
    if dry_run:
        _print_plan(summary)
        return
    what = "full fine-tune" if summary.kind == "full" else "LoRA fine-tune"
    resumed = f" (resumed at step {summary.start_step})" if summary.start_step else ""
    if summary.stopped_at_step is not None:
        resumed += f", stopped at step {summary.stopped_at_step} by --max-minutes"
    console.print(
        f"[bold]{what} of {summary.backbone}[/]: {summary.steps} steps{resumed}, {summary.world_size} process(es), "
        f"effective batch {summary.effective_batch_size}, {summary.trainable_parameters:,} trainable parameters, "
        f"precision {summary.mixed_precision}",
        soft_wrap=True,
    )
    reached = summary.stopped_at_step or summary.steps
    if reached > summary.start_step:
        phases = ", ".join(f"{k} {v / (reached - summary.start_step) * 1000:.0f} ms" for k, v in summary.phase_seconds.items())
        console.print(
            f"loss {summary.first_loss:.4g} (first step) -> {summary.final_loss:.4g} (mean of the last 10%); "
            f"{summary.seconds_per_step:.3f} s/step ({phases} per step)"
            + (f"; peak memory {summary.peak_memory['gb']:.2f} GB ({summary.peak_memory['what']})" if summary.peak_memory else ""),
            soft_wrap=True,
        )
        if summary.val_loss:
            val = summary.val_loss
            by_t = ", ".join(f"t={t} {v:.4g}" for t, v in (val.get("last_by_t") or {}).items())
            console.print(f"held-out loss ({val['clips']} clips): {val['first']:.4g} at step {val['first_step']} -> "
                          f"{val['last']:.4g} at step {val['last_step']} ({by_t})", soft_wrap=True)
        if summary.val_physics:
            first, last = summary.val_physics["first"], summary.val_physics["last"]
            console.print(f"validation videos, physics score ({last['scored']} scored): SA {first['SA']:.0f}% PC {first['PC']:.0f}% "
                          f"at step {first['step']} -> SA {last['SA']:.0f}% PC {last['PC']:.0f}% at step {last['step']}", soft_wrap=True)
    else:  # --resume at the last step: only the final weights are (re)written
        console.print(f"no steps left to train: the checkpoint is at step {summary.steps}", soft_wrap=True)
    for name, path in summary.outputs.items():
        console.print(f"wrote {name}: {path}", soft_wrap=True)


def _print_plan(plan) -> None:
    """The dry run's table: what would be trained, on what, and how."""
    from rich.table import Table

    run, settings = plan.run, plan.run["settings"]
    table = Table(title=f"lamo finetune --dry-run: {plan.out} (nothing trained or written)", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    cache = run["cache"]
    table.add_row("data", f"{cache['num_clips']} clips from {cache['path']} (latents {' x '.join(map(str, cache['latent_shape']))}), "
                          f"{plan.distinct_captions} distinct captions, caption dropout {settings['caption_dropout']}")
    backbone = run["backbone"]
    if run["kind"] == "lora":
        lora = run["lora"]
        what = f"LoRA rank {lora['rank']}, alpha {lora['alpha']} (scale {lora['scale']:g}) on {', '.join(lora['targets'])}"
    else:
        what = "every transformer weight (--full)"
    table.add_row("model", f"{backbone['name']} ({backbone['source']}, {backbone['dtype']}): {what}; "
                           f"{run['trainable_parameters']:,} trainable parameters")
    start = f" from step {plan.start_step} (--resume)" if plan.start_step else ""
    table.add_row("steps", f"{settings['steps']}{start}: {plan.epochs:.2f} epochs at effective batch {run['effective_batch_size']} "
                           f"({settings['batch_size']} a micro-step x {settings['grad_accum']} accumulated x {run['world_size']} process(es))")
    schedule = settings["lr_schedule"] + (f", moving average decay {settings['ema_decay']}" if settings["ema_decay"] else "")
    table.add_row("optimizer", f"{'AdamW 8-bit' if settings['optimizer_kind'] == 'adamw8bit' else 'AdamW'} lr {settings['lr']:g}, "
                               f"warm-up {settings['warmup']}, {schedule}; "
                               f"precision {settings['mixed_precision_used']}")
    density = settings["timestep_sampling"] + (f" (mean {settings['logit_mean']:g}, std {settings['logit_std']:g})"
                                                if settings["timestep_sampling"] == "logit-normal" else "")
    quantiles = ", ".join(f"{k} {v}" for k, v in plan.timestep_quantiles.items())
    table.add_row("timesteps", f"{density}: {quantiles}")
    loss = "diffusion loss" + (f" + {settings['drift_weight']:g} w(t) Motion Drift Loss (tau {settings['tau']}, w {settings['weight_kind']})"
                               if settings["drift_weight"] > 0 else " only (drift weight 0: the plain baseline)")
    if settings["moving_weight"] > 0:
        loss += f"; moving cells weighed up to 1 + {settings['moving_weight']:g}"
    table.add_row("loss", loss)
    table.add_row("memory", f"{plan.state_bytes / 2**20:,.1f} MiB trained weights + gradients + optimizer moments"
                            f"{' + moving average' if settings['ema_decay'] else ''}, {plan.frozen_bytes / 2**20:,.1f} MiB frozen "
                            f"weights (activations not counted; gradient checkpointing {'on' if settings['gradient_checkpointing'] else 'off'})")
    table.add_row("writes", f"{plan.checkpoints} checkpoint(s) (every {settings['save_every']} steps, the last "
                            f"{settings['keep_checkpoints']} kept), then the {'LoRA' if run['kind'] == 'lora' else 'transformer'} into {plan.out}")
    if settings.get("val_prompts"):
        every = settings["val_every"] or settings["save_every"]
        table.add_row("validation", f"{plan.validation_prompts} prompt(s) from {settings['val_prompts']}, "
                                    f"{settings['val_sample_steps']} steps each, at step 0 and every {every} steps, into "
                                    f"{plan.out / 'validation'}")
    first = "; ".join(f"{Path(source).name}: {caption!r}" for source, caption in plan.first_batch)
    table.add_row("first batch", first)
    console.print(table)
