"""`lamo demo`: the whole LaMo chain on the embedded default, ending with a comparison table.

world (train + test) -> encode -> fit-prior -> finetune without / with the Motion Drift Loss ->
generate each run without / with Motion Prior Guidance on the test captions -> heatmap -> eval.
Every arm uses the same captions, seeds and steps. Settings come from the backbone's recipe
(`recipes/<backbone>.toml`), so the demo runs exactly what the stage commands would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from lamo_cli.errors import LamoError

_console = Console(stderr=True)

ARMS = (  # (name, fine-tune run, guided)
    ("plain", "run-plain", False),
    ("+drift", "run-drift", False),
    ("+guidance", "run-plain", True),
    ("both", "run-drift", True),
)


@dataclass
class DemoSummary:
    out: Path
    backbone: str
    table: list[dict[str, Any]] = field(default_factory=list)  # one row per arm (+ ground truth)
    heatmap_dir: Path | None = None
    chart: Path | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)


def _frames_for_world(num_frames: int) -> int:
    """The world writes 8k+1 frames; give it at least as many as the backbone samples."""
    k = max(1, -(-(num_frames - 1) // 8))
    return 8 * k + 1


def demo(
    out: str = "lamo-demo",
    backbone: str | None = None,
    train_clips: int = 48,
    test_prompts: int = 6,
    seed: int = 0,
    progress: bool = True,
) -> DemoSummary:
    from lamo_cli.backbones import default_backbone, load_backbone
    from lamo_cli.fileio import write_json
    from lamo_cli.recipes import default_recipe_for, load_recipe
    from lamo_cli.stages.encode import encode
    from lamo_cli.stages.evaluate import evaluate
    from lamo_cli.stages.finetune import finetune
    from lamo_cli.stages.fit_prior import fit_prior
    from lamo_cli.stages.generate import generate
    from lamo_cli.stages.heatmap import heatmap
    from lamo_cli.stages.world import make_world

    if train_clips < 2 or test_prompts < 1:
        raise LamoError("--train-clips must be >= 2 and --test-prompts >= 1")
    started = time.time()
    backbone = backbone or default_backbone()
    model = load_backbone(backbone, device="cpu")
    fmt = model.video_format
    recipe = load_recipe(default_recipe_for(backbone) or "tiny-random")
    root = Path(out)
    summary = DemoSummary(root, backbone)
    timings = summary.stage_seconds

    def timed(name: str, fn, *args, **kwargs):
        if progress:
            _console.rule(f"[bold]{name}[/]", align="left")
        t0 = time.time()
        result = fn(*args, **kwargs)
        timings[name] = timings.get(name, 0.0) + time.time() - t0
        return result

    world_frames = _frames_for_world(fmt.num_frames)
    timed("world", make_world, root / "world-train", train_clips, split="train", seed=seed, num_frames=world_frames, size=fmt.height, progress=progress)
    timed("world", make_world, root / "world-test", test_prompts, split="test", seed=seed, num_frames=world_frames, size=fmt.height, progress=progress)
    timed("encode", encode, [root / "world-train"], backbone=model, out=root / "cache", progress=progress)
    timed("fit-prior", fit_prior, cache=root / "cache", out=root / "prior", seed=seed, progress=progress, **_fresh(recipe.get("fit_prior", {})))
    finetune_settings = _fresh(recipe.get("finetune", {}))
    finetune_settings.pop("drift_weight", None)
    for run, weight in (("run-plain", 0.0), ("run-drift", 0.4)):
        timed("finetune", finetune, cache=root / "cache", backbone=backbone, out=root / run, drift_weight=weight, seed=seed,
              progress=progress, resume=(root / run / "checkpoints").is_dir() and not (root / run / "run.json").is_file(),
              **finetune_settings)

    prompts_file = root / "test-prompts.txt"
    captions = [p.read_text().strip() for p in sorted((root / "world-test").glob("*.txt"))]
    prompts_file.write_text("\n".join(captions) + "\n")
    generate_settings = _fresh(recipe.get("generate", {}))
    guidance_scale = generate_settings.pop("guidance_scale", 15.0)
    for arm, run, guided in ARMS:
        timed("generate", generate, prompts_file=str(prompts_file), backbone=backbone, lora=str(root / run),
              prior=str(root / "prior") if guided else "none", guidance_scale=guidance_scale if guided else 0.0,
              out=str(root / "videos" / _slug(arm)), progress=progress, **generate_settings)

    first_video = sorted((root / "videos" / _slug("+drift")).glob("*.mp4"))[0]
    summary.heatmap_dir = timed("heatmap", heatmap, str(first_video), prior=str(root / "prior"), out=str(root / "heatmap")).out_dir

    reference = timed("eval", evaluate, [root / "world-test"], out=root / "eval" / "ground-truth", reference=False, progress=progress)
    summary.table.append(_row("ground truth (renders)", reference))
    for arm, _, _ in ARMS:
        report = timed("eval", evaluate, [root / "videos" / _slug(arm)], out=root / "eval" / _slug(arm), progress=progress)
        summary.table.append(_row(arm, report))
    summary.chart = _chart(summary.table, root / "comparison.png", backbone)
    summary.seconds = time.time() - started
    write_json(root / "demo.json", {"backbone": backbone, "table": summary.table, "stage_seconds": timings, "seconds": summary.seconds,
                                    "train_clips": train_clips, "test_prompts": test_prompts, "seed": seed, "recipe": recipe})
    return summary


def _fresh(table: dict[str, Any]) -> dict[str, Any]:
    """A recipe table minus keys the demo sets itself (paths, resume, seed, backbone)."""
    return {k: v for k, v in table.items() if k not in ("cache", "out", "backbone", "resume", "seed", "prompt", "prompts_file", "lora", "prior")}


def _slug(arm: str) -> str:
    return arm.replace("+", "with-")


def _row(name: str, report) -> dict[str, Any]:
    overall = report.overall
    return {"arm": name, "n": overall.get("n"), "SA": overall.get("SA"), "PC": overall.get("PC"), "Joint": overall.get("Joint"), "dynamic": overall.get("dynamic")}


def _chart(table: list[dict[str, Any]], path: Path, backbone: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    from lamo_cli.fileio import atomic_path

    metrics = ("SA", "PC", "Joint", "dynamic")
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(table)
    x = np.arange(len(metrics))
    for i, row in enumerate(table):
        values = [float(row.get(m) or 0.0) for m in metrics]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=row["arm"])
    ax.set_xticks(x, metrics)
    ax.set_ylabel("% of videos")
    ax.set_ylim(0, 105)
    ax.set_title(f"lamo demo on {backbone}: physics score per arm")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png.tmp") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
