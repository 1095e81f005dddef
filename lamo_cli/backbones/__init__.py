"""Backbones: one interface (base.py), one implementation per model family."""

from lamo_cli.backbones.base import VideoFormat
from lamo_cli.backbones.cogvideox import CogVideoXBackbone, load_backbone, registered_backbones

__all__ = ["CogVideoXBackbone", "VideoFormat", "load_backbone", "registered_backbones"]
