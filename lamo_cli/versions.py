"""Library versions recorded beside every artifact (reproducibility: what produced this file)."""

from __future__ import annotations

import platform
from importlib import metadata

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "numpy")


def library_versions() -> dict[str, str]:
    import torch

    import lamo_cli

    versions = {"python": platform.python_version(), "lamo": lamo_cli.__version__}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["torch_cuda"] = str(torch.version.cuda)
    return versions
