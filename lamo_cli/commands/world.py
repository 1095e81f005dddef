"""CLI for `lamo world`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lamo_cli.commands._common import console, handle_errors


@handle_errors
def command(
    out: Annotated[Path, typer.Option(help="Folder to write the clips into (created if needed).")] = Path("lamo-world"),
    n: Annotated[int, typer.Option("--n", help="Number of clips (families in rotation).")] = 12,
    split: Annotated[str, typer.Option(help="train, test (same ranges, other seeds) or ood (disjoint ranges and colour x family pairs).")] = "train",
    seed: Annotated[int, typer.Option(help="Seed; clip i of a split is reproducible alone from (seed, split, i).")] = 0,
    families: Annotated[
        Optional[str], typer.Option(help="Comma-separated families: drop, projectile, uniform, collide, ramp, occlude (default: all).", show_default=False)
    ] = None,
    frames: Annotated[int, typer.Option(help="Frames per clip (8k+1; 8 fps).")] = 33,
    size: Annotated[int, typer.Option(help="Frame height and width in pixels (multiple of 8).")] = 64,
    workers: Annotated[
        Optional[int], typer.Option(help="Processes that write clips (default: 1 under 64 clips, else every core up to 16); the folder is the same for any number.", show_default=False)
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Write a physics-world data set: seeded scenes of coloured discs with known laws.

    Families: drop, projectile, uniform, collide, ramp, occlude. Each clip is NAME.mp4 with NAME.txt (its caption) and NAME.state.json (positions, velocities, radii and contact events per frame; g, e, dt, px per unit); metadata.jsonl lists them all. Score videos with `lamo eval`.
    """
    from lamo_cli.stages.world import make_world

    summary = make_world(out, n, split=split, seed=seed, families=families, num_frames=frames, size=size, workers=workers, progress=progress)
    counts = ", ".join(f"{family} {count}" for family, count in summary.per_family.items())
    console.print(
        f"[bold]wrote {summary.n} clips[/] ({summary.split}, seed {summary.seed}, {summary.num_frames} frames at "
        f"{summary.size}x{summary.size}) into {summary.out_dir}: {counts}",
        soft_wrap=True,
    )
    console.print(f"captions in NAME.txt and {Path(summary.out_dir) / 'metadata.jsonl'}; state in NAME.state.json", soft_wrap=True)
