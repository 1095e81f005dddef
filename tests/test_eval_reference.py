"""`lamo eval --reference --backbone` (VAE-reconstruction level) and `lamo eval --voe` (violation of expectation)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lamo_cli.cli import app
from lamo_cli.data import world as W
from lamo_cli.eval import voe as V

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny():
    from lamo_cli.backbones.cogvideox import load_backbone

    return load_backbone("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def pair17():
    """One (possible, impossible, kind) pair in tiny-random's format (17 frames, 64 px)."""
    return W.voe_pairs(1, seed=3, split="test", num_frames=17, size=64)[0]


# ---------------------------------------------------------------- --reference --backbone
def test_reference_with_backbone_writes_three_levels(tmp_path):
    world_dir, out = tmp_path / "world", tmp_path / "report"
    made = runner.invoke(app, ["world", "--out", str(world_dir), "--n", "2", "--frames", "17", "--no-progress"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["eval", str(world_dir), "--reference", "--backbone", "tiny-random", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "VAE reconstructions" in result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["levels"]) == {"generated_or_given", "ground_truth", "vae_reconstruction"}
    assert report["levels"]["ground_truth"]["overall"]["n"] == 2
    assert report["levels"]["ground_truth"]["overall"]["SA"] == 100.0
    assert report["levels"]["ground_truth"]["overall"]["PC"] == 100.0
    vae = report["vae_reconstruction"]
    assert vae["backbone"] == "tiny-random" and vae["skipped"] == []
    assert vae["video_format"]["num_frames"] == 17 and vae["video_format"]["height"] == 64
    assert vae["overall"]["n"] == 2
    for metric in ("SA", "PC", "Joint", "dynamic"):
        assert 0.0 <= vae["overall"][metric] <= 100.0
    assert report["levels"]["vae_reconstruction"]["overall"] == vae["overall"]
    assert (out / "chart.png").stat().st_size > 0


def test_vae_reconstructions_share_one_call_and_match_one_by_one(tiny, monkeypatch):
    """Two clips that fit and a too-short one between them: one encode call of 2, the short clip's
    reason in its place, and each reconstruction as a clip reconstructed alone (VAE rounding aside)."""
    clips = [W.simulate_clip(family, np.random.default_rng(seed), "test", num_frames=frames, size=64)
             for family, seed, frames in (("drop", 1, 17), ("ramp", 2, 9), ("uniform", 3, 17))]
    alone = [V.vae_reconstruction(tiny, clips[0]), None, V.vae_reconstruction(tiny, clips[2])]
    calls = []
    original = type(tiny).encode_video
    monkeypatch.setattr(type(tiny), "encode_video", lambda self, frames: calls.append(len(frames)) or original(self, frames))
    together = V.vae_reconstructions(tiny, clips)
    assert calls == [2]
    assert isinstance(together[1], ValueError) and "needs 17" in str(together[1])
    for index in (0, 2):
        assert together[index].shape == alone[index].shape == (17, 64, 64, 3)
        assert np.abs(together[index].astype(int) - alone[index].astype(int)).max() <= 2


def test_reference_without_backbone_says_vae_floor_needs_it(tmp_path):
    folder = tmp_path / "world"
    W.write_world(folder, n=1, families="uniform", num_frames=17)
    result = runner.invoke(app, ["eval", str(folder), "--reference", "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "needs --backbone" in result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(report["levels"]) == {"generated_or_given", "ground_truth"}
    assert "vae_reconstruction" not in report and "needs --backbone" in report["reference"]["note"]


def test_reference_missing_folder_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "nope"), "--reference", "--backbone", "tiny-random", "--no-progress"])
    assert result.exit_code == 2
    assert "nope" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_render_for_format_truncates_pads_and_crops_back(pair17):
    clip = W.voe_pairs(1, seed=0, num_frames=33, size=64)[0][0]
    square = W.render_clip(clip, size=64)
    frames, left = V.render_for_format(clip, SimpleNamespace(num_frames=17, height=64, width=80))
    assert frames.shape == (17, 64, 80, 3) and left == 8
    assert np.array_equal(frames[:, :, :8], np.broadcast_to(np.array(W.BACKGROUND, np.uint8), (17, 64, 8, 3)))
    assert np.array_equal(V.crop_to_world(frames, left), square[:17])
    with pytest.raises(ValueError, match="needs 17"):
        V.render_for_format(W.voe_pairs(1, seed=0, num_frames=9, size=64)[0][0], SimpleNamespace(num_frames=17, height=64, width=64))


# ---------------------------------------------------------------- VoE computation
def test_default_timesteps_are_fixed_and_even():
    assert V.default_timesteps() == [50, 179, 307, 436, 564, 693, 821, 950]
    assert V.default_timesteps(3, 100, 900) == [100, 500, 900]


def test_summarise_by_hand():
    summary = V.summarise([1.0, 1.0, 2.0, 3.0], [2.0, 0.0, 2.5, 3.0], ["vanish", "vanish", "teleport", "teleport"], resamples=200)
    overall = summary["overall"]
    assert overall["n"] == 4 and overall["accuracy"] == 0.5 and overall["ties"] == 1
    assert overall["mean_gap"] == pytest.approx((1.0 - 1.0 + 0.5 + 0.0) / 4)
    low, high = overall["accuracy_ci95"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    assert summary["per_kind"]["vanish"] == {"n": 2, "accuracy": 0.5, "mean_gap": 0.0, "ties": 0}
    assert summary["per_kind"]["teleport"]["accuracy"] == 0.5 and summary["per_kind"]["teleport"]["ties"] == 1
    assert summary["per_kind"]["gravity_flip"] == {"n": 0, "accuracy": None, "mean_gap": None, "ties": 0}
    assert set(summary["per_kind"]) == set(W.TWIN_KINDS)


def test_denoising_loss_matches_v_mse_in_float64(tiny, pair17):
    """diffusion loss of x0_hat equals the v-MSE against sqrt(abar) eps - sqrt(1-abar) x0 (by hand, float64)."""
    possible, _, _ = pair17
    x0 = V.clip_latents(tiny, possible)
    text = tiny.encode_text([possible.caption])
    noise = V.pair_noise(0, 0, 1, x0.shape[1:])
    t = 500
    loss = V.denoising_losses(tiny, x0, text, [t], noise)[0]
    abar = float(tiny.alphas_cumprod()[t])
    x_t = (np.sqrt(abar) * x0.double() + np.sqrt(1 - abar) * noise.double()).float()
    with torch.no_grad():
        v = tiny.predict_v(x_t, torch.tensor([t]), text).double()
    target = np.sqrt(abar) * noise.double() - np.sqrt(1 - abar) * x0.double()
    assert loss == pytest.approx(float(((v - target) ** 2).mean()), rel=1e-4)


def test_voe_is_exactly_symmetric_and_deterministic(tiny, pair17):
    possible, impossible, kind = pair17
    pairs = [(possible, impossible, kind), (possible, possible, kind)]
    steps = [100, 500, 900]
    first = V.voe_accuracy(tiny, pairs, steps, seed=5, resamples=200)
    again = V.voe_accuracy(tiny, pairs, steps, seed=5, resamples=200)
    assert first["pairs"] == again["pairs"] and first["overall"] == again["overall"]
    twin_of_itself = first["pairs"][1]
    assert twin_of_itself["gap"] == 0.0 and twin_of_itself["loss_possible"] == twin_of_itself["loss_impossible"]
    # both pairs use pair-indexed noise, so the possible clip's loss differs only through the noise draw
    assert first["overall"]["ties"] >= 1 and first["timesteps"] == steps
    assert first["pairs"][0]["loss_impossible"] != first["pairs"][0]["loss_possible"]
    assert torch.equal(V.pair_noise(5, 0, 3, (2, 3)), V.pair_noise(5, 0, 3, (2, 3)))
    assert not torch.equal(V.pair_noise(5, 0, 3, (2, 3)), V.pair_noise(5, 1, 3, (2, 3)))


def test_voe_rejects_a_twin_with_another_caption(tiny, pair17):
    possible, impossible, kind = pair17
    other = W._with(impossible, caption=impossible.caption + " twice")
    with pytest.raises(ValueError, match="caption"):
        V.voe_accuracy(tiny, [(possible, other, kind)], [500])


# ---------------------------------------------------------------- CLI --voe
def test_cli_voe_writes_voe_json(tmp_path):
    out = tmp_path / "voe"
    result = runner.invoke(app, ["eval", "--voe", "--backbone", "tiny-random", "--n", "4", "--timesteps", "3", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "violation of expectation" in result.output
    record = json.loads((out / "voe.json").read_text())
    assert record["n"] == 4 and record["backbone"]["backbone"] == "tiny-random" and record["lora"] is None
    assert 0.0 <= record["overall"]["accuracy"] <= 1.0
    assert set(W.TWIN_KINDS) <= set(record["per_kind"])
    assert sum(block["n"] for block in record["per_kind"].values()) == 4
    assert len(record["pairs"]) == 4 and record["timesteps"] == [50, 500, 950]
    correct = sum(p["loss_impossible"] > p["loss_possible"] for p in record["pairs"]) / 4
    assert record["overall"]["accuracy"] == correct


def test_cli_voe_without_backbone_uses_the_default(tmp_path, monkeypatch):
    from lamo_cli.backbones import cogvideox

    monkeypatch.setattr(cogvideox, "default_backbone", lambda: "tiny-random")
    result = runner.invoke(app, ["eval", "--voe", "--n", "1", "--timesteps", "1", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "voe.json").read_text())["backbone"]["backbone"] == "tiny-random"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--voe", "somefolder"], "takes no VIDEOS"),
        (["--voe", "--reference"], "separate modes"),
        (["--voe", "--backbone", "tiny-random", "--lora", "no-such-run"], "--lora"),
        (["--voe", "--backbone", "tiny-random", "--n", "0"], "--n 0"),
        (["--voe", "--backbone", "no-such-backbone"], "--backbone"),
        (["somefolder", "--lora", "run"], "--voe only"),
    ],
)
def test_cli_bad_combinations_exit_2(tmp_path, args, words):
    result = runner.invoke(app, ["eval", *args, "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
