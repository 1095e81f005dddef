"""The data side of one `lamo finetune` step, old path vs new, side by side in one process.

    python benchmarks/finetune_data_path.py [--clips 3000] [--batch-size 128] [--threads 2] [--rounds 7]

A preloaded cache of `tiny` 2x-temporal latents ([17, 8, 16, 16], 32 x 64 text) held in a
LatentDataset. Per batch, three ways to get (x0, text, eps) onto the training device:
  stack       per-item indexing and torch.stack, noise drawn on the CPU (lamo before 2026-12-01)
  gather      LatentDataset.batch (one gather), noise drawn on the CPU (today's CPU path)
  on-device   LatentDataset.to(GPU) + batch there, noise drawn on the GPU (today's GPU path; CUDA only)
Each includes the copy to the device (a no-op on the CPU) and ends with a device synchronisation.
Rounds are interleaved after an untimed warm-up; medians and their ratios are printed. No test
asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def build_cache(root: Path, clips: int) -> Path:
    from lamo_cli.data.cache import CacheIdentity, ClipRow, ShardWriter, TextRow, write_manifest

    shape = (17, 8, 16, 16)
    identity = CacheIdentity(backbone="bench", latent_fingerprint="b" * 16, scaling_factor=0.7, video_format={"num_frames": 33},
                             latent_shape=shape)
    gen = torch.Generator().manual_seed(0)
    prompts = [f"prompt {i}" for i in range(max(1, clips // 2))]
    texts = [TextRow(text, torch.randn(32, 64, generator=gen)) for text in prompts + [""]]
    rows = [ClipRow(id=f"{i:032d}", source_path=f"clip{i}.mp4", caption=prompts[i % len(prompts)], frame_indices=list(range(33)),
                    fps=8.0, source_fps=8.0, source_num_frames=33, height=64, width=64, latent=torch.randn(shape, generator=gen))
            for i in range(clips)]
    ShardWriter(root, identity).write(rows, texts)
    write_manifest(root, identity)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lamo_cli.data.cache import LatentCache, LatentDataset

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        cache = LatentCache(build_cache(Path(tmp) / "cache", args.clips))
        host = LatentDataset(cache)
        moved = LatentDataset(cache)
        on_device = device.type == "cuda" and moved.to(device)
        empty = cache.empty_text_embedding().float()
        empty_dev = empty.to(device)
        cpu_gen = torch.Generator().manual_seed(1)
        dev_gen = torch.Generator(device=device).manual_seed(1)
        picks = torch.Generator().manual_seed(2)

        def batch_indices():
            return torch.randint(0, len(host), (args.batch_size,), generator=picks).tolist()

        def stack():
            idx = batch_indices()
            items = [host[i] for i in idx]
            x0 = torch.stack([torch.as_tensor(it["latent"], dtype=torch.float32) for it in items])
            text = torch.stack([torch.as_tensor(it["text"], dtype=torch.float32) for it in items])
            eps = torch.randn(x0.shape, generator=cpu_gen)
            x0, text, eps = x0.to(device), text.to(device), eps.to(device)

        def gather():
            idx = batch_indices()
            x0, text = host.batch(idx, empty, torch.zeros(len(idx), dtype=torch.bool))
            eps = torch.randn(x0.shape, generator=cpu_gen)
            x0, text, eps = x0.to(device), text.to(device), eps.to(device)

        def device_path():
            idx = batch_indices()
            x0, text = moved.batch(idx, empty_dev, torch.zeros(len(idx), dtype=torch.bool))
            eps = torch.randn(x0.shape, generator=dev_gen, device=device)

        ways = {"stack": stack, "gather": gather}
        if on_device:
            ways["on-device"] = device_path
        times: dict[str, list[float]] = {name: [] for name in ways}
        for name, fn in ways.items():  # untimed warm-up
            fn(); sync()
        for r in range(args.rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for name in order:
                start = time.perf_counter()
                for _ in range(5):
                    ways[name]()
                sync()
                times[name].append((time.perf_counter() - start) / 5)
    print(f"device {device}, {args.clips} clips, batch {args.batch_size}, {args.threads} CPU threads, {args.rounds} rounds")
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, m in medians.items():
        print(f"  {name:10s} {m * 1000:8.2f} ms per batch   (stack / {name}: {medians['stack'] / m:.2f}x)")
    if not on_device:
        print("  on-device  (needs CUDA)")


if __name__ == "__main__":
    main()
