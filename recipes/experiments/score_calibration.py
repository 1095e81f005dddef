"""The physics score's own acceptance bar, measured on more clips than the tests use.

1. Ground truth: clean renders of every family and split, each through an mp4 round trip (what
   `lamo world` writes and `lamo eval` reads); per family the Joint / SA / PC pass rates and how
   often each law and attribute check failed. The bar: >= 99% Joint in every family.
2. Corruptions: each kind of `physics.CORRUPTION_CASES` on fresh test clips; how often it fails its
   own check, and how often it fails nothing else. The bar: 100% and 100%.

    python recipes/experiments/score_calibration.py [--clips 40] [--corruptions 20] [--seed 321] \
        [--frames 33] [--out calibration.json]

`--clips` is per family and split (so 18 x clips renders), `--corruptions` per kind.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lamo_cli.data import world
from lamo_cli.data.mp4 import write_mp4
from lamo_cli.eval import physics
from lamo_cli.fileio import write_json

SPLITS = ("train", "test", "ood")


def mp4_round_trip(frames: np.ndarray, folder: Path) -> np.ndarray:
    import decord

    path = folder / "clip.mp4"
    write_mp4(path, frames)
    return decord.VideoReader(str(path)).get_batch(list(range(len(frames)))).asnumpy()


def failures(result: dict) -> set[str]:
    return set(result["failed_laws"]) | {f"attribute:{name}" for name in result["failed_attributes"]}


def ground_truth(clips: int, seed: int, folder: Path, progress: bool = True,
                 num_frames: int = world.DEFAULT_FRAMES) -> dict[str, dict]:
    """Per family: n, Joint / SA / PC in percent, and failed checks by count."""
    out = {}
    jobs = [(f, s, i) for f in world.FAMILIES for s in SPLITS for i in range(clips)]
    results: dict[str, list[dict]] = {f: [] for f in world.FAMILIES}
    for family, split, index in tqdm(jobs, desc="ground truth", disable=not progress):
        clip = world.simulate_clip(family, world.clip_rng(seed, split, index), split, num_frames=num_frames)
        result = physics.score_frames(mp4_round_trip(world.render_clip(clip), folder), clip.caption)
        results[family].append({**result, "split": split, "index": index})
    for family, rows in results.items():
        n = len(rows)
        out[family] = {
            "n": n,
            **{k: 100.0 * sum(r[k] for r in rows) / n for k in ("Joint", "SA", "PC")},
            "failed_checks": dict(Counter(name for r in rows for name in sorted(failures(r)))),
            "failed_clips": [(r["split"], r["index"], sorted(failures(r))) for r in rows if not r["Joint"]],
        }
    return out


def corruptions(per_kind: int, seed: int, folder: Path, progress: bool = True,
                num_frames: int = world.DEFAULT_FRAMES) -> dict[str, dict]:
    """Per corruption kind: n, caught (its own check fails) and exclusive (nothing else fails) in percent."""
    out = {}
    for kind in tqdm(sorted(physics.CORRUPTION_CASES), desc="corruptions", disable=not progress):
        family, choices, mention = physics.CORRUPTION_CASES[kind]
        target = physics.CORRUPTION_TARGET[kind]
        caught = exclusive = n = draw = 0
        escaped = []
        while n < per_kind:
            clip = world.simulate_clip(family, np.random.default_rng([seed, draw]), "test", num_frames=num_frames,
                                       choices=choices, mention=mention)
            draw += 1
            if not physics.corruption_applies(kind, clip):
                continue
            bad = physics.corrupt(clip, kind)
            failed = failures(physics.score_frames(mp4_round_trip(world.render_clip(bad), folder), bad.caption))
            n += 1
            caught += target in failed
            exclusive += not (failed - {target})
            if failed != {target}:
                escaped.append((draw - 1, sorted(failed)))
        out[kind] = {"n": n, "target": target, "caught": 100.0 * caught / n, "exclusive": 100.0 * exclusive / n,
                     "not_exactly_own_check": escaped}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=40, help="clean clips per family and split")
    parser.add_argument("--corruptions", type=int, default=20, help="corrupted clips per kind")
    parser.add_argument("--seed", type=int, default=321)
    parser.add_argument("--frames", type=int, default=world.DEFAULT_FRAMES, help="clip length (lamo world --frames)")
    parser.add_argument("--out", type=Path, default=Path("calibration.json"))
    args = parser.parse_args(argv)
    if args.clips < 1 or args.corruptions < 0:
        print("error: --clips must be >= 1 and --corruptions >= 0", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        report = {"clips_per_family_and_split": args.clips, "seed": args.seed, "frames": args.frames,
                  "ground_truth": ground_truth(args.clips, args.seed, Path(tmp), num_frames=args.frames),
                  "corruptions": corruptions(args.corruptions, args.seed, Path(tmp), num_frames=args.frames)
                  if args.corruptions else {}}
    print("family      n  Joint%  SA%  PC%  failed checks")
    for family, row in report["ground_truth"].items():
        print(f"{family:10s} {row['n']:3d}  {row['Joint']:5.1f} {row['SA']:5.1f} {row['PC']:5.1f}  {row['failed_checks'] or '-'}")
    if report["corruptions"]:
        print("corruption          n  caught%  own check only%")
        for kind, row in report["corruptions"].items():
            print(f"{kind:18s} {row['n']:3d}  {row['caught']:6.1f}  {row['exclusive']:6.1f}")
    write_json(args.out, report)
    print(f"wrote {args.out}")
    worst = min(row["Joint"] for row in report["ground_truth"].values())
    perfect = all(row["caught"] == 100.0 and row["exclusive"] == 100.0 for row in report["corruptions"].values())
    return 0 if worst >= 99.0 and perfect else 1


if __name__ == "__main__":
    sys.exit(main())
