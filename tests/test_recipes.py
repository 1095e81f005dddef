"""Recipes: every shipped recipe parses, names only real stage options, and holds the published numbers."""

import inspect
import json
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


@pytest.mark.parametrize("env, expected", [
    ({}, {"device": "cuda", "vae_minutes": 3.5, "transformer_batch_size": 128, "save_every": 200, "frames": 33}),
    ({"FRAMES": "17"}, {"device": "cuda", "frames": 17}),
    ({"DEVICE": "cpu", "VAE_MINUTES": "0", "TRANSFORMER_MINUTES": "0", "TRANSFORMER_BATCH": "32", "TRANSFORMER_LR": "5e-4",
      "TRANSFORMER_STEPS": "6000", "SAVE_EVERY": "10"},
     {"device": "cpu", "vae_minutes": 0.0, "transformer_batch_size": 32, "transformer_lr": 5e-4, "transformer_steps": 6000, "save_every": 10}),
], ids=["gpu", "gpu-17-frames", "cpu"])
def test_the_2x_build_script_passes_options_build_tiny_accepts(tmp_path, env, expected):
    """recipes/experiments/tiny-2x-build.sh (a build of hours on a CPU, minutes on a GPU) hands
    build-tiny a command line that its parser accepts, with the settings its header promises: run
    with a stand-in `lamo` that records its arguments, then parsed by the real command."""
    import os
    import re
    import subprocess

    import typer

    from lamo_cli.cli import app

    record = tmp_path / "args.txt"
    stand_in = tmp_path / "lamo"
    stand_in.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    stand_in.chmod(0o755)
    script = RECIPES_DIR / "experiments" / "tiny-2x-build.sh"
    knobs = set(re.findall(r"^(\w+)=\$\{", script.read_text(), flags=re.MULTILINE))  # the script's settings, as it names them
    clean = {k: v for k, v in os.environ.items() if k not in knobs}  # the script's defaults, whatever this shell has set
    subprocess.run(["bash", str(script)], env={**clean, **env, "LAMO": str(stand_in), "OUT": str(tmp_path / "b")},
                   cwd=RECIPES_DIR.parent, check=True)
    args = record.read_text().splitlines()
    assert args[0] == "build-tiny"
    command = typer.main.get_command(app).commands["build-tiny"]
    params = command.make_context("build-tiny", args[1:]).params
    assert {k: params[k] for k in expected} == expected
    assert params["temporal_compression"] == 2 and params["vae_batch_size"] == 16 and params["vae_steps"] == 0
    assert params["vae_init_from"] == "lamo_cli/weights/tiny" and (RECIPES_DIR.parent / params["vae_init_from"]).is_dir()
    assert (params["motion_steps"], params["moment_weight"], params["decoder_steps"]) == (1013, 0.5, 380)
    assert params["transformer_timestep_sampling"] == "logit-normal" and not params["progress"]


def _threshold_margins():
    import importlib.util

    spec = importlib.util.spec_from_file_location("threshold_margins", RECIPES_DIR / "experiments" / "threshold_margins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_threshold_margins_loosens_each_kind_of_threshold_as_documented():
    from lamo_cli.eval.physics import LAWS

    margins = _threshold_margins()
    assert margins.loosened("smooth", 2.0) == {"residual_px": 0.5}
    assert margins.loosened("energy", 2.0)["energy_ratio"] == pytest.approx(1.10)  # the excess over 1 doubles
    assert margins.loosened("duplication", 1.25) == {"duplicate_frames": 2}  # frame counts round, never tighten
    assert margins.loosened("duplication", 2.0) == {"duplicate_frames": 4}
    assert set(margins.LAW_KNOBS) == set(LAWS) - {"permanence"}  # permanence has no threshold


def test_threshold_margins_chooses_the_least_loosening_that_keeps_every_corruption_caught():
    margins = _threshold_margins()
    rows = [{"factor": f, "recon_pass": p, "corruption_caught_render": c}
            for f, p, c in ((1, 40, 100), (1.5, 99, 100), (2, 100, 100), (3, 100, 75))]
    assert margins.choose(rows)["factor"] == 1.5
    short = [dict(r, recon_pass=50) for r in rows]
    assert margins.choose(short)["factor"] == 2  # 99% is out of reach: the most that still catches all
    assert margins.choose([dict(rows[0], corruption_caught_render=80)])["factor"] == 1  # nothing safe: unchanged


def test_score_calibration_reports_every_family_and_corruption(tmp_path):
    import importlib.util

    from lamo_cli.data.world import FAMILIES
    from lamo_cli.eval.physics import CORRUPTION_CASES

    spec = importlib.util.spec_from_file_location("score_calibration", RECIPES_DIR / "experiments" / "score_calibration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "calibration.json"
    assert module.main(["--clips", "1", "--corruptions", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["ground_truth"]) == set(FAMILIES)
    assert all(row["n"] == 3 and row["Joint"] == 100.0 and not row["failed_clips"] for row in report["ground_truth"].values())
    assert set(report["corruptions"]) == set(CORRUPTION_CASES)
    assert all(row["n"] == 1 and row["caught"] == row["exclusive"] == 100.0 for row in report["corruptions"].values())
    assert module.main(["--clips", "0", "--out", str(tmp_path / "x.json")]) == 2 and not (tmp_path / "x.json").exists()


def test_heldout_loss_script_compares_models_on_the_same_noise(tmp_path):
    import importlib.util

    from conftest import write_clips

    spec = importlib.util.spec_from_file_location("heldout_loss", RECIPES_DIR / "experiments" / "heldout_loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache = tmp_path / "cache"
    encode(write_clips(tmp_path, n=2, frames=17, size=64), backbone="tiny-random", out=cache, progress=False)
    out = tmp_path / "heldout.json"
    assert module.main([str(cache), "tiny-random", "tiny-random", "--clips", "5", "--timesteps", "600,100", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["models"]
    assert [r["clips"] for r in rows] == [2, 2] and list(rows[0]["val_loss_by_t"]) == ["100", "600"]
    assert rows[0]["val_loss"] == rows[1]["val_loss"] > 0  # fixed noise: the same model gives the same number
    assert rows[0]["val_loss"] == pytest.approx(sum(rows[0]["val_loss_by_t"].values()) / 2)
    # split by cell: with a threshold no cell reaches, every cell is "still" and the split is the whole loss
    assert module.main([str(cache), "tiny-random", "--timesteps", "600,100", "--moving-threshold", "1e9", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["models"][0]
    for t, value in row["val_loss_by_t"].items():
        assert row["by_region"]["still"][t] == pytest.approx(value, rel=1e-5)
    # and with one every cell passes, every cell is "moving"
    assert module.main([str(cache), "tiny-random", "--timesteps", "600,100", "--moving-threshold", "1e-9", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["models"][0]
    for t, value in row["val_loss_by_t"].items():
        assert row["by_region"]["moving"][t] == pytest.approx(value, rel=1e-5)
    assert module.main([str(cache), "tiny-random", "--moving-threshold", "0"]) == 2
    assert module.main([str(cache), "tiny-random", "--timesteps", "1000"]) == 2
    assert module.main([str(tmp_path / "absent"), "tiny-random"]) == 2
