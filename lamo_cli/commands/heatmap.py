"""CLI for `lamo heatmap`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from lamo_cli.commands._common import console, handle_errors
from lamo_cli.recipes import resolve_options


@handle_errors
def command(
    ctx: typer.Context,
    video: Annotated[str, typer.Argument(help="A clip from `lamo generate` (uses its .latent.safetensors and .json) or any video.", show_default=False)],
    prior: Annotated[Optional[str], typer.Option(help="Prior folder for the field map (default ./lamo-prior, else the one the clip was made with; 'none' for drift only).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Output folder (default: VIDEO stem + '_heatmap/').")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone for re-encoding (default: the one in the clip's .json, else tiny-random).")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Prompt for the field (default: the clip's prompt, else the null prompt).")] = None,
    tau: Annotated[int, typer.Option(help="Latent-frame lag of the drift (METHOD: 2).")] = 2,
    overlay: Annotated[bool, typer.Option("--overlay/--no-overlay", help="Also write overlay.mp4 (maps blended on every frame).")] = True,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda ... (default: cuda if available).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="fp32, bf16 or fp16 for the VAE / text encoder.")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="Recipe TOML (path or name in recipes/); its heatmap table fills the options not given.")] = None,
) -> None:
    """Drift and motion-field heatmaps of a clip at its most-moving frame pair (PNG panels, JSON, overlay mp4)."""
    from lamo_cli.stages.heatmap import heatmap

    values = dict(video=video, prior=prior, out=out, backbone=backbone, prompt=prompt, tau=tau, overlay=overlay, device=device, dtype=dtype)
    options = resolve_options(ctx, "heatmap", values, recipe)
    result = heatmap(**options)

    for note in result.notes:
        console.print(note, soft_wrap=True)
    r = "n/a" if result.pearson_r is None else f"{result.pearson_r:+.3f}"
    console.print(
        f"t* = {result.t_star} (pixel frame {result.pixel_index}, tau {result.tau}, latent {result.latent_source}); "
        f"Pearson r(drift, field) = {r}",
        soft_wrap=True,
    )
    console.print(f"wrote {result.panel}", soft_wrap=True)
    if result.overlay is not None:
        console.print(f"wrote {result.overlay}", soft_wrap=True)
    console.print(f"wrote {result.json_path}", soft_wrap=True)
