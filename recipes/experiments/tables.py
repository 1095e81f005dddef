"""Print the Markdown tables of docs/RESULTS.md from the folders tiny-ablation.sh writes.

    python recipes/experiments/tables.py results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = ("SA", "PC", "Joint")


def cell(stats: dict) -> str:
    low, high = stats["ci"]
    return f"{stats['mean']:.1f} ± {stats['std']:.1f} [{low:.0f}, {high:.0f}]"


def header(first: str) -> str:
    return f"| {first} | SA % | PC % | Joint % | dynamic % | median accel error | median residual px |\n|---|---|---|---|---|---|---|"


def line(label: str, row: dict) -> str:
    stats, medians = row["stats"], row["medians"]
    errors = " | ".join("-" if medians[m] is None else f"{medians[m]:.3f}" for m in ("accel", "smooth"))
    return f"| {label} | " + " | ".join(cell(stats[m]) for m in METRICS) + f" | {stats['dynamic']['mean']:.0f} | {errors} |"


def demo_table(folder: Path) -> str:
    demo = json.loads((folder / "demo.json").read_text())
    lines = [f"**{demo['split']} split**, backbone `{demo['backbone']}`, training seeds {demo['seeds']}, "
             f"{len(demo['prompts'])} prompts, {demo['seconds'] / 60:.0f} min",
             "", header("arm")]
    lines += [line(row["arm"], row) for row in demo["table"]]
    return "\n".join(lines)


def sweep_table(folder: Path) -> str:
    sweep = json.loads((folder / "sweep.json").read_text())
    lines = [f"**{sweep['knob']}** ({sweep['split']} prompts, seeds {sweep['seeds']}, {sweep['seconds'] / 60:.0f} min)", "",
             header(sweep["knob"])]
    lines += [line(f"{row['value']:g}", row) for row in sweep["rows"]]
    return "\n".join(lines)


def main(root: str) -> None:
    base = Path(root)
    for split in ("test", "ood"):
        if (base / split / "demo.json").is_file():
            print(demo_table(base / split), end="\n\n")
    for sweep in sorted(base.glob("*/sweep-*/sweep.json")):
        print(sweep_table(sweep.parent), end="\n\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results")
