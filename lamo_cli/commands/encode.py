"""CLI for `lamo encode`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lamo_cli.commands._common import console, handle_errors
from lamo_cli.errors import LamoError


@handle_errors
def command(
    ctx: typer.Context,
    videos: Annotated[
        Optional[list[Path]],
        typer.Argument(help="Video files or folders (searched recursively for .mp4, .mov, .mkv, .webm, ...).", show_default=False),
    ] = None,
    backbone: Annotated[
        Optional[str],
        typer.Option(help="tiny, tiny-random, cogvideox-2b, cogvideox-5b or a local diffusers folder (default: tiny when installed, else tiny-random).", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option(help="Cache folder to create or extend.")] = Path("lamo-cache"),
    captions: Annotated[
        Optional[Path], typer.Option(help="CSV or JSONL with path and caption columns (relative paths resolve against its folder).")
    ] = None,
    allow_empty_caption: Annotated[bool, typer.Option("--allow-empty-caption", help="Encode videos without a caption with the empty prompt instead of skipping them.")] = False,
    batch_size: Annotated[int, typer.Option(help="Clips per VAE call.")] = 1,
    shard_size: Annotated[int, typer.Option(help="Clips per Parquet shard.")] = 64,
    logvar: Annotated[bool, typer.Option("--logvar/--no-logvar", help="Also store the posterior log-variance.")] = True,
    fps: Annotated[Optional[float], typer.Option(help="Target clip fps (default: the backbone's, 8 for CogVideoX).", show_default=False)] = None,
    start_frame: Annotated[int, typer.Option(help="First source frame to sample.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available, else cpu).", show_default=False)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    recipe: Annotated[Optional[str], typer.Option(help="Recipe TOML (path or name in recipes/); its encode table fills the options not given.")] = None,
) -> None:
    """Encode videos into a latent cache: UNSCALED VAE posterior means (+ log-variances) and text
    embeddings in Parquet shards, one row per clip.

    Each clip is the backbone's frame count (4k+1) at the stride closest to its fps, resized and
    center-cropped to its size. Captions come from --captions, a metadata.jsonl / metadata.csv in a
    given folder, or NAME.txt beside each video. Reruns skip clips already in the cache. Runs as
    several processes under `torchrun --nproc_per_node N -m lamo_cli.cli encode ...`.
    """
    from lamo_cli.backbones import default_backbone
    from lamo_cli.recipes import resolve_options
    from lamo_cli.stages.encode import encode

    if not videos:
        raise LamoError("VIDEOS: give at least one video file or folder, e.g. `lamo encode clips/ --out lamo-cache`")
    values = dict(
        backbone=backbone or default_backbone(), out=out, captions=captions, batch_size=batch_size, shard_size=shard_size,
        allow_empty_caption=allow_empty_caption, keep_logvar=logvar, device=device, target_fps=fps, start_frame=start_frame,
    )
    summary = encode(videos, **resolve_options(ctx, "encode", values, recipe), progress=progress)
    if summary.rank == 0:
        print_summary(summary)
    if summary.nothing_done:
        if summary.rank != 0:
            raise typer.Exit(2)  # rank 0 says why; one message, not one per process
        raise LamoError(f"nothing was encoded into {out}: all {len(summary.skipped)} inputs were skipped (reasons above)")


def print_summary(summary) -> None:
    ranks = f" on {summary.world_size} processes" if summary.world_size > 1 else ""
    console.print(
        f"[bold]encoded {summary.written} clips[/] into {summary.out}{ranks} "
        f"({summary.gb_written:.3f} GB, {summary.clips_per_s:.2f} clips/s; {summary.seconds:.1f} s in all, "
        f"{summary.load_seconds:.1f} s loading the backbone); already cached {summary.already_done}; "
        f"skipped {len(summary.skipped)}; cache now holds {summary.clips_in_cache} clips",
        soft_wrap=True,
    )
    console.print(
        f"busy time (overlapped): decode {summary.decode_seconds:.2f} s, VAE+text {summary.vae_seconds:.2f} s, "
        f"write {summary.write_seconds:.2f} s",
        soft_wrap=True,
    )
    for path, reason in summary.skipped:
        console.print(f"  skipped {path}: {reason}", soft_wrap=True)
    if summary.stale_captions:
        console.print(
            f"[yellow]warning:[/] {len(summary.stale_captions)} cached clips have a caption other than the one they were "
            f"encoded with (first: {sorted(summary.stale_captions)[0]}); the cache keeps the old captions: encode into "
            f"a new --out to train on the new ones",
            soft_wrap=True,
        )
