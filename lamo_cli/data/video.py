"""Video input for `lamo encode`: finding files, captions, decord reading, frame sampling, resize/crop.

Everything here works on one clip at a time and knows nothing about backbones beyond the target
(frames, height, width, fps) it is given. Problems with one file raise `VideoSkip` (the caller lists
the file and moves on); problems with the whole request raise `LamoError`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from lamo_cli.errors import LamoError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts"})
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
PATH_KEYS = ("path", "file_name", "file", "filename", "video")
CAPTION_KEYS = ("caption", "text", "prompt")
RESIZE_CHUNK_FRAMES = 8  # bounds the float copy when resizing long, large clips


class VideoSkip(Exception):
    """One clip cannot be used (unreadable, too short, no caption); the message is the reason."""


# ==================================================================== discovery
def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def discover_videos(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Expand files and folders (recursive) into resolved video paths, in argument order.

    Returns (videos, not_videos): `not_videos` are files named explicitly whose extension is not a
    video's (the caller lists them as skipped). Files inside folders without a video extension
    (captions, metadata) and hidden files (`.name`, e.g. macOS `._clip.mp4`) are ignored.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise LamoError("VIDEOS: give at least one video file or folder")
    videos: list[Path] = []
    not_videos: list[Path] = []
    seen: set[Path] = set()

    def add(target: list[Path], path: Path) -> None:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            target.append(resolved)

    for path in paths:
        if not path.exists():
            raise LamoError(f"VIDEOS: {path} does not exist; pass video files or folders that exist")
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                relative = found.relative_to(path)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if found.is_file() and is_video_file(found):
                    add(videos, found)
        elif is_video_file(path):
            add(videos, path)
        else:
            add(not_videos, path)
    if not videos:
        listed = ", ".join(str(p) for p in paths)
        raise LamoError(
            f"VIDEOS: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) found in {listed}; check the paths"
        )
    return videos, not_videos


# ==================================================================== captions
def read_metadata_file(path: str | os.PathLike) -> dict[Path, str]:
    """CSV (header with path + caption columns) or JSONL (one object per line with path + caption
    keys) -> {resolved video path: caption}. Relative paths resolve against the file's folder.

    Accepted column names: path|file_name|file|filename|video and caption|text|prompt.
    """
    path = Path(path)
    if not path.is_file():
        raise LamoError(f"--captions {path}: no such file; pass a .csv or .jsonl file with path and caption columns")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _read_csv_records(path)
    elif suffix in (".jsonl", ".json"):
        records = _read_jsonl_records(path)
    else:
        raise LamoError(f"captions file {path}: unknown format {suffix!r}; use .csv or .jsonl with path and caption columns")
    table: dict[Path, str] = {}
    for line_no, record in records:
        video = _pick(record, PATH_KEYS)
        caption = _pick(record, CAPTION_KEYS)
        if video is None or caption is None:
            raise LamoError(
                f"captions file {path} line {line_no}: needs a path ({'/'.join(PATH_KEYS)}) and a caption "
                f"({'/'.join(CAPTION_KEYS)}) field; found {sorted(record)}"
            )
        video_path = Path(str(video)).expanduser()
        if not video_path.is_absolute():
            video_path = path.parent / video_path
        table[video_path.resolve()] = str(caption).strip()
    return table


def _pick(record: dict, keys: tuple[str, ...]):
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    for key in keys:
        if key in lowered and lowered[key] is not None:
            return lowered[key]
    return None


def _read_csv_records(path: Path) -> list[tuple[int, dict]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            return [(index + 2, row) for index, row in enumerate(reader)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LamoError(f"captions file {path}: not a readable UTF-8 CSV ({exc}); fix or re-export it") from None


def _read_jsonl_records(path: Path) -> list[tuple[int, dict]]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise LamoError(f"captions file {path}: not UTF-8 text ({exc}); fix or re-export it") from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LamoError(f"captions file {path} line {line_no}: not valid JSON ({exc.msg}); one object per line") from None
        if not isinstance(record, dict):
            raise LamoError(f"captions file {path} line {line_no}: expected a JSON object with path and caption keys")
        records.append((line_no, record))
    return records


class CaptionIndex:
    """Where each video's caption comes from, in order of precedence:

    1. the `--captions FILE` table, 2. a `metadata.jsonl` / `metadata.csv` found in a folder given
    on the command line, 3. a sidecar `NAME.txt` beside the video. Empty captions count as missing.
    """

    def __init__(self, explicit: dict[Path, str] | None = None, discovered: dict[Path, str] | None = None):
        self.explicit = explicit or {}
        self.discovered = discovered or {}

    @classmethod
    def build(cls, inputs: Iterable[str | os.PathLike], captions_file: str | os.PathLike | None = None) -> "CaptionIndex":
        explicit = read_metadata_file(captions_file) if captions_file is not None else {}
        discovered: dict[Path, str] = {}
        for item in inputs:
            folder = Path(item)
            if not folder.is_dir():
                continue
            for name in METADATA_NAMES:
                candidate = folder / name
                if candidate.is_file():
                    discovered.update(read_metadata_file(candidate))
        return cls(explicit, discovered)

    def lookup(self, video: Path) -> str | None:
        video = Path(video).resolve()
        for table in (self.explicit, self.discovered):
            caption = table.get(video)
            if caption:
                return caption
        sidecar = video.with_suffix(".txt")
        if sidecar.is_file():
            caption = sidecar.read_text(encoding="utf-8", errors="replace").strip()
            if caption:
                return caption
        return None


# ==================================================================== frame sampling
def frame_stride(source_fps: float, target_fps: float) -> int:
    """Whole-frame stride whose resulting fps (source_fps / stride) is closest to target_fps."""
    if not (source_fps > 0 and target_fps > 0) or source_fps <= target_fps:
        return 1
    ratio = source_fps / target_fps
    candidates = {max(1, math.floor(ratio)), max(1, math.ceil(ratio))}
    return min(sorted(candidates), key=lambda s: abs(source_fps / s - target_fps))


def sample_frame_indices(
    total_frames: int, source_fps: float, num_frames: int, target_fps: float, start: int = 0
) -> list[int] | None:
    """`num_frames` contiguous frames at the fps-matching stride from `start`; None if too short."""
    stride = frame_stride(source_fps, target_fps)
    last = start + (num_frames - 1) * stride
    if start < 0 or last >= total_frames:
        return None
    return list(range(start, last + 1, stride))


def frames_needed(source_fps: float, num_frames: int, target_fps: float, start: int = 0) -> int:
    return start + (num_frames - 1) * frame_stride(source_fps, target_fps) + 1


# ==================================================================== resize / crop
def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [F, H, W, 3] -> [F, height, width, 3]: scale so the frame covers the target (the
    shorter side, relative to the target's aspect, fits exactly), then cut the centre."""
    import torch
    import torch.nn.functional as F

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    src_h, src_w = frames.shape[1:3]
    scale = max(height / src_h, width / src_w)
    new_h = max(height, round(src_h * scale))
    new_w = max(width, round(src_w * scale))
    if (new_h, new_w) != (src_h, src_w):
        resized = []
        for start in range(0, frames.shape[0], RESIZE_CHUNK_FRAMES):
            chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + RESIZE_CHUNK_FRAMES]))
            chunk = chunk.permute(0, 3, 1, 2).float()
            chunk = F.interpolate(chunk, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=scale < 1)
            resized.append(chunk.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        frames = np.concatenate(resized)
    top = (new_h - height) // 2
    left = (new_w - width) // 2
    return np.ascontiguousarray(frames[:, top : top + height, left : left + width])


# ==================================================================== reading
@dataclass
class VideoProbe:
    """An opened video: decord reader plus what we need to pick frames."""

    path: Path
    num_frames: int
    fps: float
    reader: object

    def read(self, indices: list[int]) -> np.ndarray:
        try:
            batch = self.reader.get_batch(list(indices)).asnumpy()
        except Exception as exc:  # noqa: BLE001 - decord raises RuntimeError / DECORDError variants
            raise VideoSkip(f"cannot decode frames (truncated or corrupt: {_first_line(exc)})") from None
        if batch.ndim != 4 or batch.shape[0] != len(indices) or batch.shape[-1] != 3:
            raise VideoSkip(f"decoder returned {batch.shape} for {len(indices)} frames (truncated or corrupt)")
        return batch


def _quiet_decord() -> None:
    import decord

    decord.logging.set_level(decord.logging.QUIET)


def open_video(path: str | os.PathLike) -> VideoProbe:
    """Open with decord; VideoSkip with a short reason when the file is empty or not a video."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise VideoSkip(f"cannot read file ({exc.strerror})") from None
    if size == 0:
        raise VideoSkip("empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoSkip("no read permission")
    try:
        import decord
    except ImportError:
        raise LamoError("decord is not installed: pip install decord==0.6.0") from None
    _quiet_decord()
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        num_frames = len(reader)
        fps = float(reader.get_avg_fps())
    except Exception as exc:  # noqa: BLE001
        raise VideoSkip(f"not a readable video ({_first_line(exc)})") from None
    if num_frames == 0:
        raise VideoSkip("video has no frames")
    return VideoProbe(path, num_frames, fps if math.isfinite(fps) else 0.0, reader)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # decord prefixes "[time] /path/to/file.cc:123: " to its messages; keep the human part.
    if text.startswith("[") and ": " in text:
        text = text.split(": ", 1)[1]
    return text[:160]


@dataclass
class SampledClip:
    path: Path
    frames: np.ndarray  # uint8 [F, height, width, 3]
    frame_indices: list[int]
    source_fps: float
    clip_fps: float
    source_num_frames: int


def plan_clip(probe: VideoProbe, num_frames: int, target_fps: float, start: int = 0) -> list[int]:
    """The frame indices to read, or VideoSkip explaining how many frames were needed."""
    indices = sample_frame_indices(probe.num_frames, probe.fps, num_frames, target_fps, start)
    if indices is None:
        needed = frames_needed(probe.fps, num_frames, target_fps, start)
        stride = frame_stride(probe.fps, target_fps)
        raise VideoSkip(
            f"too short: {probe.num_frames} frames at {probe.fps:g} fps, needs {needed} "
            f"({num_frames} frames at stride {stride}{f' from frame {start}' if start else ''})"
        )
    return indices


def decode_clip(probe: VideoProbe, indices: list[int], height: int, width: int, target_fps: float) -> SampledClip:
    """Decode the planned frames and resize/crop them (VideoSkip when decoding fails)."""
    frames = resize_center_crop(probe.read(indices), height, width)
    stride = indices[1] - indices[0] if len(indices) > 1 else 1
    clip_fps = probe.fps / stride if probe.fps > 0 else target_fps
    return SampledClip(probe.path, frames, indices, probe.fps, clip_fps, probe.num_frames)


def read_clip(
    path: str | os.PathLike, num_frames: int, height: int, width: int, target_fps: float, start: int = 0
) -> SampledClip:
    """Open, sample, decode and resize/crop one clip (VideoSkip when it cannot be used)."""
    probe = open_video(path)
    return decode_clip(probe, plan_clip(probe, num_frames, target_fps, start), height, width, target_fps)
