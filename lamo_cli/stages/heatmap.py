"""`lamo heatmap`: where a clip moves, by the latent drift and by the motion prior (METHOD.md §4).

The clean latent comes from the `NAME.latent.safetensors` that `lamo generate` writes beside
`NAME.mp4` (with backbone and prompt from `NAME.json`); any other video is re-encoded with the
backbone's VAE. Writes into the output folder:
  heatmap.png    frame | drift map | field map, titled, with a colour bar
  frame.png, drift.png, field.png   the panels alone at frame size
  overlay.mp4    every frame blended with its latent frame's maps (optional)
  heatmap.json   t*, Pearson r, paths, provenance
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lamo_cli.errors import LamoError

OVERLAY_ALPHA = 0.55  # heatmap weight when blended over a frame


@dataclass
class HeatmapResult:
    video: Path
    out_dir: Path
    t_star: int
    pixel_index: int
    tau: int
    pearson_r: Optional[float]  # on the latent grid; None without a prior or when a map is constant
    latent_source: str  # "sidecar" or "re-encoded"
    prompt: Optional[str]
    prior: Optional[str]
    panel: Path
    json_path: Path
    overlay: Optional[Path] = None
    notes: list[str] = dataclass_field(default_factory=list)


@dataclass
class _Clip:
    z: torch.Tensor  # SCALED clean latent [T, C, h, w]
    frames: np.ndarray  # uint8 [F, H, W, 3] at the backbone's frame size
    source: str
    fingerprint: Optional[str]  # latent space the latent came from, when known without loading the VAE


# ==================================================================== inputs
def _read_sidecar(video: Path) -> dict:
    path = video.with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LamoError(f"sidecar {path}: not valid JSON ({exc}); delete or fix it to re-encode the video instead") from None
    return record if isinstance(record, dict) else {}


def _load_latent(path: Path) -> torch.Tensor:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if "latent" not in handle.keys():
                raise LamoError(f"latent {path}: has no 'latent' tensor; delete it to re-encode the video")
            z = handle.get_tensor("latent")
    except (SafetensorError, OSError, ValueError) as exc:
        raise LamoError(f"latent {path}: not a readable safetensors file ({str(exc)[:120]}); delete it to re-encode the video") from None
    if z.dim() != 4:
        raise LamoError(f"latent {path}: expected one clip [T, C, h, w], got shape {tuple(z.shape)}; delete it to re-encode")
    return z.float()


def _open(video: Path):
    from lamo_cli.data.video import VideoSkip, open_video

    if not video.exists():
        raise LamoError(f"VIDEO {video}: no such file; pass an mp4 written by `lamo generate` or any video")
    if video.is_dir():
        raise LamoError(f"VIDEO {video}: is a folder; pass one video file")
    try:
        return open_video(video)
    except VideoSkip as exc:
        raise LamoError(f"VIDEO {video}: {exc}; pass a video file (mp4, mov, ...)") from None


def _read_frames(probe, indices: list[int], video: Path) -> np.ndarray:
    from lamo_cli.data.video import VideoSkip

    try:
        return probe.read(indices)
    except VideoSkip as exc:
        raise LamoError(f"VIDEO {video}: {exc}") from None


def _clip_from_sidecar(video: Path, latent_path: Path, record: dict, model) -> _Clip:
    from lamo_cli.data.video import resize_center_crop

    z = _load_latent(latent_path)
    fmt = model.video_format
    probe = _open(video)
    frames = _read_frames(probe, list(range(probe.num_frames)), video)
    frames = resize_center_crop(frames, z.shape[-2] * fmt.spatial_compression, z.shape[-1] * fmt.spatial_compression)
    fingerprint = (record.get("backbone") or {}).get("latent_fingerprint")
    return _Clip(z, frames, "sidecar", fingerprint)


def _clip_by_encoding(video: Path, model, tau: int) -> _Clip:
    """Frames at the backbone's fps, size and (at most) frame count, then the VAE posterior mean."""
    from lamo_cli.data.video import VideoSkip, frame_stride, plan_clip, resize_center_crop

    fmt = model.video_format
    probe = _open(video)
    try:
        indices = plan_clip(probe, fmt.num_frames, fmt.fps)
    except VideoSkip:
        # Shorter than the backbone's clip: the longest 4k+1 run at the same stride.
        stride = frame_stride(probe.fps, fmt.fps)
        available = (probe.num_frames - 1) // stride + 1
        count = (available - 1) // fmt.temporal_compression * fmt.temporal_compression + 1
        needed = tau * fmt.temporal_compression + 1
        if count < needed:
            raise LamoError(
                f"VIDEO {video}: {probe.num_frames} frames is too short; a lag of tau={tau} latent frames needs at least "
                f"{needed} frames at {fmt.fps:g} fps"
            ) from None
        indices = list(range(0, (count - 1) * stride + 1, stride))
    frames = resize_center_crop(_read_frames(probe, indices, video), fmt.height, fmt.width)
    mean, _ = model.encode_video(frames[None])
    z = (mean[0] * model.scaling_factor).float()
    return _Clip(z, frames, "re-encoded", None)


def _resolve_prior(prior: Optional[str], record: dict) -> tuple[Optional[Path], str]:
    from lamo_cli.stages.generate import DEFAULT_PRIOR_DIR, NO_PRIOR

    if prior is not None and str(prior).lower() == NO_PRIOR:
        return None, "--prior none: drift map only"
    if prior is not None:
        path = Path(prior)
        if not path.exists():
            raise LamoError(f"--prior {path}: no such file or folder; pass a folder written by `lamo fit-prior`")
        return path, f"field map from prior {path}"
    if Path(DEFAULT_PRIOR_DIR).exists():
        return Path(DEFAULT_PRIOR_DIR), f"no --prior given: using ./{DEFAULT_PRIOR_DIR} found in the current folder"
    recorded = ((record.get("prior") or {}).get("path")) if isinstance(record.get("prior"), dict) else None
    if recorded and Path(recorded).exists():
        return Path(recorded), f"no --prior given: using the prior the video was generated with ({recorded})"
    return None, "no prior (pass --prior or run `lamo fit-prior`): drift map only, no field map and no Pearson r"


# ==================================================================== the stage
def heatmap(
    video: str,
    prior: Optional[str] = None,
    out: Optional[str] = None,
    backbone: Optional[str] = None,
    prompt: Optional[str] = None,
    tau: int = 2,
    overlay: bool = True,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
) -> HeatmapResult:
    """Drift and field heatmaps of one clip at its most-moving frame pair t* (see module docstring)."""
    from lamo_cli.backbones import default_backbone, load_backbone
    from lamo_cli.fileio import write_json
    from lamo_cli.motion.heatmap import drift_heatmap, field_heatmap, most_moving_pair, pearson_r

    if tau < 1:
        raise LamoError(f"--tau {tau}: must be at least 1 (latent frames between the pair)")
    video_path = Path(video)
    _open(video_path)  # fail early (missing / not a video) before loading any model
    record = _read_sidecar(video_path)
    latent_path = video_path.with_suffix(".latent.safetensors")
    recorded_backbone = record.get("backbone") if isinstance(record.get("backbone"), dict) else {}
    recorded_spec = _recorded_backbone_spec(recorded_backbone)
    spec = backbone or recorded_spec or default_backbone()
    model = load_backbone(spec, device=device, dtype=dtype)
    notes: list[str] = []

    use_sidecar = latent_path.is_file() and (backbone is None or _same_backbone(backbone, recorded_backbone))
    if latent_path.is_file() and not use_sidecar:
        notes.append(f"--backbone {backbone} differs from the one that made this video: re-encoding with its VAE")
    clip = _clip_from_sidecar(video_path, latent_path, record, model) if use_sidecar else _clip_by_encoding(video_path, model, tau)
    z = clip.z.to(model.device)
    if z.shape[0] <= tau:
        raise LamoError(f"VIDEO {video_path}: {z.shape[0]} latent frames, a lag of --tau {tau} needs at least {tau + 1}")

    t_star = most_moving_pair(z, tau)
    drift_map = drift_heatmap(z, t_star, tau)
    fmt = model.video_format
    pixel_index = min(fmt.pixel_index_of_latent(t_star), clip.frames.shape[0] - 1)

    prior_path, prior_note = _resolve_prior(prior, record)
    notes.insert(0, prior_note)
    text_prompt = prompt if prompt is not None else record.get("prompt")
    field = text_pooled = field_map = None
    if prior_path is not None:
        from lamo_cli.motion.field import pool_text
        from lamo_cli.stages.fit_prior import load_prior

        field, _ = load_prior(prior_path, expected_fingerprint=clip.fingerprint or model.latent_fingerprint())
        field = field.to(model.device, torch.float32).eval().requires_grad_(False)
        if text_prompt:
            text_pooled = pool_text(model.encode_text([text_prompt])).to(model.device)
        else:
            notes.append("no prompt (no sidecar and no --prompt): the field uses its null prompt")
        field_map = field_heatmap(z, t_star, field, text_pooled)
        if (record.get("guidance") or {}).get("enabled"):
            notes.append(
                "this clip was sampled WITH Motion Prior Guidance: the field map partly mirrors the guidance itself "
                "(METHOD §4: prefer guidance-free samples, `lamo generate --guidance-scale 0`)"
            )

    out_dir = Path(out) if out else video_path.with_name(video_path.stem + "_heatmap")
    maps = _panel_maps(drift_map, field_map, clip.frames.shape[1:3])
    r_latent = pearson_r(drift_map, field_map) if field_map is not None else None
    r_upsampled = pearson_r(maps["drift_raw"], maps["field_raw"]) if field_map is not None else None
    frame = clip.frames[pixel_index]
    files = _write_panels(out_dir, frame, maps, video_path.name, t_star, pixel_index, tau, r_latent, text_prompt)
    overlay_path = None
    if overlay:
        overlay_path = out_dir / "overlay.mp4"
        _write_overlay(overlay_path, clip.frames, z, tau, field, text_pooled, fmt, record)
        files["overlay"] = overlay_path.name

    r_value = None if r_latent is None or math.isnan(r_latent) else r_latent
    if field_map is not None and r_value is None:
        notes.append("Pearson r is undefined: one of the maps is constant")
    drift_norms = [float(x) for x in _drift_norms(z, tau)]
    json_path = out_dir / "heatmap.json"
    write_json(
        json_path,
        {
            "video": str(video_path),
            "t_star": t_star,
            "pixel_index": pixel_index,
            "tau": tau,
            "pearson_r": r_value,
            "pearson_r_upsampled": None if r_upsampled is None or math.isnan(r_upsampled) else r_upsampled,
            "drift_norms": drift_norms,
            "latent_source": clip.source,
            "latent_shape": list(z.shape),
            "backbone": {"spec": str(spec), "name": model.name},
            "prompt": text_prompt,
            "prior": None if prior_path is None else str(prior_path),
            "sampled_with_guidance": bool((record.get("guidance") or {}).get("enabled", False)),
            "notes": notes,
            "files": files,
        },
    )
    return HeatmapResult(
        video=video_path, out_dir=out_dir, t_star=t_star, pixel_index=pixel_index, tau=tau, pearson_r=r_value,
        latent_source=clip.source, prompt=text_prompt, prior=None if prior_path is None else str(prior_path),
        panel=out_dir / files["panel"], json_path=json_path, overlay=overlay_path, notes=notes,
    )


def _recorded_backbone_spec(recorded: dict) -> Optional[str]:
    source = recorded.get("source")
    if source and Path(source).is_dir():
        return source
    return recorded.get("name") or recorded.get("backbone")


def _same_backbone(spec: str, recorded: dict) -> bool:
    if not recorded:
        return False
    names = {str(recorded.get(k)) for k in ("name", "backbone", "source") if recorded.get(k)}
    if spec in names:
        return True
    return Path(spec).exists() and any(Path(n).exists() and Path(n).resolve() == Path(spec).resolve() for n in names)


def _drift_norms(z: torch.Tensor, tau: int) -> torch.Tensor:
    from lamo_cli.motion.drift import macro_drift

    return macro_drift(z, tau).norm(dim=-1).cpu()


# ==================================================================== rendering
def _panel_maps(drift_map: torch.Tensor, field_map: Optional[torch.Tensor], size: tuple[int, int]) -> dict[str, Any]:
    from lamo_cli.motion.heatmap import minmax_normalise, upsample

    maps: dict[str, Any] = {"drift_raw": upsample(drift_map.float().cpu(), size), "field_raw": None}
    maps["drift"] = minmax_normalise(maps["drift_raw"]).numpy()
    maps["field"] = None
    if field_map is not None:
        maps["field_raw"] = upsample(field_map.float().cpu(), size)
        maps["field"] = minmax_normalise(maps["field_raw"]).numpy()
    return maps


def _write_panels(out_dir: Path, frame: np.ndarray, maps: dict, video_name: str, t_star: int, pixel_index: int,
                  tau: int, r: Optional[float], prompt: Optional[str]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    from lamo_cli.fileio import atomic_path
    from lamo_cli.motion.heatmap import colorize

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"panel": "heatmap.png", "frame": "frame.png", "drift": "drift.png"}
    _save_png(out_dir / "frame.png", frame)
    _save_png(out_dir / "drift.png", colorize(maps["drift"], "inferno"))
    if maps["field"] is not None:
        _save_png(out_dir / "field.png", colorize(maps["field"], "inferno"))
        files["field"] = "field.png"

    panels = [(frame, f"frame {pixel_index} (latent t*={t_star})"), (maps["drift"], f"drift map (tau={tau})")]
    if maps["field"] is not None:
        panels.append((maps["field"], "field map (prior)"))
    height, width = frame.shape[:2]
    panel_w = 3.2
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_w * len(panels) + 0.6, panel_w * height / width + 1.0), squeeze=False)
    for ax, (image, title) in zip(axes[0], panels):
        if image.ndim == 2:
            ax.imshow(image, cmap="inferno", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    mappable = cm.ScalarMappable(norm=colors.Normalize(0.0, 1.0), cmap="inferno")
    # A bar beside the last map, exactly as tall as it, without shrinking any panel.
    bar = fig.colorbar(mappable, cax=axes[0][-1].inset_axes([1.04, 0.0, 0.05, 1.0]))
    bar.set_label("normalised response", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    subtitle = video_name
    if r is not None and not math.isnan(r):
        subtitle += f"   Pearson r = {r:+.3f}"
    elif maps["field"] is None:
        subtitle += "   (no prior: drift map only)"
    if prompt:
        subtitle += f"\n{prompt[:90]!r}"
    fig.suptitle(subtitle, fontsize=9)
    with atomic_path(out_dir / "heatmap.png") as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return files


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    from lamo_cli.fileio import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")


def _per_latent_maps(z: torch.Tensor, tau: int, field, text_pooled) -> tuple[list[torch.Tensor], Optional[list[torch.Tensor]]]:
    """One drift map per latent frame (pair t, t+tau; the last tau frames reuse the last pair) and,
    with a field, one field map per latent frame."""
    from lamo_cli.motion.heatmap import drift_heatmap, field_heatmap

    frames = z.shape[0]
    drift = [drift_heatmap(z, min(t, frames - tau - 1), tau) for t in range(frames)]
    fields = None
    if field is not None:
        fields = [field_heatmap(z, t, field, text_pooled) for t in range(frames)]
    return drift, fields


def _write_overlay(path: Path, frames: np.ndarray, z: torch.Tensor, tau: int, field, text_pooled, fmt, record: dict) -> None:
    """Every pixel frame blended with the maps of the latent frame that covers it (latent 0 covers
    pixel 0, latent t covers pixels 4t-3..4t); each map kind normalised over the whole clip so
    brightness compares across time. Drift on the left, field (if any) on the right."""
    from lamo_cli.data.mp4 import write_mp4
    from lamo_cli.motion.heatmap import colorize, upsample

    drift, fields = _per_latent_maps(z, tau, field, text_pooled)
    size = frames.shape[1:3]
    columns = [drift] if fields is None else [drift, fields]
    coloured = []
    for maps in columns:
        stack = torch.stack([upsample(m.float().cpu(), size) for m in maps])
        low, high = stack.min(), stack.max()
        stack = (stack - low) / (high - low) if high > low else torch.zeros_like(stack)
        coloured.append([colorize(m, "inferno").astype(np.float32) for m in stack])
    out = []
    latent_count = z.shape[0]
    for p, frame in enumerate(frames):
        t = min(math.ceil(p / fmt.temporal_compression), latent_count - 1)
        base = frame.astype(np.float32)
        tiles = [((1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * col[t]) for col in coloured]
        out.append(np.concatenate(tiles, axis=1).round().clip(0, 255).astype(np.uint8))
    fps = float((record.get("settings") or {}).get("fps") or fmt.fps)
    write_mp4(path, np.stack(out), fps=fps)
