"""Macro drift, Motion Drift Loss, noise weights, v-prediction algebra (METHOD.md section 1)."""

import math

import pytest
import torch

from lamo_cli.motion import drift as drift_module
from lamo_cli.motion.drift import (
    diffusion_loss,
    drift_loss,
    drift_loss_terms,
    lagged_difference,
    lamo_objective,
    macro_drift,
    noise_weight,
    x0_from_v,
)


def cogvideox_2b_scheduler():
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
    )


def random_video(seed, shape=(2, 6, 3, 4, 5), dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def drift_by_loops(z, tau):
    """mu[b][i][c] = (1/HW) sum_hw (z[b,i+tau,c,h,w] - z[b,i,c,h,w]) as nested python lists."""
    batch, frames, channels, height, width = z.shape
    values = z.tolist()
    result = []
    for b in range(batch):
        per_clip = []
        for i in range(frames - tau):
            per_pair = []
            for c in range(channels):
                total = 0.0
                for h in range(height):
                    for w in range(width):
                        total += values[b][i + tau][c][h][w] - values[b][i][c][h][w]
                per_pair.append(total / (height * width))
            per_clip.append(per_pair)
        result.append(per_clip)
    return result


def drift_loss_by_hand(x0_hat, x0, tau, eps=1e-8):
    mu_hat, mu_star = drift_by_loops(x0_hat, tau), drift_by_loops(x0, tau)
    terms = []
    for clip_hat, clip_star in zip(mu_hat, mu_star):
        for pair_hat, pair_star in zip(clip_hat, clip_star):
            error = sum((a - s) ** 2 for a, s in zip(pair_hat, pair_star))
            reference = max(sum(s * s for s in pair_star), eps)
            terms.append(error / reference)
    return sum(terms) / len(terms)


# ---- lagged differences and drift -------------------------------------------------------------


@pytest.mark.parametrize("tau", [1, 2, 3])
def test_lagged_difference_matches_loops(tau):
    z = random_video(0)
    result = lagged_difference(z, tau)
    assert result.shape == (2, 6 - tau, 3, 4, 5)
    for b in range(2):
        for i in range(6 - tau):
            assert torch.equal(result[b, i], z[b, i + tau] - z[b, i])


def test_lagged_difference_works_on_a_single_clip_and_rejects_short_clips():
    clip = random_video(1, shape=(4, 2, 3, 3))
    assert torch.equal(lagged_difference(clip, 2), clip[2:] - clip[:2])
    with pytest.raises(ValueError, match="T=2"):
        lagged_difference(clip[:2], 2)
    with pytest.raises(ValueError, match="tau"):
        lagged_difference(clip, 0)


@pytest.mark.parametrize("tau", [1, 2])
def test_macro_drift_matches_loops(tau):
    z = random_video(2)
    expected = torch.tensor(drift_by_loops(z, tau), dtype=torch.float64)
    result = macro_drift(z, tau)
    assert result.shape == (2, 6 - tau, 3)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)


def test_macro_drift_default_tau_is_two():
    z = random_video(3)
    torch.testing.assert_close(macro_drift(z), torch.tensor(drift_by_loops(z, 2), dtype=torch.float64))


# ---- drift loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1, 2])
def test_drift_loss_matches_float64_hand_computation(tau):
    x0_hat, x0 = random_video(4), random_video(5)
    expected = drift_loss_by_hand(x0_hat, x0, tau)
    assert float(drift_loss(x0_hat, x0, tau=tau)) == pytest.approx(expected, rel=1e-10)


def test_drift_loss_float32_inputs_match_hand_computation():
    x0_hat, x0 = random_video(6), random_video(7)
    expected = drift_loss_by_hand(x0_hat, x0, 2)
    result = drift_loss(x0_hat.float(), x0.float())
    assert result.dtype == torch.float32
    assert float(result) == pytest.approx(expected, rel=1e-4)


def test_drift_loss_is_computed_in_float32_for_bfloat16_inputs():
    x0_hat, x0 = random_video(8).bfloat16(), random_video(9).bfloat16()
    result = drift_loss(x0_hat, x0)
    assert result.dtype == torch.float32
    expected = drift_loss_by_hand(x0_hat.double(), x0.double(), 2)
    assert float(result) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("k", [1e-3, 7.0, -2.5])
def test_drift_loss_is_scale_normalised(k):
    x0_hat, x0 = random_video(10), random_video(11)
    base = drift_loss(x0_hat, x0)
    assert float(drift_loss(k * x0_hat, k * x0)) == pytest.approx(float(base), rel=1e-9)


def test_drift_loss_is_zero_for_a_perfect_prediction():
    x0 = random_video(12)
    assert float(drift_loss(x0.clone(), x0)) == 0.0


def test_drift_loss_ignores_a_static_offset():
    # Adding the same static image to every frame changes nothing (differences cancel).
    x0_hat, x0 = random_video(13), random_video(14)
    static = random_video(15, shape=(2, 1, 3, 4, 5))
    assert float(drift_loss(x0_hat + static, x0)) == pytest.approx(float(drift_loss(x0_hat, x0)), rel=1e-10)


def test_drift_loss_gradient_flows_into_x0_hat_only():
    x0_hat = random_video(16).requires_grad_(True)
    x0 = random_video(17).requires_grad_(True)
    drift_loss(x0_hat, x0).backward()
    assert x0.grad is None
    assert x0_hat.grad is not None and x0_hat.grad.abs().sum() > 0


def test_drift_loss_gradient_matches_analytic_stopgrad_formula():
    tau = 2
    x0_hat = random_video(18).requires_grad_(True)
    x0 = random_video(19)
    drift_loss(x0_hat, x0, tau=tau).backward()

    batch, frames, channels, height, width = x0.shape
    pairs = frames - tau
    mu_hat = torch.tensor(drift_by_loops(x0_hat.detach(), tau), dtype=torch.float64)
    mu_star = torch.tensor(drift_by_loops(x0, tau), dtype=torch.float64)
    # dL/dmu_hat[b,i] = 2 (mu_hat - mu*) / |mu*|^2 / (B * pairs), the denominator treated as constant.
    g = 2 * (mu_hat - mu_star) / (mu_star**2).sum(-1, keepdim=True) / (batch * pairs)
    expected = torch.zeros_like(x0)
    for b in range(batch):
        for j in range(frames):
            for c in range(channels):
                value = 0.0
                if j - tau >= 0:  # frame j is the later frame of pair j - tau
                    value += g[b, j - tau, c].item()
                if j < pairs:  # frame j is the earlier frame of pair j
                    value -= g[b, j, c].item()
                expected[b, j, c] = value / (height * width)
    torch.testing.assert_close(x0_hat.grad, expected, rtol=1e-10, atol=1e-14)


def test_drift_loss_clamps_the_denominator_when_the_real_video_is_static():
    x0 = random_video(20, shape=(1, 1, 3, 4, 5)).expand(1, 4, 3, 4, 5).contiguous()  # mu* = 0
    x0_hat = random_video(21, shape=(1, 4, 3, 4, 5))
    mu_hat = torch.tensor(drift_by_loops(x0_hat, 2), dtype=torch.float64)
    expected = (mu_hat**2).sum(-1).mean().item() / 1e-8
    assert float(drift_loss(x0_hat, x0)) == pytest.approx(expected, rel=1e-10)
    assert float(drift_loss(x0_hat, x0, eps=1e-4)) == pytest.approx(expected * 1e-8 / 1e-4, rel=1e-10)
    assert math.isfinite(float(drift_loss(x0_hat.float(), x0.float())))


def test_drift_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        drift_loss(random_video(22), random_video(23, shape=(2, 5, 3, 4, 5)))


# ---- magnitude / direction split --------------------------------------------------------------


def test_drift_terms_decompose_the_loss_exactly():
    x0_hat, x0 = random_video(24), random_video(25)
    terms = drift_loss_terms(x0_hat, x0)
    assert float(terms["drift"]) == pytest.approx(float(drift_loss(x0_hat, x0)), rel=1e-12)
    assert float(terms["magnitude"] + terms["direction_weighted"]) == pytest.approx(float(terms["drift"]), rel=1e-10)
    for value in terms.values():
        assert not value.requires_grad


def test_drift_terms_direction_matches_hand_cosine():
    x0_hat, x0 = random_video(26), random_video(27)
    mu_hat = drift_by_loops(x0_hat, 2)
    mu_star = drift_by_loops(x0, 2)
    one_minus_cos, magnitude = [], []
    for clip_hat, clip_star in zip(mu_hat, mu_star):
        for a, s in zip(clip_hat, clip_star):
            norm_a = math.sqrt(sum(x * x for x in a))
            norm_s = math.sqrt(sum(x * x for x in s))
            one_minus_cos.append(1 - sum(x * y for x, y in zip(a, s)) / (norm_a * norm_s))
            magnitude.append((norm_a - norm_s) ** 2 / norm_s**2)
    terms = drift_loss_terms(x0_hat, x0)
    assert float(terms["direction"]) == pytest.approx(sum(one_minus_cos) / len(one_minus_cos), rel=1e-10)
    assert float(terms["magnitude"]) == pytest.approx(sum(magnitude) / len(magnitude), rel=1e-10)


def test_drift_terms_known_cases():
    x0 = random_video(28)
    doubled = drift_loss_terms(2 * x0, x0)  # same direction, twice the size
    assert float(doubled["magnitude"]) == pytest.approx(1.0, rel=1e-10)
    assert float(doubled["direction"]) == pytest.approx(0.0, abs=1e-10)
    reversed_ = drift_loss_terms(-x0, x0)  # same size, opposite direction
    assert float(reversed_["magnitude"]) == pytest.approx(0.0, abs=1e-10)
    assert float(reversed_["direction"]) == pytest.approx(2.0, rel=1e-10)
    assert float(reversed_["drift"]) == pytest.approx(4.0, rel=1e-10)


# ---- noise weight -----------------------------------------------------------------------------


def test_release_noise_weight_by_hand():
    timesteps = torch.tensor([0, 250, 500, 999])
    expected = (1 + (1 - 0.0625) + (1 - 0.25) + (1 - 0.999**2)) / 4
    result = noise_weight(timesteps)
    assert result.dim() == 0
    assert float(result) == pytest.approx(expected, rel=1e-6)
    assert float(noise_weight(torch.tensor([1000, 1500]))) == 0.0  # max(0, .) clamps
    assert float(noise_weight(500)) == pytest.approx(0.75)


def test_abar_noise_weight_by_hand():
    table = torch.linspace(1.0, 0.0, 1000, dtype=torch.float64)
    timesteps = torch.tensor([0, 10, 999])
    expected = (table[0].item() + table[10].item() + table[999].item()) / 3
    assert float(noise_weight(timesteps, kind="abar", alphas_cumprod=table)) == pytest.approx(expected, rel=1e-6)


def test_noise_weight_rejects_bad_kinds():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        noise_weight(torch.tensor([3]), kind="abar")
    with pytest.raises(ValueError, match="unknown"):
        noise_weight(torch.tensor([3]), kind="snr")


# ---- v-prediction algebra ---------------------------------------------------------------------


def test_x0_from_v_matches_diffusers_get_velocity():
    scheduler = cogvideox_2b_scheduler()
    assert scheduler.alphas_cumprod[999] == 0
    generator = torch.Generator().manual_seed(29)
    x_t = torch.randn(4, 3, 2, 4, 4, generator=generator)
    v = torch.randn(4, 3, 2, 4, 4, generator=generator)
    timesteps = torch.tensor([0, 321, 800, 999])
    expected = scheduler.get_velocity(v, x_t, timesteps)
    result = x0_from_v(x_t, v, scheduler.alphas_cumprod[timesteps])
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)


def test_x0_from_v_accepts_a_scalar_abar():
    x_t, v = random_video(30), random_video(31)
    expected = math.sqrt(0.3) * x_t - math.sqrt(0.7) * v
    torch.testing.assert_close(x0_from_v(x_t, v, 0.3), expected)
    torch.testing.assert_close(x0_from_v(x_t, v, torch.tensor(0.3, dtype=torch.float64)), expected)


def test_diffusion_loss_equals_v_mse():
    scheduler = cogvideox_2b_scheduler()
    generator = torch.Generator().manual_seed(32)
    shape = (4, 3, 2, 4, 4)
    x0 = torch.randn(shape, generator=generator, dtype=torch.float64)
    eps = torch.randn(shape, generator=generator, dtype=torch.float64)
    v_hat = torch.randn(shape, generator=generator, dtype=torch.float64)
    timesteps = torch.tensor([0, 400, 900, 999])
    abar = scheduler.alphas_cumprod[timesteps].to(torch.float64)
    a = abar.sqrt().reshape(-1, 1, 1, 1, 1)
    s = (1 - abar).sqrt().reshape(-1, 1, 1, 1, 1)
    x_t = a * x0 + s * eps
    v_true = a * eps - s * x0
    x0_hat = x0_from_v(x_t, v_hat, abar)
    expected = ((v_hat - v_true) ** 2).mean()
    torch.testing.assert_close(diffusion_loss(x0_hat, x0, abar), expected, rtol=1e-9, atol=0)


def test_diffusion_loss_weights_by_hand_and_clamps_abar_one():
    x0_hat = torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=torch.float64)
    x0 = torch.zeros(2, 2, dtype=torch.float64)
    abar = torch.tensor([0.5, 0.0], dtype=torch.float64)
    expected = ((1 + 9) / 0.5 + (4 + 4) / 1.0) / 4
    assert float(diffusion_loss(x0_hat, x0, abar)) == pytest.approx(expected)
    clamped = diffusion_loss(x0_hat, x0, torch.tensor([1.0, 1.0]))
    assert float(clamped) == pytest.approx((1 + 9 + 4 + 4) / 4 / 1e-6, rel=1e-9)


# ---- full objective ---------------------------------------------------------------------------


def test_lamo_objective_combines_terms():
    x0_hat, x0 = random_video(33).requires_grad_(True), random_video(34)
    abar = torch.tensor([0.9, 0.2], dtype=torch.float64)
    timesteps = torch.tensor([100, 700])
    loss, metrics = lamo_objective(x0_hat, x0, abar, timesteps, drift_weight=0.4)
    w = ((1 - 0.1**2) + (1 - 0.7**2)) / 2
    expected_diffusion = float(diffusion_loss(x0_hat.detach(), x0, abar))
    expected_drift = drift_loss_by_hand(x0_hat.detach(), x0, 2)
    assert metrics["drift_weight_w"] == pytest.approx(w, rel=1e-6)
    assert metrics["diffusion"] == pytest.approx(expected_diffusion, rel=1e-10)
    assert metrics["drift"] == pytest.approx(expected_drift, rel=1e-10)
    assert metrics["loss"] == pytest.approx(expected_diffusion + 0.4 * w * expected_drift, rel=1e-6)
    assert float(loss.detach()) == pytest.approx(metrics["loss"], rel=1e-12)
    loss.backward()
    assert x0_hat.grad is not None


def test_lamo_objective_abar_weight_kind():
    x0_hat, x0 = random_video(35), random_video(36)
    table = torch.linspace(0.99, 0.0, 1000, dtype=torch.float64)
    timesteps = torch.tensor([10, 500])
    _, metrics = lamo_objective(x0_hat, x0, table[timesteps], timesteps, weight_kind="abar", alphas_cumprod=table)
    assert metrics["drift_weight_w"] == pytest.approx((table[10] + table[500]).item() / 2, rel=1e-6)


def test_lamo_objective_without_drift_skips_the_drift(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("drift computed although drift_weight == 0")

    monkeypatch.setattr(drift_module, "drift_loss", must_not_run)
    x0_hat, x0 = random_video(37), random_video(38)
    abar = torch.tensor([0.5, 0.5], dtype=torch.float64)
    loss, metrics = lamo_objective(x0_hat, x0, abar, torch.tensor([1, 2]), drift_weight=0.0)
    assert math.isnan(metrics["drift"])
    assert float(loss) == pytest.approx(float(diffusion_loss(x0_hat, x0, abar)), rel=1e-12)
