"""`lamo encode`: videos -> latent cache (UNSCALED VAE posteriors + text embeddings, Parquet).

Three threads overlap the work of one process: a decoder thread opens, samples, decodes and
resizes the next clips; the main thread runs the text encoder and the VAE on batches; a writer
thread serialises finished shards. Shards are atomic, and a rerun skips clip ids already on disk,
so an encode that is killed and rerun ends with every clip exactly once.

Several processes (`torchrun --nproc_per_node N`, `accelerate launch`): clip i goes to rank
i % WORLD_SIZE; each rank writes shards under its own names; the ranks meet once at the end (a gloo
barrier; the process group is created here when the launcher did not) so rank 0 can refresh
manifest.json counts and every rank can report the totals. The shards, not the manifest, are the
truth: readers count and deduplicate clips and prompts from the shards.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from lamo_cli.backbones import default_backbone, load_backbone
from lamo_cli.data.cache import (
    EMPTY_PROMPT,
    CacheIdentity,
    ClipRow,
    ShardWriter,
    TextRow,
    cache_counts,
    check_cache_folder,
    clip_id,
    existing_ids,
    cached_caption_hashes,
    existing_prompt_hashes,
    prompt_hash,
    remove_stale_temp_files,
    write_manifest,
)
from lamo_cli.data.video import CaptionIndex, SampledClip, VideoSkip, decode_clip, discover_videos, open_video, plan_clip
from lamo_cli.distributed import Ranks
from lamo_cli.errors import LamoError

POLL_SECONDS = 0.2


@dataclass
class EncodeSummary:
    out: Path
    backbone: str = ""
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    already_done: int = 0
    stale_captions: list[str] = field(default_factory=list)  # cached clips whose caption has changed since
    bytes_written: int = 0
    shards_written: int = 0
    seconds: float = 0.0  # wall time of the whole call
    clips_per_s: float = 0.0  # clips written / wall time after the backbone was loaded
    load_seconds: float = 0.0  # loading the backbone and checking the cache
    decode_seconds: float = 0.0  # busy time of the decoder thread (overlaps the VAE)
    vae_seconds: float = 0.0  # VAE + text encoder in the main thread
    write_seconds: float = 0.0  # busy time of the writer thread (overlaps the VAE)
    clips_in_cache: int = 0
    world_size: int = 1
    rank: int = 0

    @property
    def nothing_done(self) -> bool:
        """No clip encoded now and none of the requested clips already in the cache."""
        return self.written == 0 and self.already_done == 0

    @property
    def gb_written(self) -> float:
        return self.bytes_written / 1e9


# ==================================================================== threads
@dataclass
class _Job:
    path: Path
    caption: str


@dataclass
class _Decoded:
    job: _Job
    clip: SampledClip
    id: str


class _Decoder(threading.Thread):
    """Opens, samples, decodes and resizes clips ahead of the VAE; reports each job on `out`:
    ("clip", _Decoded) | ("skip", path, reason) | ("done", path) | ("stale", path) | ("error", exc) | None
    at the end; "stale" is a cached clip whose caption differs from the one it was encoded with."""

    def __init__(self, jobs, fmt, target_fps, start_frame, fingerprint, done_ids, cached_captions: dict[str, str],
                 out: queue.Queue, stop: threading.Event):
        super().__init__(name="lamo-encode-decoder", daemon=True)
        self.jobs, self.fmt, self.target_fps, self.start_frame = jobs, fmt, target_fps, start_frame
        self.fingerprint, self.done_ids, self.cached_captions, self.out, self.stop = fingerprint, done_ids, cached_captions, out, stop
        self.busy_seconds = 0.0

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _one(self, job: _Job):
        probe = open_video(job.path)
        indices = plan_clip(probe, self.fmt.num_frames, self.target_fps, self.start_frame)
        identity = clip_id(job.path, indices, self.fingerprint)
        if identity in self.done_ids:
            cached = self.cached_captions.get(identity)
            return ("stale" if cached is not None and cached != prompt_hash(job.caption) else "done", job.path)
        clip = decode_clip(probe, indices, self.fmt.height, self.fmt.width, self.target_fps)
        return ("clip", _Decoded(job, clip, identity))

    def run(self) -> None:
        try:
            for job in self.jobs:
                if self.stop.is_set():
                    return
                started = time.perf_counter()
                try:
                    item = self._one(job)
                except VideoSkip as skip:
                    item = ("skip", job.path, str(skip))
                self.busy_seconds += time.perf_counter() - started
                if not self._put(item):
                    return
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, re-raised there
            self._put(("error", exc))


class _Writer(threading.Thread):
    """Writes shards handed over on a small queue, so serialisation overlaps the VAE."""

    def __init__(self, writer: ShardWriter):
        super().__init__(name="lamo-encode-writer", daemon=True)
        self.writer = writer
        self.inbox: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.busy_seconds = 0.0

    def submit(self, clips: list[ClipRow], texts: list[TextRow]) -> None:
        while True:
            self.raise_if_failed()
            try:
                self.inbox.put((clips, texts), timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Write everything submitted, then stop (the sentinel waits behind pending shards)."""
        if self.is_alive():
            while self.error is None:
                try:
                    self.inbox.put(None, timeout=POLL_SECONDS)
                    break
                except queue.Full:
                    continue
            self.join()
        self.raise_if_failed()

    def run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            started = time.perf_counter()
            try:
                self.writer.write(*item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.error = exc
                return
            finally:
                self.busy_seconds += time.perf_counter() - started


# ==================================================================== progress
class _Progress:
    def __init__(self, total: int, enabled: bool, label: str):
        self.enabled = enabled and total > 0
        self.started = time.perf_counter()
        self.encoded = 0
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.bar.add_task(label, total=total, rate="")
        self.bar.start()

    def advance(self, encoded: int = 0, other: int = 0) -> None:
        self.encoded += encoded
        if self.enabled:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(self.task, advance=encoded + other, rate=f"{self.encoded / elapsed:.2f} clips/s")

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


# ==================================================================== the stage
def encode(
    videos: Iterable[str | os.PathLike],
    backbone: Any = None,
    out: str | os.PathLike = "lamo-cache",
    captions: str | os.PathLike | None = None,
    batch_size: int = 1,
    shard_size: int = 64,
    allow_empty_caption: bool = False,
    keep_logvar: bool = True,
    device: str | None = None,
    progress: bool = True,
    target_fps: float | None = None,
    start_frame: int = 0,
) -> EncodeSummary:
    """Encode videos into a latent cache at `out`; see the module docstring for the design.

    `backbone` is a registered name, a diffusers folder, or an already loaded backbone object.
    `target_fps` defaults to the backbone's fps; `start_frame` is the first sampled frame.
    """
    started = time.perf_counter()
    videos = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos)
    if batch_size < 1:
        raise LamoError(f"--batch-size {batch_size}: must be at least 1")
    if shard_size < 1:
        raise LamoError(f"--shard-size {shard_size}: must be at least 1")
    if start_frame < 0:
        raise LamoError(f"--start-frame {start_frame}: must be 0 or more")
    if target_fps is not None and not target_fps > 0:
        raise LamoError(f"--fps {target_fps}: must be positive")
    found, not_videos = discover_videos(videos)
    caption_index = CaptionIndex.build(videos, captions)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LamoError(f"--out {out} is a file; pass a folder for the cache")
    ranks = Ranks.from_env()

    backbone = default_backbone() if backbone is None else backbone
    if isinstance(backbone, (str, os.PathLike)):
        label = f"--backbone {backbone}"
        model = load_backbone(backbone, device=device or ranks.default_device())
    else:
        model, label = backbone, f"backbone {backbone.name}"
    fmt = model.video_format
    fps = float(target_fps or fmt.fps)
    fingerprint = model.latent_fingerprint()
    identity = CacheIdentity(
        backbone=model.spec,  # loadable again by later stages (a registered name or an absolute folder)
        latent_fingerprint=fingerprint,
        scaling_factor=model.scaling_factor,
        video_format=dict(fmt.__dict__),
        latent_shape=(fmt.latent_frames, model.latent_channels, fmt.latent_height, fmt.latent_width),
    )
    check_cache_folder(out, identity, label)
    work_started = time.perf_counter()

    summary = EncodeSummary(out=out, backbone=model.name, world_size=ranks.world_size, rank=ranks.rank)
    ranks.start()
    try:
        # Every rank discovered the same sorted list; clip i belongs to rank i % WORLD_SIZE.
        mine = [path for index, path in enumerate(found) if index % ranks.world_size == ranks.rank]
        mine_not_videos = [p for index, p in enumerate(not_videos) if index % ranks.world_size == ranks.rank]
        summary.skipped.extend((str(p), f"not a video file (extension {p.suffix or 'none'!r})") for p in mine_not_videos)
        settings = _Settings(fps, start_frame, batch_size, shard_size, allow_empty_caption, keep_logvar, progress and ranks.rank == 0)
        _RankEncoder(model, identity, out, settings, ranks, summary).run(mine, caption_index)
        ranks.barrier()
        if ranks.rank == 0 and (out / "latents").is_dir():
            write_manifest(out, identity)
        per_rank = ranks.all_gather(asdict(summary))
    finally:
        ranks.close()
    total = _combine(per_rank, out, ranks)
    finished = time.perf_counter()
    total.seconds = finished - started
    total.load_seconds = work_started - started
    total.clips_per_s = total.written / (finished - work_started) if finished > work_started else 0.0
    total.clips_in_cache = cache_counts(out)["clips"] if out.is_dir() else 0
    return total


def _combine(per_rank: list[dict], out: Path, ranks: Ranks) -> EncodeSummary:
    total = EncodeSummary(out=out, backbone=per_rank[0]["backbone"], world_size=ranks.world_size, rank=ranks.rank)
    for part in per_rank:
        total.written += part["written"]
        total.already_done += part["already_done"]
        total.stale_captions.extend(part["stale_captions"])
        total.bytes_written += part["bytes_written"]
        total.shards_written += part["shards_written"]
        total.skipped.extend(tuple(item) for item in part["skipped"])
        # Ranks run side by side: report the busiest rank's phase times.
        total.decode_seconds = max(total.decode_seconds, part["decode_seconds"])
        total.vae_seconds = max(total.vae_seconds, part["vae_seconds"])
        total.write_seconds = max(total.write_seconds, part["write_seconds"])
    total.skipped.sort()
    return total


@dataclass
class _Settings:
    fps: float
    start_frame: int
    batch_size: int
    shard_size: int
    allow_empty_caption: bool
    keep_logvar: bool
    show_progress: bool


class _RankEncoder:
    """This process's share of the work: captions -> decoder thread -> VAE batches -> writer thread."""

    def __init__(self, model, identity: CacheIdentity, out: Path, settings: _Settings, ranks: Ranks, summary: EncodeSummary):
        self.model, self.identity, self.out, self.settings = model, identity, out, settings
        self.ranks, self.summary = ranks, summary
        self.pending_rows: list[ClipRow] = []
        self.pending_text: list[TextRow] = []

    # ---------------------------------------------------------------- setup
    def jobs_with_captions(self, paths: list[Path], captions: CaptionIndex) -> list[_Job]:
        jobs = []
        for path in paths:
            if path.stat().st_size == 0:  # say the real problem before asking for a caption
                self.summary.skipped.append((str(path), "empty file (0 bytes): re-export or remove it"))
                continue
            caption = captions.lookup(path)
            if caption is None and not self.settings.allow_empty_caption:
                self.summary.skipped.append((str(path), (
                    f"no caption: add {path.with_suffix('.txt').name} beside it, a metadata.jsonl/.csv, "
                    "--captions FILE, or pass --allow-empty-caption"
                )))
                continue
            jobs.append(_Job(path, caption or ""))
        return jobs

    def read_cache_state(self) -> None:
        exists = self.out.is_dir()
        self.done_ids = existing_ids(self.out) if exists else set()
        self.cached_captions = cached_caption_hashes(self.out) if exists else {}
        self.known_prompts = existing_prompt_hashes(self.out) if exists else set()
        self.manifest_written = (self.out / "manifest.json").is_file()
        self.clips_at_start = len(self.done_ids)
        if exists:
            remove_stale_temp_files(self.out, self.ranks.rank)

    # ---------------------------------------------------------------- encoding
    def new_prompts(self, prompts: list[str]) -> None:
        fresh = list(dict.fromkeys(p for p in prompts if prompt_hash(p) not in self.known_prompts))
        if not fresh:
            return
        started = time.perf_counter()
        embeddings = self.model.encode_text(fresh).cpu()
        self.summary.vae_seconds += time.perf_counter() - started
        for prompt, embedding in zip(fresh, embeddings):
            self.pending_text.append(TextRow(prompt, embedding))
            self.known_prompts.add(prompt_hash(prompt))

    def encode_batch(self, batch: list[_Decoded]) -> None:
        self.new_prompts([item.job.caption for item in batch])
        started = time.perf_counter()
        mean, logvar = self.model.encode_video(np.stack([item.clip.frames for item in batch]))
        mean, logvar = mean.cpu(), logvar.cpu()
        self.summary.vae_seconds += time.perf_counter() - started
        for k, item in enumerate(batch):
            clip = item.clip
            self.pending_rows.append(ClipRow(
                id=item.id, source_path=str(clip.path), caption=item.job.caption, frame_indices=clip.frame_indices,
                fps=clip.clip_fps, source_fps=clip.source_fps, source_num_frames=clip.source_num_frames,
                height=clip.frames.shape[1], width=clip.frames.shape[2], latent=mean[k].clone(),
                logvar=logvar[k].clone() if self.settings.keep_logvar else None,
            ))
            self.done_ids.add(item.id)
        self.summary.written += len(batch)
        size = self.settings.shard_size
        while len(self.pending_rows) >= size:
            self.hand_over(self.pending_rows[:size])
            del self.pending_rows[:size]

    def hand_over(self, rows: list[ClipRow]) -> None:
        """Give a shard's rows, and every prompt not yet written, to the writer thread."""
        if not self.manifest_written:  # before the first shard: a cache folder always names its backbone
            write_manifest(self.out, self.identity, counts={"clips": self.clips_at_start})
            self.manifest_written = True
        self.writer.submit(rows, self.pending_text[:])
        self.pending_text.clear()

    # ---------------------------------------------------------------- main loop
    def run(self, paths: list[Path], captions: CaptionIndex) -> None:
        jobs = self.jobs_with_captions(paths, captions)
        if not jobs:
            return
        self.read_cache_state()
        settings = self.settings
        self.writer = _Writer(ShardWriter(self.out, self.identity, rank=self.ranks.rank))
        decoded: queue.Queue = queue.Queue(maxsize=max(2, 2 * settings.batch_size))
        stop = threading.Event()
        decoder = _Decoder(jobs, self.model.video_format, settings.fps, settings.start_frame,
                           self.identity.latent_fingerprint, frozenset(self.done_ids), self.cached_captions, decoded, stop)
        label = f"encode (rank {self.ranks.rank} of {self.ranks.world_size})" if self.ranks.world_size > 1 else "encode"
        bar = _Progress(len(jobs), settings.show_progress, label)
        if prompt_hash(EMPTY_PROMPT) not in self.known_prompts:
            self.new_prompts([EMPTY_PROMPT])  # CFG and caption dropout need it in every cache
        self.writer.start()
        decoder.start()
        try:
            self._consume(decoded, bar)
        finally:
            stop.set()
            bar.close()
            # Keep what is finished (also on an error or Ctrl-C): complete rows are valid clips.
            if self.pending_rows and self.writer.error is None:
                self.hand_over(self.pending_rows[:])
                self.pending_rows.clear()
            self.writer.finish()
            decoder.join(timeout=10)
            self.summary.decode_seconds += decoder.busy_seconds
            self.summary.write_seconds += self.writer.busy_seconds
            self.summary.bytes_written += self.writer.writer.bytes_written
            self.summary.shards_written += self.writer.writer.shards_written

    def _consume(self, decoded: queue.Queue, bar: _Progress) -> None:
        batch: list[_Decoded] = []
        while True:
            self.writer.raise_if_failed()
            try:
                item = decoded.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if item is None:
                break
            kind = item[0]
            if kind == "error":
                raise item[1]
            if kind == "skip":
                self.summary.skipped.append((str(item[1]), item[2]))
                bar.advance(other=1)
            elif kind in ("done", "stale"):
                self.summary.already_done += 1
                if kind == "stale":
                    self.summary.stale_captions.append(str(item[1]))
                bar.advance(other=1)
            else:
                batch.append(item[1])
                if len(batch) == self.settings.batch_size:
                    self.encode_batch(batch)
                    bar.advance(encoded=len(batch))
                    batch = []
        if batch:
            self.encode_batch(batch)
            bar.advance(encoded=len(batch))
