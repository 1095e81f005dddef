"""Statistics of the LaMo ablation (PHYSICS_WORLD.md, "The experiment it enables").

Input per arm and metric: a pass matrix [seeds, prompts] of booleans (one row per training seed,
one column per test prompt; every seed generates the same prompts with the same noise).
Output: per-seed percentages, their mean and sample standard deviation (0 with one seed), and a
percentile-bootstrap 95% interval over PROMPTS: each prompt's pass indicator is first averaged over
the seeds, then prompts are resampled with replacement. Pure numpy; no files.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

METRICS = ("SA", "PC", "Joint", "dynamic")
RESAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap_means(per_prompt: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Means (in %) of `resamples` resamples-with-replacement of the per-prompt values in [0, 1]."""
    values = np.asarray(per_prompt, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("bootstrap needs a non-empty 1-D array of per-prompt values")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(resamples, values.size))
    return 100.0 * values[picks].mean(axis=1)


def metric_stats(passes, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """per_seed %, mean, sample std (ddof 1; 0 with one seed) and the bootstrap 95% CI [lo, hi]."""
    matrix = np.asarray(passes, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"pass matrix must be [seeds, prompts] and non-empty; got shape {matrix.shape}")
    per_seed = 100.0 * matrix.mean(axis=1)
    std = float(per_seed.std(ddof=1)) if per_seed.size > 1 else 0.0
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(bootstrap_means(matrix.mean(axis=0), resamples, seed), [tail, 100.0 - tail])
    return {"per_seed": [float(v) for v in per_seed], "mean": float(per_seed.mean()), "std": std,
            "ci": [float(low), float(high)]}


def arm_stats(passes: Mapping[str, object], resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """`metric_stats` for every metric of `passes` (metric -> [seeds, prompts] booleans)."""
    out: dict = {}
    shapes = {np.asarray(m).shape for m in passes.values()}
    if len(shapes) != 1:
        raise ValueError(f"every metric needs the same [seeds, prompts] shape; got {sorted(shapes)}")
    seeds, prompts = shapes.pop()
    out["seeds"], out["prompts"] = int(seeds), int(prompts)
    for metric, matrix in passes.items():
        out[metric] = metric_stats(matrix, resamples, seed)
    return out
