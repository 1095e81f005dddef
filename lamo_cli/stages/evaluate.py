"""`lamo eval`: the physics score of physics-world videos (generated or real).

For each video: its caption (NAME.txt beside it, or the "prompt" of a `lamo generate` sidecar
NAME.json), its frames (decord), then `score_frames` (lamo_cli.eval.physics): law checks, attribute
checks, SA / PC / Joint. Writes report.json and a bar chart into --out.

Levels (PHYSICS_WORLD.md): `reference=True` also scores the ground-truth renders of every video
that has a NAME.state.json sidecar (the tracker's floor). The VAE-reconstruction floor and
violation-of-expectation accuracy need a backbone / a model's denoising loss and are left to the
stages that load one: they can call `score_frames` on reconstructed frames and use
`lamo_cli.data.world.voe_pairs`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lamo_cli.data import world
from lamo_cli.errors import LamoError
from lamo_cli.eval import physics


@dataclass
class EvalReport:
    overall: dict
    per_family: dict
    videos: list[dict]
    skipped: list[dict]
    reference: dict | None = None
    report_path: str | None = None
    chart_path: str | None = None
    extra: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        out: dict[str, Any] = {
            "overall": self.overall,
            "per_family": self.per_family,
            "videos": self.videos,
            "skipped": self.skipped,
            "levels": {"generated_or_given": {"overall": self.overall, "per_family": self.per_family}},
            "thresholds": physics.THRESHOLDS,
            "world": {"g": world.G, "dt": world.DT, "fps": world.FPS, "floor_y": world.FLOOR_Y,
                      "px_per_unit": "frame height"},
            "definitions": {
                "SA": "percent of videos whose every stated attribute checks out",
                "PC": "percent of videos that are dynamic and pass every applicable law check",
                "Joint": "percent of videos with both SA and PC",
                "dynamic": "percent of videos whose objects move at least dynamic_px",
            },
        }
        if self.reference is not None:
            out["reference"] = self.reference
            out["levels"]["ground_truth"] = {k: self.reference[k] for k in ("overall", "per_family")}
        out.update(self.extra)
        return out


def find_caption(video: Path) -> str | None:
    """NAME.txt beside the video, else the "prompt" (or "caption") of a NAME.json sidecar."""
    text_path = video.with_suffix(".txt")
    if text_path.is_file():
        caption = text_path.read_text(encoding="utf-8", errors="replace").strip()
        if caption:
            return caption
    json_path = video.with_suffix(".json")
    if json_path.is_file():
        try:
            record = json.loads(json_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(record, dict):
            for key in ("prompt", "caption"):
                value = record.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
    return None


def read_frames(video: Path) -> np.ndarray:
    """uint8 [F, H, W, 3] with decord; raises ValueError with a short reason when unreadable."""
    if video.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    import decord

    try:
        reader = decord.VideoReader(str(video))
        count = len(reader)
        if count < 4:
            raise ValueError(f"only {count} frames; need at least 4")
        return reader.get_batch(list(range(count))).asnumpy()
    except ValueError:
        raise
    except Exception as exc:  # decord raises its own error types for corrupt files
        raise ValueError(f"unreadable video ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'no detail'})") from None


def score_video(video: Path) -> dict:
    """Score one file; raises ValueError(reason) when it cannot be scored."""
    if video.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    caption = find_caption(video)
    if caption is None:
        raise ValueError("no caption (NAME.txt, or NAME.json with a \"prompt\") beside the video")
    stated = world.parse_caption(caption)
    if stated is None:
        raise ValueError(f"caption is not a physics-world caption: {caption[:80]!r}")
    frames = read_frames(video)
    result = physics.score_frames(frames, caption, stated)
    return {"path": str(video), **result}


def score_reference(video: Path) -> dict | None:
    """The ground-truth render of a world clip from its NAME.state.json, scored (no codec)."""
    state_path = video.with_name(video.stem + ".state.json")
    if not state_path.is_file():
        return None
    clip = world.clip_from_state(json.loads(state_path.read_text(encoding="utf-8")))
    result = physics.score_frames(world.render_clip(clip), clip.caption)
    return {"path": str(state_path), **result}


def evaluate(
    videos: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = "lamo-eval",
    reference: bool = False,
    progress: bool = True,
) -> EvalReport:
    """Score videos (files or folders of mp4) and write report.json + chart.png into `out`."""
    from lamo_cli.data.video import discover_videos

    files, not_videos = discover_videos(list(videos))
    skipped = [{"path": str(p), "reason": "not a video file"} for p in not_videos]
    results: list[dict] = []
    references: list[dict] = []
    missing_state = 0

    def run_one(video: Path) -> None:
        nonlocal missing_state
        try:
            results.append(score_video(video))
        except ValueError as exc:
            skipped.append({"path": str(video), "reason": str(exc)})
            return
        if reference:
            ref = score_reference(video)
            if ref is None:
                missing_state += 1
            else:
                references.append(ref)

    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("videos", total=len(files))
            for video in files:
                run_one(video)
                bar.advance(task)
    else:
        for video in files:
            run_one(video)

    summary = physics.aggregate(results)
    ref_block = None
    if reference:
        ref_summary = physics.aggregate(references)
        ref_block = {
            "level": "ground_truth",
            "note": "renders re-made from NAME.state.json sidecars (no codec): the tracker's floor. "
                    "The VAE-reconstruction floor needs a backbone and is not computed here.",
            "without_state": missing_state,
            **ref_summary,
        }
    report = EvalReport(summary["overall"], summary["per_family"], results, skipped, ref_block)
    if out is not None:
        from lamo_cli.fileio import write_json

        out_dir = Path(out)
        if out_dir.exists() and not out_dir.is_dir():
            raise LamoError(f"--out {out_dir}: exists and is not a folder; choose a folder path")
        out_dir.mkdir(parents=True, exist_ok=True)
        report.report_path = str(out_dir / "report.json")
        if results:
            report.chart_path = str(out_dir / "chart.png")
            write_chart(report, out_dir / "chart.png")
        write_json(report.report_path, report.as_json())
    if not results:
        first = skipped[0]["reason"] if skipped else "no videos"
        raise LamoError(
            f"nothing could be scored: all {len(skipped)} inputs were skipped (first: {first}); "
            "give world videos with a caption in NAME.txt or a NAME.json with a \"prompt\""
        )
    return report


def write_chart(report: EvalReport, path: Path) -> None:
    """Grouped bars of SA / PC / Joint per family and overall (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lamo_cli.fileio import atomic_path

    groups = list(report.per_family) + ["overall"]
    blocks = [report.per_family[g] for g in report.per_family] + [report.overall]
    metrics = ("SA", "PC", "Joint")
    width = 0.26
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) + 1.5), 3.6))
    for i, metric in enumerate(metrics):
        values = [b[metric] or 0.0 for b in blocks]
        xs = [g + (i - 1) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=metric)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{g}\n(n={b['n']})" for g, b in zip(groups, blocks)], fontsize=8)
    ax.set_ylim(0, 118)
    ax.set_ylabel("% of videos")
    ax.set_title("physics score: semantic adherence (SA), physical commonsense (PC), both")
    ax.legend(loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
