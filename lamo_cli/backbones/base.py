"""The backbone interface every stage talks to.

A backbone bundles a video VAE, a text encoder, a v-prediction denoiser and its scheduler, with the
frame and resolution rules that go with them. Stages never touch diffusers classes directly except
through this interface, so a new model family is one new module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class VideoFormat:
    """Pixel clip shape the backbone is trained on, and the latent grid it maps to."""

    num_frames: int  # pixel frames per clip, 4k+1 (8k+1 decodes back exactly)
    height: int
    width: int
    fps: float
    temporal_compression: int
    spatial_compression: int

    @property
    def latent_frames(self) -> int:
        return (self.num_frames - 1) // self.temporal_compression + 1

    @property
    def latent_height(self) -> int:
        return self.height // self.spatial_compression

    @property
    def latent_width(self) -> int:
        return self.width // self.spatial_compression

    def pixel_index_of_latent(self, latent_index: int) -> int:
        """Latent frame 0 covers pixel frame 0 alone; latent frame t>0 ends at pixel 4t."""
        return latent_index * self.temporal_compression


@dataclass
class TrainingDefaults:
    """Published (or, for tiny models, chosen) fine-tuning settings; recipes can override."""

    lora_rank: int = 128
    lora_alpha: int = 64
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    learning_rate: float = 5e-5
    warmup_steps: int = 200
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    mixed_precision: str = "bf16"  # on GPU; CPU always runs float32
    sampler: str = "ddim"  # "ddim" (2B) or "dpm" (5B)
    guidance_scale_cfg: float = 6.0
    use_dynamic_cfg: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
