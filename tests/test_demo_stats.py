"""The ablation statistics (lamo_cli.eval.stats) against hand-computed cases, and `lamo demo`
with several training seeds on the ood split."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lamo_cli.cli import app
from lamo_cli.eval.stats import arm_stats, bootstrap_means, metric_stats


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_all_pass_gives_a_degenerate_interval_and_zero_spread():
    stats = metric_stats(np.ones((3, 5), dtype=bool))
    assert stats["per_seed"] == [100.0, 100.0, 100.0]
    assert stats["mean"] == 100.0 and stats["std"] == 0.0
    assert stats["ci"] == [100.0, 100.0]


def test_per_seed_mean_and_sample_std_by_hand():
    passes = [[1, 0, 1, 1],   # 75 %
              [0, 0, 1, 1],   # 50 %
              [1, 1, 1, 1]]   # 100 %
    stats = metric_stats(np.array(passes, dtype=bool))
    assert stats["per_seed"] == [75.0, 50.0, 100.0]
    assert stats["mean"] == pytest.approx(75.0)
    # sample std: deviations -0, -25, +25 -> sqrt((0 + 625 + 625) / 2) = 25
    assert stats["std"] == pytest.approx(25.0)
    low, high = stats["ci"]
    assert 0.0 <= low <= stats["mean"] <= high <= 100.0


def test_one_seed_has_zero_std():
    assert metric_stats(np.array([[True, False, True]]))["std"] == 0.0


def test_two_prompt_bootstrap_distribution_is_the_known_one():
    # prompts pass 0 % and 100 %: a resample mean is 0 (p 1/4), 50 (p 1/2) or 100 (p 1/4)
    means = bootstrap_means(np.array([0.0, 1.0]), resamples=2000, seed=7)
    assert means.shape == (2000,)
    assert set(np.unique(means).tolist()) <= {0.0, 50.0, 100.0}
    freq = {v: float(np.mean(means == v)) for v in (0.0, 50.0, 100.0)}
    # binomial sd of each frequency is <= 0.0112; 0.05 is > 4 sd
    assert freq[0.0] == pytest.approx(0.25, abs=0.05)
    assert freq[50.0] == pytest.approx(0.50, abs=0.05)
    assert freq[100.0] == pytest.approx(0.25, abs=0.05)
    # 2.5th / 97.5th percentiles fall inside the 25 % masses at the ends
    assert metric_stats(np.array([[False, True]]), seed=7)["ci"] == [0.0, 100.0]


def test_seeds_are_pooled_per_prompt_before_resampling():
    # prompt 0 passes in both seeds, prompt 1 in one of two: pooled values {1, 0.5}
    # resample means: 100 (1/4), 75 (1/2), 50 (1/4) -> CI [50, 100], never below 50
    stats = metric_stats(np.array([[True, True], [True, False]]), seed=3)
    assert stats["per_seed"] == [100.0, 50.0]
    assert stats["ci"] == [50.0, 100.0]
    means = bootstrap_means(np.array([1.0, 0.5]), seed=3)
    assert set(np.unique(means).tolist()) == {50.0, 75.0, 100.0}


def test_bootstrap_is_deterministic_in_its_seed():
    rng = np.random.default_rng(0)
    passes = rng.random((3, 20)) < 0.4
    assert metric_stats(passes, seed=11) == metric_stats(passes, seed=11)
    a, b = bootstrap_means(passes.mean(axis=0), seed=11), bootstrap_means(passes.mean(axis=0), seed=12)
    assert not np.array_equal(a, b)


def test_arm_stats_covers_every_metric_and_rejects_mismatched_shapes():
    out = arm_stats({"SA": [[True, False]], "PC": [[False, False]]})
    assert out["seeds"] == 1 and out["prompts"] == 2
    assert out["PC"]["mean"] == 0.0 and out["PC"]["ci"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        arm_stats({"SA": [[True, False]], "PC": [[True]]})
    with pytest.raises(ValueError):
        metric_stats(np.zeros((0, 3)))


QUICK_RECIPE = """backbone = "tiny-random"
[fit_prior]
steps = 20
batch_size = 4
width = 16
depth = 1
warmup = 2
save_every = 10
[finetune]
steps = 8
drift_weight = 0.4
lora_rank = 4
lora_alpha = 4
warmup = 2
batch_size = 2
gradient_checkpointing = false
save_every = 4
[generate]
steps = 6
guidance_scale = 15.0
seed = 42
"""


def test_demo_with_two_seeds_on_the_ood_split(tmp_path):
    out = tmp_path / "demo"
    recipe = tmp_path / "quick.toml"
    recipe.write_text(QUICK_RECIPE)
    args = ["demo", "--out", str(out), "--seeds", "0,1", "--test-prompts", "2", "--train-clips", "6", "--split", "ood",
            "--recipe", str(recipe), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "±" in result.output and "quick.toml" in result.output
    summary = json.loads((out / "demo.json").read_text())
    assert summary["split"] == "ood" and summary["seeds"] == [0, 1]
    assert summary["recipe_file"] == str(recipe) and summary["recipe"]["fit_prior"]["steps"] == 20
    assert json.loads((out / "prior-s0" / "config.json").read_text())["steps"] == 20  # the recipe reached the stages
    assert json.loads(next((out / "videos" / "plain-s0").glob("*.json")).read_text())["settings"]["steps"] == 6
    assert [row["arm"] for row in summary["table"]] == ["ground truth (renders)", "plain", "+drift", "+guidance", "both"]
    for row in summary["table"][1:]:
        for metric in ("SA", "PC", "Joint", "dynamic"):
            stats = row["stats"][metric]
            assert len(stats["per_seed"]) == 2
            assert stats["mean"] == pytest.approx(sum(stats["per_seed"]) / 2)
            assert stats["mean"] == row[metric]
            assert len(stats["ci"]) == 2 and 0.0 <= stats["ci"][0] <= stats["ci"][1] <= 100.0
            assert stats["std"] == pytest.approx(abs(stats["per_seed"][0] - stats["per_seed"][1]) / 2 ** 0.5)
    assert len(summary["table"][0]["stats"]["PC"]["per_seed"]) == 1
    truth_medians = summary["table"][0]["medians"]
    assert set(truth_medians) == {"accel", "smooth"} and truth_medians["smooth"] < 0.25  # renders: clean trajectories
    for seed in (0, 1):
        for folder in (f"prior-s{seed}", f"run-plain-s{seed}", f"run-drift-s{seed}"):
            assert (out / folder).is_dir()
        for arm in ("plain", "with-drift", "with-guidance", "both"):
            assert len(list((out / "videos" / f"{arm}-s{seed}").glob("*.mp4"))) == 2
    assert (out / "world-ood").is_dir() and not (out / "world-test").exists()
    # the same prompt and sampling seed for every training seed
    first = [json.loads(next((out / "videos" / f"both-s{seed}").glob("*.json")).read_text()) for seed in (0, 1)]
    assert first[0]["prompt"] == first[1]["prompt"] and first[0]["seed"] == first[1]["seed"]
    assert (out / "comparison.png").is_file()

    # a rerun in the same folder reuses the finished priors and fine-tunes
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*-s*/*.json")}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    rerun = json.loads((out / "demo.json").read_text())["table"]
    assert [row["stats"] for row in rerun] == [row["stats"] for row in summary["table"]]

    # a guidance-scale sweep on it: scale 0 is the demo's plain arm, the recipe's scale its +guidance arm
    recipe_scale = summary["recipe"]["generate"]["guidance_scale"]
    swept = CliRunner().invoke(app, ["sweep", str(out), "--knob", "guidance-scale", "--values", f"0,{recipe_scale}", "--no-progress"])
    assert swept.exit_code == 0, swept.output
    sweep_record = json.loads((out / "sweep-guidance-scale" / "sweep.json").read_text())
    arms = {row["arm"]: row for row in summary["table"]}
    for row, arm in zip(sweep_record["rows"], ("plain", "+guidance")):
        for metric in ("SA", "PC", "Joint", "dynamic"):
            assert row["stats"][metric]["per_seed"] == arms[arm]["stats"][metric]["per_seed"], (arm, metric)
        assert set(row["medians"]) == {"accel", "smooth"}
    assert (out / "sweep-guidance-scale" / "sweep.png").is_file()
    bad = CliRunner().invoke(app, ["sweep", str(out), "--knob", "field-tau", "--values", "1.5", "--no-progress"])
    assert bad.exit_code == 2 and "--values" in bad.output and "Traceback" not in bad.output
    missing = CliRunner().invoke(app, ["sweep", str(tmp_path / "nothing"), "--knob", "guidance-scale", "--values", "1", "--no-progress"])
    assert missing.exit_code == 2 and "demo.json" in missing.output


def test_demo_rejects_bad_seeds_and_split(tmp_path):
    runner = CliRunner()
    bad_seeds = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--seeds", "0,x", "--no-progress"])
    assert bad_seeds.exit_code == 2 and "--seeds" in bad_seeds.output
    bad_split = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--split", "train", "--no-progress"])
    assert bad_split.exit_code == 2 and "--split" in bad_split.output
    missing = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--recipe", str(tmp_path / "nope.toml"), "--no-progress"])
    assert missing.exit_code == 2 and "--recipe" in missing.output and "Traceback" not in missing.output
    assert not (tmp_path / "d").exists()


def test_demo_recipe_is_the_backbones_demo_recipe_when_there_is_one():
    from lamo_cli.recipes import RECIPES_DIR
    from lamo_cli.stages.demo import demo_recipe_for

    assert demo_recipe_for("tiny") == RECIPES_DIR / "tiny-demo.toml"
    assert demo_recipe_for("tiny-random") == RECIPES_DIR / "tiny-random.toml"  # no tiny-random-demo.toml
    assert demo_recipe_for("cogvideox-2b") == RECIPES_DIR / "cogvideox-2b.toml"
