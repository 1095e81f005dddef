"""Writing mp4 files (PyAV, which bundles FFmpeg; no system ffmpeg needed)."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

from lamo_cli.fileio import atomic_path


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0, crf: int = 12) -> None:
    """Write uint8 frames [F, H, W, 3] as H.264 mp4, atomically.

    yuv444p keeps full-resolution colour: the physics tracker identifies objects by colour, and
    4:2:0 chroma subsampling smears small discs. Odd sizes are padded by edge replication.
    """
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path, suffix=".mp4") as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width = frames.shape[2]
            stream.height = frames.shape[1]
            stream.pix_fmt = "yuv444p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            if frames.shape[1] * frames.shape[2] <= 128 * 128:
                # Small clips (the physics world's) without x264's SIMD code: with torch loaded in the same
                # process its assembly wrote different bytes for the same frames from call to call, and the
                # C code does not; at these sizes it costs nothing.
                stream.options = {**stream.options, "x264-params": "asm=0"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
