"""Shared plumbing for CLI commands: error handling, console, recipe merging."""

from __future__ import annotations

import functools
from typing import Any, Callable

import typer
from rich.console import Console

from lamo_cli.errors import LamoError

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def stat_cell(metric: dict) -> str:
    """A pass rate across seeds as a two-line table cell: mean ± std, then [bootstrap 95% CI] (no std for one seed)."""
    low, high = metric["ci"]
    spread = f" ± {metric['std']:.1f}" if len(metric.get("per_seed", ())) > 1 else ""
    return f"{metric['mean']:.1f}{spread}\n[{low:.0f}, {high:.0f}]"


def median_cells(medians: dict, names) -> list[str]:
    return ["-" if medians[name] is None else f"{medians[name]:.3f}" for name in names]


def handle_errors(fn: Callable) -> Callable:
    """Turn LamoError (and Ctrl-C) into a one-line message and a non-zero exit, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LamoError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper
