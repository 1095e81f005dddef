"""The latent cache: Parquet shards of UNSCALED VAE posteriors plus a text-embedding table.

Layout of a cache folder::

    manifest.json                 schema version, backbone, latent fingerprint, scaling factor,
                                  video format, latent shape, counts (informational)
    latents/rank{r}-{uuid}.parquet  one row per clip (see LATENT_SCHEMA), one row group per row
    text/rank{r}-{uuid}.parquet     one row per prompt (TEXT_SCHEMA), deduplicated at read time

Shards are written to a temp name and renamed, so a reader (or a rerun after a kill) only ever sees
complete shards. The shards are the truth: a reader derives the clip list, the counts, and (when the
manifest is missing) the cache identity from them; duplicates (two runs racing on one cache, or
several ranks writing the empty prompt) are dropped at read time, first shard in name order wins.
Each row group holds one row, so reading one clip reads only that clip's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from lamo_cli.errors import LamoError
from lamo_cli.fileio import atomic_path, write_json

SCHEMA_VERSION = 1
CACHE_FORMAT = "lamo-latent-cache"
MANIFEST_NAME = "manifest.json"
LATENTS_DIR = "latents"
TEXT_DIR = "text"
EMPTY_PROMPT = ""
METADATA_KEY = b"lamo"  # parquet key-value metadata: the cache identity as JSON
TENSOR_DTYPES = {"float32": np.dtype("<f4")}  # stored dtype name -> little-endian numpy dtype
PRELOAD_LIMIT_BYTES = 1 << 30  # LatentDataset keeps latents in memory below this size


def _arrow():
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


# ==================================================================== hashes and cells
def prompt_hash(text: str) -> str:
    """sha256 hex[:16] of the UTF-8 prompt: the key of the text table."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def clip_id(source_path: str | os.PathLike, frame_indices: Iterable[int], latent_fingerprint: str) -> str:
    """Stable id of one cached clip: resolved source path + sampled frames + latent space."""
    key = f"{Path(source_path).resolve()}|{','.join(str(int(i)) for i in frame_indices)}|{latent_fingerprint}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def tensor_to_cell(tensor: torch.Tensor) -> tuple[bytes, list[int], str]:
    """A tensor as (float32 little-endian bytes, shape, dtype name) for a Parquet row."""
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return array.tobytes(), list(array.shape), "float32"


def cell_to_tensor(buffer, shape: list[int], dtype: str, where: str = "cache") -> torch.Tensor:
    """Inverse of tensor_to_cell; `buffer` may be bytes or a zero-copy pyarrow Buffer (one copy made)."""
    if dtype not in TENSOR_DTYPES:
        raise LamoError(f"{where}: tensor dtype {dtype!r} is not supported (expected float32); re-encode the cache")
    array = np.frombuffer(buffer, dtype=TENSOR_DTYPES[dtype])
    if array.size != int(np.prod(shape)):
        raise LamoError(f"{where}: tensor of {array.size} values does not match shape {shape}; the shard is corrupt, delete it and rerun lamo encode")
    return torch.from_numpy(array.reshape(shape).astype(np.float32, copy=True))


# ==================================================================== schemas
def latent_schema():
    pa, _ = _arrow()
    ints = pa.list_(pa.int32())
    return pa.schema(
        [
            ("id", pa.string()),
            ("source_path", pa.string()),
            ("caption", pa.string()),
            ("prompt_hash", pa.string()),
            ("frame_indices", ints),
            ("fps", pa.float64()),
            ("source_fps", pa.float64()),
            ("source_num_frames", pa.int32()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("num_frames", pa.int32()),
            ("latent_bytes", pa.large_binary()),
            ("latent_shape", ints),
            ("latent_dtype", pa.string()),
            ("logvar_bytes", pa.large_binary()),
            ("logvar_shape", ints),
            ("logvar_dtype", pa.string()),
            ("scaling_factor", pa.float64()),
            ("backbone", pa.string()),
            ("latent_fingerprint", pa.string()),
            ("schema_version", pa.int32()),
        ]
    )


def text_schema():
    pa, _ = _arrow()
    return pa.schema(
        [
            ("prompt_hash", pa.string()),
            ("prompt", pa.string()),
            ("emb_bytes", pa.large_binary()),
            ("emb_shape", pa.list_(pa.int32())),
            ("emb_dtype", pa.string()),
            ("latent_fingerprint", pa.string()),
            ("schema_version", pa.int32()),
        ]
    )


META_COLUMNS = ["id", "source_path", "caption", "prompt_hash", "frame_indices", "fps", "latent_shape"]


# ==================================================================== identity / manifest
@dataclass(frozen=True)
class CacheIdentity:
    """What makes two encodes compatible: same latent space, same clip format."""

    backbone: str
    latent_fingerprint: str
    scaling_factor: float
    video_format: dict
    latent_shape: tuple[int, int, int, int]
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        data = asdict(self)
        data["latent_shape"] = list(self.latent_shape)
        return data

    @classmethod
    def from_json(cls, data: dict, where: str) -> "CacheIdentity":
        try:
            return cls(
                backbone=str(data["backbone"]),
                latent_fingerprint=str(data["latent_fingerprint"]),
                scaling_factor=float(data["scaling_factor"]),
                video_format=dict(data.get("video_format") or {}),
                latent_shape=tuple(int(x) for x in data["latent_shape"]),
                schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LamoError(f"{where}: missing or bad field {exc}; the cache is damaged, re-encode it with lamo encode") from None


@dataclass
class CacheInfo:
    """Facts about a cache, from manifest.json (or derived from the shards when it is missing)."""

    root: Path
    schema_version: int
    backbone: str
    latent_fingerprint: str
    scaling_factor: float
    latent_shape: tuple[int, int, int, int]  # [T, C, h, w]
    num_clips: int
    video_format: dict
    num_prompts: int = 0
    num_latent_shards: int = 0
    num_text_shards: int = 0


def list_shards(root: Path, kind: str) -> list[Path]:
    """Complete shards of one table, in name order (temp files start with '.' and end in .tmp)."""
    folder = Path(root) / kind
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".") and p.is_file())


def _open_parquet(path: Path):
    _, pq = _arrow()
    try:
        return pq.ParquetFile(str(path))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError
        raise LamoError(f"cache shard {path} is unreadable ({str(exc).splitlines()[0][:120]}); delete it and rerun lamo encode to redo its clips") from None


def _shard_identity(parquet_file, path: Path) -> CacheIdentity:
    metadata = parquet_file.schema_arrow.metadata or {}
    if METADATA_KEY not in metadata:
        raise LamoError(f"cache shard {path} has no lamo metadata; it was not written by lamo encode, remove it")
    return CacheIdentity.from_json(json.loads(metadata[METADATA_KEY]), str(path))


def read_manifest(root: str | os.PathLike) -> dict | None:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LamoError(f"cache {root}: {MANIFEST_NAME} is unreadable ({exc}); delete it (the shards are enough) and rerun lamo encode") from None
    if not isinstance(data, dict):
        raise LamoError(f"cache {root}: {MANIFEST_NAME} is not a JSON object; delete it and rerun lamo encode")
    return data


def read_identity(root: str | os.PathLike) -> CacheIdentity | None:
    """The identity a cache folder was built with: manifest.json, else the first shard; None if neither."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is not None:
        identity = CacheIdentity.from_json(manifest, str(root / MANIFEST_NAME))
    else:
        shards = list_shards(root, LATENTS_DIR)
        if not shards:
            return None
        identity = _shard_identity(_open_parquet(shards[0]), shards[0])
    if identity.schema_version > SCHEMA_VERSION:
        raise LamoError(
            f"cache {root} has schema version {identity.schema_version}, newer than this lamo's {SCHEMA_VERSION}; upgrade lamo"
        )
    return identity


def check_cache_folder(root: str | os.PathLike, identity: CacheIdentity, backbone_label: str) -> CacheIdentity | None:
    """Refuse to write into a file, a non-cache folder, or a cache of another latent space."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise LamoError(f"--out {root} is a file; pass a folder for the cache")
    if not root.exists():
        return None
    existing = read_identity(root)
    if existing is None:
        visible = [p for p in root.iterdir() if not p.name.startswith(".") and p.name not in (LATENTS_DIR, TEXT_DIR)]
        if visible:
            raise LamoError(f"--out {root} is not empty and is not a lamo cache (no {MANIFEST_NAME}); use a new or empty folder")
        return None
    if existing.latent_fingerprint != identity.latent_fingerprint:
        raise LamoError(
            f"cache {root} was built by backbone {existing.backbone} (latent fingerprint {existing.latent_fingerprint}), "
            f"not {backbone_label} ({identity.latent_fingerprint}); use another --out folder or the same backbone"
        )
    if tuple(existing.latent_shape) != tuple(identity.latent_shape):
        raise LamoError(
            f"cache {root} holds latents of shape {list(existing.latent_shape)} but {backbone_label} gives "
            f"{list(identity.latent_shape)} (another video format); use another --out folder"
        )
    return existing


def cache_counts(root: str | os.PathLike) -> dict:
    """Unique clips and prompts over all complete shards, plus shard counts and bytes on disk."""
    root = Path(root)
    latent_files = list_shards(root, LATENTS_DIR)
    text_files = list_shards(root, TEXT_DIR)
    return {
        "clips": len(existing_ids(root)),
        "prompts": len(existing_prompt_hashes(root)),
        "latent_shards": len(latent_files),
        "text_shards": len(text_files),
        "bytes": sum(p.stat().st_size for p in latent_files + text_files),
    }


def write_manifest(root: str | os.PathLike, identity: CacheIdentity, counts: dict | None = None) -> None:
    root = Path(root)
    manifest = {"format": CACHE_FORMAT, **identity.to_json(), "latent_dtype": "float32", "latent_scaled": False}
    manifest["counts"] = counts if counts is not None else cache_counts(root)
    write_json(root / MANIFEST_NAME, manifest)


def _read_column(path: Path, column: str) -> list:
    parquet_file = _open_parquet(path)
    try:
        return parquet_file.read(columns=[column]).column(column).to_pylist()
    except Exception as exc:  # noqa: BLE001
        raise LamoError(f"cache shard {path} is unreadable ({str(exc).splitlines()[0][:120]}); delete it and rerun lamo encode") from None


def existing_ids(root: str | os.PathLike) -> set[str]:
    return {i for path in list_shards(Path(root), LATENTS_DIR) for i in _read_column(path, "id")}


def cached_caption_hashes(root: str | os.PathLike) -> dict[str, str]:
    """Clip id -> prompt hash of the caption the clip was encoded with (first shard wins, as on read)."""
    hashes: dict[str, str] = {}
    for path in list_shards(Path(root), LATENTS_DIR):
        for clip, caption_hash in zip(_read_column(path, "id"), _read_column(path, "prompt_hash")):
            hashes.setdefault(clip, caption_hash)
    return hashes


def existing_prompt_hashes(root: str | os.PathLike) -> set[str]:
    return {h for path in list_shards(Path(root), TEXT_DIR) for h in _read_column(path, "prompt_hash")}


# ==================================================================== writing
@dataclass
class ClipRow:
    """One encoded clip, ready to be a row of a latents shard."""

    id: str
    source_path: str
    caption: str
    frame_indices: list[int]
    fps: float
    source_fps: float
    source_num_frames: int
    height: int
    width: int
    latent: torch.Tensor  # UNSCALED mean [T, C, h, w]
    logvar: torch.Tensor | None = None
    prompt_hash: str = ""

    def __post_init__(self) -> None:
        if not self.prompt_hash:
            self.prompt_hash = prompt_hash(self.caption)


@dataclass
class TextRow:
    prompt: str
    embedding: torch.Tensor  # [L, D]
    prompt_hash: str = field(default="")

    def __post_init__(self) -> None:
        if not self.prompt_hash:
            self.prompt_hash = prompt_hash(self.prompt)


class ShardWriter:
    """Writes complete shards atomically under one rank's names (`rank{r}-{uuid}.parquet`)."""

    def __init__(self, root: str | os.PathLike, identity: CacheIdentity, rank: int = 0, compression: str = "zstd"):
        self.root = Path(root)
        self.identity = identity
        self.rank = rank
        self.compression = compression
        self.shards_written = 0
        self.bytes_written = 0

    def _metadata(self) -> dict[bytes, bytes]:
        return {METADATA_KEY: json.dumps(self.identity.to_json()).encode()}

    def _write_table(self, kind: str, table) -> Path:
        _, pq = _arrow()
        path = self.root / kind / f"rank{self.rank}-{uuid.uuid4().hex[:12]}.parquet"
        table = table.replace_schema_metadata(self._metadata())
        with atomic_path(path, suffix=".parquet.tmp") as tmp:
            pq.write_table(table, str(tmp), compression=self.compression, row_group_size=1, write_statistics=False)
        self.shards_written += 1
        self.bytes_written += path.stat().st_size
        return path

    def write(self, clips: list[ClipRow], texts: list[TextRow]) -> list[Path]:
        """Text first, so every prompt a latent row names is on disk before the row is."""
        written = []
        if texts:
            written.append(self._write_table(TEXT_DIR, self._text_table(texts)))
        if clips:
            written.append(self._write_table(LATENTS_DIR, self._latent_table(clips)))
        return written

    def _latent_table(self, clips: list[ClipRow]):
        pa, _ = _arrow()
        ident = self.identity
        columns: dict[str, list[Any]] = {name: [] for name in latent_schema().names}
        for clip in clips:
            latent_bytes, latent_shape, latent_dtype = tensor_to_cell(clip.latent)
            if tuple(latent_shape) != tuple(ident.latent_shape):
                raise ValueError(f"latent shape {latent_shape} != cache shape {list(ident.latent_shape)}")
            if clip.logvar is not None:
                logvar_bytes, logvar_shape, logvar_dtype = tensor_to_cell(clip.logvar)
            else:
                logvar_bytes, logvar_shape, logvar_dtype = None, None, None
            values = dict(
                id=clip.id,
                source_path=str(clip.source_path),
                caption=clip.caption,
                prompt_hash=clip.prompt_hash,
                frame_indices=[int(i) for i in clip.frame_indices],
                fps=float(clip.fps),
                source_fps=float(clip.source_fps),
                source_num_frames=int(clip.source_num_frames),
                height=int(clip.height),
                width=int(clip.width),
                num_frames=len(clip.frame_indices),
                latent_bytes=latent_bytes,
                latent_shape=latent_shape,
                latent_dtype=latent_dtype,
                logvar_bytes=logvar_bytes,
                logvar_shape=logvar_shape,
                logvar_dtype=logvar_dtype,
                scaling_factor=float(ident.scaling_factor),
                backbone=ident.backbone,
                latent_fingerprint=ident.latent_fingerprint,
                schema_version=SCHEMA_VERSION,
            )
            for name, value in values.items():
                columns[name].append(value)
        return pa.table(columns, schema=latent_schema())

    def _text_table(self, texts: list[TextRow]):
        pa, _ = _arrow()
        columns: dict[str, list[Any]] = {name: [] for name in text_schema().names}
        for text in texts:
            emb_bytes, emb_shape, emb_dtype = tensor_to_cell(text.embedding)
            values = dict(
                prompt_hash=text.prompt_hash,
                prompt=text.prompt,
                emb_bytes=emb_bytes,
                emb_shape=emb_shape,
                emb_dtype=emb_dtype,
                latent_fingerprint=self.identity.latent_fingerprint,
                schema_version=SCHEMA_VERSION,
            )
            for name, value in values.items():
                columns[name].append(value)
        return pa.table(columns, schema=text_schema())


def remove_stale_temp_files(root: str | os.PathLike, rank: int, older_than_s: float = 3600.0) -> int:
    """Delete this rank's temp shards left by a killed run. Only old ones: a second encode running
    on the same cache right now may own the young ones (readers ignore temp files anyway)."""
    import time

    removed = 0
    now = time.time()
    for kind in (LATENTS_DIR, TEXT_DIR):
        folder = Path(root) / kind
        if folder.is_dir():
            for tmp in folder.glob(f".rank{rank}-*.tmp"):
                try:
                    if now - tmp.stat().st_mtime > older_than_s:
                        tmp.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
    return removed


# ==================================================================== reading
@dataclass(frozen=True)
class _Location:
    shard: int
    row_group: int
    row: int  # row inside the row group


@dataclass(frozen=True)
class ClipRecord:
    """Small per-clip facts held in memory by the reader (the tensors stay on disk)."""

    id: str
    source_path: str
    caption: str
    prompt_hash: str
    frame_indices: tuple[int, ...]
    fps: float


class LatentCache:
    """Read a cache folder. Per-clip metadata is read at open; tensors are read on demand, one row
    group (= one clip) at a time, so opening a large cache is cheap.

    Clips are ordered by (source path, first frame, id), independent of which rank or run wrote them.
    """

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        if not root.exists():
            raise LamoError(f"cache {root} does not exist; create it with `lamo encode VIDEOS --out {root}`")
        if not root.is_dir():
            raise LamoError(f"cache {root} is a file, not a cache folder; pass the folder lamo encode wrote")
        identity = read_identity(root)
        if identity is None:
            raise LamoError(
                f"cache {root} is not a lamo latent cache (no {MANIFEST_NAME} or {LATENTS_DIR}/*.parquet); "
                f"create it with `lamo encode VIDEOS --out {root}`"
            )
        self.root = root
        self.identity = identity
        self._latent_files = list_shards(root, LATENTS_DIR)
        self._text_files = list_shards(root, TEXT_DIR)
        self._pid = os.getpid()
        self._files: dict[Path, Any] = {}
        self._records, self._locations = self._index_latents()
        self._text_locations, self._prompts = self._index_text()
        self.info = CacheInfo(
            root=root,
            schema_version=identity.schema_version,
            backbone=identity.backbone,
            latent_fingerprint=identity.latent_fingerprint,
            scaling_factor=identity.scaling_factor,
            latent_shape=tuple(identity.latent_shape),
            num_clips=len(self._records),
            video_format=dict(identity.video_format),
            num_prompts=len(self._text_locations),
            num_latent_shards=len(self._latent_files),
            num_text_shards=len(self._text_files),
        )

    # ---------------------------------------------------------------- indexing
    def _parquet(self, path: Path):
        if os.getpid() != self._pid:  # forked DataLoader worker: never share file handles
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            self._files[path] = _open_parquet(path)
        return self._files[path]

    def _check_shard(self, parquet_file, path: Path) -> None:
        ident = _shard_identity(parquet_file, path)
        if ident.latent_fingerprint != self.identity.latent_fingerprint:
            raise LamoError(
                f"cache {self.root}: shard {path.name} was written by backbone {ident.backbone} "
                f"(fingerprint {ident.latent_fingerprint}), the cache by {self.identity.backbone} "
                f"({self.identity.latent_fingerprint}); remove that shard"
            )

    @staticmethod
    def _row_groups(parquet_file) -> list[tuple[int, int]]:
        """(row group, row inside it) for every row of the file, in order."""
        places = []
        for group in range(parquet_file.num_row_groups):
            places.extend((group, row) for row in range(parquet_file.metadata.row_group(group).num_rows))
        return places

    def _index_latents(self) -> tuple[list[ClipRecord], list[_Location]]:
        found: dict[str, tuple[ClipRecord, _Location]] = {}
        expected_shape = list(self.identity.latent_shape)
        for shard_index, path in enumerate(self._latent_files):
            parquet_file = self._parquet(path)
            self._check_shard(parquet_file, path)
            try:
                rows = parquet_file.read(columns=META_COLUMNS).to_pylist()
            except Exception as exc:  # noqa: BLE001
                raise LamoError(f"cache shard {path} is unreadable ({str(exc).splitlines()[0][:120]}); delete it and rerun lamo encode") from None
            for row, (group, in_group) in zip(rows, self._row_groups(parquet_file)):
                if row["latent_shape"] != expected_shape:
                    raise LamoError(f"cache shard {path}: latent shape {row['latent_shape']} != cache shape {expected_shape}; remove that shard")
                if row["id"] in found:
                    continue
                record = ClipRecord(row["id"], row["source_path"], row["caption"], row["prompt_hash"], tuple(row["frame_indices"]), row["fps"])
                found[row["id"]] = (record, _Location(shard_index, group, in_group))
        ordered = sorted(found.values(), key=lambda item: (item[0].source_path, item[0].frame_indices[:1], item[0].id))
        return [record for record, _ in ordered], [location for _, location in ordered]

    def _index_text(self) -> tuple[dict[str, _Location], dict[str, str]]:
        locations: dict[str, _Location] = {}
        prompts: dict[str, str] = {}
        for shard_index, path in enumerate(self._text_files):
            parquet_file = self._parquet(path)
            self._check_shard(parquet_file, path)
            rows = parquet_file.read(columns=["prompt_hash", "prompt"]).to_pylist()
            for row, (group, in_group) in zip(rows, self._row_groups(parquet_file)):
                if row["prompt_hash"] not in locations:
                    locations[row["prompt_hash"]] = _Location(shard_index, group, in_group)
                    prompts[row["prompt_hash"]] = row["prompt"]
        return locations, prompts

    def _read_tensor(self, path: Path, location: _Location, prefix: str) -> torch.Tensor | None:
        columns = [f"{prefix}_bytes", f"{prefix}_shape", f"{prefix}_dtype"]
        table = self._parquet(path).read_row_group(location.row_group, columns=columns)
        buffer = table.column(columns[0])[location.row].as_buffer()
        if buffer is None:
            return None
        shape = table.column(columns[1])[location.row].as_py()
        dtype = table.column(columns[2])[location.row].as_py()
        return cell_to_tensor(buffer, shape, dtype, where=f"cache shard {path}")

    # ---------------------------------------------------------------- public API
    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"LatentCache({str(self.root)!r}, clips={len(self)}, backbone={self.info.backbone!r})"

    def ids(self) -> list[str]:
        return [record.id for record in self._records]

    def record(self, index: int) -> ClipRecord:
        return self._records[index]

    def latent(self, index: int) -> torch.Tensor:
        """UNSCALED posterior mean [T, C, h, w] float32."""
        location = self._locations[index]
        return self._read_tensor(self._latent_files[location.shard], location, "latent")

    def logvar(self, index: int) -> torch.Tensor | None:
        """Posterior log-variance [T, C, h, w], or None when encoded with --no-logvar."""
        location = self._locations[index]
        return self._read_tensor(self._latent_files[location.shard], location, "logvar")

    def caption(self, index: int) -> str:
        return self._records[index].caption

    def prompt_hash(self, index: int) -> str:
        return self._records[index].prompt_hash

    def prompts(self) -> dict[str, str]:
        """{prompt hash: prompt} of every cached text embedding."""
        return dict(self._prompts)

    def text_embedding(self, prompt_hash: str) -> torch.Tensor:
        """[L, D] float32 embedding of a cached prompt."""
        location = self._text_locations.get(prompt_hash)
        if location is None:
            raise LamoError(f"cache {self.root}: no text embedding for prompt hash {prompt_hash}; rerun lamo encode on this cache")
        return self._read_tensor(self._text_files[location.shard], location, "emb")

    def empty_text_embedding(self) -> torch.Tensor:
        return self.text_embedding(prompt_hash(EMPTY_PROMPT))

    def all_latents(self) -> torch.Tensor:
        """[N, T, C, h, w] unscaled, read shard by shard (one shard's bytes in memory at a time)."""
        out = torch.empty((len(self), *self.info.latent_shape), dtype=torch.float32)
        wanted: dict[tuple[int, int, int], int] = {
            (loc.shard, loc.row_group, loc.row): index for index, loc in enumerate(self._locations)
        }
        for shard_index, path in enumerate(self._latent_files):
            parquet_file = self._parquet(path)
            table = parquet_file.read(columns=["latent_bytes", "latent_shape", "latent_dtype"])
            data, shapes, dtypes = (table.column(name) for name in ("latent_bytes", "latent_shape", "latent_dtype"))
            for flat, (group, in_group) in enumerate(self._row_groups(parquet_file)):
                index = wanted.get((shard_index, group, in_group))
                if index is not None:
                    where = f"cache shard {path}"
                    out[index] = cell_to_tensor(data[flat].as_buffer(), shapes[flat].as_py(), dtypes[flat].as_py(), where)
            del table, data
        return out

    def check_fingerprint(self, fingerprint: str, what: str) -> None:
        """LamoError unless `fingerprint` is the latent space this cache was encoded in."""
        if fingerprint != self.info.latent_fingerprint:
            raise LamoError(
                f"cache {self.root} was encoded with backbone {self.info.backbone} (latent fingerprint "
                f"{self.info.latent_fingerprint}) but {what} has fingerprint {fingerprint}; use the backbone the cache "
                f"was built with, or re-encode the videos with `lamo encode ... --out NEW_FOLDER` and that backbone"
            )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = {}  # open ParquetFiles do not pickle (DataLoader workers with spawn)
        return state


class LatentDataset(torch.utils.data.Dataset):
    """Training view: {"latent": [T, C, h, w] (times scaling_factor if scaled), "text": [L, D], "index": i}.

    Latents are loaded into memory at construction when the cache is small (under 1 GiB, or
    `preload=True`); otherwise each item reads its own row group.
    """

    def __init__(self, cache: LatentCache, scaled: bool = True, preload: bool | None = None):
        self.cache = cache
        self.scale = float(cache.info.scaling_factor) if scaled else 1.0
        latent_bytes = len(cache) * int(np.prod(cache.info.latent_shape)) * 4
        if preload is None:
            preload = latent_bytes <= PRELOAD_LIMIT_BYTES
        self._latents = cache.all_latents() * self.scale if preload and len(cache) else None
        self._text: dict[str, torch.Tensor] = {}
        self._memo_text = preload
        self._prompt_table: torch.Tensor | None = None  # [P, L, D] after `to`: every distinct prompt
        self._prompt_slot: torch.Tensor | None = None  # [N]: each clip's row in that table

    def __len__(self) -> int:
        return len(self.cache)

    def _text_for(self, hash_: str) -> torch.Tensor:
        if hash_ in self._text:
            return self._text[hash_]
        embedding = self.cache.text_embedding(hash_)
        if self._memo_text:
            self._text[hash_] = embedding
        return embedding

    def __getitem__(self, i: int) -> dict:
        if self._latents is not None:
            latent = self._latents[i].cpu()
        else:
            latent = self.cache.latent(i) * self.scale
        return {"latent": latent, "text": self._text_for(self.cache.prompt_hash(i)), "index": i}

    def to(self, device: torch.device | str, max_bytes: int = PRELOAD_LIMIT_BYTES) -> bool:
        """Move the preloaded latents and a table of every prompt's embedding to `device` (a GPU),
        so that `batch` is one gather there instead of per-item stacking and a host-to-device copy.
        Only for a preloaded cache whose latents and text fit in `max_bytes`; says whether it moved."""
        if self._latents is None:
            return False
        hashes = [self.cache.prompt_hash(i) for i in range(len(self))]
        distinct = sorted(set(hashes))
        text_bytes = len(distinct) * int(self._text_for(distinct[0]).numel()) * 4
        if self._latents.numel() * 4 + text_bytes > max_bytes:
            return False
        slot = {h: k for k, h in enumerate(distinct)}
        self._prompt_table = torch.stack([self._text_for(h) for h in distinct]).to(device)
        self._prompt_slot = torch.tensor([slot[h] for h in hashes], dtype=torch.long, device=device)
        self._latents = self._latents.to(device)
        return True

    def batch(self, indices: list[int], empty_text: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents [B, T, C, h, w], text [B, L, D]) of these clips; `drop`: a bool per clip whose
        caption is replaced by `empty_text` (caption dropout). On the dataset's device after `to`."""
        if self._prompt_table is not None:
            where = torch.tensor(indices, dtype=torch.long, device=self._latents.device)
            texts = self._prompt_table[self._prompt_slot[where]]
            drop = drop.to(texts.device)
            texts = torch.where(drop.view(-1, 1, 1), empty_text.to(texts), texts)
            return self._latents[where], texts
        if self._latents is not None:
            latents = self._latents[torch.tensor(indices, dtype=torch.long)]
        else:
            latents = torch.stack([torch.as_tensor(self.cache.latent(i) * self.scale, dtype=torch.float32) for i in indices])
        texts = torch.stack([empty_text if dropped else self._text_for(self.cache.prompt_hash(i))
                             for i, dropped in zip(indices, drop.tolist())])
        return latents, texts.to(torch.float32)
