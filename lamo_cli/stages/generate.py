"""`lamo generate`: text-to-video with an optional LoRA / fine-tune run and Motion Prior Guidance.

For every video it writes, next to each other:
  NAME.mp4                    the decoded clip
  NAME.json                   prompt, settings, seed, backbone, LoRA, prior, per-step guidance
                              losses, timings, library versions
  NAME.latent.safetensors     the final SCALED latent [T, C, h, w] (key "latent"), so `lamo heatmap`
                              needs no re-encode

With --init-video (video-to-video, SDEdit) each given clip is read as `lamo encode` reads it,
encoded (posterior mean), noised to where the last --strength fraction of the schedule begins, and
denoised from there; its prompt is PROMPT or else the clip's caption (`NAME.txt`, metadata file).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lamo_cli.distributed import Ranks
from lamo_cli.errors import LamoError
from lamo_cli.versions import library_versions

DEFAULT_STRENGTH = 0.8  # --init-video without --strength: CogVideoXVideoToVideoPipeline's default
DEFAULT_PRIOR_DIR = "lamo-prior"  # used when --prior is not given and this folder exists
NO_PRIOR = "none"  # `--prior none`: never guide, even if ./lamo-prior exists


@dataclass
class GeneratedVideo:
    prompt: str
    seed: int
    video: Path
    sidecar: Path
    latent: Path
    sampling_s: float
    guidance_s: float
    final_guide_loss: Optional[float]


@dataclass
class GenerateSummary:
    backbone: str
    sampler: str
    steps: int  # the schedule's length
    prior: Optional[str]
    prior_note: str
    lora: Optional[str]
    guided: bool
    videos: list[GeneratedVideo] = dataclass_field(default_factory=list)
    failures: list[tuple[str, str]] = dataclass_field(default_factory=list)  # (which prompt, why)
    load_s: float = 0.0
    total_s: float = 0.0
    steps_run: int = 0  # steps each video ran: `steps`, or its last --strength fraction from an init video
    world_size: int = 1  # processes that shared the videos (torchrun); each summary holds them all
    rank: int = 0

    @property
    def sampling_s(self) -> float:
        return sum(v.sampling_s for v in self.videos)

    @property
    def guidance_s(self) -> float:
        return sum(v.guidance_s for v in self.videos)

    @property
    def per_step_s(self) -> float:
        return self.sampling_s / max(1, (self.steps_run or self.steps) * len(self.videos))

    @property
    def guidance_fraction(self) -> float:
        return self.guidance_s / self.sampling_s if self.sampling_s > 0 else 0.0


@dataclass
class _Job:
    prompt: str
    index: int  # position in the prompt list (file names)
    label: str  # how failures name it
    init_video: Optional[Path] = None  # video-to-video: the clip to start from


# ==================================================================== prompts and output names
def read_prompts_file(path: str | Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Prompts from a .txt (one per line; blank lines and `#` comments skipped) or a .jsonl file
    (objects with a "prompt" string). Returns (prompts, bad lines as (label, reason))."""
    path = Path(path)
    if not path.is_file():
        raise LamoError(f"--prompts-file {path}: no such file; pass a .txt (one prompt per line) or .jsonl file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise LamoError(f"--prompts-file {path}: not UTF-8 text; save it as UTF-8") from None
    prompts: list[str] = []
    bad: list[tuple[str, str]] = []
    is_jsonl = path.suffix.lower() in (".jsonl", ".json")
    for line_no, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or (not is_jsonl and text.startswith("#")):
            continue
        if not is_jsonl:
            prompts.append(text)
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.append((f"{path.name} line {line_no}", f"not valid JSON ({exc.msg})"))
            continue
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            bad.append((f"{path.name} line {line_no}", 'needs a non-empty "prompt" string'))
            continue
        prompts.append(prompt.strip())
    if not prompts and not bad:
        raise LamoError(f"--prompts-file {path}: no prompts in it; write one prompt per line (or jsonl with \"prompt\")")
    return prompts, bad


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


def batch_folder(out: str | Path) -> Path:
    """--out as a folder for a prompt batch: `out.mp4` -> `out/`, a path without .mp4 is the folder."""
    out = Path(out)
    return out.with_suffix("") if out.suffix.lower() == ".mp4" else out


def video_paths(out: str | Path, job: _Job, num_videos: int, batch: bool) -> list[Path]:
    # from an init video the name says which clip it started from (captions repeat across clips)
    slug = slugify(job.init_video.stem if job.init_video is not None else job.prompt)
    if batch:
        stem = batch_folder(out) / f"{job.index:03d}-{slug}"
    else:
        out = Path(out)
        stem = out.with_suffix("") if out.suffix.lower() == ".mp4" else out / f"{job.index:03d}-{slug}"
    if num_videos == 1:
        return [stem.with_name(stem.name + ".mp4")]
    return [stem.with_name(f"{stem.name}-{k}.mp4") for k in range(num_videos)]


def sidecar_paths(video: Path) -> tuple[Path, Path]:
    """`clip.mp4` -> (`clip.json`, `clip.latent.safetensors`)."""
    return video.with_suffix(".json"), video.with_suffix(".latent.safetensors")


def init_video_jobs(init_video: list[str], prompt: Optional[str]) -> tuple[list[_Job], list[tuple[str, str]], bool]:
    """One job per clip of --init-video (files or folders), prompted by PROMPT or the clip's caption.
    Returns (jobs, skipped as (label, reason), batch: whether outputs go in a folder)."""
    from lamo_cli.data.video import CaptionIndex, discover_videos

    try:
        videos, not_videos = discover_videos(init_video)
    except LamoError as exc:
        raise LamoError(str(exc).replace("VIDEOS:", "--init-video", 1)) from None
    skipped = [(f"--init-video {path}", "not a video file (expected .mp4, .mov, ...)") for path in not_videos]
    captions = CaptionIndex.build(init_video)
    jobs: list[_Job] = []
    for index, video in enumerate(videos):
        text = prompt if prompt is not None else captions.lookup(video)
        if text is None:
            skipped.append((f"--init-video {video}", "no caption (NAME.txt or metadata.jsonl beside it): give PROMPT"))
            continue
        jobs.append(_Job(text, index, f"init video {video.name}", init_video=video))
    batch = len(videos) + len(not_videos) > 1 or any(Path(item).is_dir() for item in init_video)
    if not batch and skipped:
        raise LamoError(f"{skipped[0][0]}: {skipped[0][1]}")
    return jobs, skipped, batch


@dataclass
class InitLatents:
    """An init clip encoded for video-to-video: SCALED latents [1, T, C, h, w] and what the sidecar records."""
    latents: torch.Tensor
    frame_indices: list[int]
    encode_s: float  # this clip's share of its VAE call (reading the file included)


def encode_init_videos(model, paths: list[Path], group: int) -> dict[Path, InitLatents | LamoError]:
    """Read `paths` in order, to the backbone's format, until `group` of them are readable, and
    encode those in ONE VAE call. A clip that cannot be read maps to its one-line error (and does
    not take a place in the group); the others are unaffected. Clips not reached are left out."""
    from lamo_cli.data.video import VideoSkip, read_clip

    fmt = model.video_format
    tick = time.perf_counter()
    results: dict[Path, InitLatents | LamoError] = {}
    clips = {}
    for path in paths:
        if len(clips) == group:
            break
        try:
            clips[path] = read_clip(path, fmt.num_frames, fmt.height, fmt.width, fmt.fps)
        except VideoSkip as exc:
            results[path] = LamoError(f"--init-video {path}: {exc}")
    if clips:
        with torch.no_grad():
            mean, _ = model.encode_video(np.stack([clip.frames for clip in clips.values()]))
        share = (time.perf_counter() - tick) / len(clips)
        for row, (path, clip) in enumerate(clips.items()):
            results[path] = InitLatents(mean[row : row + 1] * model.scaling_factor, list(clip.frame_indices), share)
    return results


# ==================================================================== prior / LoRA
def resolve_prior(prior: Optional[str], guidance_scale: float) -> tuple[Optional[Path], str]:
    """Which prior folder to use, and a sentence saying why."""
    if guidance_scale == 0:
        return None, "guidance off (--guidance-scale 0): sampling without Motion Prior Guidance"
    if prior is not None and str(prior).lower() == NO_PRIOR:
        return None, "--prior none: sampling without Motion Prior Guidance"
    if prior is None:
        if Path(DEFAULT_PRIOR_DIR).exists():
            return Path(DEFAULT_PRIOR_DIR), f"no --prior given: using ./{DEFAULT_PRIOR_DIR} found in the current folder"
        return None, f"no --prior given and no ./{DEFAULT_PRIOR_DIR} here: sampling without Motion Prior Guidance"
    path = Path(prior)
    if not path.exists():
        raise LamoError(f"--prior {path}: no such file or folder; pass a folder written by `lamo fit-prior` (or --prior none)")
    return path, f"Motion Prior Guidance with prior {path}"


def load_field(path: Path, backbone) -> tuple[torch.nn.Module, dict]:
    from lamo_cli.stages.fit_prior import load_prior

    field, config = load_prior(path, expected_fingerprint=backbone.latent_fingerprint())
    text_dim = getattr(getattr(field, "config", None), "text_dim", None)
    if text_dim is not None and text_dim != backbone.text_dim:
        raise LamoError(
            f"--prior {path}: its field expects {text_dim}-d text embeddings but {backbone.name} makes "
            f"{backbone.text_dim}-d ones; fit a prior for this backbone with `lamo fit-prior`"
        )
    field = field.to(backbone.device, torch.float32).eval().requires_grad_(False)
    return field, dict(config)


def apply_lora(backbone, run: str | Path, scale: Optional[float]) -> dict:
    path = Path(run)
    if not path.exists():
        raise LamoError(f"--lora {path}: no such run folder; pass a folder written by `lamo finetune`")
    from lamo_cli.stages.finetune import load_run_into

    return {"run": str(path), "scale": scale, **load_run_into(backbone, path, scale=scale)}


# ==================================================================== provenance
def _json_float(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


# ==================================================================== the stage
def generate(
    prompt: Optional[str] = None,
    backbone: Optional[str] = None,
    lora: Optional[str] = None,
    lora_scale: Optional[float] = None,
    prior: Optional[str] = None,
    guidance_scale: float = 15.0,
    guidance_window: float = 0.8,
    steps: int = 50,
    cfg: float = 6.0,
    dynamic_cfg: bool = True,
    sampler: Optional[str] = None,
    seed: int = 42,
    negative_prompt: str = "",
    num_videos: int = 1,
    prompts_file: Optional[str] = None,
    out: str = "out.mp4",
    fps: Optional[float] = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    progress: bool = True,
    init_video: Optional[list[str]] = None,
    strength: Optional[float] = None,
) -> GenerateSummary:
    """Generate videos for PROMPT (or every prompt of --prompts-file); see the module docstring.

    sampler None uses the backbone's own scheduler (DDIM for 2B, DPM for 5B). Per-video seed is
    `seed + k` for the k-th video of a prompt. In a prompt batch a failing prompt is recorded in
    `failures` and the rest continue; a single prompt raises. init_video: clips to start from
    (video-to-video), each denoised over the last `strength` fraction of the schedule.
    """
    from lamo_cli.backbones import default_backbone, load_backbone
    from lamo_cli.sampling import steps_to_run

    init_video = list(init_video or [])
    strength = _check_init_options(init_video, strength, prompts_file, steps)
    _check_options(prompt, prompts_file, steps, guidance_scale, guidance_window, cfg, num_videos, fps, sampler, out,
                   needs_prompt=not init_video)
    started = time.perf_counter()
    failures: list[tuple[str, str]] = []
    if init_video:
        jobs, failures, batch = init_video_jobs(init_video, prompt)
    else:
        batch = prompts_file is not None
        if batch:
            prompts, failures = read_prompts_file(prompts_file)
        else:
            prompts = [prompt]
        jobs = [_Job(text, index, f"prompt {index:03d} {text[:40]!r}") for index, text in enumerate(prompts)]

    ranks = Ranks.from_env()
    if ranks.rank != 0:
        failures = []  # every process reads the same inputs; rank 0 reports what was skipped
    prior_path, prior_note = resolve_prior(prior, guidance_scale)
    backbone = backbone or default_backbone()
    model = load_backbone(backbone, device=device or ranks.default_device(), dtype=dtype)
    sampler = sampler or model.sampler
    lora_record = apply_lora(model, lora, lora_scale) if lora else None
    fingerprint = model.latent_fingerprint()
    motion_field, prior_config = (None, None)
    if prior_path is not None:
        motion_field, prior_config = load_field(prior_path, model)
    fps = fps or model.video_format.fps
    settings = dict(
        backbone=str(backbone), lora=lora, lora_scale=lora_scale, prior=None if prior_path is None else str(prior_path),
        guidance_scale=guidance_scale, guidance_window=guidance_window, steps=steps, cfg=cfg, dynamic_cfg=dynamic_cfg,
        sampler=sampler, seed=seed, negative_prompt=negative_prompt, num_videos=num_videos, prompts_file=prompts_file,
        out=str(out), fps=fps, device=str(model.device), dtype=str(model.dtype).replace("torch.", ""),
        init_video=init_video or None, strength=strength,
    )
    context = dict(
        backbone={"name": model.name, **model.describe(), "latent_fingerprint": fingerprint, "scaling_factor": model.scaling_factor},
        lora=lora_record,
        prior=None if prior_path is None else {"path": str(prior_path), "config": prior_config},
        prior_note=prior_note,
        versions=library_versions(),
    )
    summary = GenerateSummary(
        backbone=model.name, sampler=sampler, steps=steps, prior=None if prior_path is None else str(prior_path),
        prior_note=prior_note, lora=lora, guided=motion_field is not None, failures=failures,
        load_s=time.perf_counter() - started, steps_run=steps_to_run(steps, strength) if init_video else steps,
        world_size=ranks.world_size, rank=ranks.rank,
    )
    negative_embedding = model.encode_text([negative_prompt])

    def failed(label: str, exc: Exception) -> None:
        if not batch:
            raise exc
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        summary.failures.append((label, f"{type(exc).__name__}: {message}"[:300]))
        _say(f"[red]failed[/] {label}: {summary.failures[-1][1]}")

    # Sampled videos wait here to be decoded together, as many as the VAE takes at once.
    pending: list[_SampledVideo] = []
    per_vae_call = model.clips_per_vae_call()

    def write_pending() -> None:
        try:
            summary.videos.extend(_write_videos(model, pending, settings, context))
        except Exception as exc:  # noqa: BLE001 - in a batch one bad prompt must not stop the rest
            for label in dict.fromkeys(video.job.label for video in pending):
                failed(label, exc)
        pending.clear()

    # Several processes share the videos: video k of job j is the (j * num_videos + k)-th, and goes
    # to process (that index) mod world size, so every video is made once, with its own seed.
    mine = []
    for job in jobs:
        videos = [(k, path) for k, path in enumerate(video_paths(out, job, num_videos, batch))
                  if (job.index * num_videos + k) % ranks.world_size == ranks.rank]
        if videos:
            mine.append((job, videos))
    # Init clips are encoded ahead in groups, one VAE call per group, as the outputs are decoded.
    init_latents: dict[Path, InitLatents | LamoError] = {}
    for position, (job, videos) in enumerate(mine):
        try:
            if job.init_video is not None and job.init_video not in init_latents:
                init_latents.clear()
                ahead = [later.init_video for later, _ in mine[position:]]
                init_latents.update(encode_init_videos(model, ahead, group=per_vae_call))
            init = init_latents.get(job.init_video) if job.init_video is not None else None
            if isinstance(init, LamoError):
                raise init
            for video in _sample_prompt(model, job, init, videos, negative_embedding, motion_field, settings,
                                        progress and ranks.rank == 0, summary.steps_run):
                pending.append(video)
                if len(pending) == per_vae_call:
                    write_pending()
        except Exception as exc:  # noqa: BLE001 - in a batch one bad prompt must not stop the rest
            failed(job.label, exc)
    if pending:
        write_pending()
    if ranks.world_size > 1:
        _gather_from_every_process(summary, ranks)
    summary.total_s = time.perf_counter() - started
    return summary


def _gather_from_every_process(summary: GenerateSummary, ranks: Ranks) -> None:
    """Every process's videos and failures into every process's summary (rank 0 reports them)."""
    ranks.start()
    try:
        parts = ranks.all_gather((summary.videos, summary.failures))
    finally:
        ranks.close()
    summary.videos = sorted((video for videos, _ in parts for video in videos), key=lambda video: str(video.video))
    summary.failures = [failure for _, failures in parts for failure in failures]


def _check_init_options(init_video: list[str], strength: Optional[float], prompts_file, steps: int) -> Optional[float]:
    """The strength to use (None without --init-video); one-line errors for options that clash."""
    from lamo_cli.sampling import steps_to_run

    if not init_video:
        if strength is not None:
            raise LamoError(f"--strength {strength} applies to video-to-video only: add --init-video CLIP")
        return None
    if prompts_file is not None:
        raise LamoError("give either --prompts-file or --init-video, not both (init clips take their captions from NAME.txt)")
    strength = DEFAULT_STRENGTH if strength is None else float(strength)
    if not (0.0 < strength <= 1.0):
        raise LamoError(f"--strength {strength}: must be in (0, 1] (the fraction of the --steps schedule to run)")
    if steps >= 1 and steps_to_run(steps, strength) < 1:
        raise LamoError(f"--strength {strength} with --steps {steps} runs no step; raise --strength or --steps")
    return strength


def _check_options(prompt, prompts_file, steps, guidance_scale, guidance_window, cfg, num_videos, fps, sampler, out,
                   needs_prompt: bool = True) -> None:
    if prompt is not None and prompts_file is not None:
        raise LamoError("give either PROMPT or --prompts-file, not both")
    if prompt is None and prompts_file is None and needs_prompt:
        raise LamoError("no prompt: give PROMPT or --prompts-file FILE")
    if prompt is not None and not prompt.strip():
        raise LamoError("PROMPT is empty; write what the video should show")
    if steps < 1:
        raise LamoError(f"--steps {steps}: must be at least 1")
    if guidance_scale < 0 or not math.isfinite(guidance_scale):
        raise LamoError(f"--guidance-scale {guidance_scale}: must be >= 0 (0 turns Motion Prior Guidance off)")
    if not 0.0 <= guidance_window <= 1.0:
        raise LamoError(f"--guidance-window {guidance_window}: must be a fraction of the steps in [0, 1]")
    if cfg < 0 or not math.isfinite(cfg):
        raise LamoError(f"--cfg {cfg}: must be >= 0")
    if num_videos < 1:
        raise LamoError(f"--num-videos {num_videos}: must be at least 1")
    if fps is not None and not fps > 0:
        raise LamoError(f"--fps {fps}: must be positive")
    if sampler is not None and sampler not in ("ddim", "dpm"):
        raise LamoError(f"--sampler {sampler!r}: use 'ddim' or 'dpm'")
    out_path = Path(out)
    if out_path.suffix and out_path.suffix.lower() != ".mp4":
        raise LamoError(f"--out {out}: use a .mp4 file name (or a folder name without a suffix)")


def _say(message: str) -> None:
    from rich.console import Console

    Console(highlight=False).print(message, soft_wrap=True)


@dataclass
class _SampledVideo:
    """A video sampled and not yet decoded: what writing it needs."""
    job: _Job
    path: Path
    seed: int
    index: int  # k-th video of its prompt
    latents: torch.Tensor  # [1, T, C, h, w] scaled
    info: dict[str, Any]
    text_s: float
    init_record: Optional[dict[str, Any]]


def _sample_prompt(model, job: _Job, init: Optional[InitLatents], videos: list[tuple[int, Path]], negative_embedding,
                   motion_field, settings, progress, steps_run: int):
    """Sample the videos of one prompt, (k, path) each: the k-th uses seed + k (yielded one by one,
    so those done survive a later failure); `init`: the job's encoded init clip, for video-to-video."""
    from lamo_cli.motion.field import pool_text
    from lamo_cli.sampling import sample

    tick = time.perf_counter()
    positive = model.encode_text([job.prompt])
    field_text = pool_text(positive)  # the POSITIVE prompt conditions the field, never the negative
    text_s = time.perf_counter() - tick
    init_record = None
    if init is not None:
        init_record = {"path": str(job.init_video), "strength": settings["strength"], "frame_indices": init.frame_indices,
                       "encode_s": init.encode_s}
    for k, video_path in videos:
        seed = int(settings["seed"]) + k
        with _StepProgress(steps_run, f"{video_path.name} (seed {seed})", enabled=progress) as bar:
            latents, info = sample(
                model,
                positive,
                negative_embedding,
                num_steps=settings["steps"],
                cfg_scale=settings["cfg"],
                dynamic_cfg=settings["dynamic_cfg"],
                sampler=settings["sampler"],
                seed=seed,
                field=motion_field,
                field_text_pooled=field_text,
                guidance_scale=settings["guidance_scale"],
                guidance_window=settings["guidance_window"],
                callback=bar.advance,
                init_latents=None if init is None else init.latents,
                strength=settings["strength"] or 1.0,
            )
        if not torch.isfinite(latents).all():
            raise LamoError(
                f"{job.label}: sampling produced NaN/inf latents (fp16 does this on CogVideoX-5B: use --dtype bf16 or fp32)"
            )
        yield _SampledVideo(job, video_path, seed, k, latents, info, text_s, init_record)


def write_video_files(model, video_path: Path, frames, latent: torch.Tensor, prompt: str, fps: float,
                      fingerprint: str) -> tuple[Path, Path]:
    """NAME.mp4 and NAME.latent.safetensors (the SCALED latent [T, C, h, w], what `lamo heatmap`
    reads); returns the paths of the sidecar (NAME.json, written by the caller) and the latent."""
    from lamo_cli.data.mp4 import write_mp4
    from lamo_cli.fileio import save_safetensors

    sidecar, latent_path = sidecar_paths(video_path)
    write_mp4(video_path, frames, fps=fps)
    save_safetensors(
        latent_path,
        {"latent": latent.float().cpu()},
        metadata={"scaling_factor": repr(model.scaling_factor), "scaled": "true", "layout": "T,C,H,W", "backbone": model.name,
                  "latent_fingerprint": fingerprint, "prompt": prompt},
    )
    return sidecar, latent_path


def _write_videos(model, videos: list[_SampledVideo], settings, context) -> list[GeneratedVideo]:
    """Decode `videos` in one VAE call, then write each one's mp4, latent and sidecar."""
    from lamo_cli.fileio import write_json

    tick = time.perf_counter()
    decoded = model.decode_latents(torch.cat([video.latents for video in videos]))
    decode_s = (time.perf_counter() - tick) / len(videos)  # each video's share of the call
    made = []
    for video, frames in zip(videos, decoded):
        job, info, video_path = video.job, video.info, video.path
        sidecar, latent_path = write_video_files(model, video_path, frames, video.latents[0], job.prompt, settings["fps"],
                                                 context["backbone"]["latent_fingerprint"])
        timing = dict(info["timing"])
        timing.update(encode_text_s=video.text_s, decode_s=decode_s, clips_decoded_together=len(videos))
        record = {
            "prompt": job.prompt,
            "negative_prompt": settings["negative_prompt"],
            "seed": video.seed,
            "video_index": video.index,
            "settings": settings,
            "init_video": None if video.init_record is None else {**video.init_record, "first_step": info["first_step"]},
            **{key: context[key] for key in ("backbone", "lora", "prior")},
            "guidance": {
                "enabled": bool(info["guided"]),
                "note": context["prior_note"],
                "scale": settings["guidance_scale"],
                "window": settings["guidance_window"],
                "first_guided_step": info["first_guided_step"],
                "per_step": [
                    {"step": i, "timestep": t, "cfg_scale": c, "guide_loss": _json_float(g), "grad_norm": _json_float(n)}
                    for i, (t, c, g, n) in enumerate(zip(info["timesteps"], info["cfg_scales"], info["guide_loss"], info["grad_norm"]),
                                                     start=info["first_step"])
                ],
                "final_guide_loss": _json_float(info.get("final_guide_loss")),
            },
            "timing": timing,
            "versions": context["versions"],
            "files": {"video": video_path.name, "latent": latent_path.name, "frames": int(frames.shape[0]), "fps": settings["fps"]},
        }
        write_json(sidecar, record)
        made.append(
            GeneratedVideo(
                prompt=job.prompt, seed=video.seed, video=video_path, sidecar=sidecar, latent=latent_path,
                sampling_s=timing["total_s"], guidance_s=timing["guidance_s"],
                final_guide_loss=_json_float(info.get("final_guide_loss")),
            )
        )
    return made


class _StepProgress:
    """A rich progress bar over sampling steps (silent when disabled or not a terminal)."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self.total, self.description, self.enabled = total, description, enabled
        self._progress = None
        self._task = None

    def __enter__(self) -> "_StepProgress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def advance(self, step: int, timestep: int, latents: Any, step_info: dict) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def __exit__(self, *exc_info: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
