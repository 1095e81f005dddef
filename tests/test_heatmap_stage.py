"""`lamo heatmap` end to end: encode -> fit-prior -> generate -> heatmap on the tiny random backbone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lamo_cli.backbones import load_backbone  # noqa: E402
from lamo_cli.cli import app  # noqa: E402

runner = CliRunner()
PROMPT = "a green square slides to the right"


def _run(args: list[str]):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny-random")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A real prior (lamo encode + lamo fit-prior on moving squares) and three generated clips:
    guidance-free with the prior available, guided, and one made without any prior."""
    from conftest import write_clips

    from lamo_cli.stages.encode import encode
    from lamo_cli.stages.fit_prior import fit_prior

    root = tmp_path_factory.mktemp("heatmap")
    clips = write_clips(root, n=2, frames=17, size=64)
    encode(clips, backbone="tiny-random", out=root / "cache", progress=False)
    fit_prior(cache=root / "cache", out=root / "prior", steps=10, batch_size=2, width=16, depth=1, cond_dim=16, groups=4,
              se_hidden=8, warmup=2, save_every=10, progress=False)
    made = {}
    for name, extra in (("free", ["--guidance-scale", "0"]), ("guided", []), ("plain", ["--prior", "none"])):
        prior = [] if name == "plain" else ["--prior", root / "prior"]
        result = _run(["generate", PROMPT, "--steps", 5, "--seed", 3, *prior, *extra, "--out", root / f"{name}.mp4", "--no-progress"])
        assert result.exit_code == 0, result.output
        made[name] = root / f"{name}.mp4"
    return {"root": root, "prior": root / "prior", "clips": clips, **made}


def _by_hand(z: torch.Tensor, tau: int, field=None, text=None):
    """t*, drift map and field map in float64, straight from METHOD §4."""
    z = z.double()
    drifts = torch.stack([(z[t + tau] - z[t]).mean(dim=(-2, -1)) for t in range(z.shape[0] - tau)])
    t_star = int(torch.argmax(drifts.norm(dim=-1)))
    change = z[t_star + tau] - z[t_star]
    b = drifts[t_star]
    drift_map = (change * b[:, None, None]).sum(0).abs() / b.norm()
    field_map = None
    if field is not None:
        f64 = field.double()
        frames = torch.stack([z[t_star], z.mean(0)])
        cond = None if text is None else text.double().expand(2, -1)
        with torch.no_grad():
            out = f64(frames, cond)
        field_map = (out[0] - out[1]).norm(dim=0)
    return t_star, drift_map, field_map


def _latent(video: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(video.with_suffix(".latent.safetensors")))["latent"]


def test_heatmap_of_a_generated_clip_with_prior(world, tiny):
    from lamo_cli.motion.field import pool_text
    from lamo_cli.stages.fit_prior import load_prior

    result = _run(["heatmap", world["free"], "--prior", world["prior"]])
    assert result.exit_code == 0, result.output
    out = world["root"] / "free_heatmap"  # default: VIDEO stem + "_heatmap"
    record = json.loads((out / "heatmap.json").read_text())
    assert record["latent_source"] == "sidecar" and record["prompt"] == PROMPT and record["tau"] == 2
    assert record["sampled_with_guidance"] is False

    field, _ = load_prior(world["prior"])
    text = pool_text(tiny.encode_text([PROMPT]))
    t_star, drift_map, field_map = _by_hand(_latent(world["free"]), 2, field, text)
    assert record["t_star"] == t_star and record["pixel_index"] == 4 * t_star
    assert f"t* = {t_star}" in result.output and "Pearson r" in result.output
    expected_r = float(np.corrcoef(drift_map.flatten().numpy(), field_map.flatten().numpy())[0, 1])
    assert record["pearson_r"] == pytest.approx(expected_r, abs=1e-5)
    assert f"{expected_r:+.3f}" in result.output

    from PIL import Image

    for name in ("heatmap.png", "frame.png", "drift.png", "field.png"):
        assert (out / name).is_file(), name
    panel = Image.open(out / "heatmap.png")
    assert panel.width > 2 * panel.height  # three panels side by side
    assert Image.open(out / "drift.png").size == (64, 64)
    import decord

    video = decord.VideoReader(str(world["free"]))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "frame.png")), video[4 * t_star].asnumpy())
    overlay = decord.VideoReader(str(out / "overlay.mp4"))
    assert len(overlay) == 17 and overlay[0].shape == (64, 128, 3)  # drift | field, every frame


def test_heatmap_without_prior_is_drift_only(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./lamo-prior, and the clip's sidecar names no prior
    result = _run(["heatmap", world["plain"], "--out", tmp_path / "maps"])
    assert result.exit_code == 0, result.output
    assert "drift map only" in result.output
    record = json.loads((tmp_path / "maps" / "heatmap.json").read_text())
    assert record["pearson_r"] is None and record["prior"] is None
    assert not (tmp_path / "maps" / "field.png").exists()
    t_star, _, _ = _by_hand(_latent(world["plain"]), 2)
    assert record["t_star"] == t_star
    import decord

    assert decord.VideoReader(str(tmp_path / "maps" / "overlay.mp4"))[0].shape == (64, 64, 3)


def test_heatmap_uses_recorded_prior_and_warns_on_guided_clip(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run(["heatmap", world["guided"], "--out", tmp_path / "maps", "--no-overlay", "--tau", 1])
    assert result.exit_code == 0, result.output
    assert "generated with" in result.output and "WITH Motion Prior Guidance" in result.output
    record = json.loads((tmp_path / "maps" / "heatmap.json").read_text())
    assert record["prior"] == str(world["prior"]) and record["sampled_with_guidance"] is True and record["tau"] == 1
    assert record["t_star"] == _by_hand(_latent(world["guided"]), 1)[0]
    assert not (tmp_path / "maps" / "overlay.mp4").exists()


def test_heatmap_reencodes_a_video_without_sidecar(world, tiny, tmp_path):
    from lamo_cli.data.video import open_video

    clip = world["clips"][1]
    result = _run(["heatmap", clip, "--prior", world["prior"], "--prompt", "a square", "--out", tmp_path / "m", "--no-overlay"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "m" / "heatmap.json").read_text())
    assert record["latent_source"] == "re-encoded" and record["prompt"] == "a square"
    frames = open_video(clip).read(list(range(17)))
    mean, _ = tiny.encode_video(frames[None])
    t_star, _, _ = _by_hand(mean[0] * tiny.scaling_factor, 2)
    assert record["t_star"] == t_star
    assert record["pearson_r"] is None or -1.0 <= record["pearson_r"] <= 1.0


# ==================================================================== bad input: exit 2, one line
def test_missing_video(tmp_path):
    _one_line_error(_run(["heatmap", tmp_path / "nope.mp4"]), "VIDEO", "no such file")


@pytest.mark.parametrize("name", ["notes.mp4", "notes.txt"])
def test_not_a_video(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is text, not a video\n" * 20)
    _one_line_error(_run(["heatmap", path]), "VIDEO")


def test_too_short_video(tmp_path, make_clips):
    clip = make_clips(tmp_path, n=1, frames=5, size=64)[0]  # 5 frames -> 2 latent frames < tau + 1
    _one_line_error(_run(["heatmap", clip, "--prior", "none"]), "too short")


def test_corrupt_or_foreign_prior(world, tmp_path):
    import shutil

    from lamo_cli.stages.fit_prior import PRIOR_CONFIG, PRIOR_WEIGHTS

    broken = tmp_path / "broken"
    shutil.copytree(world["prior"], broken)
    (broken / PRIOR_WEIGHTS).write_bytes(b"garbage")
    _one_line_error(_run(["heatmap", world["plain"], "--prior", broken, "--out", tmp_path / "a"]), "corrupt")

    foreign = tmp_path / "foreign"
    shutil.copytree(world["prior"], foreign)
    config = json.loads((foreign / PRIOR_CONFIG).read_text())
    config["latent_fingerprint"] = "ffffffffffffffff"
    (foreign / PRIOR_CONFIG).write_text(json.dumps(config))
    _one_line_error(_run(["heatmap", world["plain"], "--prior", foreign, "--out", tmp_path / "b"]), "fingerprint")
    _one_line_error(_run(["heatmap", world["plain"], "--prior", tmp_path / "missing"]), "--prior")


def test_bad_tau(world):
    _one_line_error(_run(["heatmap", world["plain"], "--tau", 0]), "--tau")
