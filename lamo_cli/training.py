"""Training plumbing shared by `fit-prior` and `finetune`.

- LR schedules with linear warm-up (constant or cosine), as plain functions of the step.
- A seeded, resumable data stream: one permutation per epoch, each global batch sharded by rank.
- Checkpoints in safetensors + JSON only (never pickle): weights, optimizer state, RNG states
  (as uint8/int64 tensors), step and data position; written to a temp folder and renamed, the
  last `keep` kept.
- metrics.jsonl logging, a loss-curve PNG (matplotlib Agg), a NaN/inf guard, per-phase timers.

Step convention: `step` is the 0-based index of the optimizer step about to be taken; a checkpoint
named step-000010 holds the state after 10 optimizer steps (so training continues at step 10).
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import sys
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from lamo_cli.errors import LamoError
from lamo_cli.fileio import atomic_path, save_safetensors, write_json, write_text

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_TENSORS_FILE = "optimizer.safetensors"
OPTIMIZER_JSON_FILE = "optimizer.json"
STATE_FILE = "trainer_state.json"


# ==================================================================== learning-rate schedules
def lr_factor(step: int, warmup: int, kind: str = "constant", total_steps: int | None = None, min_ratio: float = 0.0) -> float:
    """Multiplier of the base LR for 0-based optimizer step `step`.

    Warm-up: `(step + 1) / warmup` for `step < warmup` (the first step already learns; the step
    `warmup - 1` reaches the full LR). After it, "constant" stays at 1 and "cosine" decays as
    `min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2` with `p = (step - warmup) / (total - warmup)`.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        if total_steps is None:
            raise ValueError("a cosine schedule needs total_steps")
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown LR schedule {kind!r}: use 'constant' or 'cosine'")


@dataclass(frozen=True)
class LRSchedule:
    """Base LR, warm-up and shape; `apply` writes the step's LR into every param group."""

    base_lr: float
    warmup: int
    kind: str = "constant"
    total_steps: int | None = None
    min_ratio: float = 0.0

    def lr_at(self, step: int) -> float:
        return self.base_lr * lr_factor(step, self.warmup, self.kind, self.total_steps, self.min_ratio)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


# ==================================================================== training timesteps
TIMESTEP_SAMPLINGS = ("uniform", "logit-normal")


def sample_timesteps(kind: str, count: int, num_train_timesteps: int, generator: torch.Generator,
                     logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """Integer training timesteps [count] in 0..num_train_timesteps-1.

    uniform: t ~ U{0..N-1} (CogVideoX's own training). logit-normal: t = floor(N sigmoid(u)),
    u ~ N(logit_mean, logit_std) (SD3, Esser et al. 2024), which spends the steps on the middle
    noise levels where a small model decides where things are; a negative mean moves them toward
    less noise. Drawn with diffusers' SD3 density helper on the given generator.
    """
    if kind == "uniform":
        return torch.randint(0, num_train_timesteps, (count,), generator=generator)
    if kind != "logit-normal":
        raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLINGS}, got {kind!r}")
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling("logit_normal", count, logit_mean=logit_mean, logit_std=logit_std, generator=generator)
    return (u * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


# ==================================================================== seeds and the data stream
def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple (seed, purpose, rank, epoch ...): stable across processes and runs."""
    words = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def seeded_generator(*parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


class EpochStream:
    """The infinite sequence of dataset indices: epoch e is a seeded permutation of range(n).

    Stream position k (global samples consumed) maps to `perm_{k // n}[k % n]`; a global batch of
    `batch_size * world_size` consecutive positions is split so rank r takes slice r. Resuming is
    just restoring the position.
    """

    def __init__(self, num_items: int, seed: int) -> None:
        if num_items <= 0:
            raise ValueError("the data stream needs at least one item")
        self.num_items = num_items
        self.seed = seed
        self._epoch = -1
        self._perm: list[int] = []

    def permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self._perm = torch.randperm(self.num_items, generator=seeded_generator(self.seed, "data", epoch)).tolist()
            self._epoch = epoch
        return self._perm

    def take(self, position: int, count: int) -> list[int]:
        out = []
        for k in range(position, position + count):
            out.append(self.permutation(k // self.num_items)[k % self.num_items])
        return out

    def rank_batch(self, position: int, batch_size: int, world_size: int = 1, rank: int = 0) -> list[int]:
        """This rank's indices of the global batch starting at stream position `position`."""
        global_batch = self.take(position, batch_size * world_size)
        return global_batch[rank * batch_size : (rank + 1) * batch_size]

    def epoch_of(self, position: int) -> int:
        return position // self.num_items


# ==================================================================== RNG state as tensors
def rng_state_tensors(generators: dict[str, torch.Generator] | None = None) -> dict[str, torch.Tensor]:
    """Every RNG this process uses, as tensors safetensors can hold (no pickle)."""
    tensors: dict[str, torch.Tensor] = {"torch_cpu": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.stack([s.clone() for s in torch.cuda.get_rng_state_all()])
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    tensors["numpy_extra"] = torch.tensor([pos, has_gauss, cached], dtype=torch.float64)
    version, internal, gauss = random.getstate()
    tensors["python_state"] = torch.tensor([version, *internal], dtype=torch.int64)
    tensors["python_gauss"] = torch.tensor([math.nan if gauss is None else gauss], dtype=torch.float64)
    for name, generator in (generators or {}).items():
        tensors[f"generator.{name}"] = generator.get_state().clone()
    return tensors


def restore_rng_state(tensors: dict[str, torch.Tensor], generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(tensors["torch_cpu"].to(torch.uint8))
    if "torch_cuda" in tensors and torch.cuda.is_available():
        states = list(tensors["torch_cuda"].to(torch.uint8))
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    if "numpy_keys" in tensors:
        pos, has_gauss, cached = tensors["numpy_extra"].tolist()
        np.random.set_state(("MT19937", tensors["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if "python_state" in tensors:
        values = tensors["python_state"].tolist()
        gauss = float(tensors["python_gauss"][0])
        random.setstate((values[0], tuple(values[1:]), None if math.isnan(gauss) else gauss))
    for name, generator in (generators or {}).items():
        key = f"generator.{name}"
        if key not in tensors:
            raise LamoError(f"checkpoint has no state for the {name!r} random generator; it was written by another version: start a new run")
        generator.set_state(tensors[key].to(torch.uint8))


# ==================================================================== optimizer state <-> safetensors + JSON
def optimizer_state_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (`state.<param>.<name>`) and a JSON-able rest.
    A state entry that is itself a dict (bitsandbytes keeps its 8-bit state so) is split the same
    way, its names joined with "/" (`state.<param>.<name>/<inner name>`)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}

    def split(index, name: str, value) -> None:
        if isinstance(value, dict):
            for inner, item in value.items():
                split(index, f"{name}/{inner}", item)
        elif torch.is_tensor(value):
            tensors[f"state.{index}.{name}"] = value.detach().clone().cpu()
        else:
            scalars.setdefault(str(index), {})[name] = value

    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            split(index, name, value)
    groups = []
    for group in state_dict["param_groups"]:
        plain = {}
        for key, value in group.items():
            if torch.is_tensor(value):
                value = value.item()
            plain[key] = list(value) if isinstance(value, tuple) else value
        groups.append(plain)
    meta = {"optimizer": type(optimizer).__name__, "param_groups": groups, "scalars": scalars,
            "tuple_keys": sorted({k for g in state_dict["param_groups"] for k, v in g.items() if isinstance(v, tuple)})}
    return tensors, meta


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `optimizer_state_to_files`: a dict for `optimizer.load_state_dict`."""
    state: dict[int, dict[str, Any]] = {}

    def put(index: int, name: str, value) -> None:
        *outer, last = name.split("/")
        entries = state.setdefault(index, {})
        for part in outer:
            entries = entries.setdefault(part, {})
        entries[last] = value

    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        put(int(index), name, value)
    for index, entries in meta.get("scalars", {}).items():
        for name, value in entries.items():
            put(int(index), name, value)
    tuple_keys = set(meta.get("tuple_keys", []))
    groups = []
    for group in meta["param_groups"]:
        groups.append({k: tuple(v) if k in tuple_keys and isinstance(v, list) else v for k, v in group.items()})
    return {"state": state, "param_groups": groups}


# ==================================================================== checkpoint folders
def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp folders are ignored)."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def begin_checkpoint(run_dir: str | os.PathLike, step: int) -> Path:
    """A fresh temp folder for checkpoint `step` (rank 0 calls this, then every rank writes into it)."""
    tmp = Path(run_dir) / CHECKPOINTS_DIR / f".{checkpoint_name(step)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def pending_checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f".{checkpoint_name(step)}.tmp"


def write_checkpoint_files(
    folder: Path,
    *,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """The rank-independent part: trainable weights, optimizer state, trainer state (JSON)."""
    save_safetensors(folder / WEIGHTS_FILE, weights)
    opt_tensors, opt_meta = optimizer_state_to_files(optimizer)
    save_safetensors(folder / OPTIMIZER_TENSORS_FILE, opt_tensors)
    write_json(folder / OPTIMIZER_JSON_FILE, opt_meta)
    write_json(folder / STATE_FILE, state)


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


def write_rng_file(folder: Path, rank: int, generators: dict[str, torch.Generator] | None) -> None:
    save_safetensors(folder / rng_file(rank), rng_state_tensors(generators))


def finish_checkpoint(tmp: Path, step: int, keep: int = 2) -> Path:
    """Rename the temp folder into place and delete all but the newest `keep` checkpoints."""
    final = tmp.parent / checkpoint_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(tmp.parent.parent)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    generators: dict[str, torch.Generator] | None = None,
    keep: int = 2,
) -> Path:
    """Single-process checkpoint: everything into a temp folder, then rename; returns the folder."""
    tmp = begin_checkpoint(run_dir, step)
    write_checkpoint_files(tmp, weights=weights, optimizer=optimizer, state={**state, "step": step})
    write_rng_file(tmp, 0, generators)
    return finish_checkpoint(tmp, step, keep)


@dataclass
class Checkpoint:
    folder: Path
    step: int
    weights: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    state: dict[str, Any]

    def rng(self, rank: int = 0) -> dict[str, torch.Tensor] | None:
        path = self.folder / rng_file(rank)
        return load_safetensors_checked(path) if path.is_file() else None

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        try:
            optimizer.load_state_dict(optimizer_state_from_files(self.optimizer_tensors, self.optimizer_meta))
        except (ValueError, KeyError, RuntimeError) as exc:
            raise LamoError(f"{self.folder}: optimizer state does not fit this model ({str(exc).splitlines()[0]}); resume with the same settings or start a new run") from None


def load_safetensors_checked(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """safetensors -> tensors, with a one-line LamoError for a missing or corrupt file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise LamoError(f"{path}: file is missing; the folder is incomplete (re-run the stage that writes it)")
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad bytes
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise LamoError(f"{path}: corrupt or not a safetensors file ({reason}); delete it and re-run the stage that writes it") from None


def read_json_checked(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LamoError(f"{path}: file is missing; the folder is incomplete (re-run the stage that writes it)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LamoError(f"{path}: not valid JSON ({exc}); delete the folder and re-run the stage that writes it") from None
    if not isinstance(data, dict):
        raise LamoError(f"{path}: expected a JSON object; delete the folder and re-run the stage that writes it")
    return data


def load_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    folder = Path(folder)
    state = read_json_checked(folder / STATE_FILE)
    return Checkpoint(
        folder=folder,
        step=int(state["step"]),
        weights=load_safetensors_checked(folder / WEIGHTS_FILE),
        optimizer_tensors=load_safetensors_checked(folder / OPTIMIZER_TENSORS_FILE),
        optimizer_meta=read_json_checked(folder / OPTIMIZER_JSON_FILE),
        state=state,
    )


def check_resume_settings(saved: dict[str, Any], current: dict[str, Any], keys: Iterable[str], where: Path) -> None:
    """Refuse to resume when a setting that changes the training math differs from the saved run."""
    for key in keys:
        if key in saved and _normalise(saved[key]) != _normalise(current.get(key)):
            raise LamoError(
                f"--resume: {where} was trained with {key}={saved[key]!r} but now {key}={current.get(key)!r}; "
                f"use the same value or start a new run in another --out folder"
            )


def _normalise(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# ==================================================================== metrics, plots, guards
def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null means "not computed / not finite"
    if torch.is_tensor(value):
        return _json_safe(value.item())
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


class MetricsLog:
    """metrics.jsonl: one JSON object per optimizer step (non-finite floats written as null).

    A fresh run truncates the file; a resumed run keeps lines up to the checkpoint's step so the
    log reads as one uninterrupted run. Lines are appended and flushed (a log, not an artifact).
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step] if resume_step is not None else []
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _json_safe(v) for k, v in record.items()})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line after a crash: ignore it and what follows
    return records


def plot_loss_curve(records: list[dict[str, Any]], path: str | os.PathLike, keys: Iterable[str], title: str = "") -> Path | None:
    """One panel per metric key (raw + moving average) vs step, saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
    if not keys:
        return None
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.4 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        steps = np.array([p[0] for p in pts], dtype=float)
        values = np.array([p[1] for p in pts], dtype=float)
        ax.plot(steps, values, lw=0.8, alpha=0.45, label=key)
        window = max(1, len(values) // 20)
        if window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, lw=1.6, label=f"{key} (avg {window})")
        if np.all(values > 0):
            ax.set_yscale("log")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("step")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png.tmp") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def ensure_finite(value: float, step: int, last_checkpoint: Path | None, what: str = "loss", hint: str = "lower --lr") -> None:
    """NaN/inf guard: stop with one line that names the step and the last good checkpoint."""
    if math.isfinite(value):
        return
    kept = str(last_checkpoint) if last_checkpoint is not None else "none (no checkpoint written yet)"
    raise LamoError(f"{what} became {value} at step {step}; last good checkpoint: {kept}; {hint} and resume with --resume")


class PhaseTimer:
    """Wall time per phase (data, forward, backward, optimizer), synchronising CUDA for honest numbers.

    On CUDA the synchronisations stall the queue (a small model's GPU then waits for every kernel
    launch), so only the first steps and then every `every`-th step are timed there; `start_step`
    says whether the coming step is one, and `pop` returns {} after a step that was not timed. On
    the CPU every step is timed (it costs nothing)."""

    def __init__(self, device: torch.device | str = "cpu", every: int = 1) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.every = max(1, int(every))
        self.timing = True
        self.totals: dict[str, float] = {}

    def start_step(self, step: int) -> bool:
        self.timing = not self.cuda or step < 5 or step % self.every == 0
        return self.timing

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.timing:
            yield
            return
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The most memory this process has held: on CUDA the tensors torch allocated on `device`, on a
    CPU the process's peak resident set (models, caches and libraries included)."""
    if device.type == "cuda":
        return {"gb": torch.cuda.max_memory_allocated(device) / 2**30, "what": "CUDA tensors allocated"}
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return {"gb": peak / (2**30 if sys.platform == "darwin" else 2**20), "what": "process resident set"}


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


class _LogLines:
    """A text stream for tqdm that writes each redraw as its own line: tqdm draws over the previous
    one with a carriage return, which a log file keeps (`tail -f`, `grep` and editors show the pile)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip("\n")
        if line.strip():
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def step_progress(total: int, initial: int, enabled: bool, desc: str):
    """A tqdm bar over optimizer steps (None when disabled, e.g. --no-progress or a non-main rank)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    if sys.stderr.isatty():
        look = {"dynamic_ncols": True, "mininterval": 0.1}
    else:  # into a log file: a redraw every 30 s (tqdm's monitor would force one every 10 s), each on a line of its own
        look = {"ncols": 100, "mininterval": 30.0, "maxinterval": 60.0, "file": _LogLines(sys.stderr)}
    bar = tqdm(total=total, initial=initial, desc=desc, unit="step", **look)
    # A new postfix waits for the next timed redraw instead of forcing one (the stages set it every step or so).
    bar.set_postfix = functools.partial(bar.set_postfix, refresh=False)
    return bar


def settings_json(settings: dict[str, Any]) -> dict[str, Any]:
    """A stage's keyword arguments as JSON-ready values (paths as strings, tuples as lists)."""
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}
