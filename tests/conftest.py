"""Shared test fixtures: offline Hugging Face, small synthetic video clips.

`make_clips(tmp_path, n, frames, size)` (fixture returning the function `write_clips`) writes n mp4
clips of coloured squares moving at known velocities, each with a sidecar caption `NAME.txt`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lamo_cli.data.mp4 import write_mp4

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # also inherited by subprocesses started by tests
# Tests that do not name a backbone get the fast random one, whether or not `tiny` is installed.
os.environ.setdefault("LAMO_DEFAULT_BACKBONE", "tiny-random")


def _share_cores_between_workers() -> None:
    """Under pytest-xdist each worker gets its share of the cores, so workers do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


_share_cores_between_workers()

COLOURS = [(230, 40, 40), (40, 200, 60), (50, 90, 240), (240, 210, 40), (200, 60, 220), (40, 210, 220)]
COLOUR_NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan"]


def clip_frames(index: int, frames: int, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 [frames, H, W, 3]: dark background, one square of colour `index % 6` moving with
    velocity (1 + index % 3, index % 2) pixels per frame (wrapping), from a start that depends on index."""
    height, width = (size, size) if isinstance(size, int) else size
    side = max(4, min(height, width) // 4)
    colour = np.array(COLOURS[index % len(COLOURS)], dtype=np.uint8)
    vx, vy = 1 + index % 3, index % 2
    x0, y0 = (7 * index) % max(1, width - side), (5 * index) % max(1, height - side)
    video = np.full((frames, height, width, 3), 16, dtype=np.uint8)
    for f in range(frames):
        x = (x0 + vx * f) % max(1, width - side)
        y = (y0 + vy * f) % max(1, height - side)
        video[f, y : y + side, x : x + side] = colour
    return video


def clip_caption(index: int) -> str:
    speed = ["slowly", "steadily", "quickly"][index % 3]
    return f"a {COLOUR_NAMES[index % len(COLOUR_NAMES)]} square moving {speed} to the right"


def write_clips(
    tmp_path: str | os.PathLike,
    n: int = 3,
    frames: int = 17,
    size: int | tuple[int, int] = 64,
    fps: float = 8.0,
    captions: bool = True,
    folder: str = "videos",
    prefix: str = "clip",
    start: int = 0,
) -> list[Path]:
    """Write clips `{prefix}{i:03d}.mp4` (+ `.txt` captions) into tmp_path/folder; return their paths."""
    root = Path(tmp_path) / folder
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + n):
        path = root / f"{prefix}{index:03d}.mp4"
        write_mp4(path, clip_frames(index, frames, size), fps=fps)
        if captions:
            path.with_suffix(".txt").write_text(clip_caption(index) + "\n")
        paths.append(path)
    return paths


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def make_clips():
    """The `write_clips` function: make_clips(tmp_path, n, frames, size, fps=8.0, captions=True, folder="videos")."""
    return write_clips


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread is faster, and 2 OpenMP threads crawl when other jobs share the 2 cores.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
