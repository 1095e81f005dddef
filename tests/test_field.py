"""Micro motion field f_phi, its training pairs, loss and augmentations (METHOD.md section 2)."""

import math

import pytest
import torch

from lamo_cli.motion.field import (
    MotionField,
    MotionFieldConfig,
    field_loss,
    field_training_pairs,
    noise_augment,
    pool_text,
    prompt_dropout_mask,
)

TINY = MotionFieldConfig(latent_channels=4, width=16, depth=2, text_dim=12, cond_dim=8, groups=4, se_hidden=4)


def tiny_field(seed=0, perturb=True, dtype=torch.float32):
    """A tiny field; `perturb` randomises the zero-initialised head, FiLM and null prompt."""
    torch.manual_seed(seed)
    field = MotionField(TINY).to(dtype)
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for name, parameter in field.named_parameters():
                if name.startswith("head") or ".film." in name or name == "null_prompt":
                    parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=dtype))
    return field.eval()


def randn(seed, *shape, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- architecture -----------------------------------------------------------------------------


def release_parameter_count(channels, width, depth, text_dim, cond_dim, se_hidden):
    """Count by hand: conv = k*k*in*out + out, linear = in*out + out, GroupNorm = 2*width."""
    conv3 = lambda cin, cout: 9 * cin * cout + cout  # noqa: E731
    linear = lambda cin, cout: cin * cout + cout  # noqa: E731
    block = (
        2 * conv3(width, width)
        + 2 * (2 * width)
        + linear(width, se_hidden)
        + linear(se_hidden, width)
        + linear(cond_dim, 2 * width)
    )
    return conv3(channels, width) + depth * block + conv3(width, channels) + linear(text_dim, cond_dim) + text_dim


def test_release_field_has_about_10_8_million_parameters():
    field = MotionField()  # defaults: C=16, width 256, depth 8, T5-XXL text 4096, cond 128, SE 64
    count = sum(p.numel() for p in field.parameters())
    assert count == release_parameter_count(16, 256, 8, 4096, 128, 64)
    assert abs(count - 10.8e6) / 10.8e6 < 0.02


def reference_forward(field, z, text):
    """METHOD §2 written out with functional ops on the module's own weights."""
    import torch.nn.functional as F

    groups = field.config.groups
    cond = F.gelu(text @ field.text_proj.weight.T + field.text_proj.bias)
    h = F.gelu(F.conv2d(z, field.stem.weight, field.stem.bias, padding=1))
    for block in field.blocks:
        film = cond @ block.film.weight.T + block.film.bias
        gamma, beta = film[:, : h.shape[1]], film[:, h.shape[1] :]
        y = F.conv2d(h, block.conv1.weight, block.conv1.bias, padding=1)
        y = F.group_norm(y, groups, block.norm1.weight, block.norm1.bias, eps=1e-5)
        y = F.gelu((1 + gamma[:, :, None, None]) * y + beta[:, :, None, None])
        y = F.conv2d(y, block.conv2.weight, block.conv2.bias, padding=1)
        y = F.group_norm(y, groups, block.norm2.weight, block.norm2.bias, eps=1e-5)
        pooled = y.mean(dim=(2, 3))
        gate = torch.sigmoid(
            torch.relu(pooled @ block.se.reduce.weight.T + block.se.reduce.bias) @ block.se.expand.weight.T
            + block.se.expand.bias
        )
        h = F.gelu(y * gate[:, :, None, None] + h)
    return F.conv2d(h, field.head.weight, field.head.bias, padding=1)


def test_field_forward_matches_the_release_architecture_written_out():
    field = tiny_field(30, dtype=torch.float64)
    z = randn(31, 3, 4, 7, 5, dtype=torch.float64)
    text = randn(32, 3, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(field(z, text), reference_forward(field, z, text), rtol=1e-10, atol=1e-12)
        null = field.null_prompt.expand(3, -1)
        torch.testing.assert_close(field(z, None), reference_forward(field, z, null), rtol=1e-10, atol=1e-12)


def test_field_is_zero_at_initialisation():
    torch.manual_seed(1)
    field = MotionField(TINY)
    z = randn(2, 3, 4, 8, 6)
    out = field(z, randn(3, 3, 12))
    assert out.shape == z.shape
    assert torch.equal(out, torch.zeros_like(z))


def test_field_is_prompt_agnostic_at_initialisation():
    torch.manual_seed(4)
    field = MotionField(TINY)
    with torch.no_grad():  # perturb only the output conv, so the output is non-zero
        field.head.weight.normal_(0, 0.3)
        field.head.bias.normal_(0, 0.3)
    z = randn(5, 2, 4, 8, 8)
    out_a = field(z, randn(6, 2, 12))
    out_b = field(z, randn(7, 2, 12))
    out_null = field(z, None)
    assert out_a.abs().sum() > 0
    assert torch.equal(out_a, out_b)
    assert torch.equal(out_a, out_null)
    with torch.no_grad():  # once FiLM is non-zero the prompt matters (so the check above can fail)
        field.blocks[0].film.weight.normal_(0, 0.3)
    assert not torch.allclose(field(z, randn(6, 2, 12)), field(z, randn(7, 2, 12)))


def test_null_prompt_replaces_missing_or_dropped_prompts():
    field = tiny_field(8)
    z = randn(9, 3, 4, 8, 8)
    text = randn(10, 3, 12)
    dropped_all = field(z, text, drop_prompt=torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(dropped_all, field(z, None))
    mixed = field(z, text, drop_prompt=torch.tensor([False, True, False]))
    with_prompt = field(z, text)
    torch.testing.assert_close(mixed[0], with_prompt[0])
    torch.testing.assert_close(mixed[2], with_prompt[2])
    torch.testing.assert_close(mixed[1], field(z[1:2], None)[0])
    torch.testing.assert_close(
        mixed[1:2], field(z[1:2], field.null_prompt.detach().unsqueeze(0))
    )  # the null prompt is a pooled-text vector
    assert not torch.allclose(mixed[1], with_prompt[1])


def test_field_is_per_frame_without_mixing_across_the_batch():
    field = tiny_field(11, dtype=torch.float64)
    z = randn(12, 4, 4, 8, 8, dtype=torch.float64)
    text = randn(13, 4, 12, dtype=torch.float64)
    batched = field(z, text)
    for n in range(4):
        torch.testing.assert_close(batched[n], field(z[n : n + 1], text[n : n + 1])[0], rtol=1e-12, atol=1e-12)
    changed = z.clone()
    changed[2] += 5.0
    out = field(changed, text)
    torch.testing.assert_close(out[[0, 1, 3]], batched[[0, 1, 3]], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out[2], batched[2])


def test_field_rejects_wrong_inputs():
    field = tiny_field(14)
    with pytest.raises(ValueError, match="latent frames"):
        field(randn(15, 2, 5, 8, 8))
    with pytest.raises(ValueError, match="text_pooled"):
        field(randn(16, 2, 4, 8, 8), randn(17, 2, 13))


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="groups=8 must divide width=60"):
        MotionFieldConfig(width=60)
    with pytest.raises(ValueError, match="depth"):
        MotionFieldConfig(depth=-1)
    with pytest.raises(ValueError, match="integer"):
        MotionFieldConfig(width=16.5)
    assert MotionFieldConfig.from_dict(TINY.to_dict()) == TINY
    assert TINY.to_dict() == {
        "latent_channels": 4, "width": 16, "depth": 2, "text_dim": 12, "cond_dim": 8, "groups": 4, "se_hidden": 4
    }
    with pytest.raises(ValueError, match="unknown keys"):
        MotionFieldConfig.from_dict({**TINY.to_dict(), "widht": 3})


# ---- prompt pooling and training pairs --------------------------------------------------------


def test_pool_text_means_all_tokens_including_padding():
    text = randn(18, 2, 5, 3, dtype=torch.float64)
    text[:, 3:] = 0.0  # "padding" tokens still count
    expected = torch.stack([sum(text[n, l] for l in range(5)) / 5 for n in range(2)])
    torch.testing.assert_close(pool_text(text), expected)


@pytest.mark.parametrize("tau", [1, 2])
def test_field_training_pairs_by_loops(tau):
    z = randn(19, 2, 5, 3, 4, 4)
    inputs, targets, batch_index = field_training_pairs(z, tau)
    pairs = 5 - tau
    assert inputs.shape == targets.shape == (2 * pairs, 3, 4, 4)
    row = 0
    for b in range(2):
        for i in range(pairs):
            assert torch.equal(inputs[row], z[b, i])
            assert torch.equal(targets[row], z[b, i + tau] - z[b, i])
            assert batch_index[row] == b
            row += 1


def test_field_training_pairs_default_tau_is_one():
    z = randn(20, 1, 3, 2, 2, 2)
    _, targets, _ = field_training_pairs(z)
    assert torch.equal(targets[0], z[0, 1] - z[0, 0])


# ---- loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_field_loss_by_hand(alpha):
    pred = randn(21, 3, 2, 3, 3, dtype=torch.float64)
    target = randn(22, 3, 2, 3, 3, dtype=torch.float64)
    p, t = pred.reshape(3, -1).tolist(), target.reshape(3, -1).tolist()
    squared = [(a - b) ** 2 for row_p, row_t in zip(p, t) for a, b in zip(row_p, row_t)]
    mse = sum(squared) / len(squared)
    cosines = []
    for row_p, row_t in zip(p, t):
        dot = sum(a * b for a, b in zip(row_p, row_t))
        cosines.append(dot / math.sqrt(sum(a * a for a in row_p) * sum(b * b for b in row_t)))
    cos = sum(cosines) / 3
    loss, metrics = field_loss(pred, target, alpha=alpha)
    assert float(loss) == pytest.approx(mse + alpha * (1 - cos), rel=1e-12)
    assert metrics["mse"] == pytest.approx(mse, rel=1e-12)
    assert metrics["cos"] == pytest.approx(cos, rel=1e-12)


def test_field_loss_known_cases_and_gradient():
    target = randn(23, 2, 4, 3, 3)
    loss, metrics = field_loss(target.clone(), target)
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and metrics["cos"] == pytest.approx(1.0, abs=1e-6)
    zero_pred = torch.zeros_like(target, requires_grad=True)  # the zero-initialised field at step 0
    loss, metrics = field_loss(zero_pred, target, alpha=0.3)
    assert metrics["cos"] == 0.0
    assert float(loss.detach()) == pytest.approx(float((target**2).mean()) + 0.3, rel=1e-6)
    loss.backward()
    assert torch.isfinite(zero_pred.grad).all() and zero_pred.grad.abs().sum() > 0


# ---- augmentations ----------------------------------------------------------------------------


def test_noise_augment_with_zero_probability_is_identity():
    z = randn(24, 3, 4, 2, 5, 5)
    table = torch.linspace(0.999, 0.0, 1000, dtype=torch.float64)
    assert torch.equal(noise_augment(z, table, prob=0.0, generator=torch.Generator().manual_seed(0)), z)


def test_noise_augment_with_probability_one_matches_the_formula():
    z = randn(25, 3, 4, 2, 5, 5)
    table = torch.linspace(0.999, 0.0, 1000, dtype=torch.float64)
    out = noise_augment(z, table, strength=0.3, prob=1.0, generator=torch.Generator().manual_seed(7))
    # Replay the documented draw order: rand(N), randint(N), randn(z.shape).
    replay = torch.Generator().manual_seed(7)
    torch.rand(3, generator=replay)
    t = torch.randint(0, 1000, (3,), generator=replay)
    eps = torch.randn(z.shape, generator=replay)
    for n in range(3):
        sigma = 0.3 * math.sqrt(1.0 - table[t[n]].item())
        torch.testing.assert_close(out[n], z[n] + sigma * eps[n], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, z)


def test_noise_augment_applies_per_sample():
    z = randn(26, 64, 1, 1, 2, 2)
    table = torch.full((1000,), 0.75, dtype=torch.float64)  # sigma = strength * 0.5
    out = noise_augment(z, table, strength=0.3, prob=0.5, generator=torch.Generator().manual_seed(3))
    unchanged = torch.tensor([torch.equal(out[n], z[n]) for n in range(64)])
    assert 10 < int(unchanged.sum()) < 54  # about half kept as they were
    replay = torch.Generator().manual_seed(3)
    apply = torch.rand(64, generator=replay) < 0.5
    assert torch.equal(~unchanged, apply)


def test_prompt_dropout_mask():
    mask = prompt_dropout_mask(1000, prob=0.1, generator=torch.Generator().manual_seed(5))
    assert mask.dtype == torch.bool and mask.shape == (1000,)
    assert 50 < int(mask.sum()) < 150
    assert torch.equal(mask, prompt_dropout_mask(1000, prob=0.1, generator=torch.Generator().manual_seed(5)))
    assert not prompt_dropout_mask(10, prob=0.0).any()
    assert prompt_dropout_mask(10, prob=1.0).all()
