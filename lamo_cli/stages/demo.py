"""`lamo demo`: the whole LaMo chain on the embedded default, ending with a comparison table.

world (train + test) -> encode -> fit-prior -> finetune without / with the Motion Drift Loss ->
generate each run without / with Motion Prior Guidance on the test captions -> heatmap -> eval.
Every arm uses the same captions, sampling seeds and steps. Settings come from a recipe:
`recipes/<backbone>-demo.toml` when there is one (the same chain with fewer steps, so that it
finishes in minutes), else the backbone's own `recipes/<backbone>.toml`, or `recipe` when given.

The ablation of PHYSICS_WORLD.md ("The experiment it enables"): `seeds` are TRAINING seeds; each
one gets its own prior-sN, run-plain-sN, run-drift-sN and videos/<arm>-sN (world, cache, captions and
sampling noise are shared). demo.json holds per-seed scores, mean, std and a bootstrap 95% CI over
prompts (lamo_cli.eval.stats) per arm; `split` picks the evaluation prompts (world-test or world-ood).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from lamo_cli.errors import LamoError

_console = Console(stderr=True)

ARMS = (  # (name, fine-tune run, guided)
    ("plain", "run-plain", False),
    ("+drift", "run-drift", False),
    ("+guidance", "run-plain", True),
    ("both", "run-drift", True),
)
GROUND_TRUTH = "ground truth (renders)"
METRICS = ("SA", "PC", "Joint", "dynamic")
ERROR_LAWS = ("accel", "smooth")  # medians reported beside the pass rates: acceleration error, trajectory residual px
SPLITS = ("test", "ood")


@dataclass
class DemoSummary:
    out: Path
    backbone: str
    # one row per arm (+ ground truth): SA/PC/Joint/dynamic means, and "stats" (per-seed, std, ci)
    table: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    split: str = "test"
    heatmap_dir: Path | None = None
    chart: Path | None = None
    recipe: Path | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)


def _frames_for_world(num_frames: int) -> int:
    """The world writes 8k+1 frames; give it at least as many as the backbone samples."""
    k = max(1, -(-(num_frames - 1) // 8))
    return 8 * k + 1


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """"0,1,2" -> [0, 1, 2]; raises LamoError naming --seeds on anything else."""
    if not isinstance(text, str):
        seeds = [int(s) for s in text]
    else:
        try:
            seeds = [int(part) for part in text.replace(" ", "").split(",") if part != ""]
        except ValueError:
            raise LamoError(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds:
        raise LamoError("--seeds is empty: give at least one training seed, e.g. --seeds 0")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise LamoError(f"--seeds {text!r}: seeds must be distinct non-negative integers")
    return seeds


def demo(
    out: str = "lamo-demo",
    backbone: str | None = None,
    train_clips: int = 48,
    test_prompts: int = 6,
    seeds: str | Sequence[int] = (0,),
    split: str = "test",
    world_seed: int = 0,
    recipe: str | Path | None = None,
    progress: bool = True,
) -> DemoSummary:
    """Run every arm for every training seed in `seeds`; world, captions and sampling noise are the
    same for all arms and seeds. Evaluation prompts come from the `split` world (test or ood).
    `recipe` (path or name in recipes/) holds the stage settings; default `demo_recipe_for(backbone)`."""
    from lamo_cli.backbones import default_backbone, load_backbone
    from lamo_cli.eval.physics import law_medians
    from lamo_cli.eval.stats import RESAMPLES, arm_stats
    from lamo_cli.fileio import write_json, write_text
    from lamo_cli.recipes import find_recipe, load_recipe
    from lamo_cli.stages.encode import encode
    from lamo_cli.stages.evaluate import evaluate
    from lamo_cli.stages.finetune import finetune
    from lamo_cli.stages.fit_prior import fit_prior
    from lamo_cli.stages.generate import generate
    from lamo_cli.stages.heatmap import heatmap
    from lamo_cli.stages.world import make_world

    if train_clips < 2 or test_prompts < 1:
        raise LamoError("--train-clips must be >= 2 and --test-prompts >= 1")
    if split not in SPLITS:
        raise LamoError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    seeds = parse_seeds(seeds)
    started = time.time()
    backbone = backbone or default_backbone()
    recipe_path = find_recipe(recipe) if recipe is not None else demo_recipe_for(backbone)
    settings = load_recipe(recipe_path)
    model = load_backbone(backbone, device="cpu")
    fmt = model.video_format
    root = Path(out)
    summary = DemoSummary(root, backbone, seeds=seeds, split=split, recipe=recipe_path)
    timings = summary.stage_seconds

    def timed(name: str, fn, *args, **kwargs):
        if progress:
            _console.rule(f"[bold]{name}[/]", align="left")
        t0 = time.time()
        result = fn(*args, **kwargs)
        timings[name] = timings.get(name, 0.0) + time.time() - t0
        return result

    world_frames = _frames_for_world(fmt.num_frames)
    eval_world = root / f"world-{split}"
    timed("world", make_world, root / "world-train", train_clips, split="train", seed=world_seed, num_frames=world_frames, size=fmt.height, progress=progress)
    timed("world", make_world, eval_world, test_prompts, split=split, seed=world_seed, num_frames=world_frames, size=fmt.height, progress=progress)
    timed("encode", encode, [root / "world-train"], backbone=model, out=root / "cache", progress=progress)

    # one prompts file and one sampling seed for every arm and every training seed
    world_stems = [p.stem for p in sorted(eval_world.glob("*.txt"))]
    captions = [(eval_world / f"{stem}.txt").read_text().strip() for stem in world_stems]
    prompts_file = root / f"{split}-prompts.txt"
    write_text(prompts_file, "\n".join(captions) + "\n")
    generate_settings = recipe_options(settings.get("generate", {}))
    guidance_scale = generate_settings.pop("guidance_scale", 15.0)
    generate_seed = int(settings.get("generate", {}).get("seed", 42))
    finetune_settings = recipe_options(settings.get("finetune", {}))
    drift_weight = float(finetune_settings.pop("drift_weight", 0.4))

    passes: dict[str, list[dict[str, list[bool]]]] = {arm: [] for arm, _, _ in ARMS}  # arm -> per seed
    scored: dict[str, list[dict]] = {arm: [] for arm, _, _ in ARMS}  # arm -> every scored video of every seed
    for seed in seeds:
        prior = root / f"prior-s{seed}"
        if not finished_prior(prior):  # a rerun in the same folder reuses what is finished
            timed("fit-prior", fit_prior, cache=root / "cache", out=prior, seed=seed, progress=progress, **recipe_options(settings.get("fit_prior", {})))
        for run, weight in (("run-plain", 0.0), ("run-drift", drift_weight)):
            run_dir = root / f"{run}-s{seed}"
            if not finished_run(run_dir):
                timed("finetune", finetune, cache=root / "cache", backbone=backbone, out=run_dir, drift_weight=weight, seed=seed,
                      progress=progress, resume=(run_dir / "checkpoints").is_dir(), **finetune_settings)
        for arm, run, guided in ARMS:
            videos = _videos_dir(root, arm, seed)
            timed("generate", generate, prompts_file=str(prompts_file), backbone=backbone, lora=str(root / f"{run}-s{seed}"),
                  prior=str(prior) if guided else "none", guidance_scale=guidance_scale if guided else 0.0,
                  seed=generate_seed, out=str(videos), progress=progress, **generate_settings)
            report = timed("eval", evaluate, [videos], out=root / "eval" / videos.name, progress=progress)
            passes[arm].append(pass_row(report.videos, len(captions), generated_index))
            scored[arm].extend(report.videos)

    first_video = sorted(_videos_dir(root, "+drift", seeds[0]).glob("*.mp4"))[0]
    summary.heatmap_dir = timed("heatmap", heatmap, str(first_video), prior=str(root / f"prior-s{seeds[0]}"), out=str(root / "heatmap")).out_dir

    reference = timed("eval", evaluate, [eval_world], out=root / "eval" / "ground-truth", reference=False, progress=progress)
    stem_index = {stem: i for i, stem in enumerate(world_stems)}
    truth = [pass_row(reference.videos, len(captions), lambda path: stem_index.get(Path(path).stem))]
    scored[GROUND_TRUTH] = reference.videos
    for name, rows in [(GROUND_TRUTH, truth)] + [(arm, passes[arm]) for arm, _, _ in ARMS]:
        stats = arm_stats({m: [row[m] for row in rows] for m in METRICS}, seed=0)
        summary.table.append({"arm": name, "n": stats["prompts"], **{m: stats[m]["mean"] for m in METRICS}, "stats": stats,
                              "medians": law_medians(scored[name], ERROR_LAWS)})
    summary.chart = _chart(summary.table, root / "comparison.png", backbone, seeds, split)
    summary.seconds = time.time() - started
    write_json(root / "demo.json", {
        "backbone": backbone, "split": split, "seeds": seeds, "world_seed": world_seed, "generate_seed": generate_seed,
        "table": summary.table, "prompts": captions,
        "statistics": {"per_seed": "percent of prompts passing, one value per training seed (unscored videos count as fails)",
                       "std": "sample standard deviation across seeds (0 with one seed)",
                       "ci": f"percentile bootstrap 95% interval over prompts ({RESAMPLES} resamples, numpy seed 0), "
                             "each prompt's pass indicator averaged over the seeds first"},
        "stage_seconds": timings, "seconds": summary.seconds,
        "train_clips": train_clips, "test_prompts": test_prompts, "recipe_file": str(recipe_path), "recipe": settings})
    return summary


def demo_recipe_for(backbone: str) -> Path:
    """recipes/<backbone>-demo.toml (settings sized for the demo's time budget) when it exists, else
    the backbone's own recipe, else tiny-random's."""
    from lamo_cli.recipes import RECIPES_DIR, default_recipe_for

    quick = RECIPES_DIR / f"{Path(str(backbone)).name}-demo.toml"
    return quick if quick.is_file() else (default_recipe_for(backbone) or RECIPES_DIR / "tiny-random.toml")


def finished_run(run_dir: Path) -> bool:
    """A fine-tune run folder whose run.json says it finished."""
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status") == "finished"
    except (OSError, json.JSONDecodeError):
        return False


def finished_prior(prior_dir: Path) -> bool:
    from lamo_cli.stages.fit_prior import PRIOR_CONFIG, PRIOR_WEIGHTS

    return (prior_dir / PRIOR_WEIGHTS).is_file() and (prior_dir / PRIOR_CONFIG).is_file()


def _videos_dir(root: Path, arm: str, seed: int) -> Path:
    return root / "videos" / f"{_slug(arm)}-s{seed}"


def generated_index(path: str) -> int | None:
    """`lamo generate` names batch videos NNN-slug.mp4 after the prompt's line index."""
    head = Path(path).name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def pass_row(videos: list[dict], prompts: int, index_of) -> dict[str, list[bool]]:
    """Per-prompt pass indicators for every metric; a prompt with no scored video fails."""
    row = {m: [False] * prompts for m in METRICS}
    for video in videos:
        index = index_of(video["path"])
        if index is not None and 0 <= index < prompts:
            for m in METRICS:
                row[m][index] = bool(video.get(m))
    return row


def recipe_options(table: dict[str, Any]) -> dict[str, Any]:
    """A recipe table minus keys the demo sets itself (paths, resume, seed, backbone)."""
    return {k: v for k, v in table.items() if k not in ("cache", "out", "backbone", "resume", "seed", "prompt", "prompts_file", "lora", "prior")}


def _slug(arm: str) -> str:
    return arm.replace("+", "with-")


def _chart(table: list[dict[str, Any]], path: Path, backbone: str, seeds: list[int], split: str) -> Path:
    """Grouped bars of the mean per arm; SA / PC / Joint / dynamic carry the bootstrap 95% CI as error bars."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    from lamo_cli.fileio import atomic_path

    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(table)
    x = np.arange(len(METRICS))
    for i, row in enumerate(table):
        means = np.array([row["stats"][m]["mean"] for m in METRICS])
        ci = np.array([row["stats"][m]["ci"] for m in METRICS])
        errors = np.clip(np.stack([means - ci[:, 0], ci[:, 1] - means]), 0.0, None)
        ax.bar(x + i * width - 0.4 + width / 2, means, width, yerr=errors, capsize=2, label=row["arm"])
    ax.set_xticks(x, METRICS)
    ax.set_ylabel("% of prompts")
    ax.set_ylim(0, 110)
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of {len(seeds)} seeds"
    ax.set_title(f"lamo demo on {backbone} ({split} prompts, {seed_text}): bootstrap 95% CI", fontsize=9)
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png.tmp") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
