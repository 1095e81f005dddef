"""Micro motion field f_phi: a prompt-conditioned per-frame CNN (METHOD.md section 2).

`MotionField` maps one clean latent frame `[N, C, H, W]` and a pooled prompt `[N, text_dim]` to the
predicted latent change `[N, C, H, W]`. It is 2D and per frame: no temporal mixing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lamo_cli.motion.drift import lagged_difference


@dataclass
class MotionFieldConfig:
    """Shape of the motion field. Defaults are the release architecture (~10.8M params at C=16, T5-XXL)."""

    latent_channels: int = 16
    width: int = 256
    depth: int = 8
    text_dim: int = 4096
    cond_dim: int = 128
    groups: int = 8
    se_hidden: int = 64

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"MotionFieldConfig.{field.name} must be an integer, got {value!r}")
            minimum = 0 if field.name == "depth" else 1
            if value < minimum:
                raise ValueError(f"MotionFieldConfig.{field.name} must be >= {minimum}, got {value}")
        if self.width % self.groups != 0:
            raise ValueError(
                f"MotionFieldConfig: groups={self.groups} must divide width={self.width} (GroupNorm); "
                "pick a width that is a multiple of groups"
            )

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MotionFieldConfig":
        """Build from a dict (e.g. parsed JSON metadata). Unknown keys are an error (catches typos)."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"MotionFieldConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**{key: int(value) if isinstance(value, float) and value.is_integer() else value
                      for key, value in values.items()})


class SqueezeExcitation(nn.Module):
    """Channel gate: global average pool -> Linear(width, hidden) -> ReLU -> Linear(hidden, width) -> sigmoid."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(width, hidden)
        self.expand = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(-2, -1))
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(squeezed))))
        return x * gate[:, :, None, None]


class FiLMResidualBlock(nn.Module):
    """conv3x3 -> GN -> FiLM (1+gamma)x+beta -> GELU -> conv3x3 -> GN -> SE -> + residual -> GELU."""

    def __init__(self, width: int, groups: int, cond_dim: int, se_hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(groups, width)
        self.film = nn.Linear(cond_dim, 2 * width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(groups, width)
        self.se = SqueezeExcitation(width, se_hidden)
        # Zero FiLM => gamma = beta = 0 => the block starts prompt-agnostic.
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(cond).chunk(2, dim=-1)
        h = self.norm1(self.conv1(x))
        h = (1.0 + gamma[:, :, None, None]) * h + beta[:, :, None, None]
        h = F.gelu(h)
        h = self.se(self.norm2(self.conv2(h)))
        return F.gelu(h + x)


class MotionField(nn.Module):
    """f_phi(z^(i), c) -> predicted latent change D z^(i), same shape as z^(i)."""

    def __init__(self, config: Optional[MotionFieldConfig] = None) -> None:
        super().__init__()
        self.config = config if config is not None else MotionFieldConfig()
        self.config.validate()
        cfg = self.config
        self.stem = nn.Conv2d(cfg.latent_channels, cfg.width, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList(
            FiLMResidualBlock(cfg.width, cfg.groups, cfg.cond_dim, cfg.se_hidden) for _ in range(cfg.depth)
        )
        self.head = nn.Conv2d(cfg.width, cfg.latent_channels, kernel_size=3, padding=1)
        # Zero head => the field starts by predicting no motion.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.cond_dim)
        # Learned pooled embedding standing in for "no prompt" (dropped or missing).
        self.null_prompt = nn.Parameter(torch.zeros(cfg.text_dim))

    def prompt_vectors(
        self, n: int, text_pooled: Optional[torch.Tensor], drop_prompt: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Pooled prompts `[n, text_dim]`, with the null prompt where missing or dropped."""
        null = self.null_prompt.unsqueeze(0).expand(n, -1)
        if text_pooled is None:
            return null
        if text_pooled.dim() != 2 or text_pooled.shape != (n, self.config.text_dim):
            raise ValueError(
                f"text_pooled must be [N={n}, text_dim={self.config.text_dim}], got {tuple(text_pooled.shape)}"
            )
        text = text_pooled.to(dtype=self.null_prompt.dtype)
        if drop_prompt is None:
            return text
        drop = drop_prompt.to(device=text.device, dtype=torch.bool).reshape(-1)
        if drop.numel() != n:
            raise ValueError(f"drop_prompt must have {n} entries, got {drop.numel()}")
        return torch.where(drop[:, None], null, text)

    def forward(
        self,
        z: torch.Tensor,
        text_pooled: Optional[torch.Tensor] = None,
        drop_prompt: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if z.dim() != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"MotionField expects latent frames [N, {self.config.latent_channels}, H, W], got {tuple(z.shape)}"
            )
        cond = F.gelu(self.text_proj(self.prompt_vectors(z.shape[0], text_pooled, drop_prompt)))
        h = F.gelu(self.stem(z))
        for block in self.blocks:
            h = block(h, cond)
        return self.head(h)


def pool_text(text_emb: torch.Tensor) -> torch.Tensor:
    """Mean over ALL tokens (padding included, no mask, as CogVideoX sees them): `[N, L, D] -> [N, D]`."""
    if text_emb.dim() != 3:
        raise ValueError(f"text embeddings must be [N, L, D], got {tuple(text_emb.shape)}")
    return text_emb.mean(dim=1)


def field_training_pairs(z: torch.Tensor, tau: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs `z^(i)`, targets `z^(i+tau) - z^(i)` and each pair's clip index, flattened b-major.

    z `[B, T, C, H, W]` -> inputs, targets `[B*(T-tau), C, H, W]`, batch_index `[B*(T-tau)]` (long);
    row `b*(T-tau) + i` is clip b, pair i.
    """
    if z.dim() != 5:
        raise ValueError(f"expected latent videos [B, T, C, H, W], got {tuple(z.shape)}")
    targets = lagged_difference(z, tau)
    batch, pairs = targets.shape[:2]
    inputs = z[:, :-tau].reshape(batch * pairs, *z.shape[2:])
    batch_index = torch.arange(batch, device=z.device).repeat_interleave(pairs)
    return inputs, targets.reshape(batch * pairs, *z.shape[2:]), batch_index


def field_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.3) -> tuple[torch.Tensor, dict[str, float]]:
    """`MSE(pred, target) + alpha * (1 - mean cos(pred, target))`, cosine over each pair's C*H*W vector.

    metrics: "mse" and "cos" (the mean cosine similarity, not 1 - cos). A zero vector has cosine 0
    (torch's eps guard), e.g. the zero-initialised field at step 0. Computed in (at least) float32.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    pred = pred.to(dtype)
    target = target.detach().to(dtype)
    mse = (pred - target).pow(2).mean()
    cosine = F.cosine_similarity(pred.reshape(pred.shape[0], -1), target.reshape(target.shape[0], -1), dim=1).mean()
    loss = mse + alpha * (1.0 - cosine)
    return loss, {"mse": float(mse.detach()), "cos": float(cosine.detach())}


def noise_augment(
    z: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    strength: float = 0.3,
    prob: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Per sample (dim 0), with probability `prob`: `z + strength * sqrt(1 - abar_t) * eps`, t uniform.

    No sqrt(abar_t) rescale of z. Random draws, in this order, on the generator's device (else z's):
    `apply = rand(N) < prob`, `t = randint(0, len(alphas_cumprod), (N,))`, `eps = randn(z.shape)`.
    `prob == 0` returns z unchanged without drawing.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"noise augmentation probability must be in [0, 1], got {prob}")
    if strength < 0:
        raise ValueError(f"noise augmentation strength must be >= 0, got {strength}")
    if prob == 0.0:
        return z
    n = z.shape[0]
    device = generator.device if generator is not None else z.device
    apply = torch.rand(n, generator=generator, device=device) < prob
    t = torch.randint(0, len(alphas_cumprod), (n,), generator=generator, device=device)
    eps = torch.randn(z.shape, generator=generator, device=device, dtype=torch.float32)
    table = torch.as_tensor(alphas_cumprod)
    abar = table[t.to(table.device)].to(device)
    sigma = (strength * (1.0 - abar.to(torch.float64)).clamp_min(0.0).sqrt()).to(torch.float32)
    shape = (n,) + (1,) * (z.dim() - 1)
    noise = (sigma.reshape(shape) * eps).to(device=z.device)
    noisy = z + noise.to(z.dtype)
    return torch.where(apply.to(z.device).reshape(shape), noisy, z)


def prompt_dropout_mask(
    n: int, prob: float = 0.1, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None
) -> torch.Tensor:
    """BoolTensor `[n]`, True where the prompt is replaced by the learned null prompt (`rand(n) < prob`)."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prompt dropout probability must be in [0, 1], got {prob}")
    draw_device = generator.device if generator is not None else device
    mask = torch.rand(n, generator=generator, device=draw_device) < prob
    return mask.to(device) if device is not None else mask
