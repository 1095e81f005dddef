"""`finetune`: LoRA or full fine-tuning of a CogVideoX transformer with the Motion Drift Loss
(METHOD.md sections 1 and 5) on a latent cache.

Per micro-batch: t ~ U{0..999} (or logit-normal: --timestep-sampling), eps ~ N(0, I),
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
v_hat = transformer(x_t, t, text), x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat and
L = L_diff + drift_weight * w(t) * L_drift (drift_weight 0: the plain fine-tune, drift never computed).
With --moving-weight B > 0, L_diff weights each latent cell by 1 + B * (how much it moves), normalised
to mean 1 per clip (`moving_cell_weights`; not in the paper, off by default).

Runs on one process or under DDP (`torchrun` / `accelerate launch`; gloo on CPU). The data order is
a seeded permutation per epoch over the cache, each global batch split by rank; a checkpoint stores
the stream position, so --resume continues with exactly the batches an uninterrupted run would see.

Run folder RUN:
    run.json                       every setting, seeds, world size, effective batch, backbone, versions
    metrics.jsonl, loss.png        per-step terms by name and per-phase timing; with --val-cache also
                                   the held-out loss (step 0 and every --val-every steps)
    checkpoints/step-XXXXXX/       trainable weights, optimizer, RNG per rank, data position (last 2)
    pytorch_lora_weights.safetensors + lora.json   (LoRA; loadable by CogVideoXPipeline.load_lora_weights)
    transformer/                   (--full; diffusers save_pretrained, safetensors)
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any, Callable

import torch

from lamo_cli.errors import LamoError
from lamo_cli.versions import library_versions
from lamo_cli.fileio import save_safetensors, write_json
from lamo_cli.motion.drift import diffusion_loss, lamo_objective, moving_cell_weights, x0_from_v
from lamo_cli.training import (
    CHECKPOINTS_DIR,
    EpochStream,
    LRSchedule,
    MetricsLog,
    PhaseTimer,
    STATE_FILE,
    TIMESTEP_SAMPLINGS,
    WEIGHTS_FILE,
    begin_checkpoint,
    check_resume_settings,
    checkpoint_name,
    derive_seed,
    ensure_finite,
    finish_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_safetensors_checked,
    peak_memory,
    pending_checkpoint_dir,
    plot_loss_curve,
    read_json_checked,
    read_metrics,
    restore_rng_state,
    sample_timesteps,
    seeded_generator,
    settings_json,
    step_progress,
    write_checkpoint_files,
    write_rng_file,
)

RUN_FORMAT = "lamo-finetune-run"
RUN_VERSION = 1
RUN_JSON = "run.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_JSON = "lora.json"
FULL_DIR = "transformer"
ADAPTER_NAME = "lamo"
DEFAULT_LORA_TARGETS = "to_q,to_k,to_v,to_out.0"

# Settings that change the training math: a resumed run must keep them (steps may grow).
RESUME_KEYS = (
    "drift_weight", "lora_rank", "lora_alpha", "lora_targets", "full", "lr", "warmup", "tau", "weight_kind",
    "seed", "caption_dropout", "weight_decay", "adam_beta1", "adam_beta2", "grad_clip", "effective_batch_size",
    "latent_fingerprint", "lr_schedule", "ema_decay", "timestep_sampling", "logit_mean", "logit_std",
    "moving_weight", "moving_threshold", "optimizer_kind",
)
OPTIMIZERS = ("adamw", "adamw8bit")  # torch's AdamW; bitsandbytes' AdamW8bit (moments in 8 bits: 2 bytes a weight, not 8)
VALIDATION_DIR = "validation"  # RUN/validation/step-N/NNN-slug.mp4: videos of --val-prompts at step N
VALIDATION_SEED = 42  # validation prompt i is sampled from seed VALIDATION_SEED + i at every step, so steps compare
EMA_FILE = "ema.safetensors"  # in a checkpoint folder: the moving average of the trainable weights


@dataclass
class FinetuneSummary:
    out: Path
    kind: str  # "lora" or "full"
    steps: int
    start_step: int
    first_loss: float
    final_loss: float
    world_size: int
    effective_batch_size: int
    trainable_parameters: int
    seconds_per_step: float
    mixed_precision: str
    backbone: str
    rank: int = 0
    stopped_at_step: int | None = None  # --max-minutes ended the run here, before `steps`
    val_loss: dict[str, Any] | None = None  # --val-cache: first and last held-out loss (see heldout_summary)
    peak_memory: dict[str, Any] | None = None  # training.peak_memory of the main process
    val_physics: dict[str, Any] | None = None  # --val-prompts with world captions: first and last physics score
    outputs: dict[str, str] = dataclass_field(default_factory=dict)
    phase_seconds: dict[str, float] = dataclass_field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class FinetunePlan:
    """What a run would train (`finetune(..., dry_run=True)`), assembled without training or writing."""
    out: Path
    run: dict[str, Any]  # the run.json the run would write
    start_step: int  # where it would start (a checkpoint's step with --resume)
    epochs: float  # passes over the cache that the remaining steps make
    first_batch: list[tuple[str, str]]  # (source clip, caption) of the next micro-batch on this process
    distinct_captions: int
    timestep_quantiles: dict[str, int]  # "10%", "50%", "90%" of the training timestep density
    state_bytes: int  # fp32 trainable weights + gradients + AdamW moments (fp32 or 8-bit) (+ the moving average)
    frozen_bytes: int  # the rest of the transformer, in its dtype (activations not counted)
    checkpoints: int  # how many the remaining steps write
    validation_prompts: int = 0  # --val-prompts
    rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ==================================================================== helpers
def parse_targets(targets: str | list[str] | tuple[str, ...]) -> list[str]:
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets)]
    names = [t for t in names if t]
    if not names:
        raise LamoError("--lora-targets: give at least one module name, e.g. to_q,to_k,to_v,to_out.0")
    return names


def transformer_signature(transformer: torch.nn.Module) -> str:
    """Architecture identity of a transformer: class + every base weight's name and shape.

    LoRA wrapping is ignored (".base_layer" dropped, lora_* skipped), so the same model with or
    without an adapter has the same signature; 2B and 5B (or the tiny model) differ.
    """
    digest = hashlib.sha256(type(transformer).__name__.encode())
    for name, tensor in transformer.state_dict().items():
        if "lora_" in name:
            continue
        digest.update(f"{name.replace('.base_layer', '')}:{tuple(tensor.shape)};".encode())
    return digest.hexdigest()[:16]


MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


def resolve_mixed_precision(requested: str, device: torch.device) -> tuple[str, str | None]:
    """(mode, note): auto is bf16 autocast on CUDA and fp32 on the CPU. An explicit bf16 is honoured
    on the CPU too (fp32 master weights, bf16 matmuls): much faster where the CPU has AMX tiles,
    much slower where it has not (benchmarks/cpu_precision.py measures it). No fp16 on the CPU."""
    validate_settings(mixed_precision=requested)
    if device.type != "cuda":
        if requested == "fp16":
            return "no", "--mixed-precision fp16 ignored on CPU (no fp16 autocast there); training in fp32 (bf16 is allowed)"
        return ("bf16" if requested == "bf16" else "no"), None
    if requested == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "no"), None
    return requested, None


def _make_accelerator(mixed_precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = not torch.cuda.is_available()
    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    except ValueError as exc:
        # An earlier in-process run fixed another precision in accelerate's singleton state.
        if "already been initialized" not in str(exc) or torch.distributed.is_initialized():
            raise
        AcceleratorState._reset_state(True)
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


# Each training setting's rule: (is the value allowed, what to say when it is not).
_SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": (lambda v: v >= 1, "must be at least 1"),
    "batch_size": (lambda v: v >= 1, "must be at least 1"),
    "grad_accum": (lambda v: v >= 1, "must be at least 1"),
    "lr": (lambda v: v > 0 and math.isfinite(v), "must be positive"),
    "warmup": (lambda v: v >= 0, "must be >= 0"),
    "tau": (lambda v: v >= 1, "must be a positive frame lag"),
    "save_every": (lambda v: v >= 1, "must be at least 1"),
    "drift_weight": (lambda v: v >= 0 and math.isfinite(v), "must be >= 0 (0 = plain fine-tune)"),
    "weight_kind": (lambda v: v in ("release", "abar"), "use 'release' or 'abar'"),
    "lora_rank": (lambda v: v >= 1, "must be at least 1"),
    "lora_alpha": (lambda v: v > 0, "must be positive"),
    "caption_dropout": (lambda v: 0.0 <= v <= 1.0, "must be a probability in [0, 1]"),
    "lr_schedule": (lambda v: v in ("constant", "cosine"), "use 'constant' or 'cosine'"),
    "ema_decay": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1) (0 = no moving average)"),
    "timestep_sampling": (lambda v: v in TIMESTEP_SAMPLINGS, f"use {' or '.join(TIMESTEP_SAMPLINGS)}"),
    "logit_mean": (math.isfinite, "must be a finite number"),
    "logit_std": (lambda v: v > 0 and math.isfinite(v), "must be positive"),
    "moving_weight": (lambda v: v >= 0 and math.isfinite(v), "must be >= 0 (0 = every latent cell weighs the same, as in the paper)"),
    "moving_threshold": (lambda v: v > 0 and math.isfinite(v), "must be positive (a latent deviation, in scaled-latent units)"),
    "mixed_precision": (lambda v: v in MIXED_PRECISIONS, f"use {', '.join(MIXED_PRECISIONS)}"),
    "max_minutes": (lambda v: v >= 0 and math.isfinite(v), "must be >= 0 (0 = no time limit)"),
    "val_clips": (lambda v: v >= 1, "must be at least 1"),
    "val_every": (lambda v: v >= 0, "must be >= 0 (0 = every --save-every steps)"),
    "val_sample_steps": (lambda v: v >= 1, "must be at least 1"),
}


def validate_settings(option_prefix: str = "", **settings: Any) -> None:
    """Raise LamoError naming the first setting outside its rule, as the option that set it
    (`option_prefix` "transformer-" for build-tiny's --transformer-lr etc.). Checked before any work."""
    for name, value in settings.items():
        allowed, rule = _SETTING_RULES[name]
        if not allowed(value):
            shown = repr(value) if isinstance(value, str) else value
            raise LamoError(f"--{option_prefix}{name.replace('_', '-')} {shown}: {rule}")


def _device_generator(device: torch.device, seed: int, rank: int) -> torch.Generator | None:
    """The GPU generator of the diffusion noise (None on the CPU, where `noise_gen` draws it)."""
    if device.type != "cuda":
        return None
    return torch.Generator(device=device).manual_seed(derive_seed(seed, "finetune", "device-noise", rank))


def add_noise(x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Forward diffusion `sqrt(abar) x0 + sqrt(1 - abar) eps` per sample (= scheduler.add_noise)."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    abar = abar.to(torch.float64).reshape(shape)
    return (abar.sqrt().to(x0.dtype) * x0 + (1.0 - abar).sqrt().to(x0.dtype) * eps).to(x0.dtype)


# ==================================================================== held-out loss
DEFAULT_VAL_TIMESTEPS = "100,300,500,700,900"


def parse_val_timesteps(text: str | list[int] | tuple[int, ...], num_train_timesteps: int = 1000) -> tuple[int, ...]:
    """Sorted distinct training timesteps from "100,300,..." (or a list); LamoError naming --val-timesteps."""
    try:
        parts = text.split(",") if isinstance(text, str) else list(text)
        values = tuple(sorted({int(str(v).strip()) for v in parts if str(v).strip()}))
    except ValueError:
        values = ()
    if not values or not all(0 <= v < num_train_timesteps for v in values):
        raise LamoError(f"--val-timesteps {text!r}: give comma-separated training timesteps in 0..{num_train_timesteps - 1}, "
                        f"e.g. {DEFAULT_VAL_TIMESTEPS}")
    return values


@dataclass
class HeldOutSet:
    """Held-out clips asked the same question at every validation: the diffusion loss at fixed
    timesteps with fixed noise, so that numbers compare step for step, within a run and across runs
    (the noise depends only on `seed`, the clip's position and the timestep)."""

    x0: torch.Tensor  # [N, T, C, h, w], scaled latents
    text: torch.Tensor  # [N, L, D]
    timesteps: tuple[int, ...]
    seed: int = 0

    def pairs(self, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
        """This rank's share of the (clip, timestep) pairs."""
        every = [(i, t) for i in range(len(self.x0)) for t in self.timesteps]
        return every[rank::world_size]

    def noise(self, clip: int, timestep: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "val-noise", clip, timestep))
        return torch.randn(tuple(self.x0.shape[1:]), generator=gen)


def heldout_loss(predict_v: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], held: HeldOutSet,
                 alphas_cumprod: torch.Tensor, batch_size: int = 8, device: torch.device | str = "cpu",
                 rank: int = 0, world_size: int = 1, autocast: Callable[[], Any] = contextlib.nullcontext,
                 input_dtype: torch.dtype = torch.float32,
                 on_prediction: Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """[len(timesteps), 2] float64: (sum, count) of the per-clip diffusion loss over this rank's pairs.

    `predict_v(x_t, t, text)` is the model; the loss is the training one (`diffusion_loss`, the v-MSE),
    computed clip by clip so that a sum over ranks is the same whatever the batch split.
    `on_prediction(clip, t, x0_hat, x0, abar)`, if given, sees every pair's prediction ([1, ...]
    each), for measures beside the loss without running the model again."""
    device = torch.device(device)
    slot = {t: k for k, t in enumerate(held.timesteps)}
    totals = torch.zeros(len(held.timesteps), 2, dtype=torch.float64)
    pairs = held.pairs(rank, world_size)
    alphas = alphas_cumprod.to(device)
    with torch.no_grad():
        for start in range(0, len(pairs), max(1, batch_size)):
            chunk = pairs[start:start + max(1, batch_size)]
            clips = [i for i, _ in chunk]
            x0 = held.x0[clips].to(device)
            text = held.text[clips].to(device)
            t = torch.tensor([t for _, t in chunk], device=device)
            eps = torch.stack([held.noise(i, step) for i, step in chunk]).to(device)
            abar = alphas[t]
            x_t = add_noise(x0, eps, abar)
            with autocast():
                v_hat = predict_v(x_t.to(input_dtype), t, text.to(input_dtype))
            x0_hat = x0_from_v(x_t, v_hat.float(), abar)
            for k, (clip, step) in enumerate(chunk):
                totals[slot[step], 0] += float(diffusion_loss(x0_hat[k:k + 1], x0[k:k + 1], abar[k:k + 1]))
                totals[slot[step], 1] += 1
                if on_prediction is not None:
                    on_prediction(clip, step, x0_hat[k:k + 1], x0[k:k + 1], abar[k:k + 1])
    return totals


def heldout_values(totals: torch.Tensor, timesteps: tuple[int, ...]) -> dict[str, Any]:
    """{"val_loss": mean over every pair, "val_loss_by_t": {"t": mean}} from `heldout_loss` totals."""
    by_t = {str(t): float(totals[k, 0] / totals[k, 1]) for k, t in enumerate(timesteps)}
    return {"val_loss": float(totals[:, 0].sum() / totals[:, 1].sum()), "val_loss_by_t": by_t}


def load_heldout_set(val_cache: str | os.PathLike, clips: int, timesteps: tuple[int, ...], fingerprint: str,
                     scaling_factor: float, spec: str, seed: int = 0) -> HeldOutSet:
    """The first `clips` clips of a cache encoded by the same backbone, scaled, with their captions.
    The noise seed is not the run's: runs with different training seeds answer the same question."""
    from lamo_cli.data.cache import LatentCache, LatentDataset

    try:
        cache = LatentCache(val_cache)
    except LamoError as exc:
        raise LamoError(f"--val-cache: {exc}") from None
    if len(cache) == 0:
        raise LamoError(f"--val-cache {val_cache} holds no clips; encode some held-out videos into it with `lamo encode`")
    cache.check_fingerprint(fingerprint, f"--backbone {spec}")
    if abs(float(cache.info.scaling_factor) - scaling_factor) > 1e-6:
        raise LamoError(f"--val-cache {val_cache} records scaling factor {cache.info.scaling_factor} but --backbone {spec} "
                        f"uses {scaling_factor}; re-encode it with this backbone")
    indices = list(range(min(clips, len(cache))))
    x0, text = LatentDataset(cache, scaled=True).batch(indices, cache.empty_text_embedding(), torch.zeros(len(indices), dtype=torch.bool))
    return HeldOutSet(x0=x0.cpu(), text=text.cpu(), timesteps=timesteps, seed=seed)


def heldout_summary(records: list[dict[str, Any]], held: HeldOutSet) -> dict[str, Any] | None:
    """First and last held-out loss of a run's metrics (a resumed run's earlier ones included)."""
    rows = [r for r in records if isinstance(r.get("val_loss"), (int, float))]
    if not rows:
        return None
    return {"clips": len(held.x0), "timesteps": list(held.timesteps), "first_step": rows[0]["step"], "first": rows[0]["val_loss"],
            "last_step": rows[-1]["step"], "last": rows[-1]["val_loss"], "last_by_t": rows[-1].get("val_loss_by_t")}


def _physics_summary(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The physics score of the first and last validation videos (metrics with val_PC)."""
    rows = [r for r in records if isinstance(r.get("val_PC"), (int, float))]
    if not rows:
        return None

    def pick(row: dict[str, Any]) -> dict[str, Any]:
        return {"step": row["step"], "scored": row.get("val_scored"), **{m: row[f"val_{m}"] for m in PHYSICS_METRICS}}

    return {"first": pick(rows[0]), "last": pick(rows[-1])}


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().float().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


# ==================================================================== the stage
def finetune(
    cache: str | os.PathLike = "lamo-cache",
    backbone: str | None = None,
    out: str | os.PathLike = "lamo-run",
    steps: int = 2000,
    drift_weight: float = 0.4,
    lora_rank: int = 128,
    lora_alpha: float = 64.0,
    lora_targets: str | list[str] = DEFAULT_LORA_TARGETS,
    full: bool = False,
    lr: float = 5e-5,
    warmup: int = 200,
    batch_size: int = 1,
    grad_accum: int = 1,
    tau: int = 2,
    weight_kind: str = "release",
    gradient_checkpointing: bool = True,
    mixed_precision: str = "auto",
    save_every: int = 500,
    keep_checkpoints: int = 2,
    resume: bool = False,
    seed: int = 42,
    caption_dropout: float = 0.0,
    weight_decay: float = 1e-4,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.99,
    grad_clip: float = 1.0,
    log_every: int = 1,
    lr_schedule: str = "constant",
    ema_decay: float = 0.0,
    timestep_sampling: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    moving_weight: float = 0.0,
    moving_threshold: float = 1.0,
    max_minutes: float = 0.0,
    val_cache: str | os.PathLike | None = None,
    val_clips: int = 16,
    val_every: int = 0,
    val_timesteps: str = DEFAULT_VAL_TIMESTEPS,
    val_prompts: str | os.PathLike | None = None,
    val_sample_steps: int = 30,
    optimizer_kind: str = "adamw",
    progress: bool = True,
    dry_run: bool = False,
) -> FinetuneSummary | FinetunePlan:
    """Fine-tune the backbone's transformer on the cache; write the run folder `out`. `dry_run`:
    check every setting, the cache, the backbone and a --resume checkpoint as a run would, then
    return the FinetunePlan instead of training (nothing is written)."""
    settings = settings_json(dict(locals()))
    settings.pop("dry_run")
    validate_settings(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup=warmup, tau=tau,
                      save_every=save_every, drift_weight=drift_weight, weight_kind=weight_kind, lora_rank=lora_rank,
                      lora_alpha=lora_alpha, caption_dropout=caption_dropout, lr_schedule=lr_schedule, ema_decay=ema_decay,
                      timestep_sampling=timestep_sampling, logit_mean=logit_mean, logit_std=logit_std,
                      moving_weight=moving_weight, moving_threshold=moving_threshold,
                      mixed_precision=mixed_precision, max_minutes=max_minutes, val_clips=val_clips, val_every=val_every,
                      val_sample_steps=val_sample_steps)
    parse_val_timesteps(val_timesteps)  # a bad list fails before any work (checked again against the scheduler)
    check_optimizer(optimizer_kind)
    prompts = read_validation_prompts(val_prompts) if val_prompts is not None else []
    targets = parse_targets(lora_targets)
    settings["lora_targets"] = targets
    out = Path(out)

    from lamo_cli.backbones import load_backbone
    from lamo_cli.data.cache import LatentCache, LatentDataset

    if not resume and list_checkpoints(out):
        raise LamoError(f"--out {out} already holds a run with checkpoints; pass --resume to continue it, or choose another --out (or delete the folder)")

    # ---------------------------------------------------------------- processes, precision
    probe_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision, precision_note = resolve_mixed_precision(mixed_precision, probe_device)
    accelerator = _make_accelerator(precision)
    rank, world_size, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    say = (lambda msg: print(msg, flush=True)) if (progress and main) else (lambda msg: None)
    if precision_note:
        say(f"note: {precision_note}")
    effective_batch = batch_size * grad_accum * world_size
    settings.update(mixed_precision_used=precision, world_size=world_size, effective_batch_size=effective_batch)

    # ---------------------------------------------------------------- data and backbone
    lat_cache = LatentCache(cache)
    info = lat_cache.info
    if len(lat_cache) == 0:
        raise LamoError(f"cache {cache} holds no clips; run `lamo encode` with some videos first")
    if int(info.latent_shape[0]) <= tau:
        raise LamoError(f"--tau {tau}: clips in {cache} have only {info.latent_shape[0]} latent frames; use a smaller --tau")
    spec = backbone or info.backbone
    try:
        bb = load_backbone(spec, device=device)
    except LamoError as exc:
        if backbone is not None:
            raise
        raise LamoError(f"{exc} (the cache names backbone {info.backbone!r}; pass --backbone)") from None
    fingerprint = bb.latent_fingerprint()
    lat_cache.check_fingerprint(fingerprint, f"--backbone {spec}")
    scaling_factor = bb.scaling_factor
    if abs(float(info.scaling_factor) - scaling_factor) > 1e-6:
        raise LamoError(f"cache {cache} records scaling factor {info.scaling_factor} but --backbone {spec} uses {scaling_factor}; re-encode the cache")
    val_text = bb.encode_text(prompts) if prompts else None  # the text encoder goes next; the embeddings stay
    val_negative = bb.encode_text([""]) if prompts else None
    # training needs only the transformer (and the VAE to decode validation videos)
    bb.release(*(("text_encoder", "tokenizer") if prompts else ("vae", "text_encoder", "tokenizer")))
    gc.collect()
    settings.update(backbone=bb.name, backbone_source=bb.source, latent_fingerprint=fingerprint, cache=str(cache))

    dataset = LatentDataset(lat_cache, scaled=True)
    empty_text = torch.as_tensor(lat_cache.empty_text_embedding(), dtype=torch.float32)
    if device.type == "cuda" and dataset.to(device):  # batches are then gathered on the GPU
        empty_text = empty_text.to(device)
    transformer = bb.transformer
    _check_shapes(transformer, info, empty_text, bb.uses_rope, spec)
    signature = transformer_signature(transformer)
    alphas = bb.alphas_cumprod()  # float32 [1000], the scheduler's own
    num_train_timesteps = len(alphas)
    held = None
    if val_cache is not None:
        held = load_heldout_set(val_cache, val_clips, parse_val_timesteps(val_timesteps, num_train_timesteps),
                                fingerprint, scaling_factor, spec)
        settings.update(val_clips_used=len(held.x0))

    # ---------------------------------------------------------------- out folder and resume
    checkpoint_dir = latest_checkpoint(out) if resume else None
    if resume and checkpoint_dir is None:
        say(f"note: --resume found no checkpoint in {out / 'checkpoints'}; starting at step 0")
    ckpt = load_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        check_resume_settings(ckpt.state.get("settings", {}), settings, RESUME_KEYS, checkpoint_dir)
        if ckpt.step > steps:
            raise LamoError(f"--steps {steps}: {checkpoint_dir} is already at step {ckpt.step}; pass --steps >= {ckpt.step}")

    # ---------------------------------------------------------------- trainable model
    transformer.train()
    lora_config = None
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(derive_seed(seed, "init"))  # same LoRA init on every rank
        if full:
            if transformer.dtype != torch.float32:
                transformer.to(torch.float32)  # fp32 master weights
            transformer.requires_grad_(True)
        else:
            from peft import LoraConfig

            lora_config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=targets, init_lora_weights=True)
            try:
                transformer.add_adapter(lora_config)
            except ValueError as exc:
                raise LamoError(f"--lora-targets {','.join(targets)}: {str(exc).splitlines()[0][:200]}") from None
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()  # fp32 master weights for the trained parameters
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    input_dtype = torch.float32 if full else bb.dtype
    optimizer = make_optimizer(optimizer_kind, trainable, lr, (adam_beta1, adam_beta2), weight_decay, device)
    schedule = LRSchedule(base_lr=lr, warmup=warmup, kind=lr_schedule, total_steps=steps)
    # A moving average of the weights (diffusers' EMAModel, as its training scripts use): what is saved
    # at the end. Worth it when training from scratch; a short LoRA fine-tune does not need it.
    ema = None
    if ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(trainable, decay=ema_decay, use_ema_warmup=True, power=3 / 4, foreach=device.type == "cuda")
    noise_gen = seeded_generator(seed, "finetune", "noise", rank)
    # On a GPU the diffusion noise is drawn there: drawing a large batch's noise on the CPU took as
    # long as the GPU step. Timesteps and caption dropout stay on the CPU generator.
    eps_gen = _device_generator(device, seed, rank)
    generators = {"noise": noise_gen} if eps_gen is None else {"noise": noise_gen, "device_noise": eps_gen}
    stream = EpochStream(len(dataset), seed)
    start_step, position, last_good = 0, 0, None
    if ckpt is not None:
        names = {n for n, p in transformer.named_parameters() if p.requires_grad}
        if set(ckpt.weights) != names:
            raise LamoError(f"--resume: {checkpoint_dir} holds other trainable weights than this model; resume with the same --lora-* / --full settings")
        transformer.load_state_dict({k: v.to(device) for k, v in ckpt.weights.items()}, strict=False)
        ckpt.load_optimizer(optimizer)
        if ema is not None:
            _load_ema(ema, checkpoint_dir, [n for n, p in transformer.named_parameters() if p.requires_grad], ckpt.step)
        rng = ckpt.rng(rank)
        if rng is not None:
            restore_rng_state(rng, {"noise": noise_gen})
            if eps_gen is not None and "generator.device_noise" in rng:
                eps_gen.set_state(rng["generator.device_noise"].to(torch.uint8))
            elif eps_gen is not None:
                eps_gen.manual_seed(derive_seed(seed, "finetune", "device-noise", rank, ckpt.step))
                say(f"note: {checkpoint_dir} was written on another kind of device; GPU noise reseeded")
        else:
            noise_gen.manual_seed(derive_seed(seed, "finetune", "noise", rank, ckpt.step))  # = seeded_generator(..., step)
            if eps_gen is not None:
                eps_gen.manual_seed(derive_seed(seed, "finetune", "device-noise", rank, ckpt.step))
            say(f"note: {checkpoint_dir} has no RNG state for rank {rank} (world size changed); noise reseeded")
        start_step, position, last_good = ckpt.step, int(ckpt.state["position"]), checkpoint_dir
    del ckpt

    model, optimizer = accelerator.prepare(transformer, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    run_info = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "kind": "full" if full else "lora",
        "settings": settings,
        "seeds": {"seed": seed, "data": "seeded permutation per epoch (seed, 'data', epoch)", "noise": "per rank (seed, 'finetune', 'noise', rank)",
                  "diffusion_noise_drawn_on": device.type},
        "world_size": world_size,
        "effective_batch_size": effective_batch,
        "backbone": {"name": bb.name, "source": bb.source, "latent_fingerprint": fingerprint, "transformer_signature": signature,
                     "dtype": str(bb.dtype).replace("torch.", ""), "scaling_factor": scaling_factor},
        "cache": {"path": str(cache), "num_clips": len(dataset), "latent_shape": list(info.latent_shape)},
        "lora": None if full else {"rank": lora_rank, "alpha": lora_alpha, "targets": targets, "scale": lora_alpha / lora_rank},
        "trainable_parameters": sum(p.numel() for p in trainable),
        "library_versions": library_versions(),
        "status": "running",
    }
    if dry_run:
        plan = _plan(out, run_info, dataset, lat_cache, stream, position, start_step, steps, batch_size, world_size, rank,
                     transformer, trainable, ema is not None, save_every, num_train_timesteps, timestep_sampling,
                     logit_mean, logit_std, optimizer_kind)
        plan.validation_prompts = len(prompts)
        return plan
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / LORA_WEIGHTS, out / LORA_JSON):
            stale.unlink(missing_ok=True)  # a fresh or resumed run's outputs come at its end
        write_json(out / RUN_JSON, run_info)
    log = MetricsLog(out / "metrics.jsonl", resume_step=start_step if last_good is not None else None, enabled=main)
    timer = PhaseTimer(device, every=50)
    bar = step_progress(steps, start_step, progress and main, "finetune")
    step_times: list[float] = []
    phase_totals: dict[str, float] = {}
    timed_steps = 0
    autocast = accelerator.autocast
    alphas_dev = alphas.to(device)
    every_val = val_every or save_every

    @contextlib.contextmanager
    def weights_that_would_be_saved():
        """The model in eval mode with the weights a save now would write (the moving average when
        there is one); the training weights and mode come back afterwards."""
        if ema is not None:
            ema.store(trainable)
            ema.copy_to(trainable)
        unwrapped.eval()
        try:
            yield
        finally:
            unwrapped.train()
            if ema is not None:
                ema.restore(trainable)

    def validate() -> dict[str, Any]:
        """Held-out loss of the weights that would be saved now."""
        with weights_that_would_be_saved():
            totals = heldout_loss(lambda x, t, c: bb.predict_v(x, t, c, transformer=unwrapped), held, alphas_dev, batch_size,
                                  device, rank, world_size, autocast, input_dtype)
        totals = accelerator.reduce(totals.to(device), reduction="sum").cpu() if world_size > 1 else totals
        return heldout_values(totals, held.timesteps)

    def validation_videos(step: int) -> dict[str, Any]:
        """This process's share of --val-prompts sampled with the weights that would be saved now,
        written to RUN/validation/step-N (prompt i from seed VALIDATION_SEED + i at every step)."""
        tick = time.perf_counter()
        folder = out / VALIDATION_DIR / checkpoint_name(step)
        with weights_that_would_be_saved():
            written = [_write_validation_video(bb, unwrapped, folder, i, prompts[i], val_text[i:i + 1], val_negative, step,
                                               val_sample_steps, autocast, fingerprint, "moving average" if ema is not None else "raw")
                       for i in range(rank, len(prompts), world_size)]
        counts = _physics_counts(written)
        if world_size > 1:
            counts = accelerator.reduce(counts.to(device), reduction="sum").cpu()
        record = {"val_videos": str(folder), "time_val_videos": time.perf_counter() - tick}
        if counts[0] > 0:  # some prompts are physics-world captions: their score, as `lamo eval` gives it
            record.update({f"val_{metric}": float(100.0 * counts[k + 1] / counts[0]) for k, metric in enumerate(PHYSICS_METRICS)},
                          val_scored=int(counts[0]))
        return record

    last_val = None
    start_record: dict[str, Any] = {}
    if held is not None and start_step == 0:
        last_val = validate()
        start_record.update(last_val)
    if prompts and start_step == 0:
        start_record.update(validation_videos(0))
    if start_record:
        log.write({"step": 0, **start_record})

    # ---------------------------------------------------------------- loop
    accelerator.wait_for_everyone()
    deadline = time.perf_counter() + 60.0 * max_minutes if max_minutes > 0 else None
    stopped_at = None
    for step in range(start_step, steps):
        t_step = time.perf_counter()
        timed_steps += timer.start_step(step)
        sums = {"loss": 0.0, "diffusion": 0.0, "drift": 0.0, "drift_weight_w": 0.0}
        for micro in range(grad_accum):
            with timer.phase("data"):
                micro_position = position + micro * batch_size * world_size
                indices = stream.rank_batch(micro_position, batch_size, world_size, rank)
                drop = torch.rand(len(indices), generator=noise_gen) < caption_dropout if caption_dropout > 0 else torch.zeros(len(indices), dtype=torch.bool)
                x0, text = dataset.batch(indices, empty_text, drop)
                t = sample_timesteps(timestep_sampling, len(indices), num_train_timesteps, noise_gen, logit_mean, logit_std)
                if eps_gen is None:
                    eps = torch.randn(x0.shape, generator=noise_gen)
                else:
                    eps = torch.randn(x0.shape, generator=eps_gen, device=device)
                x0, text, eps, t = x0.to(device), text.to(device), eps.to(device), t.to(device)
                abar = alphas_dev[t]
                x_t = add_noise(x0, eps, abar)
                # a function of the clean batch alone: part of the data, not of the model's step
                cell_weight = moving_cell_weights(x0, moving_weight, moving_threshold) if moving_weight > 0 else None
            sync = micro == grad_accum - 1
            with timer.phase("forward"):
                with (contextlib.nullcontext() if sync or world_size == 1 else accelerator.no_sync(model)):
                    with autocast():
                        v_hat = bb.predict_v(x_t.to(input_dtype), t, text.to(input_dtype), transformer=model)
                    x0_hat = x0_from_v(x_t, v_hat.float(), abar)
                    loss, terms = lamo_objective(x0_hat, x0, abar, t, drift_weight=drift_weight, tau=tau,
                                                 weight_kind=weight_kind, alphas_cumprod=alphas, cell_weight=cell_weight)
                    reduced = accelerator.reduce(torch.tensor([terms["loss"], terms["diffusion"], terms["drift"], terms["drift_weight_w"]],
                                                              device=device, dtype=torch.float64), reduction="mean")
                    values = dict(zip(sums, reduced.tolist()))
                    ensure_finite(values["loss"], step + 1, last_good, hint="lower --lr, or use --mixed-precision bf16/no instead of fp16")
            with timer.phase("backward"):
                with (contextlib.nullcontext() if sync or world_size == 1 else accelerator.no_sync(model)):
                    accelerator.backward(loss / grad_accum)
            for key in sums:
                sums[key] += values[key] / grad_accum
        with timer.phase("optimizer"):
            grad_norm = float(accelerator.clip_grad_norm_(trainable, grad_clip))
            if precision != "fp16":
                ensure_finite(grad_norm, step + 1, last_good, what="gradient norm", hint="lower --lr")
            current_lr = schedule.apply(optimizer, step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(trainable)
        position += batch_size * world_size * grad_accum
        done = step + 1
        step_times.append(time.perf_counter() - t_step)
        phases = timer.pop()
        for key, value in phases.items():
            phase_totals[key] = phase_totals.get(key, 0.0) + value
        record = {"step": done, **sums, "lr": current_lr, "grad_norm": grad_norm, "samples_seen": position,
                  "epoch": stream.epoch_of(position - 1), **{f"time_{k}": v for k, v in phases.items()}, "time_step": step_times[-1]}
        if device.type == "cuda":
            record["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        if held is not None and (done % every_val == 0 or done == steps):
            last_val = validate()
            record.update(last_val)
        if prompts and (done % every_val == 0 or done == steps):
            record.update(validation_videos(done))
        log.write(record)
        if bar is not None:
            bar.update(1)
            if done % max(1, log_every) == 0 or done == steps:
                postfix = {"loss": f"{sums['loss']:.4f}", "diff": f"{sums['diffusion']:.4f}"}
                if drift_weight > 0:
                    postfix["drift"] = f"{sums['drift']:.3f}"
                if last_val is not None:
                    postfix["val"] = f"{last_val['val_loss']:.4f}"
                postfix.update(lr=f"{current_lr:.1e}", s_step=f"{step_times[-1]:.2f}")
                bar.set_postfix(postfix)
        out_of_time = deadline is not None and done < steps and _past_deadline(accelerator, deadline, device)
        if done % save_every == 0 or done == steps or out_of_time:
            last_good = _save_training_checkpoint(accelerator, out, done, unwrapped, optimizer, generators,
                                                  {"position": position, "lr_schedule": {"kind": lr_schedule, "warmup": warmup, "next_step": done},
                                                   "settings": settings}, keep_checkpoints, ema)
        if out_of_time:
            stopped_at = done
            break
    if bar is not None:
        bar.close()
    if stopped_at is not None:
        say(f"note: --max-minutes {max_minutes:g} reached: stopped at step {stopped_at} of {steps}; the weights below are "
            f"step {stopped_at}'s, and `--resume` continues the run")

    # ---------------------------------------------------------------- final outputs
    # totals over every step run, estimated from the timed ones (all of them on the CPU)
    phase_seconds = {k: v * len(step_times) / max(1, timed_steps) for k, v in phase_totals.items()}
    outputs: dict[str, str] = {}
    if main:
        records = read_metrics(out / "metrics.jsonl")
        losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
        tail = losses[-max(1, len(losses) // 10):] if losses else [math.nan]
        if ema is not None:
            ema.copy_to(trainable)  # the averaged weights are the result
        if full:
            outputs["transformer"] = str(_save_full(unwrapped, out, bb.dtype))
        else:
            outputs.update(_save_lora(unwrapped, out, lora_config, lora_rank, lora_alpha, targets))
        plot_loss_curve(records, out / "loss.png", keys=["loss", "diffusion", "drift", "val_loss", "val_SA", "val_PC", "lr"],
                        title=f"finetune {bb.name} (drift weight {drift_weight}, {'full' if full else f'LoRA r{lora_rank}'})")
        outputs["loss_curve"] = str(out / "loss.png")
        if prompts:
            outputs["validation_videos"] = str(out / VALIDATION_DIR)
        run_info.update(status="finished", outputs={"kind": run_info["kind"], **outputs},
                        results={"first_loss": losses[0] if losses else None, "final_loss": float(sum(tail) / len(tail)),
                                 "seconds_per_step": (sum(step_times) / len(step_times)) if step_times else None,
                                 "phase_seconds": phase_seconds, "steps_run_in_this_process": len(step_times),
                                 "stopped_at_step": stopped_at, "peak_memory": peak_memory(device),
                                 "val_loss": heldout_summary(records, held) if held is not None else None,
                                 "val_physics": _physics_summary(records)})
        write_json(out / RUN_JSON, run_info)
    accelerator.wait_for_everyone()
    results = run_info.get("results", {})
    return FinetuneSummary(
        out=out, kind=run_info["kind"], steps=steps, start_step=start_step,
        first_loss=float(results.get("first_loss") or math.nan), final_loss=float(results.get("final_loss") or math.nan),
        world_size=world_size, effective_batch_size=effective_batch, trainable_parameters=run_info["trainable_parameters"],
        seconds_per_step=(sum(step_times) / len(step_times)) if step_times else math.nan, mixed_precision=precision,
        backbone=bb.name, rank=rank, stopped_at_step=stopped_at, outputs=outputs, phase_seconds=phase_seconds,
        val_loss=results.get("val_loss"), peak_memory=results.get("peak_memory"), val_physics=results.get("val_physics"),
    )


def _plan(out: Path, run_info: dict, dataset, lat_cache, stream: EpochStream, position: int, start_step: int, steps: int,
          batch_size: int, world_size: int, rank: int, transformer, trainable: list, with_ema: bool, save_every: int,
          num_train_timesteps: int, timestep_sampling: str, logit_mean: float, logit_std: float,
          optimizer_kind: str = "adamw") -> FinetunePlan:
    """The dry run's answer: what the run set up above would do, read off its own objects."""
    remaining = steps - start_step
    indices = stream.rank_batch(position, batch_size, world_size, rank)
    first_batch = [(lat_cache.record(i).source_path, lat_cache.caption(i)) for i in indices]
    draws = sample_timesteps(timestep_sampling, 20000, num_train_timesteps, seeded_generator(0, "dry-run", "timesteps"),
                             logit_mean, logit_std).float()
    quantiles = {f"{int(q * 100)}%": int(torch.quantile(draws, q)) for q in (0.1, 0.5, 0.9)}
    trained_ids = {id(p) for p in trainable}
    trained = sum(p.numel() for p in trainable)
    frozen = sum(p.numel() * p.element_size() for p in transformer.parameters() if id(p) not in trained_ids)
    # on the checkpoint steps of the loop: every save_every steps and the last one
    checkpoints = len({s for s in range(start_step + 1, steps + 1) if s % save_every == 0 or s == steps})
    return FinetunePlan(
        out=out, run=run_info, start_step=start_step,
        epochs=remaining * run_info["effective_batch_size"] / len(dataset),
        first_batch=first_batch, distinct_captions=len(set(lat_cache.caption(i) for i in range(len(lat_cache)))),
        timestep_quantiles=quantiles, frozen_bytes=frozen,
        # fp32 weight and gradient, the two moments (fp32, or 8 bits each), the fp32 moving average
        state_bytes=trained * (4 + 4 + (2 if optimizer_kind == "adamw8bit" else 8) + 4 * int(with_ema)),
        checkpoints=checkpoints, rank=rank,
    )


def read_validation_prompts(path: str | os.PathLike) -> list[str]:
    """--val-prompts: a .txt (one prompt per line) or .jsonl file, as `lamo generate --prompts-file` reads."""
    from lamo_cli.stages.generate import read_prompts_file

    try:
        prompts, bad = read_prompts_file(path)
    except LamoError as exc:
        raise LamoError(str(exc).replace("--prompts-file", "--val-prompts", 1)) from None
    if bad:
        raise LamoError(f"--val-prompts {path}: {bad[0][0]}: {bad[0][1]}")
    if not prompts:
        raise LamoError(f"--val-prompts {path}: no prompts in it; write one prompt per line")
    return prompts


PHYSICS_METRICS = ("SA", "PC", "Joint", "dynamic")


def _physics_counts(videos: list[Path]) -> torch.Tensor:
    """float64 [1 + 4]: how many of `videos` the physics score can read (a physics-world caption),
    and how many of those pass SA, PC, Joint and dynamic; scored from the mp4 as `lamo eval` scores it."""
    from lamo_cli.stages.evaluate import score_video

    counts = torch.zeros(1 + len(PHYSICS_METRICS), dtype=torch.float64)
    for video in videos:
        try:
            result = score_video(video)
        except ValueError:  # not a physics-world caption (or unreadable): not scored
            continue
        counts[0] += 1
        for k, metric in enumerate(PHYSICS_METRICS):
            counts[k + 1] += float(bool(result[metric]))
    return counts


def _write_validation_video(bb, transformer, folder: Path, index: int, prompt: str, text: torch.Tensor, negative: torch.Tensor,
                            step: int, num_steps: int, autocast, fingerprint: str, weights: str) -> Path:
    """One validation video (CFG 6, dynamic, the backbone's sampler, no guidance) as `lamo generate`
    writes it: NNN-slug.mp4, its latent, and a sidecar `lamo eval` reads the prompt from."""
    from lamo_cli.sampling import sample
    from lamo_cli.stages.generate import slugify, write_video_files

    seed = VALIDATION_SEED + index
    with torch.no_grad(), autocast():
        latents, _ = sample(bb, text.to(bb.device), negative.to(bb.device), num_steps=num_steps, sampler=bb.sampler,
                            seed=seed, transformer=transformer)
    frames = bb.decode_latents(latents)[0]
    video = folder / f"{index:03d}-{slugify(prompt)}.mp4"
    folder.mkdir(parents=True, exist_ok=True)
    sidecar, _ = write_video_files(bb, video, frames, latents[0], prompt, bb.video_format.fps, fingerprint)
    write_json(sidecar, {"prompt": prompt, "seed": seed, "step": step, "weights": weights, "sampler": bb.sampler,
                         "steps": num_steps, "cfg": 6.0, "dynamic_cfg": True, "guidance": None})
    return video


def check_optimizer(kind: str) -> None:
    """A one-line error for an unknown --optimizer, or adamw8bit without bitsandbytes installed."""
    import importlib.util

    if kind not in OPTIMIZERS:
        raise LamoError(f"--optimizer {kind!r}: use {' or '.join(OPTIMIZERS)}")
    if kind == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise LamoError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes (or pip install -e '.[8bit]')")


def make_optimizer(kind: str, params: list, lr: float, betas: tuple[float, float], weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW: torch's (fused on a GPU: one kernel for all parameters instead of several per tensor;
    a small model's optimizer step was a quarter of its GPU step time), or bitsandbytes' 8-bit one,
    whose moments take 2 bytes a weight instead of 8 (a 5B full fine-tune's optimizer state: ~10
    instead of ~40 GB). Its state goes into checkpoints like AdamW's, and resumes exactly."""
    check_optimizer(kind)
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=device.type == "cuda")


def _past_deadline(accelerator, deadline: float, device: torch.device) -> bool:
    """True on every process once any process is past `deadline` (processes must stop at the same step)."""
    late = torch.tensor([1.0 if time.perf_counter() > deadline else 0.0], device=device)
    if accelerator.num_processes > 1:
        late = accelerator.reduce(late, reduction="sum")
    return bool(late.item() > 0)


def _check_shapes(transformer, info, empty_text: torch.Tensor, uses_rope: bool, spec: str) -> None:
    cfg = transformer.config
    channels = int(info.latent_shape[1])
    if channels != int(cfg.in_channels):
        raise LamoError(f"cache latents have {channels} channels but --backbone {spec}'s transformer takes {cfg.in_channels}; use the backbone the cache was encoded with")
    if int(empty_text.shape[-1]) != int(cfg.text_embed_dim):
        raise LamoError(f"cache text embeddings have width {empty_text.shape[-1]} but --backbone {spec} expects {cfg.text_embed_dim}; re-encode the cache with this backbone")
    if not uses_rope and int(empty_text.shape[0]) != int(cfg.max_text_seq_length):
        raise LamoError(f"cache text embeddings have {empty_text.shape[0]} tokens but --backbone {spec} needs {cfg.max_text_seq_length}; re-encode the cache with this backbone")


def _save_training_checkpoint(accelerator, out: Path, step: int, unwrapped, optimizer, generators: dict, state: dict, keep: int, ema=None) -> Path:
    """Every rank writes its RNG file into the temp folder, rank 0 the rest; rank 0 renames it into place."""
    tmp = pending_checkpoint_dir(out, step)
    if accelerator.is_main_process:
        begin_checkpoint(out, step)
    accelerator.wait_for_everyone()
    write_rng_file(tmp, accelerator.process_index, generators)
    if accelerator.is_main_process:
        weights = _trainable_state(unwrapped)
        write_checkpoint_files(tmp, weights=weights, optimizer=optimizer, state={**state, "step": step})
        if ema is not None:
            save_safetensors(tmp / EMA_FILE, {name: p.detach().float().cpu().contiguous() for name, p in zip(weights, ema.shadow_params)})
    accelerator.wait_for_everyone()
    final = tmp.parent / tmp.name[1:].removesuffix(".tmp")
    if accelerator.is_main_process:
        final = finish_checkpoint(tmp, step, keep)
    accelerator.wait_for_everyone()
    return final


def _load_ema(ema, checkpoint_dir: Path, names: list[str], step: int) -> None:
    shadow = load_safetensors_checked(checkpoint_dir / EMA_FILE)
    if set(shadow) != set(names):
        raise LamoError(f"--resume: {checkpoint_dir / EMA_FILE} holds other weights than this model; resume with the same settings")
    for target, name in zip(ema.shadow_params, names):
        target.copy_(shadow[name].to(target.device, target.dtype))
    ema.optimization_step = step


def _save_lora(unwrapped, out: Path, lora_config, rank: int, alpha: float, targets: list[str]) -> dict[str, str]:
    """diffusers' LoRA file (with the adapter config as metadata, so loaders apply alpha/rank), atomically."""
    from diffusers import CogVideoXPipeline
    from peft import get_peft_model_state_dict

    state = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(unwrapped).items()}
    metadata = {k: (sorted(v) if isinstance(v, set) else v) for k, v in lora_config.to_dict().items()}
    tmp = out / ".lora.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    CogVideoXPipeline.save_lora_weights(tmp, transformer_lora_layers=state, transformer_lora_adapter_metadata=metadata)
    os.replace(tmp / LORA_WEIGHTS, out / LORA_WEIGHTS)
    shutil.rmtree(tmp, ignore_errors=True)
    write_json(out / LORA_JSON, {
        "rank": rank, "alpha": alpha, "targets": targets, "scale": alpha / rank, "weight_name": LORA_WEIGHTS,
        "note": "scale = alpha/rank is the multiplier of B@A; diffusers applies it from the file's metadata, so adapter weight 1.0 reproduces training",
    })
    return {"lora": str(out / LORA_WEIGHTS), "lora_json": str(out / LORA_JSON)}


def _save_full(unwrapped, out: Path, dtype: torch.dtype) -> Path:
    """diffusers save_pretrained (safetensors) into a temp folder, then rename to RUN/transformer."""
    tmp = out / f".{FULL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if getattr(unwrapped, "is_gradient_checkpointing", False):
        unwrapped.disable_gradient_checkpointing()
    if unwrapped.dtype != dtype:
        unwrapped.to(dtype)  # saved in the backbone's own dtype (what generate loads)
    unwrapped.eval()
    unwrapped.save_pretrained(tmp, safe_serialization=True)
    final = out / FULL_DIR
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


# ==================================================================== applying a run (for generate)
def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LamoError(f"run folder {run_dir}: no such folder; train one with `lamo finetune CACHE --out {run_dir}`")
    run = read_json_checked(run_dir / RUN_JSON)
    if run.get("format") != RUN_FORMAT:
        raise LamoError(f"run folder {run_dir}: {RUN_JSON} is not a lamo finetune record; pass a folder written by `lamo finetune`")
    return run


def checkpoint_run_folder(path: str | os.PathLike) -> Path | None:
    """The run folder of a checkpoint folder (RUN/checkpoints/step-N), or None when `path` is not one."""
    path = Path(path)
    if path.parent.name == CHECKPOINTS_DIR and (path / STATE_FILE).is_file():
        return path.parent.parent
    return None


def load_run_into(backbone, run_dir: str | os.PathLike, scale: float | None = None) -> dict[str, Any]:
    """Apply a run's weights to `backbone.transformer` (in place) and say what was applied.

    `run_dir`: a finished run folder, or one of its checkpoints (RUN/checkpoints/step-N, finished
    run or not), whose moving average is applied where the run keeps one (what the run would
    save at that step), else its raw weights.
    LoRA runs: loaded as adapter "lamo" with the saved adapter config, so the effective multiplier
    of B@A is alpha/rank as in training. `scale` (LoRA only) is that effective multiplier: None keeps
    alpha/rank, 0 disables the LoRA; the diffusers adapter weight set is scale / (alpha/rank).
    Full runs: the saved transformer weights replace the backbone's.
    """
    run_dir = Path(run_dir)
    checkpoint = None
    owner = checkpoint_run_folder(run_dir)
    if owner is not None:
        checkpoint, run_dir = run_dir, owner
    run = read_run(run_dir)
    recorded = run.get("backbone", {})
    fingerprint = backbone.latent_fingerprint()
    if recorded.get("latent_fingerprint") != fingerprint:
        raise LamoError(
            f"run folder {run_dir} was trained on backbone {recorded.get('name')!r} (latent fingerprint {recorded.get('latent_fingerprint')}) "
            f"but the backbone in use, {backbone.name!r}, has fingerprint {fingerprint}; use --backbone {recorded.get('source') or recorded.get('name')}"
        )
    transformer = backbone.transformer
    if recorded.get("transformer_signature") not in (None, transformer_signature(transformer)):
        raise LamoError(f"run folder {run_dir} was trained on another transformer architecture than {backbone.name!r}; use --backbone {recorded.get('source') or recorded.get('name')}")
    if checkpoint is not None:
        return _load_checkpoint_into(transformer, run_dir, run, checkpoint, scale)
    if run.get("status") != "finished":
        raise LamoError(f"run folder {run_dir} has no final weights (unfinished run); finish it with `lamo finetune --resume --out {run_dir}`, "
                        f"or sample one of its checkpoints: --lora {run_dir / CHECKPOINTS_DIR}/step-N")
    if run.get("kind") == "full":
        if scale is not None:
            raise LamoError(f"--lora-scale applies to LoRA runs only; {run_dir} is a full fine-tune")
        _load_full_weights(transformer, run_dir / FULL_DIR)
        return {"kind": "full", "run": str(run_dir), "scale": None, "adapter_weight": None}
    weights_path = run_dir / LORA_WEIGHTS
    load_safetensors_checked(weights_path)  # one-line error for a missing or corrupt file
    lora = run.get("lora") or read_json_checked(run_dir / LORA_JSON)
    try:
        from diffusers import CogVideoXPipeline

        state, metadata = CogVideoXPipeline.lora_state_dict(str(run_dir), weight_name=LORA_WEIGHTS, return_lora_metadata=True)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise LamoError(f"run folder {run_dir}: {LORA_WEIGHTS} cannot be read ({str(exc).splitlines()[0][:160]})") from None
    record = _apply_lora(transformer, state, metadata, float(lora["alpha"]) / float(lora["rank"]), scale, run_dir)
    return {"kind": "lora", "run": str(run_dir), **record}


def _load_checkpoint_into(transformer, run_dir: Path, run: dict, checkpoint: Path, scale: float | None) -> dict[str, Any]:
    """A training checkpoint's moving average (else its raw weights) applied as a finished run's would be."""
    state = read_json_checked(checkpoint / STATE_FILE)
    averaged = (checkpoint / EMA_FILE).is_file()
    weights = load_safetensors_checked(checkpoint / (EMA_FILE if averaged else WEIGHTS_FILE))
    where = {"run": str(run_dir), "checkpoint": str(checkpoint), "step": int(state.get("step", 0)),
             "weights": "moving average" if averaged else "raw"}
    if run.get("kind") == "full":
        if scale is not None:
            raise LamoError(f"--lora-scale applies to LoRA runs only; {run_dir} is a full fine-tune")
        expected = dict(transformer.named_parameters())
        wrong = sorted(set(expected) ^ set(weights)) or sorted(k for k in weights if weights[k].shape != expected[k].shape)
        if wrong:
            raise LamoError(f"{checkpoint}: its weights do not fit {type(transformer).__name__} (e.g. {wrong[0]}); "
                            "use the backbone the run was trained on")
        with torch.no_grad():
            for name, tensor in weights.items():
                expected[name].copy_(tensor.to(expected[name].device, expected[name].dtype))
        return {"kind": "full", **where, "scale": None, "adapter_weight": None}
    from peft import LoraConfig

    settings = state.get("settings", {})
    rank, alpha, targets = settings.get("lora_rank"), settings.get("lora_alpha"), settings.get("lora_targets")
    if not (rank and alpha and targets):
        raise LamoError(f"{checkpoint}: {STATE_FILE} does not record the LoRA's rank, alpha and targets; "
                        "sample the finished run folder instead")
    # Training named the adapter "default" (peft's add_adapter); diffusers' LoRA loader takes the
    # tensor names without it and both names and adapter config under the "transformer." prefix,
    # as `lora_state_dict` reads them from a LoRA file.
    lora_state = {"transformer." + name.replace(".default.", "."): tensor for name, tensor in weights.items()}
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(targets), init_lora_weights=True).to_dict()
    metadata = {"transformer." + k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    record = _apply_lora(transformer, lora_state, metadata, float(alpha) / float(rank), scale, checkpoint)
    return {"kind": "lora", **where, **record}


def _apply_lora(transformer, state: dict, metadata: dict, trained_scale: float, scale: float | None, source: Path) -> dict[str, Any]:
    """LoRA tensors (diffusers' file layout) into `transformer` as adapter "lamo", at multiplier `scale`."""
    from diffusers import CogVideoXPipeline

    scale = trained_scale if scale is None else float(scale)
    if ADAPTER_NAME in (getattr(transformer, "peft_config", None) or {}):
        transformer.delete_adapters(ADAPTER_NAME)
    try:
        CogVideoXPipeline.load_lora_into_transformer(state, transformer=transformer, adapter_name=ADAPTER_NAME, metadata=metadata)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise LamoError(f"{source}: its LoRA does not fit this transformer ({str(exc).splitlines()[0][:160]}); use the backbone it was trained on") from None
    adapter_weight = scale / trained_scale
    transformer.set_adapters([ADAPTER_NAME], weights=[adapter_weight])
    return {"scale": scale, "trained_scale": trained_scale, "adapter_weight": adapter_weight}


def _load_full_weights(transformer, folder: Path) -> None:
    """Shard by shard into the existing module (no second copy of a 5B model in memory)."""
    if not folder.is_dir():
        raise LamoError(f"{folder}: missing; the run is incomplete, finish it with `lamo finetune --resume`")
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        shard_names = sorted(set(read_json_checked(index).get("weight_map", {}).values()))
    else:
        shard_names = ["diffusion_pytorch_model.safetensors"]
    expected = set(transformer.state_dict())
    seen: set[str] = set()
    device = next(transformer.parameters()).device
    for name in shard_names:
        tensors = load_safetensors_checked(folder / name, device=device)
        unknown = set(tensors) - expected
        if unknown:
            raise LamoError(f"{folder / name}: weights {sorted(unknown)[:3]} do not exist in this transformer; use the backbone the run was trained on")
        transformer.load_state_dict(tensors, strict=False)
        seen |= set(tensors)
        del tensors
    missing = expected - seen
    if missing:
        raise LamoError(f"{folder}: weights {sorted(missing)[:3]} are missing; the saved transformer is incomplete, re-run `lamo finetune --full`")
