"""`lamo generate` end to end on the tiny random backbone (CliRunner), plus its bad-input paths."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lamo_cli.backbones import load_backbone  # noqa: E402
from lamo_cli.cli import app  # noqa: E402
from lamo_cli.fileio import save_safetensors, write_json  # noqa: E402
from lamo_cli.motion import MotionField, MotionFieldConfig, guidance_loss, pool_text  # noqa: E402
from lamo_cli.sampling import sample  # noqa: E402
from lamo_cli.stages.fit_prior import PRIOR_CONFIG, PRIOR_FORMAT, PRIOR_VERSION, PRIOR_WEIGHTS  # noqa: E402

runner = CliRunner()
PROMPT = "a ball falls and bounces"
STEPS = "5"


def _field(text_dim: int) -> MotionField:
    """A small field that predicts input-dependent motion (random head instead of the zero init)."""
    config = MotionFieldConfig(latent_channels=16, width=8, depth=1, text_dim=text_dim, cond_dim=8, groups=4, se_hidden=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        field = MotionField(config)
        torch.nn.init.normal_(field.head.weight, std=0.05)
        torch.nn.init.constant_(field.head.bias, 0.2)
    return field.eval().requires_grad_(False)


def write_prior(folder: Path, field: MotionField, fingerprint: str, backbone: str = "tiny-random") -> Path:
    """A prior folder in the format `lamo_cli.stages.fit_prior.load_prior` reads."""
    config = {
        "format": PRIOR_FORMAT,
        "version": PRIOR_VERSION,
        "field": field.config.to_dict(),
        "tau": 1,
        "backbone": backbone,
        "latent_fingerprint": fingerprint,
        "scaling_factor": 1.15258426,
    }
    save_safetensors(folder / PRIOR_WEIGHTS, dict(field.state_dict()))
    write_json(folder / PRIOR_CONFIG, config)
    return folder


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny-random")


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory, tiny):
    return write_prior(tmp_path_factory.mktemp("prior") / "prior", _field(tiny.text_dim), tiny.latent_fingerprint())


def _run(args: list[str]):
    return runner.invoke(app, args, catch_exceptions=False)


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def _latent(path: Path) -> tuple[torch.Tensor, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor("latent"), handle.metadata()


# ==================================================================== happy paths
def test_generate_without_prior_writes_video_sidecar_and_latent(tmp_path, monkeypatch, tiny):
    monkeypatch.chdir(tmp_path)  # no ./lamo-prior here
    result = _run(["generate", PROMPT, "--steps", STEPS, "--out", "clip.mp4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "no ./lamo-prior" in result.output and "s/step" in result.output and "overhead" in result.output
    record = json.loads((tmp_path / "clip.json").read_text())
    assert record["prompt"] == PROMPT and record["negative_prompt"] == "" and record["seed"] == 42
    assert record["settings"]["steps"] == 5 and record["settings"]["sampler"] == "ddim" and record["settings"]["fps"] == 8.0
    assert record["backbone"]["name"] == "tiny-random"
    assert record["backbone"]["latent_fingerprint"] == tiny.latent_fingerprint()
    assert record["guidance"]["enabled"] is False and record["prior"] is None and record["lora"] is None
    assert {"torch", "diffusers", "transformers", "peft", "lamo"} <= set(record["versions"])
    assert len(record["guidance"]["per_step"]) == 5

    latent, meta = _latent(tmp_path / "clip.latent.safetensors")
    assert tuple(latent.shape) == (5, 16, 8, 8)
    assert float(meta["scaling_factor"]) == pytest.approx(tiny.scaling_factor)
    # Independent: the library loop with the same prompt, empty negative prompt and seed 42.
    expected, _ = sample(tiny, tiny.encode_text([PROMPT]), tiny.encode_text([""]), num_steps=5, seed=42, sampler="ddim")
    torch.testing.assert_close(latent, expected[0], atol=1e-6, rtol=0)

    import decord

    reader = decord.VideoReader(str(tmp_path / "clip.mp4"))
    assert len(reader) == 17 and reader[0].shape == (64, 64, 3)
    assert reader.get_avg_fps() == pytest.approx(8.0)
    # The mp4 holds the VAE decode of the saved latent (up to H.264 loss).
    decoded = tiny.decode_latents(latent[None])[0].astype(np.float64)
    frames = reader.get_batch(list(range(17))).asnumpy().astype(np.float64)
    assert np.abs(frames - decoded).mean() < 3.0


def test_generate_with_prior_guides_and_records_it(tmp_path, tiny, prior_dir):
    guided = _run(["generate", PROMPT, "--steps", STEPS, "--prior", str(prior_dir), "--out", str(tmp_path / "g.mp4"), "--no-progress"])
    assert guided.exit_code == 0, guided.output
    plain = _run(["generate", PROMPT, "--steps", STEPS, "--prior", str(prior_dir), "--guidance-scale", "0", "--out", str(tmp_path / "p.mp4")])
    assert plain.exit_code == 0, plain.output
    assert "guidance off" in plain.output
    none = _run(["generate", PROMPT, "--steps", STEPS, "--prior", "none", "--out", str(tmp_path / "n.mp4")])
    assert none.exit_code == 0, none.output

    record = json.loads((tmp_path / "g.json").read_text())
    assert record["guidance"]["enabled"] is True and record["prior"]["path"] == str(prior_dir)
    assert record["prior"]["config"]["latent_fingerprint"] == tiny.latent_fingerprint()
    losses = [step["guide_loss"] for step in record["guidance"]["per_step"]]
    assert losses[0] is None and all(isinstance(x, float) for x in losses[1:])  # window: steps 1..4 of 5
    assert record["timing"]["guidance_s"] > 0

    z_guided, _ = _latent(tmp_path / "g.latent.safetensors")
    z_plain, _ = _latent(tmp_path / "p.latent.safetensors")
    assert not torch.allclose(z_guided, z_plain)
    assert torch.equal(z_plain, _latent(tmp_path / "n.latent.safetensors")[0])  # scale 0 == no prior, bit for bit
    field = _field(tiny.text_dim)
    pooled = pool_text(tiny.encode_text([PROMPT]))
    loss_guided = float(guidance_loss(z_guided[None], field, pooled))
    loss_plain = float(guidance_loss(z_plain[None], field, pooled))
    assert loss_guided < loss_plain
    assert record["guidance"]["final_guide_loss"] == pytest.approx(loss_guided, rel=1e-4)


def test_default_prior_folder_is_picked_up(tmp_path, monkeypatch, prior_dir):
    shutil.copytree(prior_dir, tmp_path / "lamo-prior")
    monkeypatch.chdir(tmp_path)
    result = _run(["generate", PROMPT, "--steps", "3", "--out", "x.mp4"])
    assert result.exit_code == 0, result.output
    assert "using ./lamo-prior" in result.output
    record = json.loads((tmp_path / "x.json").read_text())
    assert record["guidance"]["enabled"] is True and record["prior"]["path"] == "lamo-prior"


def test_num_videos_use_consecutive_seeds(tmp_path):
    result = _run(["generate", PROMPT, "--steps", "2", "--num-videos", "2", "--seed", "10", "--out", str(tmp_path / "v.mp4")])
    assert result.exit_code == 0, result.output
    seeds = [json.loads((tmp_path / f"v-{k}.json").read_text())["seed"] for k in range(2)]
    assert seeds == [10, 11]
    z0, _ = _latent(tmp_path / "v-0.latent.safetensors")
    z1, _ = _latent(tmp_path / "v-1.latent.safetensors")
    assert not torch.equal(z0, z1)


def test_prompts_file_txt_writes_numbered_slugs(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("A red ball falls!\n\n# a comment\nTwo cubes collide\n")
    result = _run(["generate", "--prompts-file", str(prompts), "--steps", "2", "--out", str(tmp_path / "batch.mp4")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "batch"
    assert sorted(p.name for p in folder.glob("*.mp4")) == ["000-a-red-ball-falls.mp4", "001-two-cubes-collide.mp4"]
    assert json.loads((folder / "001-two-cubes-collide.json").read_text())["prompt"] == "Two cubes collide"


def test_prompts_file_jsonl_bad_line_is_reported_and_batch_continues(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a pendulum swings"}) + "\n" + '{"text": "no prompt key"}\n' + "{broken\n")
    result = _run(["generate", "--prompts-file", str(prompts), "--steps", "2", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1, result.output
    assert "prompts.jsonl line 2" in result.output and "prompts.jsonl line 3" in result.output
    assert "2 prompt(s) failed" in result.output and "Traceback" not in result.output
    names = sorted(p.name for p in (tmp_path / "runs").glob("*.mp4"))
    assert names == ["000-a-pendulum-swings.mp4"]


def test_videos_decoded_in_pairs_match_one_by_one_and_a_failed_prompt_loses_none(tmp_path, monkeypatch, tiny):
    import decord

    import lamo_cli.sampling
    from lamo_cli.backbones.cogvideox import CogVideoXBackbone

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball falls\ntwo cubes collide\na pendulum swings\n")
    names = ["000-a-red-ball-falls", "001-two-cubes-collide", "002-a-pendulum-swings"]
    args = ["generate", "--prompts-file", str(prompts), "--steps", "2", "--no-progress"]
    monkeypatch.setattr(CogVideoXBackbone, "clips_per_vae_call", lambda self: 1)
    assert _run(args + ["--out", str(tmp_path / "single")]).exit_code == 0

    # Pairs, and the second prompt's sampling fails: the first waits for the third and both are written.
    real_sample, calls = lamo_cli.sampling.sample, []

    def sample_failing_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected sampling failure")
        return real_sample(*a, **k)

    import lamo_cli.data.mp4 as mp4

    real_write, written = mp4.write_mp4, {}

    def recording_write(path, frames, **kwargs):  # the decoded frames, before H.264 (which amplifies rounding)
        written[Path(path).stem] = np.array(frames)
        real_write(path, frames, **kwargs)

    monkeypatch.setattr(CogVideoXBackbone, "clips_per_vae_call", lambda self: 2)
    monkeypatch.setattr(lamo_cli.sampling, "sample", sample_failing_second)
    monkeypatch.setattr(mp4, "write_mp4", recording_write)
    result = _run(args + ["--out", str(tmp_path / "pairs")])
    assert result.exit_code == 1, result.output
    assert "001 'two cubes collide'" in result.output and "injected sampling failure" in result.output
    assert sorted(p.stem for p in (tmp_path / "pairs").glob("*.mp4")) == [names[0], names[2]]
    for name in (names[0], names[2]):
        one, pair = tmp_path / "single" / name, tmp_path / "pairs" / name
        latent = _latent(pair.with_suffix(".latent.safetensors"))[0]
        torch.testing.assert_close(latent, _latent(one.with_suffix(".latent.safetensors"))[0], atol=0, rtol=0)
        # Decoded beside another clip, each clip is what decoding it alone gives, up to one grey level
        # (the CPU kernels torch picks can differ by thread; a swapped or mixed clip differs by far more).
        alone = tiny.decode_latents(latent[None])[0].astype(int)
        assert np.abs(written[name].astype(int) - alone).max() <= 1
        assert len(decord.VideoReader(str(pair.with_suffix(".mp4")))) == 17
        timing = json.loads(pair.with_suffix(".json").read_text())["timing"]
        assert timing["clips_decoded_together"] == 2
    assert json.loads((tmp_path / "single" / f"{names[1]}.json").read_text())["timing"]["clips_decoded_together"] == 1


def test_recipe_fills_options_command_line_wins_and_dpm(tmp_path, tiny):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[generate]\nseed = 7\ncfg = 3.0\nnegative_prompt = "blurry"\n')
    args = ["generate", PROMPT, "--recipe", str(recipe), "--sampler", "dpm", "--steps", "3", "--seed", "9", "--prior", "none",
            "--out", str(tmp_path / "r.mp4")]
    result = _run(args)
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert (settings["sampler"], settings["steps"], settings["seed"]) == ("dpm", 3, 9)  # typed
    assert (settings["cfg"], settings["negative_prompt"]) == (3.0, "blurry")  # from the recipe
    latent, _ = _latent(tmp_path / "r.latent.safetensors")
    expected, _ = sample(tiny, tiny.encode_text([PROMPT]), tiny.encode_text(["blurry"]), num_steps=3, cfg_scale=3.0, seed=9, sampler="dpm")
    torch.testing.assert_close(latent, expected[0], atol=1e-6, rtol=0)


# ==================================================================== bad input: exit 2, one line
def test_missing_prior_path(tmp_path):
    _one_line_error(_run(["generate", PROMPT, "--steps", "2", "--prior", str(tmp_path / "nope"), "--out", str(tmp_path / "o.mp4")]), "--prior")
    assert not (tmp_path / "o.mp4").exists()


def test_corrupt_prior_file(tmp_path, prior_dir):
    broken = tmp_path / "broken"
    shutil.copytree(prior_dir, broken)
    (broken / PRIOR_WEIGHTS).write_bytes(b"this is not a safetensors file")
    _one_line_error(_run(["generate", PROMPT, "--steps", "2", "--prior", str(broken), "--out", str(tmp_path / "o.mp4")]), "corrupt")


def test_corrupt_prior_config(tmp_path, prior_dir):
    broken = tmp_path / "broken"
    shutil.copytree(prior_dir, broken)
    (broken / PRIOR_CONFIG).write_text("{ not json")
    _one_line_error(_run(["generate", PROMPT, "--steps", "2", "--prior", str(broken), "--out", str(tmp_path / "o.mp4")]))


def test_prior_from_another_backbone_is_refused(tmp_path, tiny):
    other = write_prior(tmp_path / "other", _field(tiny.text_dim), "0123456789abcdef", backbone="cogvideox-2b")
    _one_line_error(_run(["generate", PROMPT, "--steps", "2", "--prior", str(other), "--out", str(tmp_path / "o.mp4")]), "fingerprint")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A real 2-step LoRA run (rank 4, alpha 2 -> scale 0.5) from `lamo encode` + `lamo finetune`."""
    from conftest import write_clips

    from lamo_cli.stages.encode import encode
    from lamo_cli.stages.finetune import finetune

    root = tmp_path_factory.mktemp("lora")
    clips = write_clips(root, n=2, frames=17, size=64)
    encode(clips, backbone="tiny-random", out=root / "cache", progress=False)
    finetune(cache=root / "cache", backbone="tiny-random", out=root / "run", steps=2, lora_rank=4, lora_alpha=2.0,
             lr=1e-2, warmup=0, save_every=2, progress=False)
    return root / "run"


def test_generate_with_lora_records_run_and_scale(tmp_path, lora_run):
    base = ["generate", PROMPT, "--steps", "2", "--prior", "none"]
    for name, extra in (("base", []), ("lora", ["--lora", str(lora_run)]), ("off", ["--lora", str(lora_run), "--lora-scale", "0"])):
        result = _run([*base, *extra, "--out", str(tmp_path / f"{name}.mp4")])
        assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "lora.json").read_text())
    assert record["lora"]["run"] == str(lora_run) and record["lora"]["kind"] == "lora"
    assert record["lora"]["scale"] == pytest.approx(0.5)  # alpha / rank written by the run
    assert json.loads((tmp_path / "off.json").read_text())["lora"]["scale"] == 0.0
    z_base, _ = _latent(tmp_path / "base.latent.safetensors")
    z_lora, _ = _latent(tmp_path / "lora.latent.safetensors")
    z_off, _ = _latent(tmp_path / "off.latent.safetensors")
    assert not torch.allclose(z_base, z_lora, atol=1e-6)
    torch.testing.assert_close(z_off, z_base, atol=1e-6, rtol=0)


def test_generate_from_a_run_checkpoint(tmp_path, lora_run):
    """--lora RUN/checkpoints/step-N samples that checkpoint; the last one is the finished run."""
    checkpoint = lora_run / "checkpoints" / "step-000002"
    base = ["generate", PROMPT, "--steps", "2", "--prior", "none"]
    for name, source in (("run", lora_run), ("ckpt", checkpoint)):
        result = _run([*base, "--lora", str(source), "--out", str(tmp_path / f"{name}.mp4")])
        assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "ckpt.json").read_text())["lora"]
    assert record["run"] == str(lora_run) and record["checkpoint"] == str(checkpoint) and record["step"] == 2
    assert record["kind"] == "lora" and record["weights"] == "raw" and record["scale"] == pytest.approx(0.5)
    torch.testing.assert_close(_latent(tmp_path / "ckpt.latent.safetensors")[0], _latent(tmp_path / "run.latent.safetensors")[0],
                               atol=1e-6, rtol=0)


def test_lora_with_corrupt_weights(tmp_path, lora_run):
    broken = tmp_path / "run"
    shutil.copytree(lora_run, broken)
    (broken / "pytorch_lora_weights.safetensors").write_bytes(b"\x00garbage")
    _one_line_error(_run(["generate", PROMPT, "--steps", "2", "--lora", str(broken), "--out", str(tmp_path / "o.mp4")]), "corrupt")


def test_missing_lora_run(tmp_path):
    _one_line_error(_run(["generate", PROMPT, "--steps", "2", "--lora", str(tmp_path / "no-run"), "--out", str(tmp_path / "o.mp4")]), "--lora")


def test_corrupt_lora_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("pytorch_lora_weights.safetensors", "adapter_model.safetensors", "transformer.safetensors"):
        (run / name).write_bytes(b"garbage")
    (run / "config.json").write_text("{ broken")
    (run / "run.json").write_text("{ broken")
    _one_line_error(_run(["generate", PROMPT, "--steps", "2", "--lora", str(run), "--out", str(tmp_path / "o.mp4")]))


@pytest.mark.parametrize("content", ["", "\n\n   \n# only a comment\n"])
def test_empty_prompt_file(tmp_path, content):
    prompts = tmp_path / "empty.txt"
    prompts.write_text(content)
    _one_line_error(_run(["generate", "--prompts-file", str(prompts), "--steps", "2", "--out", str(tmp_path / "b")]), "--prompts-file")


def test_missing_prompt_file_and_no_prompt(tmp_path):
    _one_line_error(_run(["generate", "--prompts-file", str(tmp_path / "missing.txt")]), "--prompts-file")
    _one_line_error(_run(["generate", "--steps", "2"]), "PROMPT")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--steps", "0"], "--steps"),
        (["--guidance-window", "1.5"], "--guidance-window"),
        (["--guidance-scale", "-1"], "--guidance-scale"),
        (["--sampler", "euler"], "--sampler"),
        (["--out", "clip.gif"], "--out"),
        (["--backbone", "no-such-model"], "--backbone"),
    ],
)
def test_bad_options(tmp_path, args, needle):
    _one_line_error(_run(["generate", PROMPT, *args]), needle)


# ==================================================================== video-to-video (--init-video)
def _write_clip(folder: Path, name: str, caption: str | None, seed: int = 0) -> Path:
    """A 17-frame 64x64 clip of a disc moving right (the tiny-random format), with its caption."""
    from lamo_cli.data.mp4 import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    frames = np.full((17, 64, 64, 3), 230, dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    for f in range(17):
        frames[f][(yy - 30) ** 2 + (xx - 8 - 3 * f - seed) ** 2 < 36] = (200, 30, 30)
    path = folder / f"{name}.mp4"
    write_mp4(path, frames)
    if caption is not None:
        (folder / f"{name}.txt").write_text(caption)
    return path


def test_init_video_denoises_the_clip_from_its_caption(tmp_path, tiny):
    import decord

    clip = _write_clip(tmp_path / "clips", "ball", "a red ball rolls to the right")
    result = _run(["generate", "--init-video", str(clip), "--strength", "0.4", "--steps", STEPS, "--out", str(tmp_path / "v.mp4"),
                   "--prior", "none", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "x 2 steps" in result.output  # int(5 x 0.4) of the 5-step schedule
    record = json.loads((tmp_path / "v.json").read_text())
    assert record["prompt"] == "a red ball rolls to the right"
    assert record["init_video"]["path"] == str(clip.resolve()) and record["init_video"]["strength"] == 0.4
    assert record["init_video"]["first_step"] == 3 and record["init_video"]["frame_indices"] == list(range(17))
    assert [s["step"] for s in record["guidance"]["per_step"]] == [3, 4]
    # Independent: the clip's frames through the VAE (posterior mean, scaled), then the library loop.
    frames = decord.VideoReader(str(clip)).get_batch(list(range(17))).asnumpy()
    with torch.no_grad():
        init = tiny.encode_video(frames[None])[0] * tiny.scaling_factor
    expected, _ = sample(tiny, tiny.encode_text(["a red ball rolls to the right"]), tiny.encode_text([""]), num_steps=5, seed=42,
                         init_latents=init, strength=0.4)
    latent, _ = _latent(tmp_path / "v.latent.safetensors")
    torch.testing.assert_close(latent, expected[0], atol=1e-5, rtol=0)


def test_init_video_prompt_overrides_caption(tmp_path):
    clip = _write_clip(tmp_path, "ball", "a red ball rolls to the right")
    result = _run(["generate", PROMPT, "--init-video", str(clip), "--steps", STEPS, "--out", str(tmp_path / "v.mp4"), "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "v.json").read_text())
    assert record["prompt"] == PROMPT and record["init_video"]["strength"] == 0.8  # the default


def test_init_video_folder_skips_a_clip_without_caption_and_writes_the_rest(tmp_path):
    _write_clip(tmp_path / "clips", "a_ball", "a red ball rolls to the right")
    _write_clip(tmp_path / "clips", "b_nocaption", None, seed=5)
    (tmp_path / "clips" / "c_broken.mp4").write_bytes(b"not an mp4")
    (tmp_path / "clips" / "c_broken.txt").write_text("a broken clip")
    result = _run(["generate", "--init-video", str(tmp_path / "clips"), "--steps", STEPS, "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert (tmp_path / "out" / "000-a-ball.mp4").is_file() and (tmp_path / "out" / "000-a-ball.json").is_file()
    assert "b_nocaption.mp4: no caption" in result.output and "c_broken" in result.output
    assert "2 clip(s) skipped or failed" in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "out").glob("*nocaption*")) and not list((tmp_path / "out").glob("*broken*.mp4"))


def test_init_video_folder_encodes_clips_in_groups_and_a_broken_one_fails_alone(tmp_path, tiny, monkeypatch):
    """Two readable clips and a broken one between them, the VAE taking 2 clips a call: one encode
    call holds both readable clips, each starts from its own latents (as encoded alone), and the
    broken clip is reported without costing the other its video."""
    from lamo_cli.backbones.cogvideox import CogVideoXBackbone

    _write_clip(tmp_path / "clips", "a_ball", "a red ball rolls to the right")
    (tmp_path / "clips" / "b_broken.mp4").write_bytes(b"not an mp4")
    (tmp_path / "clips" / "b_broken.txt").write_text("a broken clip")
    _write_clip(tmp_path / "clips", "c_ball", "a red ball rolls to the right fast", seed=9)
    encode_batches = []
    original_encode = CogVideoXBackbone.encode_video

    def counting_encode(self, frames):
        encode_batches.append(len(frames))
        return original_encode(self, frames)

    monkeypatch.setattr(CogVideoXBackbone, "clips_per_vae_call", lambda self: 2)
    monkeypatch.setattr(CogVideoXBackbone, "encode_video", counting_encode)
    result = _run(["generate", "--init-video", str(tmp_path / "clips"), "--strength", "0.4", "--steps", STEPS,
                   "--out", str(tmp_path / "out"), "--prior", "none", "--no-progress"])
    assert result.exit_code == 1, result.output  # the broken clip is a failure of the batch
    assert "b_broken" in result.output and "1 clip(s) skipped or failed" in result.output
    assert "Traceback" not in result.output
    assert encode_batches == [2]  # a_ball and c_ball together; b_broken never reached the VAE
    monkeypatch.undo()
    for name, caption in (("a-ball", "a red ball rolls to the right"), ("c-ball", "a red ball rolls to the right fast")):
        (latent_file,) = (tmp_path / "out").glob(f"*-{name}.latent.safetensors")
        clip = tmp_path / "clips" / f"{name.replace('-', '_')}.mp4"
        frames = __import__("decord").VideoReader(str(clip)).get_batch(list(range(17))).asnumpy()
        with torch.no_grad():
            init = tiny.encode_video(frames[None])[0] * tiny.scaling_factor
        expected, _ = sample(tiny, tiny.encode_text([caption]), tiny.encode_text([""]), num_steps=5, seed=42,
                             init_latents=init, strength=0.4)
        latent, _ = _latent(latent_file)
        # encoded two at a time vs alone: the VAE's kernels differ by rounding only
        torch.testing.assert_close(latent, expected[0], atol=1e-3, rtol=0)
        record = json.loads(latent_file.with_name(latent_file.name.replace(".latent.safetensors", ".json")).read_text())
        assert record["init_video"]["path"] == str(clip.resolve()) and record["init_video"]["encode_s"] > 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["x", "--strength", "0.5"], "--init-video"),
        (["--init-video", "CLIP", "--strength", "0"], "--strength"),
        (["--init-video", "CLIP", "--strength", "1.2"], "--strength"),
        (["--init-video", "CLIP", "--strength", "0.1", "--steps", "5"], "runs no step"),
        (["--init-video", "CLIP", "--prompts-file", "P"], "--prompts-file"),
        (["--init-video", "nope.mp4"], "--init-video nope.mp4"),
    ],
)
def test_init_video_bad_options(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    _write_clip(tmp_path, "CLIP", "a red ball").rename(tmp_path / "CLIP")
    (tmp_path / "P").write_text("a ball\n")
    _one_line_error(_run(["generate", *args]), needle)
    assert not list(tmp_path.glob("*.json"))


def test_single_init_video_without_caption_is_a_one_line_error(tmp_path):
    clip = _write_clip(tmp_path, "ball", None)
    _one_line_error(_run(["generate", "--init-video", str(clip), "--out", str(tmp_path / "v.mp4")]), "no caption", "give PROMPT")


# ==================================================================== several processes
def test_two_processes_share_the_videos_and_rank_0_reports_them(tmp_path):
    """3 prompts x 2 videos over 2 torchrun processes: each video made once, by the process its
    index falls to, with the seed it has in one process (compared with a one-process run)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a ball falls\na red ball rolls\ntwo balls collide\n")
    with socket.socket() as probe:  # a free port, so a parallel torchrun elsewhere cannot collide
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    args = ["generate", "--backbone", "tiny-random", "--prompts-file", str(prompts), "--num-videos", "2", "--steps", "2",
            "--prior", "none", "--no-progress"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               "-m", "lamo_cli.cli", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Traceback" not in output and output.count("6 video(s) on 2 processes") == 1  # rank 0 alone reports
    videos = sorted(p.name for p in (tmp_path / "two").glob("*.mp4"))
    assert len(videos) == 6 and output.count("wrote ") == 6
    one = _run([*args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    assert sorted(p.name for p in (tmp_path / "one").glob("*.mp4")) == videos
    for name in videos:
        stem = name.removesuffix(".mp4")
        shared, alone = (json.loads((tmp_path / d / f"{stem}.json").read_text()) for d in ("two", "one"))
        assert shared["seed"] == alone["seed"] and shared["prompt"] == alone["prompt"]
        torch.testing.assert_close(_latent(tmp_path / "two" / f"{stem}.latent.safetensors")[0],
                                   _latent(tmp_path / "one" / f"{stem}.latent.safetensors")[0], atol=1e-4, rtol=0)
