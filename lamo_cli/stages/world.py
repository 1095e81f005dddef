"""`lamo world`: write a folder of physics-world clips (mp4 + caption + state sidecar)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from lamo_cli.data.world import FAMILIES, SPLITS, WorldSummary, parse_families, write_world
from lamo_cli.errors import LamoError


def make_world(
    out: str | os.PathLike,
    n: int,
    split: str = "train",
    seed: int = 0,
    families: str | Sequence[str] | None = None,
    num_frames: int = 33,
    size: int = 64,
    workers: int | None = None,
    progress: bool = True,
) -> WorldSummary:
    """Write n clips (families in rotation) into `out`; deterministic in (seed, split, index).

    Each clip gives NAME.mp4, NAME.txt (caption) and NAME.state.json (the full simulated state);
    metadata.jsonl lists (path, caption) for the folder, the form `lamo encode` reads.
    """
    if n < 1:
        raise LamoError(f"--n {n}: give the number of clips to write (at least 1)")
    if split not in SPLITS:
        raise LamoError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    try:
        chosen = parse_families(families)
    except ValueError:
        raise LamoError(f"--families {families!r}: use a comma-separated list of {', '.join(FAMILIES)}") from None
    if num_frames < 9 or (num_frames - 1) % 8:
        raise LamoError(f"--frames {num_frames}: use 8k+1 frames, at least 9 (e.g. 33), so the VAE decodes the clip back exactly")
    if size < 32 or size > 512 or size % 8:
        raise LamoError(f"--size {size}: use a multiple of 8 between 32 and 512 (e.g. 64)")
    if workers is not None and workers < 1:
        raise LamoError(f"--workers {workers}: give at least 1 process (or leave it out for the default)")
    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise LamoError(f"--out {out_path}: exists and is not a folder; choose a folder path")

    if not progress:
        return write_world(out_path, n, split, seed, chosen, num_frames, size, workers=workers)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("world"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("clips", total=n)
        return write_world(out_path, n, split, seed, chosen, num_frames, size,
                           progress=lambda done: bar.update(task, completed=done), workers=workers)
