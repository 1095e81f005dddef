"""Recipes: TOML files of stage settings per backbone (recipes/<name>.toml).

A recipe has a top-level `backbone` and one table per stage ([encode], [fit_prior], [finetune],
[generate], [heatmap]); keys are the stage function's keyword names. Precedence, highest first:
an option given on the command line, the recipe, the option's built-in default. Without --recipe,
`recipes/<backbone>.toml` is used when it exists, so `--backbone cogvideox-5b` alone picks up the
published settings.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from lamo_cli.errors import LamoError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def find_recipe(spec: str | Path | None) -> Path | None:
    """A path to a TOML file, or the name of one in recipes/ (with or without .toml)."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        return path
    named = RECIPES_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if named.is_file():
        return named
    raise LamoError(f"--recipe {spec}: no such file and no recipe of that name in {RECIPES_DIR}; pass a TOML path")


def load_recipe(spec: str | Path | None) -> dict[str, Any]:
    path = find_recipe(spec)
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LamoError(f"--recipe {path}: not valid TOML ({exc}); fix the file") from None


def default_recipe_for(backbone: str | None) -> Path | None:
    if not backbone:
        return None
    candidate = RECIPES_DIR / f"{Path(str(backbone)).name}.toml"
    return candidate if candidate.is_file() else None


def resolve_options(ctx: Any, stage: str, values: dict[str, Any], recipe: str | Path | None) -> dict[str, Any]:
    """Fill options the user did not type from the recipe's [stage] table (and its `backbone`).

    `values` are the command's parsed options keyed by the stage function's parameter names; a
    value counts as typed when click says it came from the command line or an env var.
    """
    typed = set()
    if ctx is not None:
        for name in values:
            # Compare by name: typer vendors its own click, whose enum is not click's.
            source = getattr(ctx.get_parameter_source(name), "name", None)
            if source not in (None, "DEFAULT", "DEFAULT_MAP"):
                typed.add(name)
    if recipe is None:
        recipe = default_recipe_for(values.get("backbone"))
    data = load_recipe(recipe)
    table = dict(data.get(stage, {}))
    if "backbone" in values and "backbone" in data:
        table.setdefault("backbone", data["backbone"])
    unknown = sorted(k for k in table if k not in values)
    if unknown:
        raise LamoError(f"--recipe {find_recipe(recipe)}: [{stage}] has unknown keys {unknown}; see `lamo {stage.replace('_', '-')} --help`")
    merged = dict(values)
    for key, value in table.items():
        if key not in typed:
            merged[key] = value
    return merged
