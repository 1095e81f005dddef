"""Motion Prior Guidance on the v-prediction (METHOD.md section 3)."""

import math

import pytest
import torch
from torch import nn

from lamo_cli.motion.field import MotionField, MotionFieldConfig
from lamo_cli.motion.guidance import first_guided_step, guidance_loss, guide_v, in_guidance_window

TINY = MotionFieldConfig(latent_channels=4, width=16, depth=2, text_dim=12, cond_dim=8, groups=4, se_hidden=4)


def tiny_field(seed=0, dtype=torch.float32):
    """Tiny field with the zero-initialised head / FiLM / null prompt randomised (so it is non-trivial)."""
    torch.manual_seed(seed)
    field = MotionField(TINY).to(dtype)
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, parameter in field.named_parameters():
            if name.startswith("head") or ".film." in name or name == "null_prompt":
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=dtype))
    return field.eval()


class ScaledIdentityField(nn.Module):
    """f(z, c) = k * z: a field whose guidance loss is known in closed form."""

    def __init__(self, k: float):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=torch.float64))

    def forward(self, z, text_pooled=None, drop_prompt=None):
        return self.k * z


class ExplodingField(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise AssertionError("the field must not be called")


def randn(seed, *shape, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- guidance loss ----------------------------------------------------------------------------


def test_guidance_loss_closed_form_for_a_linear_field():
    x0 = randn(0, 2, 4, 3, 2, 2, dtype=torch.float64)
    k = 0.7
    values = x0.tolist()
    squares = []
    for b in range(2):
        for i in range(3):
            for c in range(3):
                for h in range(2):
                    for w in range(2):
                        current, following = values[b][i][c][h][w], values[b][i + 1][c][h][w]
                        squares.append((current + k * current - following) ** 2)
    expected = sum(squares) / len(squares)
    assert float(guidance_loss(x0, ScaledIdentityField(k), None).detach()) == pytest.approx(expected, rel=1e-12)


def test_guidance_loss_uses_each_clips_own_prompt():
    field = tiny_field(1, dtype=torch.float64)
    x0 = randn(2, 2, 3, 4, 6, 6, dtype=torch.float64)
    text = randn(3, 2, 12, dtype=torch.float64)
    total, count = 0.0, 0
    field.requires_grad_(False)
    for b in range(2):
        for i in range(2):
            residual = x0[b, i] + field(x0[b, i : i + 1], text[b : b + 1])[0] - x0[b, i + 1]
            total += float((residual**2).sum())
            count += residual.numel()
    assert float(guidance_loss(x0, field, text)) == pytest.approx(total / count, rel=1e-10)
    # A [D] prompt is shared by every clip.
    shared = guidance_loss(x0, field, text[0])
    assert float(shared) == pytest.approx(float(guidance_loss(x0, field, text[[0, 0]])), rel=1e-12)


def test_guidance_loss_needs_two_frames():
    with pytest.raises(ValueError, match="at least 2"):
        guidance_loss(randn(4, 1, 1, 4, 4, 4), tiny_field(), None)


# ---- guided v ---------------------------------------------------------------------------------


def guidance_case(seed, dtype=torch.float32):
    v = randn(seed, 2, 3, 4, 6, 6, dtype=dtype)
    x_t = randn(seed + 1, 2, 3, 4, 6, 6, dtype=dtype)
    text = randn(seed + 2, 2, 12, dtype=dtype)
    return v, x_t, text


def loss_at(v, x_t, abar, field, text):
    x0_hat = math.sqrt(abar) * x_t - math.sqrt(1 - abar) * v
    with torch.no_grad():
        return float(guidance_loss(x0_hat, field, text))


def test_one_guided_step_lowers_the_guidance_loss():
    field = tiny_field(5)
    v, x_t, text = guidance_case(6)
    abar = 0.6
    v_guided, info = guide_v(v, x_t, abar, field, text, scale=0.5)
    before = loss_at(v, x_t, abar, field, text)
    assert info["guide_loss"] == pytest.approx(before, rel=1e-5)
    assert info["grad_norm"] > 0
    assert loss_at(v_guided, x_t, abar, field, text) < before


def test_guided_v_matches_finite_differences_in_float64():
    field = tiny_field(7, dtype=torch.float64)
    v, x_t, text = guidance_case(8, dtype=torch.float64)
    abar, scale = 0.35, 3.0
    v_guided, info = guide_v(v, x_t, abar, field, text, scale=scale)
    grad = (v - v_guided) / scale
    assert info["grad_norm"] == pytest.approx(float(grad.norm()), rel=1e-9)
    h = 1e-6
    for index in [(0, 0, 0, 0, 0), (0, 1, 2, 3, 4), (1, 2, 3, 5, 5), (1, 0, 1, 2, 0)]:
        bump = torch.zeros_like(v)
        bump[index] = h
        numeric = (loss_at(v + bump, x_t, abar, field, text) - loss_at(v - bump, x_t, abar, field, text)) / (2 * h)
        assert grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-10)
    direction = randn(9, *v.shape, dtype=torch.float64)
    numeric = (
        loss_at(v + h * direction, x_t, abar, field, text) - loss_at(v - h * direction, x_t, abar, field, text)
    ) / (2 * h)
    assert float((grad * direction).sum()) == pytest.approx(numeric, rel=1e-6)


def test_zero_scale_returns_v_cfg_itself_without_calling_the_field():
    v, x_t, text = guidance_case(10)
    v_guided, info = guide_v(v, x_t, 0.5, ExplodingField(), text, scale=0.0)
    assert v_guided is v
    assert math.isnan(info["guide_loss"]) and info["grad_norm"] == 0.0


def test_field_weights_receive_no_gradient_and_work_under_no_grad():
    field = tiny_field(11)
    v, x_t, text = guidance_case(12)
    v = v.requires_grad_(True)  # as if it came out of a graph: still untouched
    with torch.no_grad():
        v_guided, _ = guide_v(v, x_t, torch.tensor(0.4), field, text, scale=15.0)
    assert all(parameter.grad is None for parameter in field.parameters())
    assert v.grad is None
    assert not v_guided.requires_grad
    assert not torch.equal(v_guided, v.detach())


def test_abar_as_float_or_tensor_and_dtype_round_trip():
    field = tiny_field(13)
    v, x_t, text = guidance_case(14)
    from_float, _ = guide_v(v, x_t, 0.3, field, text, scale=2.0)
    from_tensor, _ = guide_v(v, x_t, torch.tensor(0.3, dtype=torch.float64), field, text, scale=2.0)
    torch.testing.assert_close(from_float, from_tensor)
    v_bf16, info = guide_v(v.bfloat16(), x_t.bfloat16(), 0.3, field, text, scale=2.0)
    assert v_bf16.dtype == torch.bfloat16
    reference, _ = guide_v(v.bfloat16().float(), x_t.bfloat16().float(), 0.3, field, text, scale=2.0)
    torch.testing.assert_close(v_bf16, reference.bfloat16())


# ---- window -----------------------------------------------------------------------------------


def test_guidance_window_boundaries():
    assert first_guided_step(50, 0.8) == 10  # plain int((1 - 0.8) * 50) would give 9
    assert not in_guidance_window(9, 50, 0.8)
    assert in_guidance_window(10, 50, 0.8)
    assert in_guidance_window(49, 50, 0.8)
    assert sum(in_guidance_window(i, 50, 0.8) for i in range(50)) == 40
    assert sum(in_guidance_window(i, 50, 1.0) for i in range(50)) == 50
    assert sum(in_guidance_window(i, 50, 0.0) for i in range(50)) == 0
    assert first_guided_step(4, 0.3) == 2  # int(2.8)
    with pytest.raises(ValueError, match="rho"):
        in_guidance_window(0, 50, 1.5)
