"""CLI for `lamo sweep`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from lamo_cli.commands._common import console, handle_errors, median_cells, stat_cell


@handle_errors
def command(
    demo_dir: Annotated[str, typer.Argument(help="A finished `lamo demo` folder (its world, cache, priors, runs and captions are reused).")],
    knob: Annotated[str, typer.Option(help="What to vary: drift-weight, guidance-scale, guidance-window or field-tau.")],
    values: Annotated[str, typer.Option(help="Comma-separated values, e.g. 0,5,15,50.")],
    out: Annotated[Optional[str], typer.Option(help="Folder for the sweep (default: DEMO_DIR/sweep-KNOB).", show_default=False)] = None,
    seeds: Annotated[Optional[str], typer.Option(help="A subset of the demo's training seeds, comma-separated (default: all of them).", show_default=False)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Vary one LaMo knob on top of a demo, everything else held fixed, and score every value:
    SA / PC / Joint / dynamic (mean ± std over the demo's seeds, bootstrap 95% CI over prompts) and
    the median acceleration and trajectory errors. Writes sweep.json and sweep.png."""
    from lamo_cli.stages.sweep import ERROR_LAWS, PASS_METRICS, sweep

    summary = sweep(demo_dir, knob, values, out=out, seeds=seeds, progress=progress)
    table = Table(title=f"lamo sweep {summary.knob} (physics score, %: mean, ± std over seeds when several, [95% CI]; median errors)")
    for column in (summary.knob, "n", *PASS_METRICS[:3], "dynamic", *(f"{m} err" for m in ERROR_LAWS)):
        table.add_column(column, justify="right")
    for row in summary.rows:
        stats = row["stats"]
        table.add_row(f"{row['value']:g}", str(row["n"]), *(stat_cell(stats[m]) for m in PASS_METRICS[:3]), f"{stats['dynamic']['mean']:.1f}",
                      *median_cells(row["medians"], ERROR_LAWS))
    console.print(table)
    console.print(f"done in {summary.seconds:.0f}s; chart: {summary.chart}; numbers: {summary.out / 'sweep.json'}", soft_wrap=True)
