"""fp32 vs bf16 autocast for a `tiny` transformer training step on this CPU, side by side.

    python benchmarks/cpu_precision.py [--threads 2] [--batch-size 8] [--temporal-compression 4|2] [--rounds 5]

One process; the two precisions are interleaved (A B, B A, ...) after an untimed warm-up of each.
A step is what `lamo finetune --full` does per batch: forward under `torch.autocast` (bf16) or
not (fp32), v-MSE, backward, clip, AdamW on fp32 weights. Prints the medians, their ratio and the
relative difference of the two losses on the same batch and weights (bf16's rounding). Whether bf16
wins depends on the CPU: with AMX tiles (Intel Sapphire Rapids and later) the matmuls run on them;
without, bf16 is emulated and far slower. No test asserts a time.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--temporal-compression", type=int, default=4, choices=(2, 4))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lamo_cli.backbones.cogvideox import tiny_untrained_components

    base = tiny_untrained_components(temporal_compression=args.temporal_compression)["transformer"].train()
    cfg = base.config
    frames = (cfg.sample_frames - 1) // cfg.temporal_compression_ratio + 1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, frames, cfg.in_channels, cfg.sample_height, cfg.sample_width, generator=gen)
    text = torch.randn(args.batch_size, cfg.max_text_seq_length, cfg.text_embed_dim, generator=gen)
    t = torch.randint(0, 1000, (args.batch_size,), generator=gen)
    target = torch.randn(x.shape, generator=gen)

    models = {name: copy.deepcopy(base) for name in ("fp32", "bf16")}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

    def step(name: str) -> float:
        model, optimizer = models[name], optimizers[name]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
            v = model(hidden_states=x, encoder_hidden_states=text, timestep=t, return_dict=False)[0]
        loss = (v.float() - target).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    with torch.no_grad():  # the loss of both precisions on identical weights and batch
        losses = {}
        for name in ("fp32", "bf16"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                v = base(hidden_states=x, encoder_hidden_states=text, timestep=t, return_dict=False)[0]
            losses[name] = float((v.float() - target).pow(2).mean())

    step("fp32"), step("bf16")  # warm-up
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(args.rounds):
        order = ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")
        for name in order:
            times[name].append(step(name))

    flags = cpu_flags()
    amx = sorted(f for f in flags if f.startswith("amx"))
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"AMX: {', '.join(amx) if amx else 'none'}, threads {args.threads}")
    print(f"tiny transformer ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M), latent {list(x.shape)}, "
          f"{args.rounds} interleaved rounds")
    print(f"train step fp32  median {fp32 * 1000:.0f} ms  (min {min(times['fp32']) * 1000:.0f})")
    print(f"train step bf16  median {bf16 * 1000:.0f} ms  (min {min(times['bf16']) * 1000:.0f})")
    print(f"fp32 / bf16 = {fp32 / bf16:.2f}x; loss on the same batch: fp32 {losses['fp32']:.6f}, bf16 {losses['bf16']:.6f} "
          f"(relative difference {abs(losses['bf16'] - losses['fp32']) / losses['fp32']:.1e})")


if __name__ == "__main__":
    main()
