"""The LaMo core: pure torch (no files, no CLI, no diffusers)."""

from lamo_cli.motion.drift import (
    diffusion_loss,
    drift_loss,
    drift_loss_terms,
    lagged_difference,
    lamo_objective,
    macro_drift,
    moving_cell_weights,
    moving_cells,
    noise_weight,
    x0_from_v,
)
from lamo_cli.motion.field import (
    MotionField,
    MotionFieldConfig,
    field_loss,
    field_training_pairs,
    noise_augment,
    pool_text,
    prompt_dropout_mask,
)
from lamo_cli.motion.guidance import first_guided_step, guidance_loss, guide_v, in_guidance_window
from lamo_cli.motion.heatmap import (
    colorize,
    drift_heatmap,
    field_heatmap,
    minmax_normalise,
    most_moving_pair,
    pearson_r,
    upsample,
)

__all__ = [
    "MotionField",
    "MotionFieldConfig",
    "colorize",
    "diffusion_loss",
    "drift_heatmap",
    "drift_loss",
    "drift_loss_terms",
    "field_heatmap",
    "field_loss",
    "field_training_pairs",
    "first_guided_step",
    "guidance_loss",
    "guide_v",
    "in_guidance_window",
    "lagged_difference",
    "lamo_objective",
    "macro_drift",
    "minmax_normalise",
    "most_moving_pair",
    "moving_cell_weights",
    "moving_cells",
    "noise_augment",
    "noise_weight",
    "pearson_r",
    "pool_text",
    "prompt_dropout_mask",
    "upsample",
    "x0_from_v",
]
