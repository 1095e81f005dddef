"""Latent cache format: cells, shard writer, reader, dedup, dataset, errors (no backbone needed)."""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lamo_cli.data.cache import (
    CacheIdentity,
    ClipRow,
    LatentCache,
    LatentDataset,
    ShardWriter,
    TextRow,
    cache_counts,
    cell_to_tensor,
    check_cache_folder,
    clip_id,
    list_shards,
    prompt_hash,
    read_identity,
    remove_stale_temp_files,
    tensor_to_cell,
    write_manifest,
)
from lamo_cli.errors import LamoError

SHAPE = (3, 4, 2, 2)
IDENTITY = CacheIdentity(
    backbone="unit", latent_fingerprint="f" * 16, scaling_factor=0.7, video_format={"num_frames": 9}, latent_shape=SHAPE
)


def make_row(k: int, caption: str, logvar: bool = True) -> ClipRow:
    gen = torch.Generator().manual_seed(k)
    path = f"/data/v{k:02d}.mp4"
    frames = list(range(0, 9))
    return ClipRow(
        id=clip_id(path, frames, IDENTITY.latent_fingerprint), source_path=path, caption=caption, frame_indices=frames,
        fps=8.0, source_fps=24.0, source_num_frames=40, height=16, width=16,
        latent=torch.randn(SHAPE, generator=gen), logvar=torch.randn(SHAPE, generator=gen) if logvar else None,
    )


def make_text(prompt: str) -> TextRow:
    gen = torch.Generator().manual_seed(len(prompt))
    return TextRow(prompt, torch.randn(6, 5, generator=gen))


@pytest.fixture
def cache_dir(tmp_path):
    """Two shards from 'rank 0' and one from 'rank 1'; clip 1 and the empty prompt appear twice."""
    root = tmp_path / "cache"
    rows = [make_row(0, "a"), make_row(1, "b"), make_row(2, "a", logvar=False), make_row(3, "")]
    writer0, writer1 = ShardWriter(root, IDENTITY, rank=0), ShardWriter(root, IDENTITY, rank=1)
    writer0.write(rows[:2], [make_text(""), make_text("a"), make_text("b")])
    writer0.write(rows[2:3], [])
    writer1.write([rows[3], make_row(1, "b")], [make_text(""), make_text("b")])
    write_manifest(root, IDENTITY)
    return root, rows


def test_prompt_hash_is_sha256_prefix():
    assert prompt_hash("") == "e3b0c44298fc1c14"
    assert prompt_hash("a ball") == hashlib.sha256("a ball".encode()).hexdigest()[:16]
    assert prompt_hash("é") == hashlib.sha256("é".encode("utf-8")).hexdigest()[:16]


def test_clip_id_depends_on_path_frames_and_fingerprint():
    base = clip_id("/x/a.mp4", [0, 2, 4], "fp")
    assert base == clip_id("/x/../x/a.mp4", (0, 2, 4), "fp")  # resolved path
    assert len({base, clip_id("/x/b.mp4", [0, 2, 4], "fp"), clip_id("/x/a.mp4", [0, 3, 6], "fp"), clip_id("/x/a.mp4", [0, 2, 4], "fq")}) == 4


def test_cells_are_float32_little_endian_and_round_trip_exactly():
    tensor = torch.randn(2, 3, 4, dtype=torch.float64)
    data, shape, dtype = tensor_to_cell(tensor)
    assert shape == [2, 3, 4] and dtype == "float32"
    assert data == np.asarray(tensor.numpy(), dtype="<f4").tobytes()
    back = cell_to_tensor(data, shape, dtype)
    assert back.dtype == torch.float32 and torch.equal(back, tensor.float())
    with pytest.raises(LamoError, match="not supported"):
        cell_to_tensor(data, shape, "float16")
    with pytest.raises(LamoError, match="does not match shape"):
        cell_to_tensor(data, [5, 5], "float32")


def test_round_trip_dedups_clips_and_prompts(cache_dir):
    root, rows = cache_dir
    cache = LatentCache(root)
    assert len(cache) == 4 and cache.info.num_clips == 4
    assert cache.info.latent_shape == SHAPE and cache.info.scaling_factor == 0.7
    assert cache.info.latent_fingerprint == "f" * 16 and cache.info.backbone == "unit"
    # ordered by source path, independent of shard names
    assert cache.ids() == [row.id for row in rows]
    for index, row in enumerate(rows):
        assert torch.equal(cache.latent(index), row.latent)
        assert cache.caption(index) == row.caption and cache.prompt_hash(index) == prompt_hash(row.caption)
        logvar = cache.logvar(index)
        assert (logvar is None) == (row.logvar is None)
        if logvar is not None:
            assert torch.equal(logvar, row.logvar)
    assert cache.record(0).frame_indices == tuple(range(9)) and cache.record(0).fps == 8.0
    # text: 3 distinct prompts although "" and "b" were written twice
    assert cache.info.num_prompts == 3 and set(cache.prompts().values()) == {"", "a", "b"}
    assert torch.equal(cache.text_embedding(prompt_hash("a")), make_text("a").embedding)
    assert torch.equal(cache.empty_text_embedding(), make_text("").embedding)
    stacked = cache.all_latents()
    assert stacked.shape == (4, *SHAPE) and torch.equal(stacked, torch.stack([r.latent for r in rows]))
    # raw shards really hold the duplicates the reader dropped
    raw_ids = [i for p in list_shards(root, "latents") for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    assert len(raw_ids) == 5 and len(set(raw_ids)) == 4
    assert cache_counts(root)["clips"] == 4 and cache_counts(root)["prompts"] == 3


def test_shard_columns_follow_the_schema(cache_dir):
    root, rows = cache_dir
    table = pq.read_table(list_shards(root, "latents")[0])
    parquet = pq.ParquetFile(list_shards(root, "latents")[0])
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    assert parquet.num_row_groups == table.num_rows  # one clip per row group: random access reads one clip
    first = table.slice(0, 1).to_pylist()[0]
    expected_columns = {
        "id", "source_path", "caption", "prompt_hash", "frame_indices", "fps", "source_fps", "source_num_frames",
        "height", "width", "num_frames", "latent_bytes", "latent_shape", "latent_dtype", "logvar_bytes",
        "logvar_shape", "logvar_dtype", "scaling_factor", "backbone", "latent_fingerprint", "schema_version",
    }
    assert set(first) == expected_columns
    assert first["num_frames"] == 9 and first["latent_shape"] == list(SHAPE) and first["latent_dtype"] == "float32"
    assert first["scaling_factor"] == 0.7 and first["schema_version"] == 1
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["latent_fingerprint"] == "f" * 16 and manifest["counts"]["clips"] == 4
    assert manifest["latent_shape"] == list(SHAPE) and manifest["scaling_factor"] == 0.7


def test_dataset_scales_and_preload_matches_lazy(cache_dir):
    root, rows = cache_dir
    cache = LatentCache(root)
    eager, lazy, raw = LatentDataset(cache), LatentDataset(cache, preload=False), LatentDataset(cache, scaled=False)
    for i in range(len(cache)):
        item = eager[i]
        assert item["index"] == i
        assert torch.equal(item["latent"], rows[i].latent * 0.7)
        assert torch.equal(lazy[i]["latent"], item["latent"]) and torch.equal(raw[i]["latent"], rows[i].latent)
        assert torch.equal(item["text"], make_text(rows[i].caption).embedding)
    batch = next(iter(torch.utils.data.DataLoader(eager, batch_size=3)))
    assert batch["latent"].shape == (3, *SHAPE) and batch["text"].shape == (3, 6, 5)


def test_dataset_batch_matches_items_with_caption_dropout(cache_dir):
    """`batch` (one gather, the training path) gives what stacking the items gives, with the dropped
    captions replaced by the empty prompt; also after `to` (the device path, here on the CPU) and
    for a cache read lazily."""
    root, rows = cache_dir
    cache = LatentCache(root)
    empty = torch.full((6, 5), -1.0)
    indices, drop = [2, 0, 3, 2], torch.tensor([False, True, False, True])
    expected_latents = torch.stack([rows[i].latent * 0.7 for i in indices])
    expected_text = torch.stack([empty if d else make_text(rows[i].caption).embedding for i, d in zip(indices, drop.tolist())])
    moved = LatentDataset(cache)
    assert moved.to(torch.device("cpu")) is True
    for dataset in (LatentDataset(cache), LatentDataset(cache, preload=False), moved):
        latents, text = dataset.batch(indices, empty, drop)
        assert torch.equal(latents, expected_latents) and torch.equal(text, expected_text)
    assert LatentDataset(cache, preload=False).to(torch.device("cpu")) is False  # nothing preloaded to move
    assert LatentDataset(cache).to(torch.device("cpu"), max_bytes=16) is False  # does not fit


def test_manifest_can_be_derived_from_shards_and_temp_files_are_ignored(cache_dir):
    root, rows = cache_dir
    (root / "manifest.json").unlink()
    (root / "latents" / ".rank0-dead.parquet.x.parquet.tmp").write_bytes(b"half a shard")
    cache = LatentCache(root)
    assert len(cache) == 4 and cache.info.backbone == "unit" and cache.info.latent_shape == SHAPE
    assert read_identity(root) == IDENTITY


def test_fingerprint_check_names_cache_and_option(cache_dir):
    root, _ = cache_dir
    cache = LatentCache(root)
    cache.check_fingerprint("f" * 16, "--backbone unit")
    with pytest.raises(LamoError) as info:
        cache.check_fingerprint("0" * 16, "--backbone tiny-random")
    message = str(info.value)
    assert str(root) in message and "--backbone tiny-random" in message and "\n" not in message


def test_writer_side_folder_checks(cache_dir, tmp_path):
    root, _ = cache_dir
    assert check_cache_folder(root, IDENTITY, "--backbone unit") == IDENTITY
    other = CacheIdentity("other", "0" * 16, 1.0, {}, SHAPE)
    with pytest.raises(LamoError, match="use another --out folder or the same backbone"):
        check_cache_folder(root, other, "--backbone other")
    reshaped = CacheIdentity("unit", "f" * 16, 0.7, {}, (5, 4, 2, 2))
    with pytest.raises(LamoError, match="latents of shape"):
        check_cache_folder(root, reshaped, "--backbone unit")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(LamoError, match="not a lamo cache"):
        check_cache_folder(busy, IDENTITY, "--backbone unit")
    assert check_cache_folder(tmp_path / "new", IDENTITY, "--backbone unit") is None


def test_reader_errors_are_one_line_lamo_errors(cache_dir, tmp_path):
    with pytest.raises(LamoError, match="does not exist"):
        LatentCache(tmp_path / "absent")
    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(LamoError, match="is a file"):
        LatentCache(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LamoError, match="not a lamo latent cache"):
        LatentCache(empty)
    root, _ = cache_dir
    (root / "latents" / "rank9-broken.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(LamoError, match="rank9-broken.parquet is unreadable") as info:
        LatentCache(root)
    assert "\n" not in str(info.value)
    (root / "latents" / "rank9-broken.parquet").unlink()
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(LamoError, match="manifest.json is unreadable"):
        LatentCache(root)


def test_shard_of_another_latent_space_is_refused(cache_dir):
    root, _ = cache_dir
    stranger = CacheIdentity("other", "0" * 16, 1.0, {}, SHAPE)
    ShardWriter(root, stranger, rank=5).write([make_row(7, "z")], [])
    with pytest.raises(LamoError, match="remove that shard"):
        LatentCache(root)


def test_only_old_temp_files_of_the_same_rank_are_removed(cache_dir):
    root, _ = cache_dir
    old, young, other_rank = (root / "latents" / name for name in (".rank0-a.parquet.x.parquet.tmp", ".rank0-b.parquet.y.parquet.tmp", ".rank1-c.parquet.z.parquet.tmp"))
    for path in (old, young, other_rank):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(other_rank, (two_hours_ago, two_hours_ago))
    assert remove_stale_temp_files(root, rank=0) == 1
    assert not old.exists() and young.exists() and other_rank.exists()
    assert len(LatentCache(root)) == 4
