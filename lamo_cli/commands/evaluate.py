"""CLI for `lamo eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from lamo_cli.commands._common import console, handle_errors
from lamo_cli.errors import LamoError


@handle_errors
def command(
    videos: Annotated[
        Optional[list[Path]], typer.Argument(help="mp4 files or folders of them (searched recursively).", show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.json and chart.png.")] = Path("lamo-eval"),
    reference: Annotated[
        bool, typer.Option("--reference", help="Also score the ground-truth renders of videos with a NAME.state.json sidecar (the tracker's floor).")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Score physics-world videos: physical laws (no ground truth needed) and caption attributes.

    Tracks the coloured discs, checks the laws of each video's family and the attributes its caption states. Captions come from NAME.txt beside each video or the "prompt" in a `lamo generate` NAME.json. Reports, per family and overall, SA (all attributes right), PC (dynamic and every law holds) and Joint (both) in percent, medians of the continuous metrics and the share of dynamic videos, as a table, report.json and chart.png. Unreadable or uncaptioned videos are skipped and listed.
    """
    from lamo_cli.stages.evaluate import evaluate

    if not videos:
        raise LamoError("VIDEOS: give at least one mp4 file or folder, e.g. `lamo eval lamo-world --out lamo-eval`")
    report = evaluate(videos, out=out, reference=reference, progress=progress)
    print_report(report)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(title: str, overall: dict, per_family: dict) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("family", "n", "SA%", "PC%", "Joint%", "dyn%", "accel", "resid px"):
        table.add_column(name, justify="left" if name == "family" else "right", no_wrap=True)
    rows = list(per_family.items()) + [("overall", overall)]
    for name, block in rows:
        medians = block.get("medians", {})
        accel = medians.get("accel")
        smooth = medians.get("smooth")
        table.add_row(
            f"[bold]{name}[/]" if name == "overall" else name, str(block["n"]), _pct(block["SA"]), _pct(block["PC"]),
            _pct(block["Joint"]), _pct(block["dynamic"]), "-" if accel is None else f"{accel:.3f}",
            "-" if smooth is None else f"{smooth:.3f}",
        )
    return table


def print_report(report) -> None:
    console.print(_table("physics score", report.overall, report.per_family))
    if report.reference is not None:
        console.print(_table("ground-truth renders (tracker floor)", report.reference["overall"], report.reference["per_family"]))
        if report.reference["without_state"]:
            console.print(f"  {report.reference['without_state']} videos had no NAME.state.json (no reference)")
    for item in report.skipped:
        console.print(f"  skipped {item['path']}: {item['reason']}", soft_wrap=True)
    if report.report_path:
        chart = f" and {report.chart_path}" if report.chart_path else ""
        console.print(f"wrote {report.report_path}{chart}", soft_wrap=True)
