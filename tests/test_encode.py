"""`lamo encode` end to end on the tiny-random backbone: round trip, reruns, kill + rerun, wrong
backbone, bad input through the CLI, and a 2-process torchrun encode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from lamo_cli.backbones import load_backbone
from lamo_cli.cli import app
from lamo_cli.data.cache import LatentCache, list_shards, prompt_hash
from lamo_cli.data.video import read_clip
from lamo_cli.errors import LamoError
from lamo_cli.stages.encode import encode

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny-random", device="cpu")


def raw_ids(cache_root) -> list[str]:
    """Every id in every complete shard, duplicates included (the reader would hide them)."""
    return [i for path in list_shards(cache_root, "latents") for i in pq.read_table(path, columns=["id"]).column("id").to_pylist()]


def run_cli(*args: str):
    result = runner.invoke(app, ["encode", *map(str, args), "--no-progress"])
    assert "Traceback" not in result.output, result.output
    return result


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------- round trip
def test_round_trip_is_bit_exact_with_dedup_text_and_empty_prompt(tmp_path, make_clips, tiny):
    paths = make_clips(tmp_path, 2, frames=40, size=(72, 96), fps=16.0)
    paths[1].with_suffix(".txt").write_text(paths[0].with_suffix(".txt").read_text())  # shared caption
    out = tmp_path / "cache"
    summary = encode([tmp_path / "videos"], backbone=tiny, out=out, shard_size=1, progress=False)
    assert (summary.written, summary.already_done, summary.skipped) == (2, 0, [])
    assert summary.bytes_written == sum(p.stat().st_size for p in list_shards(out, "latents") + list_shards(out, "text"))

    cache = LatentCache(out)
    assert len(cache) == 2 and cache.info.latent_shape == (5, 16, 8, 8)
    assert cache.info.latent_fingerprint == tiny.latent_fingerprint() and cache.info.scaling_factor == tiny.scaling_factor
    cache.check_fingerprint(tiny.latent_fingerprint(), "--backbone tiny-random")
    for index, path in enumerate(paths):
        record = cache.record(index)
        assert record.source_path == str(path.resolve())
        assert record.frame_indices == tuple(range(0, 33, 2)) and record.fps == pytest.approx(8.0)  # 16 fps -> stride 2
        clip = read_clip(path, 17, 64, 64, 8.0)  # independent read, then the backbone by hand
        mean, logvar = tiny.encode_video(clip.frames[None])
        assert torch.equal(cache.latent(index), mean[0])
        assert torch.equal(cache.logvar(index), logvar[0])
        caption = path.with_suffix(".txt").read_text().strip()
        assert cache.caption(index) == caption
        assert torch.equal(cache.text_embedding(cache.prompt_hash(index)), tiny.encode_text([caption])[0])
    # one shared caption + the empty prompt, each once
    assert cache.info.num_prompts == 2 and "" in cache.prompts().values()
    assert torch.equal(cache.empty_text_embedding(), tiny.encode_text([""])[0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backbone"] == "tiny-random" and manifest["latent_fingerprint"] == tiny.latent_fingerprint()
    assert manifest["latent_shape"] == [5, 16, 8, 8] and manifest["video_format"]["num_frames"] == 17
    assert manifest["counts"]["clips"] == 2 and manifest["counts"]["prompts"] == 2 and manifest["schema_version"] == 1


def test_rerun_skips_done_clips_and_adds_new_ones(tmp_path, make_clips, tiny):
    make_clips(tmp_path, 2, frames=17, size=64)
    out = tmp_path / "cache"
    first = encode([tmp_path / "videos"], backbone=tiny, out=out, progress=False)
    shards = list_shards(out, "latents")
    again = encode([tmp_path / "videos"], backbone=tiny, out=out, progress=False)
    assert (first.written, again.written, again.already_done) == (2, 0, 2)
    assert list_shards(out, "latents") == shards and not again.nothing_done and again.stale_captions == []
    # a caption edited after encoding is reported (the cache keeps the old one), not silently used
    caption_file = sorted((tmp_path / "videos").glob("*.txt"))[0]
    caption_file.write_text(caption_file.read_text() + " edited")
    edited = encode([tmp_path / "videos"], backbone=tiny, out=out, progress=False)
    assert edited.already_done == 2 and edited.stale_captions == [str(caption_file.with_suffix(".mp4"))]
    [longer] = make_clips(tmp_path, 1, frames=20, size=64, start=2)
    third = encode([tmp_path / "videos"], backbone=tiny, out=out, progress=False)
    assert (third.written, third.already_done) == (1, 2)
    # another start frame samples other frames: another clip of the same video
    fourth = encode([longer], backbone=tiny, out=out, progress=False, start_frame=2)
    assert (fourth.written, fourth.already_done) == (1, 0)
    fifth = encode([tmp_path / "videos" / "clip000.mp4"], backbone=tiny, out=out, progress=False, start_frame=1)
    assert fifth.written == 0 and fifth.nothing_done and "too short: 17 frames" in fifth.skipped[0][1]
    ids = raw_ids(out)
    assert len(ids) == len(set(ids)) == 4
    assert sorted(LatentCache(out).record(i).frame_indices[0] for i in range(4)) == [0, 0, 0, 2]


class _KilledAfterFirstShard:
    """The tiny backbone, except the VAE call after the first shard is on disk dies."""

    def __init__(self, inner, out, die_on_call: int, wait_for_shard: bool = True):
        self.inner, self.out, self.die_on_call, self.calls = inner, out, die_on_call, 0
        self.wait_for_shard = wait_for_shard

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_video(self, frames):
        self.calls += 1
        if self.calls == self.die_on_call:
            deadline = time.monotonic() + 30
            while self.wait_for_shard and not list_shards(self.out, "latents") and time.monotonic() < deadline:
                time.sleep(0.02)
            raise RuntimeError("simulated kill")
        return self.inner.encode_video(frames)


def test_killed_encode_rerun_has_every_clip_exactly_once(tmp_path, make_clips, tiny):
    make_clips(tmp_path, 4, frames=17, size=64)
    out = tmp_path / "cache"
    dying = _KilledAfterFirstShard(tiny, out, die_on_call=3)
    with pytest.raises(RuntimeError, match="simulated kill"):
        encode([tmp_path / "videos"], backbone=dying, out=out, shard_size=2, progress=False)
    assert len(raw_ids(out)) == 2  # the first shard survived, nothing else
    summary = encode([tmp_path / "videos"], backbone=tiny, out=out, shard_size=2, progress=False)
    assert (summary.written, summary.already_done) == (2, 2)
    ids = raw_ids(out)
    assert len(ids) == len(set(ids)) == 4 and len(LatentCache(out)) == 4


def test_an_error_keeps_the_clips_already_encoded(tmp_path, make_clips, tiny):
    make_clips(tmp_path, 3, frames=17, size=64)
    out = tmp_path / "cache"
    failing = _KilledAfterFirstShard(tiny, out, die_on_call=2, wait_for_shard=False)  # no shard is full yet
    with pytest.raises(RuntimeError, match="simulated kill"):
        encode([tmp_path / "videos"], backbone=failing, out=out, shard_size=4, progress=False)
    assert len(raw_ids(out)) == 1  # the finished clip was flushed as a partial shard
    summary = encode([tmp_path / "videos"], backbone=tiny, out=out, shard_size=4, progress=False)
    assert (summary.written, summary.already_done) == (2, 1)
    assert len(set(raw_ids(out))) == len(raw_ids(out)) == 3


def test_batches_and_shard_sizes(tmp_path, make_clips, tiny):
    make_clips(tmp_path, 3, frames=17, size=64)
    single, batched = tmp_path / "single", tmp_path / "batched"
    encode([tmp_path / "videos"], backbone=tiny, out=single, progress=False)
    summary = encode([tmp_path / "videos"], backbone=tiny, out=batched, batch_size=2, shard_size=2, keep_logvar=False, progress=False)
    assert summary.written == 3
    rows_per_shard = sorted(pq.ParquetFile(p).metadata.num_rows for p in list_shards(batched, "latents"))
    assert rows_per_shard == [1, 2]  # a full shard, then the flush at the end
    a, b = LatentCache(single), LatentCache(batched)
    assert a.ids() == b.ids()
    # Batching changes float32 rounding inside the VAE's GroupNorm (flat synthetic frames have tiny
    # variances): up to ~1e-3 here, against latents of mean magnitude ~0.25; a swapped clip is ~1.
    torch.testing.assert_close(b.all_latents(), a.all_latents(), rtol=0, atol=3e-3)
    assert b.logvar(0) is None and a.logvar(0) is not None


def test_captions_from_metadata_files(tmp_path, make_clips, tiny):
    paths = make_clips(tmp_path, 2, frames=17, size=64, captions=False)
    (tmp_path / "videos" / "metadata.jsonl").write_text(json.dumps({"path": paths[0].name, "caption": "from jsonl"}) + "\n")
    csv_file = tmp_path / "extra.csv"
    csv_file.write_text(f"path,caption\nvideos/{paths[1].name},from csv\n")
    summary = encode([tmp_path / "videos"], backbone=tiny, out=tmp_path / "cache", captions=csv_file, progress=False)
    assert summary.written == 2
    cache = LatentCache(tmp_path / "cache")
    assert [cache.caption(i) for i in range(2)] == ["from jsonl", "from csv"]


def test_other_backbone_cache_is_refused(tmp_path, make_clips, tiny, monkeypatch):
    make_clips(tmp_path, 1, frames=17, size=64)
    out = tmp_path / "cache"
    encode([tmp_path / "videos"], backbone=tiny, out=out, progress=False)
    monkeypatch.setattr(type(tiny), "latent_fingerprint", lambda self: "0123456789abcdef")
    with pytest.raises(LamoError, match="use another --out folder or the same backbone") as info:
        encode([tmp_path / "videos"], backbone=tiny, out=out, progress=False)
    assert str(out) in str(info.value) and "0123456789abcdef" in str(info.value)


# ---------------------------------------------------------------- CLI and bad input
def test_cli_encodes_and_lists_every_bad_input(tmp_path, make_clips):
    videos = tmp_path / "videos"
    [good] = make_clips(tmp_path, 1, frames=17, size=64)
    make_clips(tmp_path, 1, frames=9, size=64, prefix="short")
    make_clips(tmp_path, 1, frames=17, size=64, prefix="nocaption", captions=False)
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "text.mp4").write_text("definitely not a video\n" * 20)
    (videos / "truncated.mp4").write_bytes(good.read_bytes()[:1500])
    for name in ("zero", "text", "truncated"):
        (videos / f"{name}.txt").write_text("caption")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    out = tmp_path / "cache"

    result = run_cli(videos, notes, "--out", out)
    assert result.exit_code == 0, result.output
    assert "encoded 1 clips" in result.output and "clips/s" in result.output
    expected = {
        "short000.mp4": "too short: 9 frames",
        "nocaption000.mp4": "no caption",
        "zero.mp4": "empty file",
        "text.mp4": "not a readable video",
        "truncated.mp4": "",  # unreadable: reason depends on where the file was cut
        "notes.txt": "not a video file",
    }
    skipped = {line.split("skipped ", 1)[1].split(":", 1)[0]: line for line in result.output.splitlines() if line.strip().startswith("skipped ")}
    assert {os.path.basename(path) for path in skipped} == set(expected)
    for path, line in skipped.items():
        assert expected[os.path.basename(path)] in line
    assert len(LatentCache(out)) == 1

    again = run_cli(videos, "--out", out, "--allow-empty-caption")
    assert again.exit_code == 0, again.output
    cache = LatentCache(out)
    assert len(cache) == 2 and "" in [cache.caption(i) for i in range(2)]
    assert cache.prompt_hash(1 if cache.caption(1) == "" else 0) == prompt_hash("")


def test_cli_nothing_encodable_exits_non_zero(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "zero.txt").write_text("a caption")
    result = run_cli(bad, "--out", tmp_path / "cache")
    assert result.exit_code == 2
    assert len(error_lines(result)) == 1 and "nothing was encoded" in error_lines(result)[0]
    assert "zero.mp4: empty file" in result.output


@pytest.mark.parametrize("case", ["missing", "empty-folder", "no-args", "captions-missing", "batch-size", "out-is-file", "out-not-cache"])
def test_cli_bad_requests_are_one_line_errors(tmp_path, make_clips, case):
    make_clips(tmp_path, 1, frames=17, size=64)
    videos, out = tmp_path / "videos", tmp_path / "cache"
    (tmp_path / "empty").mkdir()
    args, expected = {
        "missing": ([tmp_path / "nope", "--out", out], "nope does not exist"),
        "empty-folder": ([tmp_path / "empty", "--out", out], "no video files"),
        "no-args": ([], "give at least one video"),
        "captions-missing": ([videos, "--captions", tmp_path / "c.csv", "--out", out], "c.csv: no such file"),
        "batch-size": ([videos, "--batch-size", "0", "--out", out], "--batch-size 0"),
        "out-is-file": ([videos, "--out", videos / "clip000.txt"], "is a file"),
        "out-not-cache": ([videos, "--out", videos], "not a lamo cache"),
    }[case]
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and expected in lines[0], result.output
    assert not out.exists() or case == "out-not-cache"


def test_cli_refuses_a_cache_of_another_backbone(tmp_path, make_clips, tiny):
    make_clips(tmp_path, 1, frames=17, size=64)
    out = tmp_path / "cache"
    assert run_cli(tmp_path / "videos", "--out", out).exit_code == 0
    other = load_backbone("tiny-random", device="cpu")
    with torch.no_grad():
        next(iter(other.vae.parameters())).add_(0.01)
    folder = other.save(tmp_path / "perturbed")
    result = run_cli(tmp_path / "videos", "--out", out, "--backbone", folder)
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert str(out) in line and "was built by backbone tiny-random" in line and "use another --out folder" in line
    assert len(LatentCache(out)) == 1


# ---------------------------------------------------------------- several processes
def test_torchrun_two_processes_write_every_clip_once(tmp_path, make_clips):
    make_clips(tmp_path, 5, frames=17, size=64)
    out = tmp_path / "cache"
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "lamo_cli.cli", "encode", str(tmp_path / "videos"), "--out", str(out), "--shard-size", "2", "--no-progress"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert output.count("encoded 5 clips") == 1 and "on 2 processes" in output  # rank 0 reports the total
    ids = raw_ids(out)
    assert len(ids) == len(set(ids)) == 5
    writers = {p.name.split("-")[0] for p in list_shards(out, "latents")}
    assert writers == {"rank0", "rank1"}
    empty_rows = [h for p in list_shards(out, "text") for h in pq.read_table(p, columns=["prompt_hash"]).column("prompt_hash").to_pylist() if h == prompt_hash("")]
    assert len(empty_rows) == 2  # each rank wrote it; the reader keeps one
    cache = LatentCache(out)
    assert len(cache) == 5 and cache.info.num_prompts == 1 + 5 and cache.info.num_text_shards >= 2
    assert json.loads((out / "manifest.json").read_text())["counts"]["clips"] == 5
