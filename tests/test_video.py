"""Video input: discovery, captions (txt / csv / jsonl), frame sampling, resize + crop, decord reading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import clip_frames

from lamo_cli.data.video import (
    CaptionIndex,
    VideoSkip,
    discover_videos,
    frame_stride,
    open_video,
    read_clip,
    read_metadata_file,
    resize_center_crop,
    sample_frame_indices,
)
from lamo_cli.errors import LamoError


# ---------------------------------------------------------------- discovery
def test_discovery_is_recursive_sorted_and_ignores_non_videos(tmp_path, make_clips):
    make_clips(tmp_path, 2, 9, 32, folder="data/b")
    make_clips(tmp_path, 1, 9, 32, folder="data/a", prefix="z")
    (tmp_path / "data" / "notes.md").write_text("hello")
    (tmp_path / "data" / "._clip000.mp4").write_bytes(b"\0" * 10)  # macOS resource fork
    (tmp_path / "data" / ".hidden").mkdir()
    (tmp_path / "data" / ".hidden" / "x.mp4").write_bytes(b"")
    (tmp_path / "data" / "UPPER.MOV").write_bytes(b"not really")

    videos, not_videos = discover_videos([tmp_path / "data", tmp_path / "data" / "b" / "clip000.mp4"])
    names = [p.relative_to(tmp_path / "data").as_posix() for p in videos]
    assert names == ["UPPER.MOV", "a/z000.mp4", "b/clip000.mp4", "b/clip001.mp4"]  # duplicate dropped
    assert not_videos == []
    assert all(p.is_absolute() for p in videos)


def test_explicit_non_video_file_is_returned_for_skipping(tmp_path, make_clips):
    [clip] = make_clips(tmp_path, 1, 9, 32)
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    videos, not_videos = discover_videos([clip, notes])
    assert videos == [clip.resolve()] and not_videos == [notes.resolve()]


def test_missing_path_and_no_videos_are_one_line_errors(tmp_path):
    with pytest.raises(LamoError, match="nope.mp4 does not exist"):
        discover_videos([tmp_path / "nope.mp4"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no videos here")
    with pytest.raises(LamoError, match="no video files") as info:
        discover_videos([empty])
    assert str(empty) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LamoError, match="no video files"):
        discover_videos([empty / "readme.txt"])


# ---------------------------------------------------------------- captions
def test_sidecar_caption_and_missing_caption(tmp_path, make_clips):
    a, b = make_clips(tmp_path, 2, 9, 32)
    b.with_suffix(".txt").write_text("   \n")  # blank counts as missing
    index = CaptionIndex.build([tmp_path / "videos"])
    assert index.lookup(a) == "a red square moving slowly to the right"
    assert index.lookup(b) is None


def test_csv_captions_resolve_relative_to_the_metadata_file(tmp_path, make_clips):
    a, b = make_clips(tmp_path, 2, 9, 32, captions=False)
    meta = tmp_path / "meta" / "captions.csv"
    meta.parent.mkdir()
    meta.write_text('path,caption\n../videos/clip000.mp4,"a ball, red"\n' f"{b},second\n")
    table = read_metadata_file(meta)
    assert table == {a.resolve(): "a ball, red", b.resolve(): "second"}
    index = CaptionIndex.build([tmp_path / "videos"], captions_file=meta)
    assert index.lookup(a) == "a ball, red" and index.lookup(b) == "second"


def test_jsonl_metadata_is_discovered_in_a_given_folder_and_beats_sidecars(tmp_path, make_clips):
    a, b = make_clips(tmp_path, 2, 9, 32)  # sidecars exist too
    lines = [{"file_name": "clip000.mp4", "text": "from metadata"}, {"path": "missing.mp4", "caption": "x"}]
    (tmp_path / "videos" / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    index = CaptionIndex.build([tmp_path / "videos"])
    assert index.lookup(a) == "from metadata"
    assert index.lookup(b) == "a green square moving steadily to the right"  # falls back to its sidecar
    # an explicit --captions file wins over both
    explicit = tmp_path / "explicit.jsonl"
    explicit.write_text(json.dumps({"path": str(a), "caption": "explicit"}) + "\n")
    assert CaptionIndex.build([tmp_path / "videos"], explicit).lookup(a) == "explicit"


def test_bad_caption_files_are_one_line_errors(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"path": "a.mp4", "caption": "ok"}\n{not json\n')
    with pytest.raises(LamoError, match="line 2"):
        read_metadata_file(bad_json)
    no_columns = tmp_path / "cols.csv"
    no_columns.write_text("video_id,label\n1,2\n")
    with pytest.raises(LamoError, match="needs a path"):
        read_metadata_file(no_columns)
    with pytest.raises(LamoError, match="no such file"):
        read_metadata_file(tmp_path / "absent.csv")
    other = tmp_path / "captions.yaml"
    other.write_text("a: b\n")
    with pytest.raises(LamoError, match="unknown format"):
        read_metadata_file(other)


# ---------------------------------------------------------------- frame sampling
@pytest.mark.parametrize(
    "source_fps, stride",
    [(24.0, 3), (30.0, 4), (25.0, 3), (20.0, 3), (16.0, 2), (8.0, 1), (4.0, 1), (60.0, 8), (0.0, 1)],
)
def test_stride_gives_the_fps_closest_to_the_target(source_fps, stride):
    assert frame_stride(source_fps, 8.0) == stride
    if source_fps > 8:  # brute force over all strides agrees
        best = min(range(1, 20), key=lambda s: abs(source_fps / s - 8.0))
        assert abs(source_fps / stride - 8.0) == pytest.approx(abs(source_fps / best - 8.0))


def test_sample_frame_indices_known_cases():
    assert sample_frame_indices(60, 24.0, 17, 8.0) == list(range(0, 49, 3))
    assert sample_frame_indices(49, 24.0, 17, 8.0) == [3 * k for k in range(17)]  # exactly enough
    assert sample_frame_indices(48, 24.0, 17, 8.0) is None  # one short
    assert sample_frame_indices(100, 24.0, 17, 8.0, start=10) == [10 + 3 * k for k in range(17)]
    assert sample_frame_indices(17, 8.0, 17, 8.0) == list(range(17))
    assert sample_frame_indices(16, 8.0, 17, 8.0) is None


# ---------------------------------------------------------------- resize / crop
def test_crop_only_when_the_short_side_already_matches():
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 128, 3), dtype=np.uint8)
    out = resize_center_crop(frames, 64, 64)
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, frames[:, :, 32:96])


def test_downscale_then_center_crop_known_case():
    # 128 x 256, left half red, right half blue -> scale 0.5 -> 64 x 128 -> centre columns 32..95.
    frames = np.zeros((2, 128, 256, 3), dtype=np.uint8)
    frames[:, :, :128] = (255, 0, 0)
    frames[:, :, 128:] = (0, 0, 255)
    out = resize_center_crop(frames, 64, 64)
    assert out.shape == (2, 64, 64, 3)
    assert (out[:, :, :30] == (255, 0, 0)).all()  # away from the edge the colours are exact
    assert (out[:, :, 34:] == (0, 0, 255)).all()


@pytest.mark.parametrize("src, target", [((90, 160), (64, 64)), ((32, 32), (64, 64)), ((100, 100), (48, 80)), ((480, 720), (64, 96))])
def test_resize_crop_shapes_and_constant_colour(src, target):
    frames = np.full((2, *src, 3), (10, 120, 250), dtype=np.uint8)
    out = resize_center_crop(frames, *target)
    assert out.shape == (2, *target, 3)
    assert (out == (10, 120, 250)).all()


# ---------------------------------------------------------------- reading
def test_read_clip_samples_resizes_and_matches_the_source(tmp_path, make_clips):
    [path] = make_clips(tmp_path, 1, frames=60, size=(96, 128), fps=24.0)
    clip = read_clip(path, num_frames=17, height=64, width=64, target_fps=8.0)
    assert clip.frame_indices == list(range(0, 49, 3))
    assert clip.source_fps == pytest.approx(24.0) and clip.clip_fps == pytest.approx(8.0)
    assert clip.source_num_frames == 60
    assert clip.frames.shape == (17, 64, 64, 3) and clip.frames.dtype == np.uint8
    expected = resize_center_crop(clip_frames(0, 60, (96, 128))[clip.frame_indices], 64, 64)
    error = np.abs(clip.frames.astype(np.int16) - expected.astype(np.int16)).mean()
    assert error < 4.0, error  # H.264 at crf 12 is close to lossless


def test_bad_files_raise_video_skip(tmp_path, make_clips):
    [good] = make_clips(tmp_path, 1, 17, 32)
    data = good.read_bytes()
    cases = {
        "zero.mp4": b"",
        "text.mp4": b"this is not a video at all\n" * 10,
        "truncated.mp4": data[: len(data) // 2],
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(VideoSkip):
            read_clip(path, 17, 32, 32, 8.0)
    with pytest.raises(VideoSkip, match="empty file"):
        open_video(tmp_path / "zero.mp4")
    with pytest.raises(VideoSkip, match="too short: 17 frames"):
        read_clip(good, 33, 32, 32, 8.0)
