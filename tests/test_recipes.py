"""Recipes: every shipped recipe parses, names only real stage options, and holds the published numbers."""

import inspect
from pathlib import Path

import pytest

from lamo_cli.errors import LamoError
from lamo_cli.recipes import RECIPES_DIR, default_recipe_for, find_recipe, load_recipe, resolve_options
from lamo_cli.stages.encode import encode
from lamo_cli.stages.finetune import finetune
from lamo_cli.stages.fit_prior import fit_prior
from lamo_cli.stages.generate import generate
from lamo_cli.stages.heatmap import heatmap

STAGES = {"encode": encode, "fit_prior": fit_prior, "finetune": finetune, "generate": generate, "heatmap": heatmap}
RECIPES = sorted(RECIPES_DIR.glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_keys_are_stage_parameters(path):
    recipe = load_recipe(path)
    assert recipe["backbone"] == path.stem.removesuffix("-demo")  # <backbone>.toml or <backbone>-demo.toml
    for stage, table in recipe.items():
        if stage == "backbone":
            continue
        params = inspect.signature(STAGES[stage]).parameters
        unknown = set(table) - set(params)
        assert not unknown, f"{path.name} [{stage}] has unknown keys {unknown}"


@pytest.mark.parametrize("name", ["cogvideox-2b", "cogvideox-5b"])
def test_published_setting(name):
    recipe = load_recipe(name)
    ft, gen, prior = recipe["finetune"], recipe["generate"], recipe["fit_prior"]
    assert (ft["lora_rank"], ft["lora_alpha"], ft["lr"], ft["warmup"], ft["steps"], ft["drift_weight"], ft["tau"]) == (128, 64, 5e-5, 200, 2000, 0.4, 2)
    assert ft["lora_targets"] == "to_q,to_k,to_v,to_out.0" and ft["mixed_precision"] == "bf16"
    assert (gen["steps"], gen["cfg"], gen["seed"], gen["guidance_scale"], gen["guidance_window"]) == (50, 6.0, 42, 15.0, 0.8)
    assert gen["sampler"] == ("dpm" if name == "cogvideox-5b" else "ddim")
    assert (prior["lr"], prior["alpha"], prior["tau"], prior["noise_aug_prob"], prior["noise_aug_strength"], prior["prompt_dropout"]) == (5e-4, 0.3, 1, 0.5, 0.3, 0.1)


def test_lookup_by_name_and_path(tmp_path):
    assert find_recipe("tiny-random") == RECIPES_DIR / "tiny-random.toml"
    assert find_recipe("tiny-random.toml") == RECIPES_DIR / "tiny-random.toml"
    assert default_recipe_for("cogvideox-5b") == RECIPES_DIR / "cogvideox-5b.toml"
    assert default_recipe_for("/some/local/folder") is None
    with pytest.raises(LamoError, match="--recipe"):
        find_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[finetune\nsteps = ")
    with pytest.raises(LamoError, match="not valid TOML"):
        load_recipe(bad)


def test_precedence_typed_beats_recipe_beats_default(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('backbone = "cogvideox-2b"\n[finetune]\nsteps = 7\nlr = 0.5\n')

    class Source:
        def __init__(self, name):
            self.name = name

    class Ctx:  # what click reports: `steps` typed on the command line, the rest defaults
        def get_parameter_source(self, name):
            return Source("COMMANDLINE" if name == "steps" else "DEFAULT")

    merged = resolve_options(Ctx(), "finetune", {"steps": 3, "lr": 1e-4, "backbone": None}, recipe)
    assert merged == {"steps": 3, "lr": 0.5, "backbone": "cogvideox-2b"}
    recipe.write_text("[finetune]\nsteps_typo = 1\n")
    with pytest.raises(LamoError, match="unknown keys"):
        resolve_options(Ctx(), "finetune", {"steps": 3}, recipe)
