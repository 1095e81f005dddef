"""CLI for `lamo fit-prior`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lamo_cli.commands._common import console, handle_errors
from lamo_cli.recipes import default_recipe_for, resolve_options


def default_recipe(recipe: Optional[str], cache: Path, backbone: Optional[str]) -> Optional[str]:
    """Without --recipe: recipes/<backbone>.toml for --backbone, else for the backbone the cache names."""
    if recipe is not None:
        return recipe
    name = backbone
    if name is None:
        from lamo_cli.data.cache import read_identity

        identity = read_identity(cache) if Path(cache).is_dir() else None
        name = identity.backbone if identity is not None else None
    found = default_recipe_for(name)
    return str(found) if found is not None else None


@handle_errors
def command(
    ctx: typer.Context,
    cache: Annotated[Path, typer.Argument(help="Latent cache folder written by `lamo encode`.")] = Path("lamo-cache"),
    out: Annotated[Path, typer.Option(help="Prior folder to write (motion_field.safetensors + config.json).")] = Path("lamo-prior"),
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Clips per step (each gives T - tau frame pairs).")] = 8,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (cosine schedule after warm-up).")] = 5e-4,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 200,
    tau: Annotated[int, typer.Option(help="Frame lag of the target z^(i+tau) - z^(i) (release: 1).")] = 1,
    alpha: Annotated[float, typer.Option(help="Weight of the cosine term: MSE + alpha * (1 - cos).")] = 0.3,
    noise_aug_prob: Annotated[float, typer.Option(help="Probability of noise-augmenting an input frame.")] = 0.5,
    noise_aug_strength: Annotated[float, typer.Option(help="s in z + s * sqrt(1 - abar_t) * eps.")] = 0.3,
    prompt_dropout: Annotated[float, typer.Option(help="Probability of replacing the prompt by the learned null prompt.")] = 0.1,
    width: Annotated[int, typer.Option(help="Channels of the field's residual blocks (release 256; tiny backbones: 32).")] = 256,
    depth: Annotated[int, typer.Option(help="Residual blocks (release 8).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the field init, data order, dropout and noise.")] = 42,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in OUT/checkpoints.")] = False,
    save_every: Annotated[int, typer.Option(help="Write a checkpoint every N steps (and at the end).")] = 500,
    backbone: Annotated[Optional[str], typer.Option(help="Where to take the scheduler (alphas_cumprod) from; default: the backbone the cache names.", show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).", show_default=False)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    recipe: Annotated[Optional[str], typer.Option(help="Recipe TOML (path or name in recipes/); its [fit_prior] table fills options not given. Default: recipes/<cache backbone>.toml if present.", show_default=False)] = None,
) -> None:
    """Fit the micro motion field f_phi (the LaMo motion prior) on a latent cache.

    The field learns z^(i+tau) - z^(i) from z^(i) and the pooled prompt, on scaled clean latents,
    with noise augmentation and prompt dropout. Prints the data's macro-drift statistics and a loss
    summary; writes OUT/motion_field.safetensors, config.json, metrics.jsonl, loss.png.
    """
    from lamo_cli.stages.fit_prior import fit_prior

    values = dict(
        cache=cache, out=out, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, tau=tau, alpha=alpha,
        noise_aug_prob=noise_aug_prob, noise_aug_strength=noise_aug_strength, prompt_dropout=prompt_dropout,
        width=width, depth=depth, seed=seed, resume=resume, save_every=save_every, backbone=backbone, device=device,
    )
    options = resolve_options(ctx, "fit_prior", values, default_recipe(recipe, cache, backbone))
    summary = fit_prior(**options, progress=progress)
    print_drift_statistics(summary.drift_statistics)
    resumed = f" (resumed at step {summary.start_step})" if summary.start_step else ""
    console.print(
        f"[bold]fitted the motion prior[/] on {summary.num_clips} clips, {summary.steps} steps{resumed}, "
        f"{summary.num_parameters / 1e6:.2f}M parameters, {summary.seconds_per_step * 1000:.1f} ms/step",
        soft_wrap=True,
    )
    console.print(
        f"loss {summary.first_loss:.4g} (first step) -> {summary.final_loss:.4g} (mean of the last 10%); "
        f"fraction of clean motion explained {summary.explained_fraction:.3f}",
        soft_wrap=True,
    )
    console.print(f"wrote {summary.out}/motion_field.safetensors, config.json, metrics.jsonl, loss.png", soft_wrap=True)


def print_drift_statistics(stats: dict) -> None:
    console.print(f"macro drift of the data (scaled latents, {stats.get('clips')} clips):", soft_wrap=True)
    for tau in (1, 2):
        entry = stats.get(f"tau{tau}")
        if not entry:
            continue
        channels = " ".join(f"{v:.3g}" for v in entry["mean_abs_per_channel"])
        pairs = " ".join(f"{v:.3g}" for v in entry["mean_abs_per_pair"])
        console.print(
            f"  tau={tau}: mean |mu| per channel [{channels}]\n"
            f"         per frame pair [{pairs}]\n"
            f"         mean ||mu|| {entry['mean_norm']:.4g}, median {entry['median_norm']:.4g}; "
            f"clips with near-zero drift (||mu|| < {stats['near_zero_threshold']}): {entry['near_zero_fraction']:.1%}",
            soft_wrap=True,
        )
