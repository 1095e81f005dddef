"""Side-by-side benchmarks of what LaMo costs (tiny-random backbone, CPU, float32).

    python benchmarks/bench.py [--quick] [--threads 1] [--out BENCHMARKS.md]

Four questions from the issue, each answered by conditions measured in ONE process, interleaved
(A B, B A, A B ..., one untimed warm-up round first), reported as medians with the inter-quartile range:

1. finetune: step time with the Motion Drift Loss (drift_weight 0.4) vs without (0), in a tight loop
   of the stage's own math and through the `finetune` stage itself (its metrics.jsonl timings);
   plus the drift term alone vs the diffusion term alone at a real latent size (13x16x60x90).
2. generate: `sample()` with Motion Prior Guidance vs without at equal steps (a small field and the
   release-size field), and the same ratio ESTIMATED for CogVideoX-2B / -5B from FLOP counts
   (torch.utils.flop_counter on the `meta` device, cross-checked analytically).
3. encode: clips/s of the `encode` stage and its wall time over the pure VAE time on the same
   already-decoded frames.
4. cache: LatentCache / LatentDataset read rate (cold and preloaded) over the training step rate.

Nothing here asserts a time; the numbers are printed (rich table) and, with --out, written as
Markdown. Pure measurement: no lamo code is changed or monkey-patched.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT = "a red ball drops from the upper left and bounces"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
REAL_LATENT = (13, 16, 60, 90)  # CogVideoX 49x480x720 -> T=13, C=16, 60x90
REAL_TEXT = (226, 4096)  # T5-XXL tokens x width
RELEASE_FIELD = dict(width=256, depth=8)
SMALL_FIELD = dict(width=32, depth=2)  # recipes/tiny-random.toml [fit_prior]
NARROW_FIELD = dict(width=32, depth=8)  # release depth, small width
A100_BF16_PEAK = 312e12  # FLOP/s, dense bf16 (NVIDIA A100 datasheet): a lower bound on real-model step times

# Published transformer configs (diffusers CogVideoXTransformer3DModel, THUDM/CogVideoX-2b / -5b).
COGVIDEOX_COMMON = dict(
    attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512, text_embed_dim=4096,
    sample_width=90, sample_height=60, sample_frames=49, patch_size=2, temporal_compression_ratio=4,
    max_text_seq_length=226, flip_sin_to_cos=True, freq_shift=0, activation_fn="gelu-approximate",
    attention_bias=True, use_learned_positional_embeddings=False,
)
COGVIDEOX_2B = dict(COGVIDEOX_COMMON, num_attention_heads=30, num_layers=30, use_rotary_positional_embeddings=False)
COGVIDEOX_5B = dict(COGVIDEOX_COMMON, num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)


# ==================================================================== plan
@dataclass(frozen=True)
class Plan:
    """Repetition counts; --quick shrinks them to a smoke test."""

    train_reps: int
    train_steps_per_rep: int
    stage_pairs: int
    stage_steps: int
    term_reps: int
    term_calls_per_rep: int
    gen_reps: int
    gen_steps: int
    encode_reps: int
    encode_clips: int
    cache_reps: int
    cache_preload_passes: int
    real_cache_clips: int


FULL = Plan(train_reps=200, train_steps_per_rep=4, stage_pairs=4, stage_steps=20, term_reps=15, term_calls_per_rep=5,
            gen_reps=6, gen_steps=20, encode_reps=3, encode_clips=24, cache_reps=10, cache_preload_passes=200,
            real_cache_clips=8)
QUICK = Plan(train_reps=5, train_steps_per_rep=5, stage_pairs=1, stage_steps=8, term_reps=4, term_calls_per_rep=3,
             gen_reps=2, gen_steps=10, encode_reps=1, encode_clips=6, cache_reps=3, cache_preload_passes=50,
             real_cache_clips=3)


# ==================================================================== statistics and timing
@dataclass
class Timing:
    """Samples in seconds (one per repetition)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def p25(self) -> float:
        return float(np.quantile(self.samples, 0.25))

    @property
    def p75(self) -> float:
        return float(np.quantile(self.samples, 0.75))

    @property
    def n(self) -> int:
        return len(self.samples)


def paired_ratio(a: Timing, b: Timing) -> float:
    """Median over repetitions of a_i / b_i (robust to load that changes between rounds)."""
    return float(np.median(np.asarray(a.samples) / np.asarray(b.samples)))


def interleave(conditions: dict[str, Callable[[], float]], reps: int, warmup: int = 1) -> dict[str, Timing]:
    """Run the conditions interleaved, the order reversed every other round (A B, B A, A B, ...) so
    neither always runs first; each call returns the seconds it measured."""
    samples: dict[str, list[float]] = {name: [] for name in conditions}
    names = list(conditions)
    for round_index in range(warmup + reps):
        for name in names if round_index % 2 == 0 else names[::-1]:
            run = conditions[name]
            seconds = run()
            if round_index >= warmup:
                samples[name].append(seconds)
    return {name: Timing(values) for name, values in samples.items()}


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_spread(timing: Timing) -> str:
    return f"IQR {fmt_seconds(timing.p25)} - {fmt_seconds(timing.p75)}, min {fmt_seconds(min(timing.samples))} (n={timing.n})"


def fmt_flops(flops: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def rel_diff(value: float, reference: float) -> str:
    return "identical" if value == reference else f"rel. diff {value / reference - 1:+.1e}"


def verdict(value: float, goal: float) -> str:
    return f"<= {goal:g}: {'met' if value <= goal else 'NOT met'}"


class Cpu:
    """Process CPU time (all threads) over wall time: below the thread count means we were preempted."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu = usage.ru_utime + usage.ru_stime

    def share(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - self.wall
        return (usage.ru_utime + usage.ru_stime - self.cpu) / wall if wall > 0 else float("nan")


# ==================================================================== report
@dataclass
class Row:
    section: str
    measurement: str
    median: str
    spread: str = ""
    ratio: str = ""
    goal: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[tuple[str, str, float]] = field(default_factory=list)  # name, load before -> after, CPU share

    def add(self, *args, **kwargs) -> None:
        self.rows.append(Row(*args, **kwargs))

    def note(self, text: str) -> None:
        self.notes.append(text)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average: {loadavg()}"


def machine_facts(threads: int) -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    import diffusers

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": memory,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "torch threads": f"{threads} (torch.set_num_threads; interop {torch.get_num_interop_threads()})",
        "platform": platform.platform(),
    }


def section(report: Report, name: str):
    """Context manager that records the load and CPU share around one section."""

    class _Section:
        def __enter__(self):
            self.before = loadavg()
            self.cpu = Cpu()
            print(f"\n== {name}  (load {self.before})", flush=True)
            return self

        def __exit__(self, *exc):
            share = self.cpu.share()
            report.sections.append((name, f"{self.before} -> {loadavg()}", share))
            return False

    return _Section()


# ==================================================================== 1. finetune
class TrainLoop:
    """The finetune stage's per-step math in a tight loop (LoRA on the tiny-random transformer).

    Per step, as `lamo_cli.stages.finetune`: t, eps -> x_t; v_hat = backbone.predict_v(LoRA model);
    x0_hat = x0_from_v; lamo_objective; backward; grad clip 1.0; AdamW step; zero_grad. Inputs come
    from a fixed pool indexed by the step count of each condition, so every condition sees the same
    sequence of (x0, t, eps).
    """

    def __init__(self, rank: int = 8, alpha: float = 4.0, seed: int = 0, pool: int = 64) -> None:
        from peft import LoraConfig

        from lamo_cli.backbones import load_backbone

        self.backbone = load_backbone("tiny-random", device="cpu")
        transformer = self.backbone.transformer
        torch.manual_seed(seed)
        transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, init_lora_weights=True))
        transformer.train()
        self.transformer = transformer
        self.trainable = [p for p in transformer.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-4)
        self.alphas = self.backbone.alphas_cumprod()
        fmt = self.backbone.video_format
        cfg = transformer.config
        generator = torch.Generator().manual_seed(seed)
        shape = (1, fmt.latent_frames, int(cfg.in_channels), fmt.latent_height, fmt.latent_width)
        self.latent_shape = shape
        self.x0 = [torch.randn(shape, generator=generator) for _ in range(pool)]
        self.eps = [torch.randn(shape, generator=generator) for _ in range(pool)]
        self.t = torch.randint(0, len(self.alphas), (pool,), generator=generator)
        self.text = torch.randn((1, int(cfg.max_text_seq_length), int(cfg.text_embed_dim)), generator=generator)
        self.pool = pool

    def step(self, index: int, drift_weight: float) -> None:
        from lamo_cli.motion.drift import lamo_objective, x0_from_v
        from lamo_cli.stages.finetune import add_noise

        k = index % self.pool
        x0, eps, t = self.x0[k], self.eps[k], self.t[k : k + 1]
        abar = self.alphas[t]
        x_t = add_noise(x0, eps, abar)
        v_hat = self.backbone.predict_v(x_t, t, self.text, transformer=self.transformer)
        x0_hat = x0_from_v(x_t, v_hat.float(), abar)
        loss, _ = lamo_objective(x0_hat, x0, abar, t, drift_weight=drift_weight, tau=2, alphas_cumprod=self.alphas)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def condition(self, drift_weight: float, steps: int) -> Callable[[], float]:
        """A callable timing `steps` steps; returns seconds per step."""
        counter = itertools.count()

        def run() -> float:
            first = next(counter) * steps
            start = time.perf_counter()
            for index in range(first, first + steps):
                self.step(index, drift_weight)
            return (time.perf_counter() - start) / steps

        return run


def stage_run(cache: Path, workdir: Path, drift_weight: float, steps: int) -> dict[str, list[float]]:
    """One `finetune` stage run; its metrics.jsonl per-phase times per step (first 2 steps dropped)."""
    from lamo_cli.stages.finetune import finetune
    from lamo_cli.training import read_metrics

    out = workdir / f"run-{uuid.uuid4().hex[:8]}"
    finetune(cache=cache, backbone="tiny-random", out=out, steps=steps, drift_weight=drift_weight, lora_rank=8,
             lora_alpha=4.0, lr=1e-3, warmup=0, batch_size=1, gradient_checkpointing=False, save_every=steps,
             progress=False, seed=0)
    records = read_metrics(out / "metrics.jsonl")[2:]
    shutil.rmtree(out, ignore_errors=True)
    return {key: [float(r[f"time_{key}"]) for r in records] for key in ("step", "data", "forward", "backward", "optimizer")}


def bench_finetune(report: Report, plan: Plan, cache: Path, workdir: Path) -> None:
    """Drift 0.4 vs 0: the tight loop, whole `finetune` stage runs, and the loss terms alone."""
    name = "1 finetune"
    loop = TrainLoop()
    print(f"tight loop: tiny-random LoRA r8, batch 1, latents {list(loop.latent_shape[1:])}, "
          f"{plan.train_reps} x {plan.train_steps_per_rep} steps per condition", flush=True)
    times = interleave({
        "drift": loop.condition(0.4, plan.train_steps_per_rep),
        "plain": loop.condition(0.0, plan.train_steps_per_rep),
    }, plan.train_reps)
    drift, plain = times["drift"], times["plain"]
    ratio = drift.median / plain.median
    report.add(name, "train step, drift_weight 0.4 (tight loop)", fmt_seconds(drift.median), fmt_spread(drift))
    report.add(name, "train step, drift_weight 0 (tight loop)", fmt_seconds(plain.median), fmt_spread(plain))
    report.add(name, "step time ratio drift / plain (tight loop)", f"{ratio:.3f}x",
               f"paired {paired_ratio(drift, plain):.3f}x; ratio of minima {min(drift.samples) / min(plain.samples):.3f}x",
               "", verdict(ratio, 1.05))

    # The stage itself: whole `finetune` runs, interleaved, timings from its metrics.jsonl.
    print(f"stage: {plan.stage_pairs} pairs of `finetune` runs x {plan.stage_steps} steps", flush=True)
    stage: dict[str, list[dict[str, list[float]]]] = {"drift": [], "plain": []}
    for pair in range(plan.stage_pairs):
        for key in ("drift", "plain") if pair % 2 == 0 else ("plain", "drift"):
            stage[key].append(stage_run(cache, workdir, 0.4 if key == "drift" else 0.0, plan.stage_steps))
    # Every step of every run pooled; the per-run medians give the paired ratio.
    step = {k: Timing([t for run in v for t in run["step"]]) for k, v in stage.items()}
    per_run = {k: Timing([float(np.median(run["step"])) for run in v]) for k, v in stage.items()}
    phases = {k: {p: float(np.median([t for run in v for t in run[p]])) for p in ("data", "forward", "backward", "optimizer")}
              for k, v in stage.items()}
    stage_ratio = step["drift"].median / step["plain"].median
    for key, label in (("drift", "0.4"), ("plain", "0")):
        ph = phases[key]
        report.add(name, f"`finetune` stage step, drift_weight {label} (metrics.jsonl)", fmt_seconds(step[key].median),
                   f"{fmt_spread(step[key])}; data {fmt_seconds(ph['data'])}, fwd {fmt_seconds(ph['forward'])}, "
                   f"bwd {fmt_seconds(ph['backward'])}, opt {fmt_seconds(ph['optimizer'])}")
    report.add(name, "step time ratio drift / plain (`finetune` stage)", f"{stage_ratio:.3f}x",
               f"runs paired {paired_ratio(per_run['drift'], per_run['plain']):.3f}x; ratio of minima "
               f"{min(step['drift'].samples) / min(step['plain'].samples):.3f}x; steps 3..{plan.stage_steps} of "
               f"{plan.stage_pairs} runs each, pooled",
               "", verdict(stage_ratio, 1.05))

    bench_loss_terms(report, plan, loop.latent_shape[1:], plain.median)


_FLOP_CACHE: dict[str, tuple[float, float]] = {}


def cogvideox_cfg_step_flops(label: str) -> tuple[float, float]:
    """(FLOPs of one CFG step = forward at batch 2, parameters) of CogVideoX-2B or -5B at 13x60x90 (cached)."""
    if label not in _FLOP_CACHE:
        cfg = {"CogVideoX-2B": COGVIDEOX_2B, "CogVideoX-5B": COGVIDEOX_5B}[label]
        frames, _, height, width = REAL_LATENT
        _FLOP_CACHE[label] = meta_transformer_flops(cfg, 2, frames, height, width, REAL_TEXT[0])
    return _FLOP_CACHE[label]


def lora_step_floor_seconds() -> float:
    """Lower bound of a CogVideoX-2B LoRA training step at batch 1: forward + activation-gradient backward
    (2 x the batch-1 forward = the batch-2 forward's FLOPs) at A100 bf16 peak."""
    return cogvideox_cfg_step_flops("CogVideoX-2B")[0] / A100_BF16_PEAK


def loss_term_timings(shape: tuple[int, ...], reps: int, calls: int) -> dict[str, Timing]:
    """Forward + backward of each loss term alone on random tensors of `shape` ([T, C, H, W], B=1)."""
    from lamo_cli.motion.drift import diffusion_loss, drift_loss, lamo_objective, noise_weight

    alphas = torch.linspace(0.999, 0.0, 1000)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn((1, *shape), generator=generator)
    x0_hat_value = x0 + 0.3 * torch.randn(x0.shape, generator=generator)
    t = torch.tensor([500])
    abar = alphas[t]

    def timed(loss_of: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], float]:
        def run() -> float:
            total = 0.0
            for _ in range(calls):
                leaf = x0_hat_value.clone().requires_grad_(True)
                start = time.perf_counter()
                loss_of(leaf).backward()
                total += time.perf_counter() - start
            return total / calls

        return run

    return interleave({
        "diffusion": timed(lambda x: diffusion_loss(x, x0, abar)),
        "drift": timed(lambda x: 0.4 * noise_weight(t) * drift_loss(x, x0, tau=2)),
        "objective 0.4": timed(lambda x: lamo_objective(x, x0, abar, t, drift_weight=0.4, alphas_cumprod=alphas)[0]),
        "objective 0": timed(lambda x: lamo_objective(x, x0, abar, t, drift_weight=0.0, alphas_cumprod=alphas)[0]),
    }, reps)


def bench_loss_terms(report: Report, plan: Plan, tiny_shape: tuple[int, ...], tiny_plain_step: float) -> None:
    """The loss terms alone: at the tiny-random size (explains the tight-loop ratio) and the real size."""
    name = "1 finetune"
    tiny = loss_term_timings(tiny_shape, plan.term_reps, 10 * plan.term_calls_per_rep)
    tiny_extra = tiny["objective 0.4"].median - tiny["objective 0"].median
    report.add(name, f"lamo_objective 0.4 vs 0, fwd+bwd, tiny-random size {'x'.join(map(str, tiny_shape))}",
               f"+{fmt_seconds(tiny_extra)}",
               f"{fmt_seconds(tiny['objective 0.4'].median)} vs {fmt_seconds(tiny['objective 0'].median)}; drift term alone "
               f"{fmt_seconds(tiny['drift'].median)}",
               f"1 + extra / plain step = {1 + tiny_extra / tiny_plain_step:.3f}x")

    terms = loss_term_timings(REAL_LATENT, plan.term_reps, plan.term_calls_per_rep)
    shape = "x".join(str(s) for s in REAL_LATENT)
    diff, drift = terms["diffusion"], terms["drift"]
    report.add(name, f"diffusion term alone, fwd+bwd, B=1 {shape}", fmt_seconds(diff.median), fmt_spread(diff))
    report.add(name, f"drift term alone (0.4 w L_drift), fwd+bwd, B=1 {shape}", fmt_seconds(drift.median), fmt_spread(drift),
               f"{drift.median / diff.median:.2f}x diffusion")
    with_drift, without = terms["objective 0.4"], terms["objective 0"]
    extra = with_drift.median - without.median
    report.add(name, f"lamo_objective 0.4 vs 0, fwd+bwd, {shape}",
               f"{fmt_seconds(with_drift.median)} vs {fmt_seconds(without.median)}",
               f"+{fmt_seconds(extra)} per step (paired {paired_ratio(with_drift, without):.2f}x)",
               f"{with_drift.median / without.median:.2f}x")
    step_floor = lora_step_floor_seconds()
    report.add(name, "drift term vs a CogVideoX-2B LoRA step (13x60x90, batch 1)",
               f"<= {100 * extra / step_floor:.2f}%",
               f"the +{fmt_seconds(extra)} measured here on one CPU thread / {fmt_seconds(step_floor)}, the 2B step's floor "
               "(2 x forward FLOPs at A100 bf16 peak)", f"<= {1 + extra / step_floor:.4f}x", "<= 1.05: met" if extra / step_floor <= 0.05 else "")
    report.note(
        "Drift term cost: at the real latent size the drift term costs about as much as the diffusion term "
        "(both are a few memory-bound passes over 1.1M floats). Its CPU time, set against the floor of a 2B "
        f"LoRA step ({fmt_seconds(step_floor)}: 2 x the batch-1 forward FLOPs, since the LoRA backward still "
        "needs activation gradients through every layer, at A100 bf16 peak; real steps are slower, and "
        f"gradient checkpointing adds a forward) is {100 * extra / step_floor:.2f}%; on the GPU the same few "
        "element-wise kernels take far less than on one CPU thread, so the real share is smaller still. On "
        "tiny-random the step itself is a few ms of per-op overhead, so the drift term's fixed per-op cost "
        "(~20 small ops forward and backward) is what the tight-loop ratio shows."
    )


# ==================================================================== 2. generate
def make_field(config_kwargs: dict, text_dim: int, seed: int) -> torch.nn.Module:
    """A motion field of the release architecture; the zero-initialised head gets small random
    weights so the guided gradient is not trivially zero (the cost does not depend on the values)."""
    from lamo_cli.motion.field import MotionField, MotionFieldConfig

    torch.manual_seed(seed)
    field_module = MotionField(MotionFieldConfig(latent_channels=16, text_dim=text_dim, **config_kwargs))
    torch.nn.init.normal_(field_module.head.weight, std=1e-2)
    return field_module.eval().requires_grad_(False)


def count_flops(run: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return float(counter.get_total_flops())


def bench_generate(report: Report, plan: Plan) -> None:
    from lamo_cli.backbones import load_backbone
    from lamo_cli.motion.field import pool_text
    from lamo_cli.motion.guidance import first_guided_step, guide_v
    from lamo_cli.sampling import sample

    name = "2 generate"
    backbone = load_backbone("tiny-random", device="cpu")
    text_cond = backbone.encode_text([PROMPT])
    text_uncond = backbone.encode_text([""])
    pooled = pool_text(text_cond)
    text_dim = int(text_cond.shape[-1])
    fields = {
        f"field w{SMALL_FIELD['width']} d{SMALL_FIELD['depth']}": make_field(SMALL_FIELD, text_dim, 1),
        f"field w{NARROW_FIELD['width']} d{NARROW_FIELD['depth']}": make_field(NARROW_FIELD, text_dim, 4),
        f"field w{RELEASE_FIELD['width']} d{RELEASE_FIELD['depth']}": make_field(RELEASE_FIELD, text_dim, 2),
    }
    steps = plan.gen_steps
    guided_steps = steps - first_guided_step(steps, 0.8)
    parts: dict[str, dict[str, list[float]]] = {}

    def condition(label: str, motion_field) -> Callable[[], float]:
        parts[label] = {"backbone_s": [], "guidance_s": []}

        def run() -> float:
            start = time.perf_counter()
            _, info = sample(backbone, text_cond, text_uncond, num_steps=steps, cfg_scale=6.0, seed=42,
                             field=motion_field, field_text_pooled=pooled, guidance_scale=15.0, guidance_window=0.8)
            seconds = time.perf_counter() - start
            parts[label]["backbone_s"].append(info["timing"]["backbone_s"])
            parts[label]["guidance_s"].append(info["timing"]["guidance_s"])
            return seconds

        return run

    conditions = {"no guidance": condition("no guidance", None)}
    conditions.update({f"guidance, {label}": condition(f"guidance, {label}", f) for label, f in fields.items()})
    print(f"sample(): DDIM {steps} steps, CFG 6 (batch 2), guidance 15 on the last 80% ({guided_steps} steps), "
          f"{plan.gen_reps} reps", flush=True)
    times = interleave(conditions, plan.gen_reps)
    base = times["no guidance"]

    # FLOPs of the same pieces on the tiny model: does the FLOP ratio predict the time ratio here?
    fmt = backbone.video_format
    latent = torch.randn(1, fmt.latent_frames, 16, fmt.latent_height, fmt.latent_width)
    with torch.no_grad():
        step_flops = count_flops(lambda: backbone.predict_v(torch.cat([latent] * 2), torch.tensor([500, 500]),
                                                              torch.cat([text_uncond, text_cond])))
    for label, timing in times.items():
        backbone_s = float(np.median(parts[label]["backbone_s"][1:]))  # [0] is the warm-up round
        guidance_s = float(np.median(parts[label]["guidance_s"][1:]))
        detail = f"{fmt_spread(timing)}; loop: backbone {fmt_seconds(backbone_s)}, guidance {fmt_seconds(guidance_s)}"
        if label == "no guidance":
            report.add(name, f"sample() {steps} steps, no guidance", fmt_seconds(timing.median), detail)
            continue
        field_module = fields[label.split(", ", 1)[1]]
        guide_flops = count_flops(lambda: guide_v(latent, latent, 0.5, field_module, pooled, 15.0))
        flop_ratio = 1 + guided_steps * guide_flops / (steps * step_flops)
        report.add(name, f"sample() {steps} steps, {label}", fmt_seconds(timing.median),
                   detail + f"; FLOP ratio {flop_ratio:.2f}x",
                   f"{timing.median / base.median:.2f}x (paired {paired_ratio(timing, base):.2f}x)")
    report.note(
        f"Generate on tiny-random: the backbone is tiny (CFG step {fmt_flops(step_flops)}), so even the small field "
        "is not negligible there, and CPU time per op is dominated by per-op overhead for both; the ratio on "
        "tiny-random says nothing about CogVideoX sizes; the FLOP rows of section 2 estimate those."
    )
    bench_guidance_flops(report, guided_steps_of_50=50 - first_guided_step(50, 0.8))


def analytic_transformer_flops(cfg: dict, batch: int, frames: int, height: int, width: int, text_len: int) -> float:
    """Matmul/conv FLOPs (2 per multiply-add) of one CogVideoXTransformer3DModel forward.

    D = heads * head_dim, S_v = T (H/p) (W/p) video tokens, S = S_v + L text tokens. Per layer:
    attention projections q,k,v,out 8 S D^2, feed-forward D->4D->D 16 S D^2, scores QK^T and
    weights @ V 4 S^2 D, and two AdaLN-zero linears time_dim -> 6D. Outside the layers: patch
    embedding conv (C p^2 -> D per video token), text projection (4096 -> D per text token), time
    embedding (D -> t, t -> t), final AdaLN linear (t -> 2D), output projection (D -> p^2 C).
    """
    heads, head_dim, layers = cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["num_layers"]
    p, channels, t_dim, text_dim = cfg["patch_size"], cfg["in_channels"], cfg["time_embed_dim"], cfg["text_embed_dim"]
    d = heads * head_dim
    video_tokens = frames * (height // p) * (width // p)
    s = video_tokens + text_len
    per_layer = 24 * s * d * d + 4 * s * s * d + 2 * (2 * t_dim * 6 * d)
    outside = (2 * video_tokens * channels * p * p * d + 2 * text_len * text_dim * d + 2 * (d * t_dim + t_dim * t_dim)
               + 2 * t_dim * 2 * d + 2 * video_tokens * d * p * p * channels)
    return float(batch * (layers * per_layer + outside))


def meta_transformer_flops(cfg: dict, batch: int, frames: int, height: int, width: int, text_len: int) -> tuple[float, float]:
    """(FLOPs, parameters) of one forward of the published config built on the meta device (no memory)."""
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    with torch.device("meta"):
        model = CogVideoXTransformer3DModel(**cfg)
    params = float(sum(p.numel() for p in model.parameters()))
    rotary = None
    if cfg["use_rotary_positional_embeddings"]:
        p = cfg["patch_size"]
        grid = (height // p, width // p)  # the sample size itself: the crop is the whole base grid
        cos, sin = get_3d_rotary_pos_embed(cfg["attention_head_dim"], ((0, 0), grid), grid, frames, device="cpu")
        rotary = (cos.to("meta"), sin.to("meta"))
    x = torch.empty(batch, frames, cfg["in_channels"], height, width, device="meta")
    text = torch.empty(batch, text_len, cfg["text_embed_dim"], device="meta")
    timestep = torch.full((batch,), 500, device="meta", dtype=torch.long)
    with torch.no_grad():
        flops = count_flops(lambda: model(hidden_states=x, encoder_hidden_states=text, timestep=timestep,
                                          image_rotary_emb=rotary, return_dict=False))
    return flops, params


def meta_guidance_flops(frames: int, height: int, width: int, text_dim: int) -> float:
    """FLOPs of guide_v's computation (x0_from_v -> guidance_loss -> dL/dv) with the release field on meta.

    guide_v itself converts the loss to a python float (impossible on meta), so its body is run
    through the same public functions: `x0_from_v`, `guidance_loss`, `torch.autograd.grad`.
    """
    from lamo_cli.motion.drift import x0_from_v
    from lamo_cli.motion.field import MotionField, MotionFieldConfig
    from lamo_cli.motion.guidance import guidance_loss

    with torch.device("meta"):
        field_module = MotionField(MotionFieldConfig(latent_channels=16, text_dim=text_dim, **RELEASE_FIELD)).requires_grad_(False)
        v = torch.empty(1, frames, 16, height, width, requires_grad=True)
        x_t = torch.empty(1, frames, 16, height, width)
        pooled = torch.empty(1, text_dim)

    def run() -> None:
        loss = guidance_loss(x0_from_v(x_t, v, 0.5), field_module, pooled)
        torch.autograd.grad(loss, v)

    return count_flops(run)


def cpu_guidance_flops_extrapolated(frames: int, height: int, width: int, text_dim: int) -> float:
    """Cross-check: the real guide_v on CPU at two small grids, fitted as a + b*H*W, extrapolated."""
    from lamo_cli.motion.guidance import guide_v

    field_module = make_field(RELEASE_FIELD, text_dim, 3)
    pooled = torch.randn(1, text_dim)
    points = []
    for h, w in ((6, 9), (12, 18)):
        v = torch.randn(1, frames, 16, h, w)
        points.append((h * w, count_flops(lambda: guide_v(v, v, 0.5, field_module, pooled, 15.0))))
    (area_a, flops_a), (area_b, flops_b) = points
    slope = (flops_b - flops_a) / (area_b - area_a)
    return flops_a + slope * (height * width - area_a)


def bench_guidance_flops(report: Report, guided_steps_of_50: int) -> None:
    name = "2 generate (FLOPs)"
    frames, channels, height, width = REAL_LATENT
    text_len, text_dim = REAL_TEXT
    guide = meta_guidance_flops(frames, height, width, text_dim)
    guide_check = cpu_guidance_flops_extrapolated(frames, height, width, text_dim)
    report.add(name, f"guide_v, release field w256 d8 (text 4096), B=1 {frames}x{channels}x{height}x{width}",
               fmt_flops(guide), f"meta-device count; CPU guide_v at 6x9 and 12x18 fitted a+b*HW: "
               f"{fmt_flops(guide_check)} ({rel_diff(guide_check, guide)})")
    for label, cfg in (("CogVideoX-2B", COGVIDEOX_2B), ("CogVideoX-5B", COGVIDEOX_5B)):
        flops, params = cogvideox_cfg_step_flops(label)
        analytic = analytic_transformer_flops(cfg, 2, frames, height, width, text_len)
        per_step = 100 * guide / flops
        averaged = 100 * guided_steps_of_50 * guide / (50 * flops)
        report.add(name, f"{label} CFG step (batch 2, {frames}x{height}x{width}, {text_len} text tokens)", fmt_flops(flops),
                   f"{params / 1e9:.2f}B params on meta; analytic formula {fmt_flops(analytic)} ({rel_diff(analytic, flops)})")
        report.add(name, f"{label}: guidance / step FLOPs", f"{per_step:.2f}% per guided step",
                   f"50 steps, rho 0.8 ({guided_steps_of_50} guided): {averaged:.2f}% of the backbone FLOPs",
                   f"~{1 + averaged / 100:.4f}x")
    report.note(
        "Analytic cross-check of the transformer FLOPs (2 FLOPs per multiply-add, batch b, D = heads x 64, "
        "S_v = 13 x 30 x 45 = 17550 video tokens, S = S_v + 226): b x [layers x (24 S D^2 + 4 S^2 D + 24 t D) + "
        "4 S_v (16 x 4) D + 2 x 226 x 4096 D + 2 (D t + t^2) + 4 t D] with t = 512 (q, k, v, out and the 4x "
        "feed-forward; QK^T and weights x V; the AdaLN-zero linears; patch embedding and output projection; "
        "text projection; time embedding; final AdaLN). It matches the meta-device count exactly, which also "
        "shows attention was counted."
    )
    report.note(
        "FLOP estimate for the real models: FlopCounterMode counts matmuls and convolutions only (attention "
        "ran as bmm on the meta device, so it is counted). Norms, GELU, the squeeze-excitation gates and "
        "element-wise ops are not: the field's activations (12 frame pairs x 256 channels x 60x90) are "
        "memory-bound work that a FLOP share understates; treat the percentages as a lower bound on the time "
        "share, to be confirmed on a GPU."
    )


# ==================================================================== 3. encode
def synthetic_clip(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [F, H, W, 3]: a coloured square moving over a gradient background (compresses like video)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), np.full_like(xx, 64)], -1)
    colour = rng.integers(64, 256, 3)
    size = max(4, min(height, width) // 5)
    start, velocity = rng.uniform(0, 1, 2), rng.uniform(-1, 1, 2)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for f in range(frames):
        pos = (start + velocity * f / frames) % 1.0
        y, x = int(pos[0] * (height - size)), int(pos[1] * (width - size))
        frame = background.copy()
        frame[y : y + size, x : x + size] = colour
        out[f] = frame
    return out


def write_clips(folder: Path, count: int, frames: int, height: int, width: int, fps: float) -> list[Path]:
    from lamo_cli.data.mp4 import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"clip{index:03d}.mp4"
        write_mp4(path, synthetic_clip(frames, height, width, index), fps=fps)
        path.with_suffix(".txt").write_text(f"a coloured square number {index} slides across a gradient")
        paths.append(path)
    return paths


def bench_encode(report: Report, plan: Plan, workdir: Path, backbone, variants: dict[str, tuple[Path, list[Path]]],
                 batch_size: int) -> None:
    from lamo_cli.data.video import decode_clip, open_video, plan_clip
    from lamo_cli.stages.encode import encode

    name = "3 encode"
    fmt = backbone.video_format
    for label, (folder, paths) in variants.items():
        # The same clips, decoded and resized once, outside the timing.
        decoded = []
        for path in paths:
            probe = open_video(path)
            decoded.append(decode_clip(probe, plan_clip(probe, fmt.num_frames, fmt.fps), fmt.height, fmt.width, fmt.fps).frames)
        captions = [path.with_suffix(".txt").read_text() for path in paths]
        batches = [list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size)]
        summaries = []

        def stage() -> float:
            out = workdir / f"enc-{uuid.uuid4().hex[:8]}"
            start = time.perf_counter()
            summary = encode([folder], backbone=backbone, out=out, batch_size=batch_size, progress=False)
            seconds = time.perf_counter() - start
            if summary.written != len(paths):
                raise RuntimeError(f"encode wrote {summary.written} of {len(paths)} clips: {summary.skipped[:3]}")
            summaries.append(summary)
            shutil.rmtree(out, ignore_errors=True)
            return seconds

        def pure_vae(with_text: bool) -> Callable[[], float]:
            def run() -> float:
                start = time.perf_counter()
                for batch in batches:
                    if with_text:
                        backbone.encode_text([captions[i] for i in batch])
                    backbone.encode_video(np.stack([decoded[i] for i in batch]))
                return time.perf_counter() - start

            return run

        print(f"encode {label}: {len(paths)} clips, batch {batch_size}, {plan.encode_reps} reps", flush=True)
        times = interleave({"stage": stage, "vae": pure_vae(False), "vae+text": pure_vae(True)}, plan.encode_reps)
        summaries = summaries[1:]  # the warm-up round
        stage_t, vae_t, vae_text_t = times["stage"], times["vae"], times["vae+text"]
        med = {key: float(np.median([getattr(s, key) for s in summaries]))
               for key in ("clips_per_s", "decode_seconds", "vae_seconds", "write_seconds", "load_seconds")}
        work = Timing([s.written / s.clips_per_s for s in summaries])  # wall after the backbone/cache checks
        ratio = stage_t.median / vae_t.median
        report.add(name, f"encode {label}: clips/s", f"{med['clips_per_s']:.2f} clips/s",
                   f"EncodeSummary.clips_per_s; call wall {fmt_seconds(stage_t.median)} ({fmt_spread(stage_t)}) = "
                   f"{len(paths) / stage_t.median:.2f} clips/s")
        report.add(name, f"encode {label}: pure VAE (encode_video, same frames, batch {batch_size})",
                   fmt_seconds(vae_t.median), f"{fmt_spread(vae_t)}; + text encoder {fmt_seconds(vae_text_t.median)}")
        report.add(name, f"encode {label}: stage wall / pure VAE", f"{ratio:.2f}x",
                   f"paired {paired_ratio(stage_t, vae_t):.2f}x; after setup {work.median / vae_t.median:.2f}x; "
                   f"/ (VAE+text) {stage_t.median / vae_text_t.median:.2f}x",
                   "", verdict(ratio, 1.3))
        report.add(name, f"encode {label}: stage phases (EncodeSummary)", fmt_seconds(med["vae_seconds"]) + " VAE+text",
                   f"decode {fmt_seconds(med['decode_seconds'])} (thread), write {fmt_seconds(med['write_seconds'])} (thread), "
                   f"setup {fmt_seconds(med['load_seconds'])}")


# ==================================================================== 4. cache
def write_real_size_cache(root: Path, clips: int) -> None:
    """A cache of CogVideoX-size rows (latent + logvar 13x16x60x90, text 226x4096) via ShardWriter."""
    from lamo_cli.data.cache import EMPTY_PROMPT, CacheIdentity, ClipRow, ShardWriter, TextRow, write_manifest

    identity = CacheIdentity(backbone="bench-real-size", latent_fingerprint="bench", scaling_factor=1.15258426,
                             video_format={"num_frames": 49, "height": 480, "width": 720}, latent_shape=REAL_LATENT)
    generator = torch.Generator().manual_seed(5)
    rows, texts = [], [TextRow(EMPTY_PROMPT, torch.randn(REAL_TEXT, generator=generator))]
    for index in range(clips):
        caption = f"real-size clip {index}"
        rows.append(ClipRow(id=f"clip{index}", source_path=f"/bench/clip{index}.mp4", caption=caption,
                            frame_indices=list(range(49)), fps=8.0, source_fps=8.0, source_num_frames=49, height=480,
                            width=720, latent=torch.randn(REAL_LATENT, generator=generator),
                            logvar=torch.randn(REAL_LATENT, generator=generator)))
        texts.append(TextRow(caption, torch.randn(REAL_TEXT, generator=generator)))
    write_manifest(root, identity)
    ShardWriter(root, identity).write(rows, texts)


def bench_cache(report: Report, plan: Plan, cache: Path, workdir: Path) -> None:
    from lamo_cli.data.cache import LatentCache, LatentDataset

    name = "4 cache"
    real_cache = workdir / "real-size-cache"
    write_real_size_cache(real_cache, plan.real_cache_clips)
    loop = TrainLoop()
    started = time.perf_counter()
    preloaded = LatentDataset(LatentCache(cache), scaled=True, preload=True)
    build_seconds = time.perf_counter() - started
    n = len(preloaded)

    def read_all(dataset) -> None:
        for index in range(len(dataset)):
            item = dataset[index]
            _ = item["latent"], item["text"]

    open_seconds: dict[Path, list[float]] = {cache: [], real_cache: []}

    def cold(root: Path) -> Callable[[], float]:
        """Seconds per item, the fresh LatentCache's opening (index of the shards) included."""
        def run() -> float:
            start = time.perf_counter()
            dataset = LatentDataset(LatentCache(root), scaled=True, preload=False)
            open_seconds[root].append(time.perf_counter() - start)
            read_all(dataset)
            return (time.perf_counter() - start) / len(dataset)

        return run

    def warm() -> float:
        start = time.perf_counter()
        for _ in range(plan.cache_preload_passes):
            read_all(preloaded)
        return (time.perf_counter() - start) / (plan.cache_preload_passes * n)

    print(f"cache: {n} tiny-random clips, {plan.real_cache_clips} real-size clips, {plan.cache_reps} reps", flush=True)
    times = interleave({
        "cold": cold(cache),
        "preloaded": warm,
        "cold real": cold(real_cache),
        "train": loop.condition(0.4, plan.train_steps_per_rep),
    }, plan.cache_reps)
    step = times["train"].median
    steps_per_s = 1.0 / step
    report.add(name, "training step rate (tight loop, drift 0.4, batch 1)", f"{steps_per_s:.1f} steps/s",
               f"step {fmt_seconds(step)}; {fmt_spread(times['train'])}")
    for key, label in (("cold", f"cold read (fresh LatentCache + LatentDataset(preload=False), {n} clips)"),
                       ("preloaded", f"preloaded read (LatentDataset(preload=True), built in {fmt_seconds(build_seconds)})")):
        per_item = times[key].median
        detail = f"{fmt_seconds(per_item)} per item; {fmt_spread(times[key])}"
        if key == "cold":
            detail += f"; opening the cache {fmt_seconds(float(np.median(open_seconds[cache][1:])))} of it"
        report.add(name, f"{label}: latent+text items/s", f"{1 / per_item:,.0f} items/s", detail,
                   f"{step / per_item:,.0f}x the training step rate")
    per_item = times["cold real"].median
    megabytes = (np.prod(REAL_LATENT) + np.prod(REAL_TEXT)) * 4 / 1e6
    floor = lora_step_floor_seconds()
    report.add(name, f"cold read at real size (latent {'x'.join(map(str, REAL_LATENT))} + text 226x4096, "
               f"{plan.real_cache_clips} clips)", f"{1 / per_item:,.1f} items/s",
               f"{fmt_seconds(per_item)} per item = {megabytes / per_item:,.0f} MB/s ({megabytes:.1f} MB per item); "
               f"opening {fmt_seconds(float(np.median(open_seconds[real_cache][1:])))}",
               f">= {floor / per_item:,.0f}x a 2B LoRA step's floor ({fmt_seconds(floor)})")
    report.note(
        "Cache reads: 'cold' opens a fresh LatentCache each repetition (index + per-item Parquet row-group reads "
        "of latent and text; the OS page cache is warm, so this is not a cold-disk number). The finetune stage "
        "preloads caches under 1 GiB (LatentDataset default), so its steady state is the preloaded path."
    )


# ==================================================================== main
def markdown(report: Report, facts: dict[str, str], command: str, plan_name: str, uptime_before: str, uptime_after: str,
             started: datetime.datetime, seconds: float, cpu_share: float, threads: int) -> str:
    lines = [
        "# lamo benchmarks",
        "",
        "Generated by `benchmarks/bench.py` (see benchmarks/README.md). Every comparison ran its conditions",
        "side by side in one process, interleaved (A B, B A, A B, ...: the order flips every round) after one",
        "untimed warm-up round; values are medians, spreads the inter-quartile range and minimum over",
        "repetitions, ratios are ratios of medians (the paired ratio is the median of per-round ratios). All",
        "on the `tiny-random` backbone, CPU, float32, except the FLOP estimates, which use the published",
        "CogVideoX-2B/-5B configs on the meta device.",
        "",
        "```",
        command,
        "```",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M:%S %Z').strip()} ({plan_name} run, {seconds:.0f} s wall)",
    ]
    lines += [f"- {key}: {value}" for key, value in facts.items()]
    lines += [
        f"- uptime before: `{uptime_before}`",
        f"- uptime after: `{uptime_after}`",
        f"- process CPU time / wall time over the run: {cpu_share:.2f} (with {threads} torch thread(s); encode adds a "
        "decoder and a writer thread)",
        "",
        "## Goals of the issue",
        "",
    ]
    lines += [f"- {row.section}: {row.measurement}: **{row.median}** ({row.goal})" for row in report.rows if row.goal]
    lines += [
        "",
        "## Results",
        "",
        "| section | measurement | median | spread / detail | ratio | goal |",
        "|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        cells = [row.section, row.measurement, row.median, row.spread, row.ratio, row.goal]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines += ["", "## Load during each section", "", "| section | load average before -> after | CPU time / wall |", "|---|---|---|"]
    lines += [f"| {name} | {load} | {share:.2f} |" for name, load, share in report.sections]
    lines += ["", "## Notes and caveats", ""]
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def print_table(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lamo benchmarks (tiny-random, CPU, float32)", show_lines=False)
    for column in ("section", "measurement", "median", "spread / detail", "ratio", "goal"):
        table.add_column(column, overflow="fold")
    for row in report.rows:
        table.add_row(row.section, row.measurement, row.median, row.spread, row.ratio, row.goal)
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke test (< 2 minutes)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as Markdown here (e.g. BENCHMARKS.md)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: on a shared 2-core machine 2 threads stall in OpenMP barriers)")
    parser.add_argument("--encode-batch-size", type=int, default=1, help="batch size of encode and of the pure-VAE baseline")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder, deleted after)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plan = QUICK if args.quick else FULL
    arguments = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    command = f"nice -n {os.nice(0)} python benchmarks/bench.py {arguments}".rstrip()
    started = datetime.datetime.now().astimezone()
    facts = machine_facts(args.threads)
    uptime_before = uptime_line()
    print(f"uptime before: {uptime_before}")
    for key, value in facts.items():
        print(f"{key}: {value}")
    wall = time.perf_counter()
    run_cpu = Cpu()
    report = Report()
    report.note(
        f"Threads: torch.set_num_threads({args.threads}). With 2 threads on this 2-core machine under other users' "
        "load, medians of tiny ops were dominated by OpenMP stalls (a probe before this run: a small-field guide_v "
        "took median 34-44 ms with 2 threads vs 2.7-4.3 ms with 1, minima equal at ~2.5 ms)."
    )

    scratch = Path(tempfile.mkdtemp(prefix="lamo-bench-", dir=args.workdir))
    try:
        from lamo_cli.backbones import load_backbone
        from lamo_cli.stages.encode import encode

        print("\n== setup: writing clips and a small cache", flush=True)
        encoder = load_backbone("tiny-random", device="cpu")
        fmt = encoder.video_format
        native_dir = scratch / "clips-native"
        native = write_clips(native_dir, plan.encode_clips, fmt.num_frames, fmt.height, fmt.width, fmt.fps)
        big_dir = scratch / "clips-320x180"
        big_frames = (fmt.num_frames - 1) * 3 + 1  # 24 fps source: the stage samples every 3rd frame
        big = write_clips(big_dir, plan.encode_clips, big_frames, 180, 320, fmt.fps * 3)
        cache = scratch / "cache"
        encode([native_dir], backbone=encoder, out=cache, progress=False)

        with section(report, "1 finetune"):
            bench_finetune(report, plan, cache, scratch)
        with section(report, "2 generate"):
            bench_generate(report, plan)
        with section(report, "3 encode"):
            variants = {
                f"{fmt.num_frames}f {fmt.height}x{fmt.width} mp4 (native size)": (native_dir, native),
                f"{big_frames}f 320x180 @24fps mp4 (stride 3, resize + crop)": (big_dir, big),
            }
            bench_encode(report, plan, scratch, encoder, variants, args.encode_batch_size)
        with section(report, "4 cache"):
            bench_cache(report, plan, cache, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    seconds = time.perf_counter() - wall
    cpu_share = run_cpu.share()
    uptime_after = uptime_line()
    one_minute = [float(load.split()[0]) for _, loads, _ in report.sections for load in loads.split(" -> ")]
    load_1min_peak = max(one_minute)
    loaded = [name for name, loads, _ in report.sections
              if max(float(load.split()[0]) for load in loads.split(" -> ")) > args.threads + 0.5]
    if load_1min_peak <= args.threads + 0.5:
        report.note(
            f"Load: 1-minute load averages stayed at {min(one_minute):.2f}-{load_1min_peak:.2f} on {os.cpu_count()} cores "
            f"during the sections (this benchmark's own {args.threads} busy thread(s) included) and CPU time / wall was "
            f"{cpu_share:.2f}, so this process was not starved; the 5- and 15-minute averages in the uptime lines "
            "still carry heavier load from other users earlier. The machine is shared: under heavy background load "
            "absolute times roughly double and ratios near 1 become noise (wide IQRs show it)."
        )
    else:
        report.note(
            f"Background load: the machine is shared; 1-minute load averages reached {load_1min_peak:.2f} on "
            f"{os.cpu_count()} cores (this benchmark's own {args.threads} busy thread(s) included) in "
            f"{', '.join(loaded)}, so other processes competed for the CPU there (CPU time / wall per section in the "
            "table above: below the busy thread count means this process waited). Interleaving spreads that noise "
            "over all conditions alike, but absolute times are inflated and ratios near 1 are only good to a few "
            "percent; encode, whose decoder thread needs the second core, suffers first."
        )
    print_table(report)
    print("\nload per section:")
    for name, load, share in report.sections:
        print(f"  {name}: load {load}, CPU time / wall {share:.2f}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"\nuptime before: {uptime_before}\nuptime after:  {uptime_after}\nwall {seconds:.0f} s, CPU/wall {cpu_share:.2f}")
    if args.out is not None:
        from lamo_cli.fileio import write_text

        write_text(args.out, markdown(report, facts, command, "quick" if args.quick else "full", uptime_before,
                                      uptime_after, started, seconds, cpu_share, args.threads))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
