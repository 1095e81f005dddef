"""`fit-prior`: the field learns a known prompt-dependent motion, the stage writes a loadable prior,
resume is exact, drift statistics match a by-hand computation, bad priors give one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from lamo_cli.backbones import load_backbone
from lamo_cli.cli import app
from lamo_cli.data.cache import LatentCache
from lamo_cli.errors import LamoError
from lamo_cli.motion.field import MotionField, MotionFieldConfig
from lamo_cli.stages.fit_prior import field_train_step, fit_prior, load_prior
from lamo_cli.training import read_metrics

runner = CliRunner()
TINY_FIELD = dict(width=32, depth=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def alphas():
    return load_backbone("tiny-random", device="cpu").alphas_cumprod()  # only the scheduler loads


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A real cache from `encode` on 6 moving-square clips (tiny-random: latents [5, 16, 8, 8], text [64, 32])."""
    from conftest import write_clips

    from lamo_cli.stages.encode import encode

    root = tmp_path_factory.mktemp("fitprior")
    clips = write_clips(root, n=6, frames=17, size=64)
    encode(clips, backbone="tiny-random", out=root / "cache", progress=False)
    return root / "cache"


def _fit(cache, out, **overrides):
    settings = dict(steps=30, batch_size=4, lr=3e-3, warmup=3, save_every=10, progress=False, **TINY_FIELD)
    settings.update(overrides)
    return fit_prior(cache, out=out, **settings)


# ---------------------------------------------------------------- training math on synthetic tensors
def test_field_learns_a_prompt_dependent_constant_motion(alphas):
    """z^(i) = base + i * d_k with d_k set by the prompt: the field must learn d_k from the prompt alone."""
    gen = torch.Generator().manual_seed(0)
    channels, size, frames, text_dim = 16, 8, 5, 32
    prompts = torch.randn(2, text_dim, generator=gen)
    directions = torch.randn(2, channels, size, size, generator=gen) * 0.5
    cfg = MotionFieldConfig(latent_channels=channels, width=32, depth=2, text_dim=text_dim)
    torch.manual_seed(0)
    model = MotionField(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    step_gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(250):
        which = torch.randint(0, 2, (8,), generator=gen)
        base = torch.randn(8, 1, channels, size, size, generator=gen)
        steps = torch.arange(frames, dtype=torch.float32).reshape(1, frames, 1, 1, 1)
        latents = base + steps * directions[which][:, None]
        loss, terms, grad_norm = field_train_step(
            model, optimizer, latents, prompts[which], tau=1, alpha=0.3, alphas_cumprod=alphas,
            noise_aug_strength=0.3, noise_aug_prob=0.5, prompt_dropout=0.1, generator=step_gen,
        )
        losses.append(loss)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.2 * first, (first, last)
    model.eval()
    with torch.no_grad():
        probe = torch.randn(2, channels, size, size, generator=gen)
        predicted = model(probe, prompts)
    cos = torch.nn.functional.cosine_similarity(predicted.flatten(1), directions.flatten(1), dim=1)
    assert (cos > 0.9).all(), cos  # each prompt gets its own motion
    cross = torch.nn.functional.cosine_similarity(predicted.flatten(1), directions.flip(0).flatten(1), dim=1)
    assert (cross < cos - 0.5).all(), cross


# ---------------------------------------------------------------- the stage on a real cache
def test_stage_writes_prior_and_loss_falls(cache, tmp_path):
    out = tmp_path / "prior"
    summary = _fit(cache, out, steps=80, save_every=40)
    for name in ("motion_field.safetensors", "config.json", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-000040", "step-000080"]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 81))
    assert {"loss", "mse", "cos", "lr", "grad_norm", "time_data", "time_forward", "time_backward", "time_optimizer"} <= set(records[0])
    first = sum(r["loss"] for r in records[:10]) / 10
    last = sum(r["loss"] for r in records[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    config = json.loads((out / "config.json").read_text())
    info = LatentCache(cache).info
    assert config["latent_fingerprint"] == info.latent_fingerprint and config["backbone"] == "tiny-random"
    assert config["scaling_factor"] == info.scaling_factor and config["tau"] == 1 and config["alpha"] == 0.3
    assert config["field"]["width"] == 32 and config["field"]["text_dim"] == 32 and config["steps"] == 80
    assert config["final_loss"] == pytest.approx(summary.final_loss) and "torch" in config["library_versions"]


def test_drift_statistics_match_a_by_hand_computation(cache, tmp_path):
    summary = _fit(cache, tmp_path / "prior", steps=2)
    reader = LatentCache(cache)
    z = torch.stack([reader.latent(i) for i in range(len(reader))]).double() * reader.info.scaling_factor
    for tau in (1, 2):
        mu = (z[:, tau:] - z[:, :-tau]).mean(dim=(-2, -1))  # [N, T - tau, C]
        stats = summary.drift_statistics[f"tau{tau}"]
        assert stats["mean_abs_per_channel"] == pytest.approx(mu.abs().mean(dim=(0, 1)).tolist(), abs=2e-6)
        assert stats["mean_abs_per_pair"] == pytest.approx(mu.abs().mean(dim=(0, 2)).tolist(), abs=2e-6)
        clip_norms = mu.norm(dim=2).mean(dim=1)
        assert stats["mean_norm"] == pytest.approx(float(clip_norms.mean()))
        assert stats["near_zero_fraction"] == pytest.approx(float((clip_norms < 1e-2).double().mean()))
    assert summary.drift_statistics["clips"] == 6


def test_resume_matches_an_uninterrupted_run(cache, tmp_path):
    straight = tmp_path / "straight"
    _fit(cache, straight, steps=20, save_every=10)
    interrupted = tmp_path / "interrupted"
    _fit(cache, interrupted, steps=20, save_every=10)
    # make it look like a run killed after step 10: only the step-10 checkpoint survives
    shutil.rmtree(interrupted / "checkpoints" / "step-000020")
    for name in ("motion_field.safetensors", "config.json"):
        (interrupted / name).unlink()
    resumed = _fit(cache, interrupted, steps=20, save_every=10, resume=True)
    assert resumed.start_step == 10
    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(interrupted / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 21))
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-6) and rb["lr"] == ra["lr"]
    fa, _ = load_prior(straight)
    fb, _ = load_prior(interrupted)
    for (name, pa), (_, pb) in zip(fa.state_dict().items(), fb.state_dict().items()):
        assert torch.equal(pa, pb), name
    with pytest.raises(LamoError, match="lr="):
        _fit(cache, interrupted, steps=20, save_every=10, resume=True, lr=1e-3)


# ---------------------------------------------------------------- loading
def test_load_prior_round_trip_and_refusals(cache, tmp_path):
    out = tmp_path / "prior"
    _fit(cache, out, steps=5)
    fingerprint = LatentCache(cache).info.latent_fingerprint
    field, config = load_prior(out, expected_fingerprint=fingerprint)
    assert not field.training and not any(p.requires_grad for p in field.parameters())
    from safetensors.torch import load_file

    saved = load_file(str(out / "motion_field.safetensors"))
    assert saved.keys() == field.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in field.state_dict().items())
    assert config["tau"] == 1 and field.config.width == 32
    same, _ = load_prior(out / "motion_field.safetensors")  # the file path works too
    assert torch.equal(same.head.weight, field.head.weight)

    with pytest.raises(LamoError) as info:
        load_prior(out, expected_fingerprint="0123456789abcdef")
    assert "tiny-random" in str(info.value) and str(out) in str(info.value) and "\n" not in str(info.value)

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "motion_field.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!" + b"\x00" * 64)
    with pytest.raises(LamoError) as info:
        load_prior(broken)
    assert "motion_field.safetensors" in str(info.value) and "\n" not in str(info.value)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(LamoError, match="not valid JSON"):
        load_prior(broken)
    with pytest.raises(LamoError, match="no such folder"):
        load_prior(tmp_path / "absent")


# ---------------------------------------------------------------- CLI
def test_cli_prints_drift_statistics_and_uses_recipe(cache, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[fit_prior]\nsteps = 3\nwidth = 16\ndepth = 1\nwarmup = 1\n")
    out = tmp_path / "prior"
    result = runner.invoke(app, ["fit-prior", str(cache), "--out", str(out), "--recipe", str(recipe), "--steps", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "macro drift" in result.output and "tau=1" in result.output and "tau=2" in result.output
    assert "near-zero drift" in result.output and "loss" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 4 and config["field"]["width"] == 16 and config["field"]["depth"] == 1  # CLI beats recipe

    recipe.write_text("[fit_prior]\nstepz = 3\n")
    bad = runner.invoke(app, ["fit-prior", str(cache), "--out", str(out), "--recipe", str(recipe)])
    assert bad.exit_code == 2 and "stepz" in bad.output

    missing = runner.invoke(app, ["fit-prior", str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1 and "lamo encode" in missing.output
