"""Drift / field heatmaps, t*, Pearson r, colouring (METHOD.md section 4)."""

import math

import numpy as np
import pytest
import torch

from lamo_cli.motion.field import MotionField, MotionFieldConfig
from lamo_cli.motion.heatmap import (
    colorize,
    drift_heatmap,
    field_heatmap,
    minmax_normalise,
    most_moving_pair,
    pearson_r,
    upsample,
)

TINY = MotionFieldConfig(latent_channels=4, width=16, depth=2, text_dim=12, cond_dim=8, groups=4, se_hidden=4)


def randn(seed, *shape, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def moving_box_clip():
    """A 4x4 box (channel signature v) at rows/cols 2..5 for frames 0-2, then at 10..13 and twice as bright.

    The brightening gives a non-zero spatial-mean drift (a pure translation inside the frame has none).
    Background: a static random image plus tiny per-frame noise.
    """
    frames, channels, size = 6, 4, 16
    signature = torch.tensor([1.0, -0.5, 0.8, 0.3], dtype=torch.float64)
    clip = randn(0, 1, channels, size, size).expand(frames, -1, -1, -1).clone()
    clip += 1e-3 * randn(1, frames, channels, size, size)
    for t in range(frames):
        if t < 3:
            clip[t, :, 2:6, 2:6] += signature[:, None, None]
        else:
            clip[t, :, 10:14, 10:14] += 2 * signature[:, None, None]
    return clip


def test_most_moving_pair_finds_the_planted_motion():
    clip = randn(2, 1, 3, 5, 5).expand(8, -1, -1, -1).clone() + 1e-3 * randn(3, 8, 3, 5, 5)
    offsets = [0, 0, 0, 0, 1, 3, 3, 3]  # tau=2 pair drifts: 0, 0, 1, 3, 2, 0
    direction = torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64)
    for t, offset in enumerate(offsets):
        clip[t] += offset * direction[:, None, None]
    assert most_moving_pair(clip, tau=2) == 3
    assert most_moving_pair(clip, tau=1) == 4  # tau=1 pair drifts: 0, 0, 0, 1, 2, 0, 0


def test_drift_heatmap_matches_the_formula_by_loops():
    clip = randn(4, 5, 3, 4, 6)
    t_star = 1
    change = (clip[t_star + 2] - clip[t_star]).tolist()
    drift = [sum(sum(row) for row in change[c]) / 24 for c in range(3)]
    drift_norm = math.sqrt(sum(d * d for d in drift))
    expected = torch.tensor(
        [[abs(sum(change[c][h][w] * drift[c] for c in range(3))) / drift_norm for w in range(6)] for h in range(4)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(drift_heatmap(clip, t_star, tau=2), expected, rtol=1e-12, atol=1e-12)


def test_drift_heatmap_lights_up_where_the_box_moved():
    clip = moving_box_clip()
    t_star = most_moving_pair(clip)
    assert t_star in (1, 2)  # the pairs (1,3) and (2,4) straddle the jump
    heat = drift_heatmap(clip, t_star)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[2:6, 2:6] = True
    inside[10:14, 10:14] = True
    assert heat[2:6, 2:6].min() > 0.1 and heat[10:14, 10:14].min() > 0.1
    assert heat[~inside].max() < 0.01 * heat[inside].min()
    assert heat[10:14, 10:14].mean() > heat[2:6, 2:6].mean()  # the new, brighter box aligns more


def test_drift_heatmap_is_zero_without_drift_and_checks_range():
    clip = randn(5, 1, 3, 4, 4).expand(4, -1, -1, -1).clone()
    assert torch.equal(drift_heatmap(clip, 0), torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="t_star"):
        drift_heatmap(clip, 2)


def perturbed_field(seed):
    torch.manual_seed(seed)
    field = MotionField(TINY).double()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in field.named_parameters():
            if name.startswith("head") or ".film." in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return field.eval()


def test_field_heatmap_matches_the_formula():
    field = perturbed_field(6)
    clip = randn(7, 5, 4, 6, 7)
    text = randn(8, 12)
    t_star = 2
    static = sum(clip[t] for t in range(5)) / 5
    with torch.no_grad():
        moving_response = field(clip[t_star : t_star + 1], text[None])[0]
        static_response = field(static[None], text[None])[0]
    expected = torch.sqrt(((moving_response - static_response) ** 2).sum(dim=0))
    for prompt in (text, text[None]):
        torch.testing.assert_close(field_heatmap(clip, t_star, field, prompt), expected, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        expected_null = (field(clip[t_star : t_star + 1])[0] - field(static[None])[0]).norm(dim=0)
    torch.testing.assert_close(field_heatmap(clip, t_star, field, None), expected_null, rtol=1e-10, atol=1e-12)


def test_field_heatmap_of_an_untrained_field_is_zero():
    field = MotionField(TINY)  # zero-initialised head: predicts no motion anywhere
    clip = randn(9, 4, 4, 5, 5, dtype=torch.float32)
    assert torch.equal(field_heatmap(clip, 1, field, None), torch.zeros(5, 5))


def test_upsample_is_bilinear():
    small = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)  # value = 2*row + col
    # align_corners=False: output pixel centres map to source coords clamp((i + 0.5) / 2 - 0.5, 0, 1)
    coords = torch.tensor([0.0, 0.25, 0.75, 1.0], dtype=torch.float64)
    expected = 2 * coords[:, None] + coords[None, :]
    torch.testing.assert_close(upsample(small, (4, 4)), expected)
    same = randn(10, 3, 5)
    torch.testing.assert_close(upsample(same, (3, 5)), same)
    assert upsample(small, (6, 9)).shape == (6, 9)


def test_minmax_normalise():
    heat = torch.tensor([[2.0, 4.0], [6.0, 3.0]])
    torch.testing.assert_close(minmax_normalise(heat), torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    assert torch.equal(minmax_normalise(torch.full((3, 3), 7.0)), torch.zeros(3, 3))


def test_pearson_r():
    a = randn(11, 8, 8)
    b = randn(12, 8, 8)
    assert pearson_r(a, a) == pytest.approx(1.0, abs=1e-12)
    assert pearson_r(a, -a) == pytest.approx(-1.0, abs=1e-12)
    assert pearson_r(a, 3 * a + 2) == pytest.approx(1.0, abs=1e-12)
    expected = np.corrcoef(a.numpy().ravel(), b.numpy().ravel())[0, 1]
    assert pearson_r(a, b) == pytest.approx(expected, rel=1e-10)
    assert math.isnan(pearson_r(a, torch.ones(8, 8)))
    assert pearson_r(a.numpy(), b.float()) == pytest.approx(expected, rel=1e-6)


def test_colorize_inferno():
    ramp = torch.tensor([[0.0, 1.0], [0.5, float("nan")]])
    rgb = colorize(ramp)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 0]) == (0, 0, 4)  # inferno's first colour (near black)
    assert tuple(rgb[0, 1]) == (252, 255, 164)  # inferno's last colour (pale yellow)
    assert tuple(rgb[1, 1]) == tuple(rgb[0, 0])  # nan drawn as 0
    assert tuple(colorize(torch.full((1, 1), 2.0))[0, 0]) == (252, 255, 164)  # clipped
