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
        bool, typer.Option("--reference", help="Also score the ground-truth renders of videos with a NAME.state.json sidecar (the tracker's floor); with --backbone also their VAE reconstructions (the autoencoder's floor).")
    ] = False,
    voe: Annotated[
        bool, typer.Option("--voe", help="Violation-of-expectation accuracy instead: does the model's denoising loss rank impossible twins above their possible clips? No VIDEOS; writes voe.json.")
    ] = False,
    backbone: Annotated[
        Optional[str], typer.Option(help="Backbone (name or diffusers folder) for --reference's VAE floor and for --voe (default for --voe: tiny if installed, else tiny-random).", show_default=False)
    ] = None,
    lora: Annotated[
        Optional[Path], typer.Option(help="--voe only: a `lamo finetune` run folder to apply to the backbone (LoRA or full), or one of its checkpoints (RUN/checkpoints/step-N).", show_default=False)
    ] = None,
    n: Annotated[int, typer.Option("--n", help="--voe only: number of (possible, impossible) pairs from the test split.")] = 24,
    seed: Annotated[int, typer.Option(help="--voe only: seed of the pairs, the noise and the bootstrap.")] = 0,
    timesteps: Annotated[int, typer.Option(help="--voe only: number of fixed timesteps, evenly spaced in [50, 950].")] = 8,
    compare: Annotated[
        bool, typer.Option("--compare", help="Score each VIDEOS argument as a set of its own (e.g. RUN/validation/step-*) and put them side by side: a table, OUT/compare.json and OUT/compare.png, with bootstrap 95% intervals; each set's report in OUT/SET/.")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Score physics-world videos: physical laws (no ground truth needed) and caption attributes.

    Tracks the coloured discs, checks the laws of each video's family and the attributes its caption states. Captions come from NAME.txt beside each video or the "prompt" in a `lamo generate` NAME.json. Reports, per family and overall, SA (all attributes right), PC (dynamic and every law holds) and Joint (both) in percent, medians of the continuous metrics and the share of dynamic videos, as a table, report.json and chart.png. Unreadable or uncaptioned videos are skipped and listed.
    """
    from lamo_cli.stages.evaluate import compare_sets, evaluate, evaluate_voe

    if voe:
        if videos:
            raise LamoError("--voe makes its own world pairs and takes no VIDEOS; run `lamo eval VIDEOS` separately")
        if reference:
            raise LamoError("--voe and --reference are separate modes; run them as two commands")
        record = evaluate_voe(backbone, lora=lora, n=n, seed=seed, out=out, num_timesteps=timesteps, progress=progress)
        print_voe(record)
        return
    if lora is not None:
        raise LamoError("--lora applies to --voe only (the VAE floor does not use the transformer)")
    if not videos:
        raise LamoError("VIDEOS: give at least one mp4 file or folder, e.g. `lamo eval lamo-world --out lamo-eval`, or use --voe")
    if compare:
        if reference or backbone is not None:
            raise LamoError("--compare scores the given sets only; run --reference (and --backbone) on a set separately")
        print_comparison(compare_sets(videos, out=out, progress=progress))
        return
    report = evaluate(videos, out=out, reference=reference, progress=progress, backbone=backbone)
    print_report(report)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(title: str, overall: dict, per_family: dict) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("family", "n", "SA%", "PC%", "Joint%", "dyn%", "judged%", "accel", "resid px"):
        table.add_column(name, justify="left" if name == "family" else "right", no_wrap=True)
    rows = list(per_family.items()) + [("overall", overall)]
    for name, block in rows:
        medians = block.get("medians", {})
        accel = medians.get("accel")
        smooth = medians.get("smooth")
        table.add_row(
            f"[bold]{name}[/]" if name == "overall" else name, str(block["n"]), _pct(block["SA"]), _pct(block["PC"]),
            _pct(block["Joint"]), _pct(block["dynamic"]), _pct(block.get("judged")), "-" if accel is None else f"{accel:.3f}",
            "-" if smooth is None else f"{smooth:.3f}",
        )
    return table


def _rates_lowest_first(law_pass_rates: dict | None) -> list[tuple[float, str]]:
    return sorted((rate, law) for law, rate in (law_pass_rates or {}).items() if rate is not None)


def law_rates_line(overall: dict) -> str:
    """The overall pass rate of each law check, lowest first: which laws hold PC down."""
    rates = _rates_lowest_first(overall.get("law_pass_rates"))
    return "  law checks passed, % (lowest first): " + ", ".join(f"{law} {rate:.0f}" for rate, law in rates) if rates else ""


def print_comparison(comparison) -> None:
    """One row per set: SA / PC / Joint (95% interval), dynamic and the law failed most (medians: compare.json)."""
    table = Table(title="physics score per set: % of its videos (bootstrap 95% interval)", title_justify="left")
    widest = max((len(row["set"]) for row in comparison.sets), default=3)
    table.add_column("set", no_wrap=True, min_width=min(widest, 32))
    for name in ("n", "SA", "PC", "Joint", "dyn", "lowest law"):
        table.add_column(name, justify="left" if name == "lowest law" else "right", overflow="fold")
    for row in comparison.sets:
        cells = [f"{row[m]['percent']:.0f} ({row[m]['ci'][0]:.0f}-{row[m]['ci'][1]:.0f})" for m in ("SA", "PC", "Joint")]
        rates = _rates_lowest_first(row["law_pass_rates"])
        lowest = "{1} {0:.0f}".format(*rates[0]) if rates else "-"
        table.add_row(row["set"], str(row["n"]), *cells, f"{row['dynamic']['percent']:.0f}", lowest)
    if comparison.sets:
        console.print(table)
    for item in comparison.skipped:
        console.print(f"[red]skipped set[/] {item['set']}: {item['reason']}", soft_wrap=True)
    if not comparison.sets:
        raise LamoError(f"nothing could be scored in any of the {len(comparison.skipped)} sets (first: {comparison.skipped[0]['reason']})")
    console.print(f"wrote {comparison.path} and {comparison.chart_path}", soft_wrap=True)
    if comparison.skipped:
        raise typer.Exit(1)


def print_report(report) -> None:
    console.print(_table("physics score", report.overall, report.per_family))
    console.print(law_rates_line(report.overall), soft_wrap=True)
    if report.reference is not None:
        console.print(_table("ground-truth renders (tracker floor)", report.reference["overall"], report.reference["per_family"]))
        console.print(law_rates_line(report.reference["overall"]), soft_wrap=True)
        if report.reference["without_state"]:
            console.print(f"  {report.reference['without_state']} videos had no NAME.state.json (no reference)")
        if report.vae_reconstruction is None:
            console.print("  VAE-reconstruction floor: not computed (needs --backbone)")
    if report.vae_reconstruction is not None:
        vae = report.vae_reconstruction
        console.print(_table(f"VAE reconstructions ({vae['backbone']}, autoencoder floor)", vae["overall"], vae["per_family"]))
        console.print(law_rates_line(vae["overall"]), soft_wrap=True)
        for item in vae["skipped"]:
            console.print(f"  VAE floor skipped {item['path']}: {item['reason']}", soft_wrap=True)
    for item in report.skipped:
        console.print(f"  skipped {item['path']}: {item['reason']}", soft_wrap=True)
    if report.report_path:
        chart = f" and {report.chart_path}" if report.chart_path else ""
        console.print(f"wrote {report.report_path}{chart}", soft_wrap=True)


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_voe(record: dict) -> None:
    lora = record.get("lora")
    title = f"violation of expectation ({record['backbone']['backbone']}" + (f" + {lora['kind']} {lora['run']}" if lora else "") + ")"
    table = Table(title=title, title_justify="left")
    for name in ("twin kind", "pairs", "accuracy", "mean gap", "ties"):
        table.add_column(name, justify="left" if name == "twin kind" else "right", no_wrap=True)
    for kind, block in record["per_kind"].items():
        if block["n"]:
            table.add_row(kind, str(block["n"]), _num(block["accuracy"], 3), _num(block["mean_gap"], 5), str(block["ties"]))
    overall = record["overall"]
    table.add_row("[bold]overall[/]", str(overall["n"]), _num(overall["accuracy"], 3), _num(overall["mean_gap"], 5), str(overall["ties"]))
    console.print(table)
    low, high = overall["accuracy_ci95"] or (None, None)
    console.print(f"  accuracy 95% interval (bootstrap over pairs): [{_num(low, 3)}, {_num(high, 3)}]; "
                  f"timesteps {record['timesteps']}")
    if record.get("voe_path"):
        console.print(f"wrote {record['voe_path']}", soft_wrap=True)
