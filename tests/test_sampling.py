"""Our denoising loop (lamo_cli/sampling.py) against diffusers' CogVideoXPipeline and by hand."""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lamo_cli.backbones.cogvideox import TINY_RANDOM_FORMAT, CogVideoXBackbone, tiny_random_components  # noqa: E402
from lamo_cli.motion import MotionField, MotionFieldConfig, pool_text  # noqa: E402
from lamo_cli.sampling import dynamic_cfg_scale, initial_latents, sample, steps_to_run  # noqa: E402

PROMPT = "a red ball falls onto the floor"


def _backbone(rope: bool) -> CogVideoXBackbone:
    components = tiny_random_components(rope=rope)
    return CogVideoXBackbone("tiny-rope" if rope else "tiny", lambda name: components[name], TINY_RANDOM_FORMAT)


@pytest.fixture(scope="module")
def tiny():
    return _backbone(rope=False)


@pytest.fixture(scope="module")
def tiny_rope():
    return _backbone(rope=True)


def _texts(backbone):
    return backbone.encode_text([PROMPT]), backbone.encode_text([""])


def _constant_motion_field(text_dim: int, motion: float = 0.5) -> MotionField:
    """A small field whose zero head gets a constant bias: it predicts the same change everywhere."""
    config = MotionFieldConfig(latent_channels=16, width=8, depth=1, text_dim=text_dim, cond_dim=8, groups=4, se_hidden=4)
    field = MotionField(config).eval().requires_grad_(False)
    with torch.no_grad():
        field.head.bias.fill_(motion)
    return field


def _reference(backbone, sampler: str, steps: int, dynamic: bool, seed: int, latents=None) -> torch.Tensor:
    from diffusers import CogVideoXDPMScheduler

    pipe = backbone.pipeline()
    if sampler == "dpm":
        pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    fmt = backbone.video_format
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        PROMPT,
        negative_prompt="",
        num_inference_steps=steps,
        guidance_scale=6.0,
        use_dynamic_cfg=dynamic,
        latents=None if latents is None else latents.clone(),
        generator=torch.Generator().manual_seed(seed),
        num_frames=fmt.num_frames,
        height=fmt.height,
        width=fmt.width,
        max_sequence_length=backbone.text_length,
        output_type="latent",
    ).frames


@pytest.mark.parametrize("dynamic", [True, False])
def test_ddim_matches_diffusers_pipeline_from_the_same_seed(tiny, dynamic):
    # No latents passed: the initial noise must be drawn exactly like prepare_latents draws it.
    cond, uncond = _texts(tiny)
    ours, info = sample(tiny, cond, uncond, num_steps=5, cfg_scale=6.0, dynamic_cfg=dynamic, sampler="ddim", seed=7)
    reference = _reference(tiny, "ddim", 5, dynamic, seed=7)
    assert ours.shape == (1, 5, 16, 8, 8)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    assert info["guide_loss"] == [None] * 5 and info["guided"] is False


def test_dpm_matches_diffusers_pipeline_with_given_latents(tiny):
    # The DPM step draws noise from the generator: both loops must consume it identically.
    cond, uncond = _texts(tiny)
    start = torch.randn(1, 5, 16, 8, 8, generator=torch.Generator().manual_seed(11))
    ours, _ = sample(tiny, cond, uncond, num_steps=5, sampler="dpm", latents=start.clone(), seed=3)
    reference = _reference(tiny, "dpm", 5, True, seed=3, latents=start)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_rope_transformer_matches_pipeline(tiny_rope, sampler):
    cond, uncond = _texts(tiny_rope)
    start = torch.randn(1, 5, 16, 8, 8, generator=torch.Generator().manual_seed(5))
    ours, _ = sample(tiny_rope, cond, uncond, num_steps=3, sampler=sampler, latents=start.clone(), seed=2)
    reference = _reference(tiny_rope, sampler, 3, True, seed=2, latents=start)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_dynamic_cfg_formula_by_hand():
    # 1 + s * (1 - cos(pi * ((N - t) / N) ** 5)) / 2 with the integer timestep t (diffusers' form).
    assert dynamic_cfg_scale(6.0, 50, 50) == pytest.approx(1.0)
    expected = 1 + 6.0 * (1 - math.cos(math.pi * ((50 - 20) / 50) ** 5)) / 2
    assert dynamic_cfg_scale(6.0, 20, 50) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_scale_zero_or_no_field_is_bit_identical(tiny, sampler):
    cond, uncond = _texts(tiny)
    field = _constant_motion_field(tiny.text_dim)
    pooled = pool_text(cond)
    plain, _ = sample(tiny, cond, uncond, num_steps=4, sampler=sampler, seed=1)
    zero, info = sample(tiny, cond, uncond, num_steps=4, sampler=sampler, seed=1, field=field, field_text_pooled=pooled, guidance_scale=0.0)
    empty_window, _ = sample(
        tiny, cond, uncond, num_steps=4, sampler=sampler, seed=1, field=field, field_text_pooled=pooled, guidance_window=0.0
    )
    assert torch.equal(plain, zero) and torch.equal(plain, empty_window)
    assert info["guided"] is False and "final_guide_loss" in info


def test_guidance_changes_sample_and_lowers_final_guide_loss(tiny):
    cond, uncond = _texts(tiny)
    field = _constant_motion_field(tiny.text_dim, motion=0.5)
    pooled = pool_text(cond)
    unguided, base = sample(tiny, cond, uncond, num_steps=8, seed=3, field=field, field_text_pooled=pooled, guidance_scale=0.0)
    guided, info = sample(tiny, cond, uncond, num_steps=8, seed=3, field=field, field_text_pooled=pooled, guidance_scale=15.0)
    strong, strong_info = sample(tiny, cond, uncond, num_steps=8, seed=3, field=field, field_text_pooled=pooled, guidance_scale=1000.0)
    assert not torch.allclose(guided, unguided)
    assert info["final_guide_loss"] < base["final_guide_loss"]
    assert strong_info["final_guide_loss"] < base["final_guide_loss"]
    # Independent check of the final loss: a constant field predicts +0.5 everywhere.
    residual = strong[:, :-1] + 0.5 - strong[:, 1:]
    assert strong_info["final_guide_loss"] == pytest.approx(float(residual.pow(2).mean()), rel=1e-5)
    # Window: 8 steps, rho 0.8 -> steps 1..7 guided, step 0 not.
    assert info["first_guided_step"] == 1
    assert info["guide_loss"][0] is None and all(isinstance(x, float) for x in info["guide_loss"][1:])
    assert info["timing"]["guidance_s"] > 0


def test_guided_step_by_hand_float64(tiny):
    """Two DDIM steps, the second guided: recompute the second step from its input by hand."""
    cond, uncond = _texts(tiny)
    field = _constant_motion_field(tiny.text_dim, motion=0.3)
    with torch.no_grad():  # make the field depend on its input so the gradient flows through f too
        torch.nn.init.normal_(field.head.weight, std=0.05, generator=torch.Generator().manual_seed(0))
    pooled = pool_text(cond)
    seen = {}
    scale = 40.0

    def remember(step, timestep, latents, step_info):
        seen[step] = (timestep, latents.clone())

    out, info = sample(
        tiny, cond, uncond, num_steps=2, dynamic_cfg=False, seed=9, field=field, field_text_pooled=pooled,
        guidance_scale=scale, guidance_window=0.5, callback=remember,
    )
    assert info["guide_loss"][0] is None and info["guide_loss"][1] is not None
    x_t = seen[0][1]
    t = info["timesteps"][1]
    with torch.no_grad():
        v = tiny.predict_v(torch.cat([x_t, x_t]), torch.tensor([t, t]), torch.cat([uncond, cond]))
    v_u, v_c = v.double().chunk(2)
    v_cfg = v_u + 6.0 * (v_c - v_u)
    abar = tiny.make_scheduler("ddim").alphas_cumprod[t].double()
    field64 = _constant_motion_field(tiny.text_dim)
    field64.load_state_dict(field.state_dict())
    field64 = field64.double()
    v_var = v_cfg.clone().requires_grad_(True)
    x0 = abar.sqrt() * x_t.double() - (1 - abar).sqrt() * v_var
    frames = x0[0]
    loss = (frames[:-1] + field64(frames[:-1], pooled.double().expand(4, -1)) - frames[1:]).pow(2).mean()
    (grad,) = torch.autograd.grad(loss, v_var)
    v_guided = v_cfg - scale * grad
    # Last DDIM step goes to t = -1: alpha_prev = 1 (set_alpha_to_one), so x_prev is x0_hat itself.
    expected = abar.sqrt() * x_t.double() - (1 - abar).sqrt() * v_guided
    assert float(grad.abs().max()) * scale > 1e-3  # the guidance term is not negligible here
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)
    assert info["guide_loss"][1] == pytest.approx(float(loss.detach()), rel=1e-5)


def test_no_backbone_or_field_parameter_gets_grad(tiny):
    cond, uncond = _texts(tiny)
    field = _constant_motion_field(tiny.text_dim)
    field.requires_grad_(True)  # even a trainable-looking field stays untouched
    transformer = tiny.transformer
    transformer.requires_grad_(True)  # as if a LoRA were being trained
    try:
        out, info = sample(tiny, cond, uncond, num_steps=3, seed=0, field=field, field_text_pooled=pool_text(cond), guidance_window=1.0)
    finally:
        transformer.requires_grad_(False)
    assert info["guided"] and all(x is not None for x in info["guide_loss"])
    assert not out.requires_grad
    assert all(p.grad is None for p in transformer.parameters())
    assert all(p.grad is None for p in field.parameters())


def test_rope_transformer_with_guidance(tiny_rope):
    cond, uncond = _texts(tiny_rope)
    field = _constant_motion_field(tiny_rope.text_dim)
    plain, _ = sample(tiny_rope, cond, uncond, num_steps=5, seed=4, sampler="dpm")
    guided, info = sample(tiny_rope, cond, uncond, num_steps=5, seed=4, sampler="dpm", field=field, field_text_pooled=pool_text(cond))
    assert guided.shape == plain.shape and torch.isfinite(guided).all()
    assert not torch.equal(guided, plain)
    assert info["guide_loss"][0] is None and info["guide_loss"][1] is not None


def test_without_negative_text_runs_plain_conditional(tiny):
    # No text_uncond: one backbone pass per step, no CFG (like the pipeline with guidance_scale <= 1).
    cond, _ = _texts(tiny)
    a, info = sample(tiny, cond, None, num_steps=2, seed=0)
    b, _ = sample(tiny, cond, None, num_steps=2, seed=0)
    assert torch.equal(a, b) and info["cfg_scales"] == [None, None]


def test_bad_sampler_is_refused(tiny):
    cond, _ = _texts(tiny)
    with pytest.raises(ValueError, match="sampler"):
        sample(tiny, cond, None, num_steps=2, sampler="euler")


# ==================================================================== video-to-video (init latents + strength)
@pytest.mark.parametrize("steps, strength, expected", [(50, 0.8, 40), (30, 0.3, 9), (10, 1.0, 10), (10, 0.05, 0), (7, 0.5, 3)])
def test_steps_to_run_counts_the_schedule_tail(steps, strength, expected):
    assert steps_to_run(steps, strength) == expected


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5])
def test_steps_to_run_refuses_strength_outside_0_1(strength):
    with pytest.raises(ValueError, match="strength"):
        steps_to_run(10, strength)


def _clean_latents(backbone, seed: int = 3) -> torch.Tensor:
    fmt = backbone.video_format
    shape = (1, fmt.latent_frames, int(backbone.transformer.config.in_channels), fmt.latent_height, fmt.latent_width)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_video_to_video_last_step_by_hand_float64(tiny):
    """strength 0.1 of 10 steps runs the last step only: noise the clip to that timestep with the
    seed's noise, one CFG prediction, and the final DDIM step lands on x0_hat (alpha_prev = 1)."""
    cond, uncond = _texts(tiny)
    init = _clean_latents(tiny)
    out, info = sample(tiny, cond, uncond, num_steps=10, dynamic_cfg=False, seed=5, init_latents=init, strength=0.1)
    assert info["first_step"] == 9 and info["timesteps"] == [99] and len(info["cfg_scales"]) == 1
    abar = tiny.make_scheduler("ddim").alphas_cumprod[99].double()
    noise = initial_latents(tiny, 1, torch.Generator().manual_seed(5)).double()
    x_t = abar.sqrt() * init.double() + (1 - abar).sqrt() * noise
    with torch.no_grad():
        v = tiny.predict_v(torch.cat([x_t, x_t]).float(), torch.tensor([99, 99]), torch.cat([uncond, cond]))
    v_u, v_c = v.double().chunk(2)
    expected = abar.sqrt() * x_t - (1 - abar).sqrt() * (v_u + 6.0 * (v_c - v_u))
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)
    # and the result stays near the clip it started from, unlike a sample from noise
    from_noise, _ = sample(tiny, cond, uncond, num_steps=10, dynamic_cfg=False, seed=5)
    assert (out - init).abs().mean() < 0.5 * (from_noise - init).abs().mean()


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_strength_one_is_text_to_video_from_the_same_noise(tiny, sampler):
    """abar at t = 999 is 0 (zero terminal SNR): the clip is fully noised away."""
    cond, uncond = _texts(tiny)
    assert float(tiny.make_scheduler(sampler).alphas_cumprod[999]) == 0.0
    plain, _ = sample(tiny, cond, uncond, num_steps=4, seed=11, sampler=sampler)
    from_clip, info = sample(tiny, cond, uncond, num_steps=4, seed=11, sampler=sampler, init_latents=_clean_latents(tiny), strength=1.0)
    assert info["first_step"] == 0
    torch.testing.assert_close(from_clip, plain, atol=1e-6, rtol=0)


def test_video_to_video_keeps_the_full_schedules_timesteps_and_guidance_window(tiny):
    cond, uncond = _texts(tiny)
    field = _constant_motion_field(tiny.text_dim)
    full = tiny.make_scheduler("ddim")
    full.set_timesteps(10)
    _, info = sample(tiny, cond, uncond, num_steps=10, seed=2, field=field, field_text_pooled=pool_text(cond),
                     guidance_window=0.3, init_latents=_clean_latents(tiny), strength=0.5)
    assert info["timesteps"] == [int(t) for t in full.timesteps[5:]]
    # the window is the last 30% of all 10 steps (indices 7, 8, 9), not of the 5 that ran
    assert [loss is not None for loss in info["guide_loss"]] == [False, False, True, True, True]
    assert info["cfg_scales"][0] == pytest.approx(dynamic_cfg_scale(6.0, info["timesteps"][0], 10))


def test_init_latents_of_another_shape_are_refused(tiny):
    cond, uncond = _texts(tiny)
    with pytest.raises(ValueError, match="init_latents"):
        sample(tiny, cond, uncond, num_steps=2, seed=0, init_latents=_clean_latents(tiny)[:, :2], strength=0.5)
