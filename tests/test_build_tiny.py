"""`lamo build-tiny` end to end at toy scale: every phase runs, the model folder loads as a backbone,
and a rerun skips what is done."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lamo_cli.backbones import load_backbone
from lamo_cli.backbones.cogvideox import TINY_FORMAT
from lamo_cli.cli import app
from lamo_cli.stages.build_tiny import _foreground, _moment_loss, _motion_loss, colour_memberships


def test_foreground_mask_marks_non_background_pixels():
    from lamo_cli.data.world import BACKGROUND

    frames = np.tile(np.array(BACKGROUND, dtype=np.uint8), (1, 1, 4, 4, 1))  # [B=1, F=1, 4, 4, 3]
    frames[0, 0, 1, 2] = (220, 40, 40)
    x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    mask = _foreground(x)
    assert mask.shape == (1, 1, 1, 4, 4)
    assert mask.sum() == 1 and mask[0, 0, 0, 1, 2] == 1


def test_motion_loss_by_hand_and_against_a_smear():
    """A 1-pixel 'disc' moving one pixel per frame over 4 frames; the loss compares frame differences."""
    target = -torch.ones(1, 1, 4, 1, 4)  # [B, C, F, H, W], background -1
    for f in range(4):
        target[0, 0, f, 0, f] = 1.0
    assert _motion_loss(target, target, foreground_weight=30.0) == 0
    # the smear: every frame shows all four positions at once -> all frame differences are zero
    smear = torch.ones_like(target)
    # target differences: at frames 1..3 two pixels change by 2 (one on, one off) -> 6 moving pixels of 12,
    # each off by 2 in the smear; weight 31 on those, 1 on the other 6: (6 * 2 * 31) / (6 * 31 + 6) / C
    expected = (6 * 2 * 31) / (6 * 31 + 6)
    assert torch.isclose(_motion_loss(smear, target, foreground_weight=30.0), torch.tensor(expected))
    # a still disc (no motion at all) is as wrong as the smear
    still = target[:, :, :1].expand_as(target)
    assert torch.isclose(_motion_loss(still, target, foreground_weight=30.0), torch.tensor(expected))


def _frames_rgb(rgb_frames) -> torch.Tensor:
    """[F, H, W, 3] RGB 0-255 -> [1, 3, F, H, W] in [-1, 1] (the VAE's input)."""
    return torch.from_numpy(np.asarray(rgb_frames, dtype=np.float32)).permute(3, 0, 1, 2)[None] / 127.5 - 1.0


def test_colour_memberships_read_coverage_of_a_disc_edge():
    """An edge pixel that is a 30% blend of red over the background has red membership 0.3 (as the
    tracker reads it), the background and a floor/background edge have none, and other colours none."""
    from lamo_cli.data.world import BACKGROUND, COLOUR_NAMES, FLOOR_COLOUR, PALETTE

    red, bg = np.array(PALETTE["red"], float), np.array(BACKGROUND, float)
    floor_edge = 0.5 * np.array(FLOOR_COLOUR, float) + 0.5 * bg
    pixels = [[red, 0.3 * red + 0.7 * bg, bg, floor_edge]]  # one frame, 1 x 4 pixels
    m = colour_memberships(_frames_rgb([pixels]))  # [1, K, 1, 1, 4]
    k = COLOUR_NAMES.index("red")
    assert torch.allclose(m[0, k, 0, 0], torch.tensor([1.0, 0.3, 0.0, 0.0]), atol=1e-5)
    others = [i for i in range(len(COLOUR_NAMES)) if i != k]
    assert float(m[0, others, 0, 0, :3].abs().max()) < 1e-5


def test_moment_loss_by_hand():
    """A 2x2 red square on a 6x6 background. Shifted right by one pixel: the centroid moves 1 px and
    area and spread stay, so the loss is 1 px / (6 colours) on one present colour. Faded to half its
    colour: the area halves: |2 - 4| / (4 + 4) / 6, centroid and spread unchanged."""
    from lamo_cli.data.world import BACKGROUND, PALETTE

    def square(x0, strength=1.0):
        img = np.tile(np.array(BACKGROUND, float), (6, 6, 1))
        img[2:4, x0 : x0 + 2] = strength * np.array(PALETTE["red"], float) + (1 - strength) * img[2:4, x0 : x0 + 2]
        return img

    target = _frames_rgb([square(1)])
    assert float(_moment_loss(target, target)) < 1e-3  # sqrt(1e-6) floors inside the norms
    assert abs(float(_moment_loss(_frames_rgb([square(2)]), target)) - 1.0 / 6) < 2e-3
    assert abs(float(_moment_loss(_frames_rgb([square(1, 0.8)]), target)) - (0.8 / 8) / 6) < 2e-3
    # faded below the tracker's threshold, the disc is gone for it: only its area (4 px) is missing
    # and the centroid / spread terms read an empty frame
    gone = float(_moment_loss(_frames_rgb([square(1, 0.3)]), target))
    assert gone > (4.0 / 8) / 6


def test_moment_loss_ignores_faint_speckles_and_prices_visible_ones():
    """A background tinted 20% towards green everywhere (membership 0.2: the tracker sees nothing)
    costs the moment terms nothing and gives them no gradient; its mean level is priced alone, at
    0.05 per grey level of mean offset on the background. One full-strength green pixel (a fragment)
    is priced by its area, 1 px / (0 + 4) / 6."""
    from lamo_cli.data.world import BACKGROUND, PALETTE

    bg, red, green = (np.array(v, float) for v in (BACKGROUND, PALETTE["red"], PALETTE["green"]))
    img = np.tile(bg, (6, 6, 1))
    img[2:4, 1:3] = red
    target = _frames_rgb([img])
    tinted = img.copy()
    tinted[img.sum(-1) == bg.sum()] = 0.8 * bg + 0.2 * green
    recon = _frames_rgb([tinted]).requires_grad_(True)
    loss = _moment_loss(recon, target, level_weight=0.0)
    loss.backward()
    assert float(loss.detach()) < 1e-3 and float(recon.grad.abs().max()) == 0.0
    level = np.abs(0.2 * (green - bg)).mean()  # grey levels, averaged over the channels
    assert level > 5 and abs(float(_moment_loss(_frames_rgb([tinted]), target)) - 0.05 * level) < 1e-3
    speck = img.copy()
    speck[5, 5] = green
    assert abs(float(_moment_loss(_frames_rgb([speck]), target)) - (1.0 / 4) / 6) < 2e-3


def test_moment_loss_prices_a_lighter_background_above_what_it_saves_on_halos():
    """A disc drawn with a half-strength halo ring: painting the whole frame lighter fades the halo
    out of the tracker's reach, so the moment terms alone drop (the shortcut a VAE took, lightening
    its background); with the background level priced, every lighter frame costs more than the haloed one."""
    from lamo_cli.data.world import BACKGROUND, PALETTE

    bg, red = np.array(BACKGROUND, float), np.array(PALETTE["red"], float)
    img = np.tile(bg, (10, 10, 1))
    img[4:6, 4:6] = red
    haloed = img.copy()
    haloed[3:7, 3:7] = 0.5 * red + 0.5 * bg
    haloed[4:6, 4:6] = red
    target = _frames_rgb([img])
    lighter = [_frames_rgb([np.clip(haloed + shift, 0, 255)]) for shift in (0, 4, 8, 16)]
    moment_only = [float(_moment_loss(recon, target, level_weight=0.0)) for recon in lighter]
    priced = [float(_moment_loss(recon, target)) for recon in lighter]
    assert moment_only[-1] < moment_only[0] - 0.05  # the shortcut exists in the moment terms
    assert priced[0] == moment_only[0] and all(later > priced[0] + 0.1 for later in priced[1:])


def test_build_tiny_toy_scale(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "build"
    prompts = tmp_path / "val.txt"
    prompts.write_text("a red ball drops from the upper left and bounces\n")
    args = ["build-tiny", "--out", str(out), "--clips", "3", "--vae-steps", "2", "--motion-steps", "2", "--moment-weight", "0.5", "--decoder-steps", "2", "--transformer-steps", "2",
            "--transformer-batch-size", "2", "--transformer-val-prompts", str(prompts), "--transformer-val-every", "2",
            "--transformer-val-sample-steps", "2", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    backbone = load_backbone(out / "model", device="cpu")
    assert backbone.name == "tiny" and backbone.video_format == TINY_FORMAT
    assert backbone.latent_channels == 8 and backbone.video_format.latent_frames == 9
    assert backbone.video_format.latent_height == 16
    # the VAE's scaling factor was measured, not left at the CogVideoX default
    assert backbone.scaling_factor != 1.15258426
    # the decoder phase changed the decoder and left the encoder (the latent space) as the motion phase made it
    from safetensors.torch import load_file

    first = load_file(str(out / "vae-train" / "checkpoints" / "step-000002" / "weights.safetensors"))
    base = load_file(str(out / "vae-motion" / "checkpoints" / "step-000002" / "weights.safetensors"))
    assert not all(torch.equal(first[k], base[k]) for k in first if k.startswith("encoder."))
    # the motion and decoder phases trained with the moment loss, the base phase without
    for phase, on in (("vae-train", False), ("vae-motion", True), ("vae-decoder", True)):
        rows = [json.loads(line) for line in (out / phase / "metrics.jsonl").read_text().splitlines()]
        assert all((r["moment"] > 0) == on for r in rows if "moment" in r) and any("moment" in r for r in rows)
        # the whole-clip reconstruction L1 is measured once, on the finished VAE
        assert any("eval_l1_full_clip" in r for r in rows) == (phase == "vae-decoder")
    shipped_vae = backbone.vae.state_dict()
    encoder = [k for k in base if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in base if k.startswith("decoder.")]
    assert encoder and decoder
    assert all(torch.equal(base[k], shipped_vae[k]) for k in encoder)
    assert not all(torch.equal(base[k], shipped_vae[k]) for k in decoder)
    # the trained transformer replaced the untrained one
    shipped = load_file(str(out / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    trained = load_file(str(out / "transformer-run" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert shipped.keys() == trained.keys() and all(torch.equal(shipped[k], trained[k]) for k in shipped)
    run = json.loads((out / "transformer-run" / "run.json").read_text())
    assert run["settings"]["full"] is True and run["settings"]["drift_weight"] == 0.0
    # validation videos of the transformer phase at its step 0 and every 2 steps
    for step in ("step-000000", "step-000002"):
        assert (out / "transformer-run" / "validation" / step / "000-a-red-ball-drops-from-the-upper-left-and.mp4").is_file()
    build = json.loads((out / "build.json").read_text())
    assert build["temporal_compression"] == 4 and build["vae_batch_size"] == 2 and build["vae_small_crop_steps"] == 0 and build["moment_weight"] == 0.5
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "skipped (exists)" in again.output


def test_build_tiny_with_2x_temporal_compression(tmp_path):
    """--temporal-compression 2: the same classes, 33 frames -> 17 latent frames, saved and reloaded
    with that format; the generic folder loader reads it back from the VAE config."""
    torch.set_num_threads(1)
    out = tmp_path / "build2"
    args = ["build-tiny", "--out", str(out), "--clips", "2", "--vae-steps", "2", "--vae-batch-size", "3", "--decoder-steps", "0",
            "--save-every", "1", "--temporal-compression", "2", "--transformer-steps", "1", "--transformer-batch-size", "2", "--device", "cpu", "--no-progress",
            "--transformer-timestep-sampling", "logit-normal", "--transformer-logit-mean", "-0.5", "--transformer-logit-std", "0.8",
            "--transformer-mixed-precision", "bf16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # --save-every 1 checkpointed every VAE step (the default, 200, only at the phase's end)
    assert sorted(p.name for p in (out / "vae-train" / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    # the transformer options reached the finetune run and the build record
    run = json.loads((out / "transformer-run" / "run.json").read_text())["settings"]
    assert (run["timestep_sampling"], run["logit_mean"], run["logit_std"]) == ("logit-normal", -0.5, 0.8)
    assert run["mixed_precision"] == "bf16" and run["mixed_precision_used"] == "bf16"
    build = json.loads((out / "build.json").read_text())
    assert build["transformer_timestep_sampling"] == "logit-normal" and build["transformer_mixed_precision"] == "bf16"
    backbone = load_backbone(out / "model", device="cpu")
    assert backbone.video_format.temporal_compression == 2 and backbone.video_format.latent_frames == 17
    with torch.no_grad():
        mean, _ = backbone.encode_video(np.zeros((1, 33, 64, 64, 3), dtype=np.uint8))
        assert mean.shape == (1, 17, 8, 16, 16)
        assert backbone.decode_latents(mean * backbone.scaling_factor).shape == (1, 33, 64, 64, 3)


@pytest.mark.parametrize("option, fragment", [
    (["--device", "tpu9"], "--device 'tpu9'"),
    (["--vae-batch-size", "0"], "--vae-batch-size 0"),
    (["--save-every", "0"], "--save-every 0"),
    (["--clips", "0"], "--clips 0"),
    (["--transformer-steps", "0"], "--transformer-steps 0"),
    (["--transformer-batch-size", "0"], "--transformer-batch-size 0"),
    (["--transformer-lr", "-1"], "--transformer-lr -1"),
    (["--transformer-ema-decay", "1"], "--transformer-ema-decay 1"),
    (["--transformer-timestep-sampling", "cubic"], "--transformer-timestep-sampling 'cubic'"),
    (["--transformer-logit-std", "0"], "--transformer-logit-std 0"),
    (["--transformer-logit-mean", "nan"], "--transformer-logit-mean nan"),
    (["--transformer-mixed-precision", "fp8"], "--transformer-mixed-precision 'fp8'"),
    (["--transformer-val-prompts", "absent.txt"], "--transformer-val-prompts absent.txt: no such file"),
    (["--transformer-val-every", "-1"], "--transformer-val-every -1"),
    (["--transformer-val-sample-steps", "0"], "--transformer-val-sample-steps 0"),
])
def test_build_tiny_rejects_bad_device_and_batch(tmp_path, option, fragment):
    result = CliRunner().invoke(app, ["build-tiny", "--out", str(tmp_path / "b"), *option, "--no-progress"])
    assert result.exit_code != 0
    assert fragment in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_resolve_device(monkeypatch):
    from lamo_cli.backbones.cogvideox import resolve_device
    from lamo_cli.errors import LamoError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for bad, says in (("cuda", "no CUDA device"), ("gpu", "not a device")):
        with pytest.raises(LamoError, match=says):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None) == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(LamoError, match="only 2 CUDA"):
        resolve_device("cuda:2")


def test_build_tiny_rejects_other_temporal_compression(tmp_path):
    result = CliRunner().invoke(app, ["build-tiny", "--out", str(tmp_path / "b"), "--temporal-compression", "3", "--no-progress"])
    assert result.exit_code != 0
    assert "--temporal-compression 3" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_train_vae_small_crop_steps_then_whole_frames(tmp_path, monkeypatch):
    """`small_crop_steps`: the first steps see 32x32 crops of the 64x64 world, the later ones whole frames."""
    import lamo_cli.backbones.cogvideox as cv
    from lamo_cli.data.world import write_world
    from lamo_cli.stages.build_tiny import train_vae

    torch.set_num_threads(1)
    write_world(tmp_path / "world", 2, split="train", seed=0, num_frames=9, size=64)
    seen, batches = [], []
    make = cv.tiny_untrained_components

    def recording(**kwargs):
        parts = make(**kwargs)
        encode = parts["vae"].encode
        parts["vae"].encode = lambda x, *a, **k: seen.append(tuple(x.shape[-2:])) or batches.append(x.shape[0]) or encode(x, *a, **k)
        return parts

    monkeypatch.setattr(cv, "tiny_untrained_components", recording)
    result = train_vae(tmp_path / "world", tmp_path / "vae", steps=3, small_crop_steps=2, save_every=10, batch_size=3, device="cpu", progress=False)
    assert seen[:3] == [(32, 32), (32, 32), (64, 64)] and batches[:3] == [3, 3, 3]
    assert next(result["vae"].parameters()).device.type == "cpu"  # (then the whole-clip check at the end)


def test_fit_steps_to_budget_by_hand():
    from lamo_cli.stages.build_tiny import fit_steps_to_budget

    # 1000 x 0.1 s + 500 x 0.2 s = 200 s planned; 5 minutes = 300 s -> every phase x 1.5
    assert fit_steps_to_budget({"vae": 1000, "motion": 500, "decoder": 0}, {"vae": 0.1, "motion": 0.2}, 5.0) == {
        "vae": 1500, "motion": 750, "decoder": 0}
    # a budget too small for a step still trains one step of each planned phase
    assert fit_steps_to_budget({"transformer": 6000}, {"transformer": 2.0}, 0.001) == {"transformer": 1}


def test_measured_seconds_per_step_skips_the_warm_up(tmp_path):
    from lamo_cli.errors import LamoError
    from lamo_cli.stages.build_tiny import measured_seconds_per_step

    metrics = tmp_path / "metrics.jsonl"
    times = [9.0, 3.0, 0.2, 0.4, 0.3, 0.5]  # the first two are a GPU warming up
    metrics.write_text("".join(json.dumps({"step": i + 1, "time_step": t}) + "\n" for i, t in enumerate(times)))
    assert measured_seconds_per_step(metrics, skip=2) == pytest.approx(0.35)  # median of 0.2, 0.4, 0.3, 0.5
    with pytest.raises(LamoError, match="no step times"):
        measured_seconds_per_step(metrics, skip=6)


def test_build_tiny_time_budgets_fit_the_steps_and_are_kept_on_rerun(tmp_path, monkeypatch):
    """--vae-minutes / --transformer-minutes: probe steps of each planned phase measure its speed,
    the phases then train for the fitted step counts (the VAE phases scaled together), plan.json
    records them, and a rerun follows the same plan without probing again. The two trainers are
    stand-ins that report fixed step times (the real ones are tested on their own)."""
    import lamo_cli.stages.build_tiny as bt
    import lamo_cli.stages.finetune as ft
    from lamo_cli.backbones.cogvideox import tiny_untrained_components
    from lamo_cli.training import MetricsLog

    speeds = {"plain": 0.5, "motion": 1.0, "decoder": 0.25, "transformer": 0.1}  # seconds per step
    calls = []

    def fake_train_vae(world_dir, out, steps, motion_weight=0.0, decoder_only=False, **kwargs):
        kind = "decoder" if decoder_only else ("motion" if motion_weight > 0 else "plain")
        calls.append((kind, out.name, steps))
        log = MetricsLog(out / "metrics.jsonl")
        for step in range(steps):
            log.write({"step": step + 1, "time_step": 30.0 if step == 0 else speeds[kind]})  # step 1: warm-up
        return {"vae": tiny_untrained_components()["vae"], "l1": 0.1}

    def fake_finetune(out, steps, **kwargs):
        calls.append(("transformer", out.name, steps))
        log = MetricsLog(out / "metrics.jsonl")
        for step in range(steps):
            log.write({"step": step + 1, "time_step": 30.0 if step == 0 else speeds["transformer"]})
        tiny_untrained_components()["transformer"].save_pretrained(out / "transformer")

    monkeypatch.setattr(bt, "train_vae", fake_train_vae)
    monkeypatch.setattr(ft, "finetune", fake_finetune)
    out = tmp_path / "timed"
    args = ["build-tiny", "--out", str(out), "--clips", "2", "--vae-steps", "1000", "--vae-small-crop-steps", "500",
            "--motion-steps", "500", "--decoder-steps", "400", "--vae-minutes", "10", "--transformer-steps", "50",
            "--transformer-minutes", "2", "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # probes: 8 steps of each planned phase, then the phases themselves
    assert calls[:3] == [("plain", "vae", 8), ("motion", "motion", 8), ("decoder", "decoder", 8)]
    # 1000 x 0.5 + 500 x 1.0 + 400 x 0.25 = 1100 s planned into 600 s: x 6/11
    assert calls[3:6] == [("plain", "vae-train", 545), ("motion", "vae-motion", 273), ("decoder", "vae-decoder", 218)]
    assert calls[6:] == [("transformer", "transformer", 8), ("transformer", "transformer-run", 1200)]  # 120 s at 0.1 s
    plan = json.loads((out / "plan.json").read_text())
    assert plan["vae"]["steps"] == {"vae": 545, "motion": 273, "decoder": 218} and plan["vae"]["small_crop_steps"] == 272
    assert plan["vae"]["seconds_per_step"] == {"vae": 0.5, "motion": 1.0, "decoder": 0.25}
    assert plan["transformer"]["steps"] == 1200 and not (out / "probe").exists()
    build = json.loads((out / "build.json").read_text())
    assert (build["vae_steps"], build["motion_steps"], build["decoder_steps"], build["transformer_steps"]) == (545, 273, 218, 1200)
    calls.clear()
    shutil.rmtree(out / "model")  # a rerun that has to train the VAE again follows the saved plan
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert [c[2] for c in calls] == [545, 273, 218, 1200] and json.loads((out / "plan.json").read_text()) == plan
    calls.clear()  # another budget in the same folder is refused before any work, not silently ignored
    other = CliRunner().invoke(app, [a if a != "10" else "5" for a in args])
    assert other.exit_code == 2 and "--vae-minutes 10" in other.output and "Traceback" not in other.output and not calls


@pytest.mark.parametrize("option", ["--vae-minutes", "--transformer-minutes"])
def test_build_tiny_rejects_a_negative_time_budget(tmp_path, option):
    result = CliRunner().invoke(app, ["build-tiny", "--out", str(tmp_path / "b"), option, "-1", "--no-progress"])
    assert result.exit_code != 0 and f"{option} -1" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_a_4x_vae_starts_a_2x_one_and_a_wrong_folder_is_refused(tmp_path):
    """The temporal compression has no weights of its own: the shipped 4x VAE loads into the 2x
    architecture unchanged (every tensor equal). Anything else is a one-line error."""
    from lamo_cli.backbones.cogvideox import TINY_WEIGHTS, tiny_untrained_components
    from lamo_cli.errors import LamoError
    from lamo_cli.stages.build_tiny import _load_vae_weights, vae_weights

    vae = tiny_untrained_components(temporal_compression=2)["vae"]
    _load_vae_weights(vae, TINY_WEIGHTS)
    shipped = vae_weights(TINY_WEIGHTS / "vae")
    assert all(torch.equal(vae.state_dict()[k], shipped[k]) for k in shipped)
    with pytest.raises(LamoError, match="no VAE weights"):
        _load_vae_weights(vae, tmp_path)
    other = tiny_untrained_components()["transformer"]  # safetensors of another architecture
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(LamoError, match="another architecture"):
        _load_vae_weights(vae, tmp_path / "other")
    result = CliRunner().invoke(app, ["build-tiny", "--out", str(tmp_path / "b"), "--vae-init-from", str(tmp_path), "--no-progress"])
    assert result.exit_code != 0 and "--vae-init-from" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()
    result = CliRunner().invoke(app, ["build-tiny", "--out", str(tmp_path / "b"), "--vae-steps", "0", "--no-progress"])
    assert result.exit_code != 0 and "--vae-steps 0" in result.output and not (tmp_path / "b").exists()


def _untrained_transformer_phase(monkeypatch):
    """build-tiny's transformer phase writes an untrained transformer instead of training one."""
    import lamo_cli.stages.finetune as ft
    from lamo_cli.backbones.cogvideox import tiny_untrained_components

    monkeypatch.setattr(ft, "finetune", lambda out, steps, **kwargs: tiny_untrained_components()["transformer"].save_pretrained(out / "transformer"))


def test_build_tiny_vae_init_from_skips_the_plain_phase(tmp_path, monkeypatch):
    """--vae-init-from with --vae-steps 0: the motion phase starts from the given weights, the
    decoder phase from the motion phase's last checkpoint (stand-in trainers record what they got)."""
    import lamo_cli.stages.build_tiny as bt
    from lamo_cli.backbones.cogvideox import tiny_untrained_components
    from lamo_cli.training import save_checkpoint

    source = tmp_path / "source-vae"
    tiny_untrained_components()["vae"].save_pretrained(source)
    calls = []

    def fake_train_vae(world_dir, out, steps, init_from=None, decoder_only=False, **kwargs):
        calls.append((out.name, steps, None if init_from is None else Path(init_from)))
        vae = tiny_untrained_components()["vae"]
        save_checkpoint(out, steps, weights=vae.state_dict(), optimizer=torch.optim.SGD(vae.parameters(), lr=0.1), state={})
        return {"vae": vae, "l1": 0.1}

    monkeypatch.setattr(bt, "train_vae", fake_train_vae)
    _untrained_transformer_phase(monkeypatch)
    out = tmp_path / "warm"
    result = CliRunner().invoke(app, ["build-tiny", "--out", str(out), "--clips", "2", "--vae-init-from", str(source), "--vae-steps", "0",
                                      "--motion-steps", "3", "--decoder-steps", "2", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert calls == [("vae-motion", 3, source), ("vae-decoder", 2, out / "vae-motion" / "checkpoints" / "step-000003")]
    assert json.loads((out / "build.json").read_text())["vae_init_from"] == str(source)


@pytest.mark.parametrize("options, decoder_weight", [
    (["--motion-steps", "2", "--motion-weight", "0.6"], 0.6),  # after a motion phase: its weight
    (["--motion-steps", "0"], 0.0),  # no motion phase (the shipped recipe): none
    (["--motion-steps", "0", "--decoder-motion-weight", "0.7"], 0.7),  # a decoder-only continuation
])
def test_build_tiny_decoder_motion_weight(tmp_path, monkeypatch, options, decoder_weight):
    """The decoder phase's frame-difference weight: --motion-weight after a motion phase, 0 without
    one, or --decoder-motion-weight, so that an existing VAE's decoder can be trained on alone with it;
    build.json records the weight used."""
    import lamo_cli.stages.build_tiny as bt
    from lamo_cli.backbones.cogvideox import tiny_untrained_components

    source = tmp_path / "source-vae"
    tiny_untrained_components()["vae"].save_pretrained(source)
    weights = {}

    def fake_train_vae(world_dir, out, steps, motion_weight=0.0, **kwargs):
        weights[out.name] = motion_weight
        return {"vae": tiny_untrained_components()["vae"], "l1": 0.1}

    monkeypatch.setattr(bt, "train_vae", fake_train_vae)
    _untrained_transformer_phase(monkeypatch)
    out = tmp_path / "b"
    result = CliRunner().invoke(app, ["build-tiny", "--out", str(out), "--clips", "2", "--vae-init-from", str(source), "--vae-steps", "0",
                                      *options, "--decoder-steps", "2", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert weights["vae-decoder"] == decoder_weight
    assert json.loads((out / "build.json").read_text())["decoder_motion_weight"] == decoder_weight
    bad = CliRunner().invoke(app, ["build-tiny", "--out", str(tmp_path / "c"), "--decoder-motion-weight", "-1", "--no-progress"])
    assert bad.exit_code != 0 and "--decoder-motion-weight -1" in bad.output and not (tmp_path / "c").exists()


def test_build_tiny_transformer_init_from_starts_from_those_weights(tmp_path, monkeypatch):
    """--transformer-init-from: the transformer phase starts from the given model's transformer (the
    shipped 4x one into a 2x build here); a folder without one is a one-line error before any work."""
    import lamo_cli.stages.build_tiny as bt
    import lamo_cli.stages.finetune as ft
    from lamo_cli.backbones.cogvideox import TINY_WEIGHTS, tiny_untrained_components

    seen = {}

    def fake_train_vae(world_dir, out, steps, **kwargs):
        return {"vae": tiny_untrained_components(temporal_compression=2)["vae"], "l1": 0.1}

    def fake_finetune(out, steps, backbone, **kwargs):
        from safetensors.torch import load_file

        seen.update(load_file(str(Path(backbone) / "transformer" / "diffusion_pytorch_model.safetensors")))
        tiny_untrained_components(temporal_compression=2)["transformer"].save_pretrained(out / "transformer")

    monkeypatch.setattr(bt, "train_vae", fake_train_vae)
    monkeypatch.setattr(ft, "finetune", fake_finetune)
    out = tmp_path / "warm"
    result = CliRunner().invoke(app, ["build-tiny", "--out", str(out), "--clips", "2", "--temporal-compression", "2", "--vae-steps", "1",
                                      "--decoder-steps", "0", "--transformer-init-from", str(TINY_WEIGHTS), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    shipped = load_file(str(TINY_WEIGHTS / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert seen.keys() == shipped.keys() and all(torch.equal(seen[k], shipped[k]) for k in shipped)
    bad = CliRunner().invoke(app, ["build-tiny", "--out", str(tmp_path / "b"), "--transformer-init-from", str(tmp_path), "--no-progress"])
    assert bad.exit_code != 0 and "--transformer-init-from" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "b").exists()


def test_build_tiny_frames_sets_the_clip_length_of_world_and_model(tmp_path, monkeypatch):
    """--frames 17 with --temporal-compression 2: 17-frame world clips and a model folder whose format
    and transformer say 17 frames (9 latent frames, the shipped transformer's token count); a length
    without 8 latent frames or not 8k+1 is a one-line error before any work, and so is a rerun whose
    --frames differs from the clips already in the folder."""
    import decord

    import lamo_cli.stages.build_tiny as bt
    from lamo_cli.backbones.cogvideox import tiny_format, tiny_untrained_components

    import lamo_cli.stages.finetune as ft

    monkeypatch.setattr(bt, "train_vae", lambda world_dir, out, steps, **kwargs: {"vae": tiny_untrained_components(temporal_compression=2)["vae"], "l1": 0.1})
    # the transformer phase hands back the model folder's transformer untrained (its config as built)
    monkeypatch.setattr(ft, "finetune", lambda out, steps, backbone, **kwargs: shutil.copytree(Path(backbone) / "transformer", out / "transformer"))
    out = tmp_path / "short"
    result = CliRunner().invoke(app, ["build-tiny", "--out", str(out), "--clips", "2", "--temporal-compression", "2", "--frames", "17",
                                      "--vae-steps", "1", "--decoder-steps", "0", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(decord.VideoReader(str(sorted((out / "world").glob("*.mp4"))[0]))) == 17
    fmt = json.loads((out / "model" / "lamo_backbone.json").read_text())["video_format"]
    assert (fmt["num_frames"], fmt["temporal_compression"]) == (17, 2)
    assert json.loads((out / "model" / "transformer" / "config.json").read_text())["sample_frames"] == 17
    assert tiny_format(2, 17).latent_frames == 9 and json.loads((out / "build.json").read_text())["num_frames"] == 17
    again = CliRunner().invoke(app, ["build-tiny", "--out", str(out), "--clips", "2", "--temporal-compression", "2", "--no-progress"])
    assert again.exit_code != 0 and "17 frames, not --frames 33" in again.output and "Traceback" not in again.output
    for options, message in ((["--frames", "17"], "at least 33 with --temporal-compression 4"),
                             (["--frames", "20", "--temporal-compression", "2"], "--frames 20: use 8k+1 frames, at least 17")):
        bad = CliRunner().invoke(app, ["build-tiny", "--out", str(tmp_path / "bad"), *options, "--no-progress"])
        assert bad.exit_code != 0 and message in bad.output and "Traceback" not in bad.output
        assert not (tmp_path / "bad").exists()
