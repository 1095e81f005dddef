"""The whole chain through the public CLI, as a new user runs it: encode -> fit-prior -> finetune
-> generate -> heatmap on generated videos with tiny-random, then `lamo demo`."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from lamo_cli.cli import app

runner = CliRunner()


def lamo(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"lamo {' '.join(map(str, args))} failed:\n{result.output}"
    assert "Traceback" not in result.output
    return result


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_five_stages_chain_through_the_cli(make_clips, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default paths ./lamo-cache, ./lamo-prior, ./lamo-run chain the stages
    make_clips(tmp_path, n=4, frames=17, size=64)
    lamo("encode", "videos", "--backbone", "tiny-random", "--no-progress")
    assert (tmp_path / "lamo-cache" / "manifest.json").is_file()

    lamo("fit-prior", "--steps", "12", "--width", "16", "--depth", "1", "--warmup", "2", "--no-progress")
    prior_config = json.loads((tmp_path / "lamo-prior" / "config.json").read_text())
    assert prior_config["backbone"] == "tiny-random"

    lamo("finetune", "--steps", "4", "--lora-rank", "4", "--lora-alpha", "2", "--warmup", "1", "--no-progress")
    assert (tmp_path / "lamo-run" / "pytorch_lora_weights.safetensors").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "lamo-run" / "metrics.jsonl").read_text().splitlines()]
    assert len([m for m in metrics if "diffusion" in m]) == 4 and all(m["drift"] is not None for m in metrics if "drift" in m)

    # ./lamo-prior is picked up by default: this sample is guided
    lamo("generate", "a red square moving quickly to the right", "--lora", "lamo-run", "--steps", "5", "--out", "out.mp4", "--no-progress")
    sidecar = json.loads((tmp_path / "out.json").read_text())
    assert sidecar["prompt"] == "a red square moving quickly to the right"
    assert sidecar["settings"]["guidance_scale"] == 15.0
    assert sidecar["guidance"]["enabled"] and sidecar["prior"]["config"]["backbone"] == "tiny-random"
    latent = load_file(str(tmp_path / "out.latent.safetensors"))["latent"]
    assert latent.shape == (5, 16, 8, 8)
    assert (tmp_path / "out.mp4").stat().st_size > 0

    lamo("heatmap", "out.mp4", "--out", "maps")
    report = json.loads((tmp_path / "maps" / "heatmap.json").read_text())
    assert 0 <= report["t_star"] < latent.shape[0] - 2 + 1
    assert (tmp_path / "maps" / "heatmap.png").stat().st_size > 1000


def test_demo_runs_every_arm_and_scores_them(tmp_path):
    lamo("demo", "--out", tmp_path / "demo", "--train-clips", "6", "--test-prompts", "2", "--no-progress")
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    arms = [row["arm"] for row in summary["table"]]
    assert arms == ["ground truth (renders)", "plain", "+drift", "+guidance", "both"]
    assert summary["table"][0]["PC"] == 100.0  # the renders pass the physics score
    for arm in ("plain", "with-drift", "with-guidance", "both"):
        assert len(list((tmp_path / "demo" / "videos" / f"{arm}-s0").glob("*.mp4"))) == 2
    guided = json.loads(next((tmp_path / "demo" / "videos" / "both-s0").glob("*.json")).read_text())
    unguided = json.loads(next((tmp_path / "demo" / "videos" / "with-drift-s0").glob("*.json")).read_text())
    assert guided["prompt"] == unguided["prompt"] and guided["seed"] == unguided["seed"]
    assert (tmp_path / "demo" / "comparison.png").is_file()


def test_5b_style_folder_backbone_chains_without_repeating_it(tmp_path, monkeypatch):
    """A local diffusers folder with 3D RoPE and the DPM scheduler (the CogVideoX-5B code path):
    the cache records the folder, so fit-prior and finetune find the backbone on their own."""
    from diffusers import CogVideoXDPMScheduler

    from lamo_cli.backbones.cogvideox import SCHEDULER_2B, TINY_RANDOM_FORMAT, CogVideoXBackbone, tiny_random_components
    from lamo_cli.data.world import write_world

    monkeypatch.chdir(tmp_path)
    parts = tiny_random_components(rope=True)
    parts["scheduler"] = CogVideoXDPMScheduler(**{**SCHEDULER_2B, "snr_shift_scale": 1.0})
    CogVideoXBackbone("tiny-5b-style", parts.__getitem__, TINY_RANDOM_FORMAT, "cpu").save("model5b")
    write_world("clips", 3, num_frames=17)

    lamo("encode", "clips", "--backbone", "model5b", "--no-progress")
    manifest = json.loads((tmp_path / "lamo-cache" / "manifest.json").read_text())
    assert manifest["backbone"] == str((tmp_path / "model5b").resolve())
    lamo("fit-prior", "--steps", "4", "--width", "16", "--depth", "1", "--warmup", "1", "--no-progress")
    lamo("finetune", "--steps", "2", "--lora-rank", "4", "--lora-alpha", "2", "--warmup", "1", "--no-progress")
    lamo("generate", "a red ball drops", "--backbone", "model5b", "--lora", "lamo-run", "--steps", "4", "--no-progress")
    sidecar = json.loads((tmp_path / "out.json").read_text())
    assert sidecar["settings"]["sampler"] == "dpm" and sidecar["guidance"]["enabled"]
    monkeypatch.chdir(tmp_path.parent)  # the sidecar names the folder absolutely: heatmap works from anywhere
    lamo("heatmap", str(tmp_path / "out.mp4"), "--out", str(tmp_path / "maps"))
    assert (tmp_path / "maps" / "heatmap.json").is_file()
