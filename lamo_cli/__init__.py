"""lamo: LaMo (self-supervised latent motion priors) for CogVideoX-class video diffusion models."""

__version__ = "0.1.0"
