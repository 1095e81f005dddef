"""`lamo sweep`: vary one LaMo knob on top of a finished `lamo demo` folder and score every value.

The demo's world, cache, captions, sampling seed, training seeds and recipe are reused, so each value
differs from the demo's arms in that knob alone:

  drift-weight     fine-tune with lambda_drift = value (one run per seed), sample unguided
  guidance-scale   the demo's plain fine-tune and field, Motion Prior Guidance with lambda = value
  guidance-window  the same, guiding the last `value` fraction of the steps
  field-tau        a field fitted with that frame lag tau (one per seed), then guided like the demo

Writes DEMO/sweep-<knob>/<value>/... (runs, priors, videos, eval reports), sweep.json (per value:
SA / PC / Joint / dynamic as mean ± std over seeds with a bootstrap 95% CI over prompts, and the
median continuous law errors) and sweep.png (each metric against the value, with the CI).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lamo_cli.errors import LamoError
from lamo_cli.stages.demo import ERROR_LAWS, METRICS as PASS_METRICS

KNOBS = ("drift-weight", "guidance-scale", "guidance-window", "field-tau")


@dataclass
class SweepSummary:
    out: Path
    knob: str
    values: list[float]
    seeds: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    chart: Path | None = None
    seconds: float = 0.0


def parse_values(knob: str, text: str | Sequence[float]) -> list[float]:
    if knob not in KNOBS:
        raise LamoError(f"--knob {knob!r}: choose one of {', '.join(KNOBS)}")
    try:
        values = [float(v) for v in (text.replace(" ", "").split(",") if isinstance(text, str) else text) if v != ""]
    except ValueError:
        raise LamoError(f"--values {text!r}: give comma-separated numbers, e.g. --values 0,5,15,50") from None
    if not values or len(set(values)) != len(values):
        raise LamoError(f"--values {text!r}: give at least one value, each once")
    checks = {
        "drift-weight": (lambda v: v >= 0, "must be >= 0"),
        "guidance-scale": (lambda v: v >= 0, "must be >= 0"),
        "guidance-window": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
        "field-tau": (lambda v: v >= 1 and v == int(v), "must be whole frame lags >= 1"),
    }
    ok, rule = checks[knob]
    bad = [v for v in values if not (math.isfinite(v) and ok(v))]
    if bad:
        raise LamoError(f"--values for --knob {knob}: {bad[0]:g} {rule}")
    return values


def read_demo(demo_dir: Path) -> dict[str, Any]:
    path = demo_dir / "demo.json"
    if not path.is_file():
        raise LamoError(f"{demo_dir}: no demo.json; run `lamo demo --out {demo_dir}` first and sweep on its folder")
    try:
        demo = json.loads(path.read_text())
    except json.JSONDecodeError:
        demo = None
    if not isinstance(demo, dict) or any(k not in demo for k in ("backbone", "split", "seeds", "generate_seed", "recipe")):
        raise LamoError(f"{path}: not a finished demo record; rerun `lamo demo --out {demo_dir}`")
    return demo


def sweep(
    demo_dir: str,
    knob: str,
    values: str | Sequence[float],
    out: str | None = None,
    seeds: str | Sequence[int] | None = None,
    progress: bool = True,
) -> SweepSummary:
    from lamo_cli.eval.stats import arm_stats
    from lamo_cli.fileio import write_json
    from lamo_cli.eval.physics import law_medians
    from lamo_cli.stages.demo import recipe_options, generated_index, pass_row, finished_prior, finished_run, parse_seeds
    from lamo_cli.stages.evaluate import evaluate
    from lamo_cli.stages.finetune import finetune
    from lamo_cli.stages.fit_prior import fit_prior
    from lamo_cli.stages.generate import generate

    values = parse_values(knob, values)
    root = Path(demo_dir)
    demo = read_demo(root)
    started = time.time()
    backbone, recipe = demo["backbone"], demo["recipe"]
    in_demo = [int(s) for s in demo["seeds"]]
    chosen = in_demo if seeds is None else parse_seeds(seeds)
    if missing := [s for s in chosen if s not in in_demo]:
        raise LamoError(f"--seeds: {','.join(map(str, missing))} not among the demo's training seeds {','.join(map(str, in_demo))}")
    seeds = chosen
    prompts_file = root / f"{demo['split']}-prompts.txt"
    if not prompts_file.is_file():
        raise LamoError(f"{prompts_file}: missing from the demo folder; rerun `lamo demo --out {root}`")
    prompts = len([line for line in prompts_file.read_text().splitlines() if line.strip()])
    generate_settings = recipe_options(recipe.get("generate", {}))
    base_scale = float(generate_settings.pop("guidance_scale", 15.0))
    fit_settings = recipe_options(recipe.get("fit_prior", {}))
    finetune_settings = recipe_options(recipe.get("finetune", {}))
    finetune_settings.pop("drift_weight", None)
    sweep_dir = Path(out) if out else root / f"sweep-{knob}"
    summary = SweepSummary(sweep_dir, knob, values, seeds)

    for value in values:
        label = f"{value:g}"
        rows, videos_scored = [], []
        for seed in seeds:
            here = sweep_dir / label
            lora, prior = root / f"run-plain-s{seed}", root / f"prior-s{seed}"
            options = dict(generate_settings, guidance_scale=base_scale)
            if knob == "drift-weight":
                lora = here / f"run-s{seed}"
                if not finished_run(lora):
                    finetune(cache=root / "cache", backbone=backbone, out=lora, drift_weight=value, seed=seed, progress=progress,
                             resume=(lora / "checkpoints").is_dir(), **finetune_settings)
                prior, options["guidance_scale"] = None, 0.0
            elif knob == "guidance-scale":
                options["guidance_scale"] = value
            elif knob == "guidance-window":
                options["guidance_window"] = value
            else:  # field-tau
                prior = here / f"prior-s{seed}"
                if not finished_prior(prior):
                    fit_prior(cache=root / "cache", out=prior, seed=seed, progress=progress, **{**fit_settings, "tau": int(value)})
            videos = here / f"videos-s{seed}"
            guided = prior is not None and options["guidance_scale"] > 0
            generate(prompts_file=str(prompts_file), backbone=backbone, lora=str(lora), prior=str(prior) if guided else "none",
                     seed=int(demo["generate_seed"]), out=str(videos), progress=progress,
                     **{**options, "guidance_scale": options["guidance_scale"] if guided else 0.0})
            report = evaluate([videos], out=here / f"eval-s{seed}", progress=progress)
            rows.append(pass_row(report.videos, prompts, generated_index))
            videos_scored.extend(report.videos)
        stats = arm_stats({m: [row[m] for row in rows] for m in PASS_METRICS}, seed=0)
        summary.rows.append({"value": value, "n": stats["prompts"], "stats": stats,
                             "medians": law_medians(videos_scored, ERROR_LAWS)})
    summary.chart = _chart(summary, demo)
    summary.seconds = time.time() - started
    write_json(sweep_dir / "sweep.json", {
        "demo": str(root), "knob": knob, "values": values, "backbone": backbone, "split": demo["split"], "seeds": seeds,
        "rows": summary.rows, "seconds": summary.seconds, "prompts_file": str(prompts_file),
        "held_fixed": {"guidance_scale": base_scale, "generate": generate_settings, "fit_prior": fit_settings, "finetune": finetune_settings},
        "statistics": "pass rates: mean ± std over training seeds, bootstrap 95% CI over prompts (as demo.json); "
                      "medians: of the law's continuous error over every scored video of every seed"})
    return summary


def _chart(summary: SweepSummary, demo: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from lamo_cli.fileio import atomic_path

    x = np.arange(len(summary.rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for m in PASS_METRICS:
        means = np.array([r["stats"][m]["mean"] for r in summary.rows])
        ci = np.array([r["stats"][m]["ci"] for r in summary.rows])
        left.errorbar(x, means, yerr=np.clip(np.stack([means - ci[:, 0], ci[:, 1] - means]), 0, None), capsize=3, marker="o", label=m)
    left.set_ylabel("% of prompts (bootstrap 95% CI)")
    left.set_ylim(-5, 105)
    for m in ERROR_LAWS:
        right.plot(x, [np.nan if r["medians"][m] is None else r["medians"][m] for r in summary.rows], marker="o", label=f"median {m} error")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xticks(x, [f"{v:g}" for v in summary.values])
        ax.set_xlabel(summary.knob)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"lamo sweep {summary.knob} on {demo['backbone']} ({demo['split']} prompts, seeds {','.join(map(str, summary.seeds))})", fontsize=9)
    fig.tight_layout()
    path = summary.out / "sweep.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png.tmp") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
