"""One clip through `tiny`'s VAE on the CPU: as given (batch 1) vs doubled to a batch of 2.

    python benchmarks/vae_one_clip.py [--threads 2] [--rounds 5]

torch runs a one-sample conv3d with a small input on its native, single-threaded kernel; a batch
of two takes oneDNN's, which uses every thread. `CogVideoXBackbone.decode_latents` / `encode_video`
double a one-clip batch for such small VAEs and keep the first sample. This prints the median time
of encoding and decoding one clip both ways, interleaved after an untimed warm-up, and their ratio;
then the time per clip of two different clips in one call (what `lamo generate` does when it decodes
its videos, and encodes its --init-video clips, two at a time). No test asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backbone", default="tiny")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lamo_cli.backbones import load_backbone

    model = load_backbone(args.backbone, device="cpu")
    fmt = model.video_format
    frames = np.random.default_rng(0).integers(0, 255, (1, fmt.num_frames, fmt.height, fmt.width, 3), dtype=np.uint8)
    latents = torch.randn(1, fmt.latent_frames, model.latent_channels, fmt.latent_height, fmt.latent_width,
                          generator=torch.Generator().manual_seed(0))
    doubled = model._onednn_batch
    ways = {"batch 1 (torch's choice)": lambda x: x, "doubled to 2 (lamo)": doubled}
    times: dict[tuple[str, str], list[float]] = {}
    for round_index in range(args.rounds + 1):
        for name, batching in ways.items():
            model._onednn_batch = batching
            for job, run in (("encode", lambda: model.encode_video(frames)), ("decode", lambda: model.decode_latents(latents))):
                start = time.perf_counter()
                with torch.no_grad():
                    run()
                if round_index:  # round 0 warms up
                    times.setdefault((job, name), []).append(time.perf_counter() - start)
    model._onednn_batch = doubled
    pair_frames = np.concatenate([frames, frames[:, ::-1]])  # two different clips
    pair_latents = torch.cat([latents, latents.flip(1)])
    for round_index in range(args.rounds + 1):
        for job, run in (("encode", lambda: model.encode_video(pair_frames)), ("decode", lambda: model.decode_latents(pair_latents))):
            start = time.perf_counter()
            with torch.no_grad():
                run()
            if round_index:
                times.setdefault((job, "pair"), []).append((time.perf_counter() - start) / 2)
    print(f"{args.backbone}, one clip of {fmt.num_frames} frames at {fmt.height}x{fmt.width}, {args.threads} threads, "
          f"median of {args.rounds} rounds")
    for job in ("encode", "decode"):
        base, new = (statistics.median(times[(job, name)]) for name in ways)
        pair = statistics.median(times[(job, "pair")])
        print(f"  {job}: batch 1 {base * 1000:7.1f} ms   doubled {new * 1000:7.1f} ms   speed-up {base / new:.2f}x   "
              f"two clips in one call {pair * 1000:7.1f} ms a clip ({new / pair:.2f}x the doubled one)")


if __name__ == "__main__":
    main()
