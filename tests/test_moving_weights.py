"""Moving-cell weights of the diffusion loss (`--moving-weight`; beyond the paper), checked by hand."""

import pytest
import torch

from lamo_cli.motion.drift import diffusion_loss, lamo_objective, moving_cell_weights, moving_cells


def disc_over_background(frames: int = 5, size: int = 6) -> torch.Tensor:
    """[1, T, 2, H, W] float64: background 0.5 / -1 in the two channels, one cell moving right one
    cell a frame along row 2 with value (3.5, 3) (deviation (3, 4): norm 5)."""
    z = torch.empty(1, frames, 2, size, size, dtype=torch.float64)
    z[:, :, 0] = 0.5
    z[:, :, 1] = -1.0
    for f in range(frames):
        z[0, f, 0, 2, f] = 3.5
        z[0, f, 1, 2, f] = 3.0
    return z


def test_moving_cells_marks_the_mover_by_its_deviation_from_the_temporal_median():
    z = disc_over_background()
    mask = moving_cells(z, threshold=10.0)
    assert mask.shape == (1, 5, 1, 6, 6)
    for f in range(5):
        assert float(mask[0, f, 0, 2, f]) == pytest.approx(0.5)  # deviation 5 of threshold 10
    assert float(mask.sum()) == pytest.approx(5 * 0.5)  # nothing else moves
    full = moving_cells(z, threshold=2.0)
    assert float(full.max()) == 1.0 and float(full.sum()) == pytest.approx(5.0)  # clipped at 1


def test_moving_cell_weights_by_hand_and_mean_one():
    z = disc_over_background()
    weights = moving_cell_weights(z, boost=9.0, threshold=5.0)
    cells = 5 * 6 * 6
    mean = (cells - 5 + 5 * 10.0) / cells  # 5 moving cells weigh 10 before normalising
    assert float(weights[0, 0, 0, 2, 0]) == pytest.approx(10.0 / mean)
    assert float(weights[0, 0, 0, 0, 0]) == pytest.approx(1.0 / mean)
    assert float(weights.mean()) == pytest.approx(1.0)
    still = torch.ones(2, 4, 3, 5, 5)
    assert torch.equal(moving_cell_weights(still, 9.0, 1.0), torch.ones(2, 4, 1, 5, 5))
    assert torch.equal(moving_cell_weights(z, 0.0, 1.0), torch.ones_like(weights))
    with pytest.raises(ValueError):
        moving_cells(z, threshold=0.0)
    with pytest.raises(ValueError):
        moving_cell_weights(z, boost=-1.0, threshold=1.0)
    with pytest.raises(ValueError):
        moving_cells(z[0], threshold=1.0)


def test_weighted_diffusion_loss_by_hand():
    x0 = torch.zeros(1, 1, 1, 1, 2, dtype=torch.float64)
    x0_hat = torch.tensor([1.0, 3.0], dtype=torch.float64).reshape(1, 1, 1, 1, 2)
    weight = torch.tensor([0.5, 1.5], dtype=torch.float64).reshape(1, 1, 1, 1, 2)
    abar = torch.tensor([0.5], dtype=torch.float64)
    expected = (0.5 * 1 + 1.5 * 9) / 0.5 / 2
    assert float(diffusion_loss(x0_hat, x0, abar, weight)) == pytest.approx(expected)
    assert float(diffusion_loss(x0_hat, x0, abar, torch.ones_like(weight))) == pytest.approx(float(diffusion_loss(x0_hat, x0, abar)))


def test_weights_move_the_gradient_onto_the_mover_and_leave_the_drift_alone():
    z = disc_over_background()
    generator = torch.Generator().manual_seed(5)
    x0_hat = (z + 0.1 * torch.randn(z.shape, generator=generator, dtype=torch.float64)).requires_grad_(True)
    abar = torch.tensor([0.3], dtype=torch.float64)
    weights = moving_cell_weights(z, boost=20.0, threshold=1.0)
    _, plain_terms = lamo_objective(x0_hat, z, abar, torch.tensor([600]), drift_weight=0.4)
    _, weighted_terms = lamo_objective(x0_hat, z, abar, torch.tensor([600]), drift_weight=0.4, cell_weight=weights)
    assert weighted_terms["drift"] == pytest.approx(plain_terms["drift"])
    assert weighted_terms["diffusion"] != pytest.approx(plain_terms["diffusion"])
    plain, _ = lamo_objective(x0_hat, z, abar, torch.tensor([600]), drift_weight=0.0)
    weighted, _ = lamo_objective(x0_hat, z, abar, torch.tensor([600]), drift_weight=0.0, cell_weight=weights)
    (grad_plain,) = torch.autograd.grad(plain, x0_hat)
    (grad_weighted,) = torch.autograd.grad(weighted, x0_hat)
    mover = moving_cells(z, 1.0).expand_as(z) > 0.5

    def mover_share(grad):
        return float(grad[mover].abs().sum() / grad.abs().sum())

    # 5 of 180 cells move: a 21x weight (before normalising) lifts their share of the gradient ~15x
    assert mover_share(grad_weighted) > 5 * mover_share(grad_plain)
