"""The backbone interface every stage talks to.

A backbone bundles a video VAE, a text encoder, a v-prediction denoiser and its scheduler, with the
frame and resolution rules that go with them. Stages never touch diffusers classes directly except
through this interface, so a new model family is one new module.
"""

from __future__ import annotations

from dataclasses import dataclass


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
