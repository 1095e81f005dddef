"""`fit-prior`: train the micro motion field f_phi on a latent cache (METHOD.md section 2).

The field sees SCALED clean latents (cache latent * scaling_factor: the diffusion space in which
guidance applies it to x0_hat). Inputs are frames z^(i), targets z^(i+tau) - z^(i); the prompt is
the mean of ALL cached text tokens. Noise augmentation uses the backbone scheduler's own
alphas_cumprod (only the scheduler is loaded). Output folder PRIOR:

    motion_field.safetensors   field weights (metadata: the field config and a run id)
    config.json                field config, tau, alpha, backbone, latent fingerprint, scaling factor,
                               seed, final loss, data drift statistics, library versions
    metrics.jsonl, loss.png    per-step log and curve
    checkpoints/step-XXXXXX/   for --resume (last two kept)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any

import torch

from lamo_cli.errors import LamoError
from lamo_cli.versions import library_versions
from lamo_cli.fileio import save_safetensors, write_json
from lamo_cli.motion.drift import macro_drift
from lamo_cli.motion.field import (
    MotionField,
    MotionFieldConfig,
    field_loss,
    field_training_pairs,
    noise_augment,
    pool_text,
    prompt_dropout_mask,
)
from lamo_cli.training import (
    EpochStream,
    LRSchedule,
    MetricsLog,
    PhaseTimer,
    check_resume_settings,
    ensure_finite,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_safetensors_checked,
    plot_loss_curve,
    read_json_checked,
    read_metrics,
    restore_rng_state,
    save_checkpoint,
    seeded_generator,
    settings_json,
    step_progress,
)

PRIOR_WEIGHTS = "motion_field.safetensors"
PRIOR_CONFIG = "config.json"
PRIOR_FORMAT = "lamo-motion-prior"
PRIOR_VERSION = 1
NEAR_ZERO_DRIFT = 1e-2  # |mu| below this (scaled latent units, std ~1) counts as "no drift"

# Settings that change the training math: a resumed run must keep them.
RESUME_KEYS = (
    "steps", "batch_size", "lr", "warmup", "tau", "alpha", "noise_aug_prob", "noise_aug_strength",
    "prompt_dropout", "width", "depth", "cond_dim", "groups", "se_hidden", "seed", "latent_fingerprint",
)


@dataclass
class FitPriorSummary:
    out: Path
    steps: int
    start_step: int
    final_loss: float
    first_loss: float
    num_clips: int
    num_parameters: int
    explained_fraction: float  # 1 - MSE(field) / MSE(zero motion) on clean held-in pairs
    seconds_per_step: float
    drift_statistics: dict[str, Any]
    config: dict[str, Any] = dataclass_field(default_factory=dict)


# ==================================================================== data
def _open_cache(cache: str | os.PathLike):
    from lamo_cli.data.cache import LatentCache

    return LatentCache(cache)


def _scheduler_alphas(info, backbone: str | None) -> tuple[torch.Tensor, str]:
    """abar_t from the backbone named in the cache (only the scheduler is loaded)."""
    from lamo_cli.backbones import load_backbone

    spec = backbone or getattr(info, "backbone_source", None) or info.backbone
    try:
        return load_backbone(spec, device="cpu").alphas_cumprod(), str(spec)
    except LamoError as exc:
        raise LamoError(f"{exc} (fit-prior needs the scheduler of the cache's backbone {info.backbone!r}; pass --backbone NAME_OR_FOLDER)") from None


def _batch(dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in indices]
    latents = torch.stack([torch.as_tensor(item["latent"], dtype=torch.float32) for item in items])
    texts = torch.stack([torch.as_tensor(item["text"], dtype=torch.float32) for item in items])
    return latents, pool_text(texts)


def drift_statistics(cache, max_clips: int = 1024, seed: int = 0) -> dict[str, Any]:
    """Macro drift of the data (scaled latents) for tau = 1 and 2, on up to `max_clips` clips.

    Per tau: mean |mu| per channel, per frame pair, the mean per-clip ||mu|| (over channels, then
    averaged over pairs), and the fraction of clips whose mean ||mu|| < NEAR_ZERO_DRIFT (for those
    the drift loss's normaliser max(||mu*||^2, 1e-8) is tiny and the term is ill-conditioned).
    """
    n = len(cache)
    scale = float(cache.info.scaling_factor)
    chosen = list(range(n)) if n <= max_clips else sorted(torch.randperm(n, generator=seeded_generator(seed, "stats"))[:max_clips].tolist())
    stats: dict[str, Any] = {"clips": len(chosen), "near_zero_threshold": NEAR_ZERO_DRIFT}
    sums: dict[int, dict[str, Any]] = {}
    for i in chosen:
        z = torch.as_tensor(cache.latent(i), dtype=torch.float64) * scale
        for tau in (1, 2):
            if z.shape[0] <= tau:
                continue
            mu = macro_drift(z, tau)  # [T - tau, C]
            acc = sums.setdefault(tau, {"channel": torch.zeros(mu.shape[1], dtype=torch.float64),
                                        "pair": torch.zeros(mu.shape[0], dtype=torch.float64),
                                        "norms": []})
            acc["channel"] += mu.abs().mean(dim=0)
            acc["pair"] += mu.abs().mean(dim=1)
            acc["norms"].append(float(mu.norm(dim=1).mean()))
    for tau, acc in sums.items():
        count = len(acc["norms"])
        norms = torch.tensor(acc["norms"], dtype=torch.float64)
        stats[f"tau{tau}"] = {
            "mean_abs_per_channel": [round(v, 6) for v in (acc["channel"] / count).tolist()],
            "mean_abs_per_pair": [round(v, 6) for v in (acc["pair"] / count).tolist()],
            "mean_norm": float(norms.mean()),
            "median_norm": float(norms.median()),
            "near_zero_fraction": float((norms < NEAR_ZERO_DRIFT).double().mean()),
        }
    return stats


# ==================================================================== the stage
def fit_prior(
    cache: str | os.PathLike = "lamo-cache",
    out: str | os.PathLike = "lamo-prior",
    steps: int = 2000,
    batch_size: int = 8,
    lr: float = 5e-4,
    warmup: int = 200,
    tau: int = 1,
    alpha: float = 0.3,
    noise_aug_prob: float = 0.5,
    noise_aug_strength: float = 0.3,
    prompt_dropout: float = 0.1,
    width: int = 256,
    depth: int = 8,
    cond_dim: int = 128,
    groups: int = 8,
    se_hidden: int = 64,
    weight_decay: float = 1e-4,
    grad_clip: float = 1.0,
    seed: int = 42,
    resume: bool = False,
    save_every: int = 500,
    backbone: str | None = None,
    device: str | None = None,
    stats_clips: int = 1024,
    log_every: int = 10,
    progress: bool = True,
) -> FitPriorSummary:
    """Fit f_phi on the cache's scaled clean latents and write the prior folder `out`."""
    _validate(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, tau=tau, save_every=save_every,
              probs={"--noise-aug-prob": noise_aug_prob, "--prompt-dropout": prompt_dropout})
    settings = dict(locals())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LamoError("fit-prior trains a small field in one process; run `lamo fit-prior` without torchrun / accelerate launch")
    out = Path(out)
    from lamo_cli.backbones.cogvideox import resolve_device

    dev = resolve_device(device)

    lat_cache = _open_cache(cache)
    info = lat_cache.info
    num_clips = len(lat_cache)
    if num_clips == 0:
        raise LamoError(f"{cache}: the cache holds no clips; run `lamo encode` with some videos first")
    latent_frames, channels = int(info.latent_shape[0]), int(info.latent_shape[1])
    if latent_frames <= tau:
        raise LamoError(f"--tau {tau}: clips in {cache} have only {latent_frames} latent frames; use a smaller --tau")
    alphas, scheduler_source = _scheduler_alphas(info, backbone)

    from lamo_cli.data.cache import LatentDataset

    dataset = LatentDataset(lat_cache, scaled=True)
    text_dim = int(torch.as_tensor(lat_cache.empty_text_embedding()).shape[-1])
    field_config = MotionFieldConfig(latent_channels=channels, width=width, depth=depth, text_dim=text_dim,
                                     cond_dim=cond_dim, groups=groups, se_hidden=se_hidden)
    settings.update(cache=str(cache), out=str(out), latent_fingerprint=info.latent_fingerprint)

    # ---------------------------------------------------------------- model, optimizer, state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MotionField(field_config)
    model.to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = LRSchedule(base_lr=lr, warmup=warmup, kind="cosine", total_steps=steps)
    generator = seeded_generator(seed, "fit-prior", "noise")
    stream = EpochStream(num_clips, seed)
    start_step, position = 0, 0
    last_ckpt = None

    if resume:
        ckpt_dir = latest_checkpoint(out)
        if ckpt_dir is None:
            _note(progress, f"note: --resume found no checkpoint in {out / 'checkpoints'}; starting at step 0")
        else:
            ckpt = load_checkpoint(ckpt_dir)
            check_resume_settings(ckpt.state.get("settings", {}), settings, RESUME_KEYS, ckpt_dir)
            model.load_state_dict({k: v.to(dev) for k, v in ckpt.weights.items()})
            ckpt.load_optimizer(optimizer)
            rng = ckpt.rng(0)
            if rng is None:
                raise LamoError(f"--resume: {ckpt_dir} has no RNG state file; it is incomplete: delete it to resume from the one before")
            restore_rng_state(rng, {"noise": generator})
            start_step, position, last_ckpt = ckpt.step, int(ckpt.state["position"]), ckpt_dir
    elif stale := list_checkpoints(out):
        _note(progress, f"note: starting a new prior in {out}; removing its old checkpoints (use --resume to continue instead)")
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)

    log = MetricsLog(out / "metrics.jsonl", resume_step=start_step if last_ckpt is not None else None)
    timer = PhaseTimer(dev)
    bar = step_progress(steps, start_step, progress, "fit-prior")
    alphas_dev = alphas.to(dev)
    step_times: list[float] = []

    # ---------------------------------------------------------------- loop
    for step in range(start_step, steps):
        t0 = time.perf_counter()
        with timer.phase("data"):
            indices = stream.rank_batch(position, batch_size)
            latents, pooled = _batch(dataset, indices)
            latents, pooled = latents.to(dev), pooled.to(dev)
        current_lr = schedule.apply(optimizer, step)
        loss_value, terms, grad_norm = field_train_step(
            model, optimizer, latents, pooled, tau=tau, alpha=alpha, alphas_cumprod=alphas_dev,
            noise_aug_strength=noise_aug_strength, noise_aug_prob=noise_aug_prob, prompt_dropout=prompt_dropout,
            generator=generator, grad_clip=grad_clip, timer=timer, step=step + 1, last_checkpoint=last_ckpt,
        )
        position += batch_size
        done = step + 1
        step_times.append(time.perf_counter() - t0)
        phases = timer.pop()
        log.write({"step": done, "loss": loss_value, **terms, "lr": current_lr, "grad_norm": grad_norm,
                   "epoch": stream.epoch_of(position - 1), **{f"time_{k}": v for k, v in phases.items()},
                   "time_step": step_times[-1]})
        if bar is not None:
            bar.update(1)
            if done % max(1, log_every) == 0 or done == steps:
                bar.set_postfix(loss=f"{loss_value:.4f}", cos=f"{terms['cos']:.3f}", lr=f"{current_lr:.2e}", s_step=f"{step_times[-1]:.3f}")
        if done % save_every == 0 or done == steps:
            last_ckpt = save_checkpoint(out, done, weights=dict(model.state_dict()), optimizer=optimizer,
                                        state={"position": position, "settings": settings_json(settings),
                                               "lr_schedule": {"kind": "cosine", "warmup": warmup, "total_steps": steps, "next_step": done}},
                                        generators={"noise": generator})
    if bar is not None:
        bar.close()

    # ---------------------------------------------------------------- outputs
    model.eval()
    explained = _explained_fraction(model, dataset, num_clips, tau, dev)
    records = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
    tail = losses[-max(1, len(losses) // 10):] if losses else [math.nan]
    stats = drift_statistics(lat_cache, stats_clips, seed)
    config = {
        "format": PRIOR_FORMAT,
        "version": PRIOR_VERSION,
        "run_id": uuid.uuid4().hex,
        "field": field_config.to_dict(),
        "tau": tau,
        "alpha": alpha,
        "steps": steps,
        "backbone": info.backbone,
        "scheduler_source": scheduler_source,
        "latent_fingerprint": info.latent_fingerprint,
        "scaling_factor": float(info.scaling_factor),
        "latent_shape": list(info.latent_shape),
        "trained_on": "scaled latents (cache latent * scaling_factor)",
        "seed": seed,
        "num_clips": num_clips,
        "final_loss": float(sum(tail) / len(tail)),
        "last_step": records[-1] if records else None,
        "explained_fraction": explained,
        "drift_statistics": stats,
        "settings": settings_json(settings),
        "library_versions": library_versions(),
    }
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_safetensors(out / PRIOR_WEIGHTS, weights, metadata={"format": "pt", "lamo_prior_config": json.dumps(field_config.to_dict()), "run_id": config["run_id"]})
    write_json(out / PRIOR_CONFIG, config)
    plot_loss_curve(records, out / "loss.png", keys=["loss", "mse", "cos", "lr"], title=f"fit-prior ({num_clips} clips)")
    return FitPriorSummary(
        out=out, steps=steps, start_step=start_step, final_loss=config["final_loss"],
        first_loss=losses[0] if losses else math.nan, num_clips=num_clips,
        num_parameters=sum(p.numel() for p in model.parameters()), explained_fraction=explained,
        seconds_per_step=(sum(step_times) / len(step_times)) if step_times else math.nan,
        drift_statistics=stats, config=config,
    )


def field_train_step(
    model: MotionField,
    optimizer: torch.optim.Optimizer,
    latents: torch.Tensor,
    pooled_text: torch.Tensor,
    *,
    tau: int,
    alpha: float,
    alphas_cumprod: torch.Tensor,
    noise_aug_strength: float,
    noise_aug_prob: float,
    prompt_dropout: float,
    generator: torch.Generator,
    grad_clip: float = 1.0,
    timer: PhaseTimer | None = None,
    step: int = 0,
    last_checkpoint: Path | None = None,
) -> tuple[float, dict[str, float], float]:
    """One optimizer step of f_phi on scaled clean latents [B, T, C, h, w] and pooled prompts [B, D].

    Random draws, in order, from `generator`: prompt dropout per pair, then noise augmentation
    (see `noise_augment`). Targets are the clean lagged differences. Returns (loss, terms, grad norm).
    """
    timer = timer or PhaseTimer(latents.device)
    with timer.phase("forward"):
        inputs, targets, clip_index = field_training_pairs(latents, tau)
        drop = prompt_dropout_mask(inputs.shape[0], prompt_dropout, generator=generator).to(latents.device)
        noisy = noise_augment(inputs, alphas_cumprod, noise_aug_strength, noise_aug_prob, generator=generator)
        pred = model(noisy, pooled_text[clip_index], drop)
        loss, terms = field_loss(pred, targets, alpha)
    loss_value = float(loss.detach())
    ensure_finite(loss_value, step, last_checkpoint, hint="lower --lr")
    with timer.phase("backward"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with timer.phase("optimizer"):
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
        optimizer.step()
    return loss_value, terms, grad_norm


@torch.no_grad()
def _explained_fraction(model: MotionField, dataset, num_clips: int, tau: int, dev: torch.device, max_clips: int = 64) -> float:
    """1 - MSE(f, D z) / MSE(0, D z) on clean pairs with prompts: how much motion the field predicts."""
    err = base = 0.0
    for start in range(0, min(num_clips, max_clips), 8):
        latents, pooled = _batch(dataset, list(range(start, min(start + 8, num_clips, max_clips))))
        inputs, targets, clip_index = field_training_pairs(latents.to(dev), tau)
        pred = model(inputs, pooled.to(dev)[clip_index])
        err += float((pred - targets).double().pow(2).sum())
        base += float(targets.double().pow(2).sum())
    return 1.0 - err / base if base > 0 else math.nan


def _note(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)


def _validate(steps: int, batch_size: int, lr: float, warmup: int, tau: int, save_every: int, probs: dict[str, float]) -> None:
    if steps < 1:
        raise LamoError(f"--steps {steps}: must be at least 1")
    if batch_size < 1:
        raise LamoError(f"--batch-size {batch_size}: must be at least 1")
    if not lr > 0:
        raise LamoError(f"--lr {lr}: must be positive")
    if warmup < 0:
        raise LamoError(f"--warmup {warmup}: must be >= 0")
    if tau < 1:
        raise LamoError(f"--tau {tau}: must be a positive frame lag")
    if save_every < 1:
        raise LamoError(f"--save-every {save_every}: must be at least 1")
    for name, p in probs.items():
        if not 0.0 <= p <= 1.0:
            raise LamoError(f"{name} {p}: must be a probability in [0, 1]")


# ==================================================================== loading (for guidance / heatmaps)
def load_prior(
    path: str | os.PathLike, expected_fingerprint: str | None = None, device: str | torch.device = "cpu"
) -> tuple[MotionField, dict[str, Any]]:
    """A fitted prior folder (or its motion_field.safetensors) -> (frozen field in eval mode, config).

    LamoError (one line) for a missing folder, a missing/corrupt file, or a prior fitted on the
    latents of another backbone than `expected_fingerprint`.
    """
    path = Path(path)
    folder = path.parent if path.suffix == ".safetensors" else path
    if not folder.is_dir():
        raise LamoError(f"--prior {folder}: no such folder; fit one with `lamo fit-prior CACHE --out {folder}`")
    config = read_json_checked(folder / PRIOR_CONFIG)
    if config.get("format") != PRIOR_FORMAT or "field" not in config:
        raise LamoError(f"--prior {folder}: {PRIOR_CONFIG} is not a lamo motion-prior config; pass a folder written by `lamo fit-prior`")
    if expected_fingerprint is not None and config.get("latent_fingerprint") != expected_fingerprint:
        raise LamoError(
            f"--prior {folder}: fitted on latents of backbone {config.get('backbone')!r} (fingerprint {config.get('latent_fingerprint')}) "
            f"but the backbone in use has fingerprint {expected_fingerprint}; fit a prior on a cache encoded with this backbone"
        )
    weights_path = folder / PRIOR_WEIGHTS
    tensors = load_safetensors_checked(weights_path)
    run_id = _safetensors_metadata(weights_path).get("run_id")
    if run_id is not None and config.get("run_id") is not None and run_id != config["run_id"]:
        raise LamoError(f"--prior {folder}: {PRIOR_WEIGHTS} and {PRIOR_CONFIG} come from different runs (interrupted write?); re-run `lamo fit-prior`")
    try:
        field = MotionField(MotionFieldConfig.from_dict(config["field"]))
        field.load_state_dict(tensors)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise LamoError(f"--prior {folder}: weights do not match the recorded field config ({str(exc).splitlines()[0][:160]}); re-run `lamo fit-prior`") from None
    field.to(device).eval().requires_grad_(False)
    return field, config


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # noqa: BLE001 - already validated by load_safetensors_checked
        return {}
