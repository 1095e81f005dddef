"""Backbone loading: registered names, local folders (save_pretrained round trip), RoPE path, errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from lamo_cli.backbones import load_backbone
from lamo_cli.backbones.cogvideox import (
    TINY_RANDOM_FORMAT,
    CogVideoXBackbone,
    _resize_crop_region,
    small_vae_runs_one_clip_on_one_thread,
    tiny_random_components,
)
from lamo_cli.errors import LamoError


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny-random", device="cpu")


def test_tiny_random_shapes(tiny):
    fmt = tiny.video_format
    frames = np.random.default_rng(0).integers(0, 255, (1, fmt.num_frames, fmt.height, fmt.width, 3), dtype=np.uint8)
    mean, logvar = tiny.encode_video(frames)
    assert mean.shape == (1, fmt.latent_frames, 16, fmt.latent_height, fmt.latent_width) == logvar.shape
    text = tiny.encode_text(["a red ball drops", ""])
    assert text.shape == (2, tiny.text_length, tiny.text_dim)
    v = tiny.predict_v(mean * tiny.scaling_factor, torch.tensor([500]), text[:1])
    assert v.shape == mean.shape
    video = tiny.decode_latents(mean * tiny.scaling_factor)
    assert video.shape == frames.shape and video.dtype == np.uint8


def test_tiny_random_is_identical_in_every_process(tiny):
    # Another interpreter must build bit-identical weights (multi-process stages rely on it).
    code = "from lamo_cli.backbones import load_backbone; print(load_backbone('tiny-random', device='cpu').latent_fingerprint())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == tiny.latent_fingerprint()


def test_folder_round_trip_keeps_weights_and_fingerprint(tiny, tmp_path):
    folder = tiny.save(tmp_path / "model")
    reloaded = load_backbone(folder, device="cpu")
    assert reloaded.latent_fingerprint() == tiny.latent_fingerprint()
    assert reloaded.video_format == tiny.video_format
    for a, b in zip(tiny.transformer.state_dict().values(), reloaded.transformer.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(reloaded.encode_text(["apple falls into soup"]), tiny.encode_text(["apple falls into soup"]))
    assert reloaded.sampler == "ddim"
    # diffusers itself reads the folder too
    from diffusers import CogVideoXPipeline

    assert CogVideoXPipeline.from_pretrained(folder).transformer.config.num_layers == 2


def test_fingerprint_changes_with_weights(tiny, tmp_path):
    folder = tiny.save(tmp_path / "model")
    other = load_backbone(folder, device="cpu")
    with torch.no_grad():
        next(other.vae.parameters()).add_(0.01)
    assert other.latent_fingerprint() != tiny.latent_fingerprint()


def test_alphas_cumprod_are_the_schedulers(tiny):
    abar = tiny.alphas_cumprod()
    assert abar.shape == (1000,)
    assert abar[-1] == 0  # zero terminal SNR
    assert torch.all(abar[1:] <= abar[:-1])
    assert torch.equal(abar, tiny.make_scheduler("dpm").alphas_cumprod.float())


def test_rope_transformer_runs():
    parts = tiny_random_components(rope=True)
    backbone = CogVideoXBackbone("tiny-rope", parts.__getitem__, TINY_RANDOM_FORMAT, "cpu")
    fmt = TINY_RANDOM_FORMAT
    cos, sin = backbone.rotary_embedding(fmt.latent_frames, fmt.latent_height, fmt.latent_width)
    tokens = fmt.latent_frames * (fmt.latent_height // 2) * (fmt.latent_width // 2)
    assert cos.shape == sin.shape == (tokens, 32)
    x = torch.randn(1, fmt.latent_frames, 16, fmt.latent_height, fmt.latent_width)
    v = backbone.predict_v(x, torch.tensor([10]), backbone.encode_text(["x"]))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_resize_crop_region_known_cases():
    assert _resize_crop_region((30, 45), 45, 30) == ((0, 0), (30, 45))  # same aspect: whole grid
    assert _resize_crop_region((10, 10), 20, 10) == ((0, 5), (10, 15))  # square in a wide grid: centred


@pytest.mark.parametrize("spec", ["no-such-model", "/definitely/not/here"])
def test_unknown_backbone_is_a_clear_error(spec):
    with pytest.raises(LamoError, match="--backbone"):
        load_backbone(spec, device="cpu")


def test_incomplete_folder_is_a_clear_error(tmp_path):
    (tmp_path / "vae").mkdir()
    with pytest.raises(LamoError, match="missing"):
        load_backbone(tmp_path, device="cpu")


def test_real_model_without_weights_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LamoError, match="cannot be downloaded"):
        load_backbone("cogvideox-2b", device="cpu")


def test_default_backbone_env_and_fallback(monkeypatch, tmp_path):
    from lamo_cli.backbones import cogvideox

    monkeypatch.setenv("LAMO_DEFAULT_BACKBONE", "cogvideox-2b")
    assert cogvideox.default_backbone() == "cogvideox-2b"
    monkeypatch.delenv("LAMO_DEFAULT_BACKBONE")
    monkeypatch.setattr(cogvideox, "TINY_WEIGHTS", tmp_path / "absent")
    assert cogvideox.default_backbone() == "tiny-random"
    (tmp_path / "present").mkdir()
    (tmp_path / "present" / cogvideox.LAMO_META_FILE).write_text("{}")
    monkeypatch.setattr(cogvideox, "TINY_WEIGHTS", tmp_path / "present")
    assert cogvideox.default_backbone() == "tiny"


def test_fingerprint_ignores_the_decoder_but_not_the_scaling_factor(tiny, tmp_path):
    """A decoder fine-tuned on the same latents keeps caches and priors valid; a new scale does not."""
    folder = tiny.save(tmp_path / "model")
    other = load_backbone(folder, device="cpu")
    with torch.no_grad():
        for p in other.vae.decoder.parameters():
            p.add_(0.01)
    assert other.latent_fingerprint() == tiny.latent_fingerprint()
    other.vae.register_to_config(scaling_factor=tiny.scaling_factor * 1.5)
    assert other.latent_fingerprint() != tiny.latent_fingerprint()


def test_a_one_clip_batch_is_doubled_only_for_a_small_vae_on_a_multithreaded_cpu(tiny, monkeypatch):
    assert small_vae_runs_one_clip_on_one_thread((32, 32, 64), 64)  # tiny
    assert not small_vae_runs_one_clip_on_one_thread((128, 256, 256, 512), 480)  # CogVideoX-2B / 5B
    fmt = tiny.video_format
    one = torch.zeros(1, 3, fmt.num_frames, fmt.height, fmt.width)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert tiny._onednn_batch(one).shape[0] == 2
    assert tiny._onednn_batch(torch.zeros(3, *one.shape[1:])).shape[0] == 3  # a real batch is left alone
    assert tiny.clips_per_vae_call() == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert tiny._onednn_batch(one).shape[0] == 1  # one thread: nothing to gain
    assert tiny.clips_per_vae_call() == 1


def test_the_doubled_batch_gives_the_same_clip(tiny):
    fmt = tiny.video_format
    frames = np.random.default_rng(1).integers(0, 255, (1, fmt.num_frames, fmt.height, fmt.width, 3), dtype=np.uint8)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        mean, logvar = tiny.encode_video(frames)
        video = tiny.decode_latents(mean * tiny.scaling_factor)
        pair_mean, _ = tiny.encode_video(np.concatenate([frames, frames]))
        pair_video = tiny.decode_latents(torch.cat([mean, mean]) * tiny.scaling_factor)
    finally:
        torch.set_num_threads(previous)
    assert mean.shape[0] == logvar.shape[0] == 1 and video.shape[0] == 1
    assert torch.allclose(mean, pair_mean[:1], atol=1e-5)  # same kernel either way: a batch of two
    assert np.abs(video.astype(int) - pair_video[:1].astype(int)).max() <= 1
