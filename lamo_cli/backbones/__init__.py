"""Backbones: one interface (base.py), one implementation per model family."""

from lamo_cli.backbones.base import VideoFormat
from lamo_cli.backbones.cogvideox import CogVideoXBackbone, default_backbone, load_backbone, registered_backbones

__all__ = ["CogVideoXBackbone", "default_backbone", "VideoFormat", "load_backbone", "registered_backbones"]
