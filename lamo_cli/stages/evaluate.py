"""`lamo eval`: the physics score of physics-world videos (generated or real).

For each video: its caption (NAME.txt beside it, or the "prompt" of a `lamo generate` sidecar
NAME.json), its frames (decord), then `score_frames` (lamo_cli.eval.physics): law checks, attribute
checks, SA / PC / Joint. Writes report.json and a bar chart into --out.

Levels (PHYSICS_WORLD.md): `reference=True` also scores the ground-truth renders of every video
that has a NAME.state.json sidecar (the tracker's floor) and, given a `backbone`, their VAE
reconstructions in the backbone's video format (the autoencoder's floor).
`evaluate_voe` is the violation-of-expectation accuracy (lamo_cli.eval.voe) of a backbone, optionally
with a fine-tune run applied; it writes voe.json.
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
    vae_reconstruction: dict | None = None
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
        if self.vae_reconstruction is not None:
            out["vae_reconstruction"] = self.vae_reconstruction
            out["levels"]["vae_reconstruction"] = {k: self.vae_reconstruction[k] for k in ("overall", "per_family")}
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


def state_path_of(video: Path) -> Path:
    return video.with_name(video.stem + ".state.json")


def load_state_clip(video: Path) -> world.Clip | None:
    """The world clip of NAME.state.json beside the video, or None when there is no sidecar."""
    state_path = state_path_of(video)
    if not state_path.is_file():
        return None
    return world.clip_from_state(json.loads(state_path.read_text(encoding="utf-8")))


def score_reference(video: Path) -> dict | None:
    """The ground-truth render of a world clip from its NAME.state.json, scored (no codec)."""
    clip = load_state_clip(video)
    if clip is None:
        return None
    result = physics.score_frames(world.render_clip(clip), clip.caption)
    return {"path": str(state_path_of(video)), **result}


def score_vae_reconstructions(clips: list[tuple[world.Clip, str]], backbone) -> list[dict | ValueError]:
    """Each (clip, source) rendered in the backbone's format (first num_frames frames, its height),
    VAE-encoded and decoded (all in one call), scored with the clip's caption; a clip that cannot
    fit gets its ValueError(reason) instead."""
    from lamo_cli.eval.voe import vae_reconstructions

    frames = vae_reconstructions(backbone, [clip for clip, _ in clips])
    return [item if isinstance(item, ValueError) else {"path": source, **physics.score_frames(item, clip.caption)}
            for (clip, source), item in zip(clips, frames)]


def _load_backbone(backbone):
    """A backbone object as is; a name / folder loaded; None -> the default backbone."""
    from lamo_cli.backbones import cogvideox

    if backbone is None or isinstance(backbone, (str, os.PathLike)):
        return cogvideox.load_backbone(str(backbone) if backbone is not None else cogvideox.default_backbone())
    return backbone


def evaluate(
    videos: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = "lamo-eval",
    reference: bool = False,
    progress: bool = True,
    backbone=None,
) -> EvalReport:
    """Score videos (files or folders of mp4) and write report.json + chart.png into `out`.

    `backbone` (name, folder or loaded backbone; only with reference=True) adds the
    VAE-reconstruction level: each ground-truth clip re-rendered in the backbone's format, encoded
    and decoded by its VAE, and scored."""
    from lamo_cli.data.video import discover_videos

    if backbone is not None and not reference:
        raise LamoError("--backbone with VIDEOS is used for the VAE-reconstruction floor: add --reference (or use --voe)")
    files, not_videos = discover_videos(list(videos))
    skipped = [{"path": str(p), "reason": "not a video file"} for p in not_videos]
    results: list[dict] = []
    references: list[dict] = []
    reconstructions: list[dict] = []
    vae_skipped: list[dict] = []
    missing_state = 0
    vae_model = _load_backbone(backbone) if backbone is not None else None
    # ground-truth clips wait here to be reconstructed together, as many as the VAE takes at once
    waiting: list[tuple[world.Clip, str]] = []
    per_vae_call = vae_model.clips_per_vae_call() if vae_model is not None else 1

    def reconstruct_waiting() -> None:
        for (_, source), scored in zip(waiting, score_vae_reconstructions(waiting, vae_model)):
            if isinstance(scored, ValueError):
                vae_skipped.append({"path": source, "reason": str(scored)})
            else:
                reconstructions.append(scored)
        waiting.clear()

    def run_one(video: Path) -> None:
        nonlocal missing_state
        try:
            results.append(score_video(video))
        except ValueError as exc:
            skipped.append({"path": str(video), "reason": str(exc)})
            return
        if reference:
            clip = load_state_clip(video)
            if clip is None:
                missing_state += 1
                return
            source = str(state_path_of(video))
            references.append({"path": source, **physics.score_frames(world.render_clip(clip), clip.caption)})
            if vae_model is not None:
                waiting.append((clip, source))
                if len(waiting) == per_vae_call:
                    reconstruct_waiting()

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
    if waiting:
        reconstruct_waiting()

    summary = physics.aggregate(results)
    ref_block = None
    if reference:
        ref_summary = physics.aggregate(references)
        vae_note = ("The VAE-reconstruction floor is in vae_reconstruction." if vae_model is not None
                    else "The VAE-reconstruction floor needs --backbone and is not computed here.")
        ref_block = {
            "level": "ground_truth",
            "note": "renders re-made from NAME.state.json sidecars (no codec): the tracker's floor. " + vae_note,
            "without_state": missing_state,
            **ref_summary,
        }
    vae_block = None
    if vae_model is not None:
        fmt = vae_model.video_format
        vae_block = {
            "level": "vae_reconstruction",
            "note": f"ground truth re-rendered at {fmt.height} px, first {fmt.num_frames} frames (the backbone's format), "
                    "VAE-encoded (posterior mean) and decoded: the autoencoder's floor",
            "backbone": vae_model.name,
            "video_format": dict(fmt.__dict__),
            "skipped": vae_skipped,
            **physics.aggregate(reconstructions),
        }
    report = EvalReport(summary["overall"], summary["per_family"], results, skipped, ref_block, vae_block)
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


def report_levels(report: EvalReport) -> list[tuple[str, dict]]:
    """(level name, overall block) for the generated videos and each reference level present."""
    levels = [("generated", report.overall)]
    if report.reference is not None:
        levels.append(("ground truth", report.reference["overall"]))
    if report.vae_reconstruction is not None:
        levels.append(("VAE recon.", report.vae_reconstruction["overall"]))
    return levels


def write_chart(report: EvalReport, path: Path) -> None:
    """Grouped bars of SA / PC / Joint per family and overall (PNG); with reference levels, a second
    panel compares the overall scores of generated videos, ground truth and VAE reconstructions.
    Below, the pass rate of every law check at each level: which laws keep PC where it is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lamo_cli.fileio import atomic_path

    groups = list(report.per_family) + ["overall"]
    blocks = [report.per_family[g] for g in report.per_family] + [report.overall]
    metrics = ("SA", "PC", "Joint")
    width = 0.26
    levels = report_levels(report)
    laws = [law for law in (report.overall.get("law_pass_rates") or {})
            if any((b.get("law_pass_rates") or {}).get(law) is not None for _, b in levels)]
    top_width = max(5.0, 1.2 * len(groups) + 1.5) + (1.2 * len(levels) + 1.5 if len(levels) > 1 else 0.0)
    fig = plt.figure(figsize=(max(top_width, 0.75 * len(laws) + 1.5), 3.6 + (3.0 if laws else 0.0)))
    grid = fig.add_gridspec(2 if laws else 1, 2 if len(levels) > 1 else 1, height_ratios=[3.6, 3.0] if laws else None,
                            width_ratios=[max(2, len(groups)), max(2, len(levels))] if len(levels) > 1 else None)
    ax = fig.add_subplot(grid[0, 0])
    if len(levels) > 1:
        level_ax = fig.add_subplot(grid[0, 1])
        for i, metric in enumerate(metrics):
            values = [b[metric] or 0.0 for _, b in levels]
            level_ax.bar([g + (i - 1) * width for g in range(len(levels))], values, width, label=metric)
        level_ax.set_xticks(range(len(levels)))
        level_ax.set_xticklabels([f"{name}\n(n={b['n']})" for name, b in levels], fontsize=8)
        level_ax.set_ylim(0, 118)
        level_ax.set_title("levels (overall)", fontsize=9)
    for i, metric in enumerate(metrics):
        values = [b[metric] or 0.0 for b in blocks]
        xs = [g + (i - 1) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=metric)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{g}\n(n={b['n']})" for g, b in zip(groups, blocks)], fontsize=8)
    ax.set_ylim(0, 118)
    ax.set_ylabel("% of videos")
    ax.set_title("physics score: semantic adherence (SA), physical commonsense (PC), both" if len(levels) == 1
                 else "physics score per family: SA, PC, Joint", fontsize=None if len(levels) == 1 else 9)
    ax.legend(loc="upper center", ncol=3, fontsize=8, frameon=False)
    if laws:
        law_ax = fig.add_subplot(grid[1, :])
        bar = 0.8 / len(levels)
        for i, (name, block) in enumerate(levels):
            rates = block.get("law_pass_rates") or {}
            law_ax.bar([k + (i - (len(levels) - 1) / 2) * bar for k in range(len(laws))],
                       [rates.get(law) or 0.0 for law in laws], bar, label=name)
        law_ax.set_xticks(range(len(laws)))
        law_ax.set_xticklabels(laws, fontsize=8)
        law_ax.set_ylim(0, 118)
        law_ax.set_ylabel("% passing")
        law_ax.set_title("law checks, overall (a video passes PC when it passes every law of its family)", fontsize=9)
        law_ax.legend(loc="upper center", ncol=len(levels), fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ==================================================================== several sets side by side
COMPARED = ("SA", "PC", "Joint", "dynamic")


@dataclass
class Comparison:
    """`compare_sets`' answer: one row per scored set (in the order given) and the sets skipped."""
    sets: list[dict]
    skipped: list[dict]
    path: str | None = None
    chart_path: str | None = None


def set_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short unique names of the sets: the folder or file name, with its parent where names repeat
    (RUN_A/step-000500 and RUN_B/step-000500), and a position where even that repeats."""
    paths = [Path(p) for p in paths]
    names = [p.name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" if p.parent.name else p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i}:{name}" for i, name in enumerate(names)]
    return names


def compare_sets(sets: Sequence[str | os.PathLike], out: str | os.PathLike = "lamo-eval", progress: bool = True) -> Comparison:
    """Score each set (a folder or a file of videos) on its own, into OUT/LABEL/report.json, and put
    them side by side: SA / PC / Joint / dynamic with a bootstrap 95% interval over the set's videos,
    the medians and the law-check pass rates; written to OUT/compare.json and OUT/compare.png (e.g.
    the validation videos of a run, step by step). A set with nothing to score is skipped and listed."""
    from lamo_cli.eval.stats import metric_stats
    from lamo_cli.fileio import write_json

    out = Path(out)
    rows, skipped = [], []
    for label, path in zip(set_labels(sets), sets):
        folder = out / label.replace("/", "__").replace(":", "-")
        try:
            report = evaluate([path], out=folder, progress=progress)
        except LamoError as exc:
            skipped.append({"set": label, "path": str(path), "reason": str(exc)})
            continue
        row = {"set": label, "path": str(path), "report": report.report_path, "n": report.overall["n"],
               "medians": report.overall.get("medians", {}), "law_pass_rates": report.overall.get("law_pass_rates", {}),
               "skipped_videos": len(report.skipped)}
        for metric in COMPARED:
            stats = metric_stats([[bool(video[metric]) for video in report.videos]])
            row[metric] = {"percent": stats["mean"], "ci": stats["ci"]}
        rows.append(row)
    comparison = Comparison(rows, skipped)
    if rows:
        comparison.path = str(out / "compare.json")
        write_json(comparison.path, {"sets": rows, "skipped": skipped,
                                     "note": "percent of each set's videos; ci: percentile bootstrap 95% interval over its videos"})
        comparison.chart_path = str(out / "compare.png")
        write_compare_chart(rows, out / "compare.png")
    return comparison


def write_compare_chart(rows: list[dict], path: Path) -> None:
    """SA / PC / Joint of each set in order, with their bootstrap intervals (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lamo_cli.fileio import atomic_path

    xs = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2.0), 3.6))
    for metric in ("SA", "PC", "Joint"):
        values = np.array([row[metric]["percent"] for row in rows])
        low = np.array([row[metric]["ci"][0] for row in rows])
        high = np.array([row[metric]["ci"][1] for row in rows])
        ax.plot(xs, values, marker="o", label=metric)
        ax.fill_between(xs, low, high, alpha=0.15)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{row['set']}\n(n={row['n']})" for row in rows], fontsize=8, rotation=30 if len(rows) > 6 else 0)
    ax.set_ylim(-2, 105)
    ax.set_ylabel("% of videos")
    ax.set_title("physics score per set (bands: bootstrap 95% over videos)", fontsize=9)
    ax.legend(loc="upper left", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ==================================================================== violation of expectation
def evaluate_voe(
    backbone=None,
    lora: str | os.PathLike | None = None,
    n: int = 24,
    seed: int = 0,
    out: str | os.PathLike | None = "lamo-eval",
    num_timesteps: int = 8,
    families: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """VoE accuracy of a backbone (name, folder, loaded object; None -> the default) with an optional
    fine-tune run applied, over `n` test-split pairs. Writes voe.json into `out`; returns its content."""
    from lamo_cli.eval.voe import default_timesteps, voe_accuracy

    if n < 1:
        raise LamoError(f"--n {n}: give at least 1 pair")
    if num_timesteps < 1:
        raise LamoError(f"--timesteps {num_timesteps}: give at least 1")
    if lora is not None and not Path(lora).is_dir():
        raise LamoError(f"--lora {lora}: no such run folder; give a `lamo finetune --out` folder")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise LamoError(f"--out {out_dir}: exists and is not a folder; choose a folder path")
    model = _load_backbone(backbone)
    applied = None
    if lora is not None:
        from lamo_cli.stages.finetune import load_run_into

        applied = load_run_into(model, lora)
    fmt = model.video_format
    if fmt.width < fmt.height:
        raise LamoError(f"--backbone {model.name}: format {fmt.width}x{fmt.height} is narrower than tall; VoE renders the square world at its height")
    try:
        pairs = world.voe_pairs(n, seed=seed, split="test", families=families, num_frames=fmt.num_frames, size=fmt.height)
    except ValueError as exc:
        raise LamoError(f"--voe: cannot make the world pairs ({exc})") from None
    timesteps = default_timesteps(num_timesteps)

    def run(step=None) -> dict:
        try:
            return voe_accuracy(model, pairs, timesteps, seed=seed, progress=step)
        except ValueError as exc:
            raise LamoError(f"--voe with --backbone {model.name}: {exc}") from None

    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("voe"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("pairs", total=len(pairs))
            result = run(lambda k: bar.advance(task, k))
    else:
        result = run()
    record = {
        "backbone": model.describe(),
        "lora": applied,
        "n": len(pairs),
        "split": "test",
        "definition": "accuracy = share of (possible, impossible twin) pairs, same caption, where the caption-conditioned "
                      "denoising loss (mean over fixed timesteps, identical noise within a pair) is higher for the twin; "
                      "mean_gap = mean of loss(impossible) - loss(possible); 95% intervals by bootstrap over pairs",
        **result,
    }
    if out_dir is not None:
        from lamo_cli.fileio import write_json

        out_dir.mkdir(parents=True, exist_ok=True)
        record["voe_path"] = str(out_dir / "voe.json")
        write_json(record["voe_path"], record)
    return record
