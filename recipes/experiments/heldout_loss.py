"""Held-out diffusion loss of saved models, side by side: the number `lamo finetune --val-cache`
logs during a run, for model folders (or backbone names) after the fact.

    python recipes/experiments/heldout_loss.py CACHE MODEL [MODEL ...] [--clips 16] \
        [--timesteps 100,300,500,700,900] [--batch-size 8] [--moving-threshold 1.0] [--out heldout.json]

CACHE: a latent cache of held-out clips encoded by the models' backbone (`lamo encode`); every
MODEL must share its latent space (e.g. checkpoints of one run exported into copies of one model
folder). The noise is fixed by the clip and the timestep, so the numbers compare across models
and with the `val_loss` of a run's metrics.jsonl on the same cache and clips. With
--moving-threshold, the same loss is also split into the latent cells that move and the rest
(`moving_cells`, the mask `lamo finetune --moving-weight` weighs by). Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

import torch

from lamo_cli.errors import LamoError
from lamo_cli.fileio import write_json
from lamo_cli.motion.drift import diffusion_loss, moving_cells
from lamo_cli.stages.finetune import DEFAULT_VAL_TIMESTEPS, heldout_loss, heldout_values, load_heldout_set, parse_val_timesteps


class RegionLoss:
    """The training loss split into the moving latent cells (soft mask `moving_cells`, each cell's
    channels together) and the rest, pooled over the held-out clips; fed by `heldout_loss`'s
    `on_prediction`, so the model runs once for both numbers."""

    def __init__(self, threshold: float, timesteps: tuple[int, ...]) -> None:
        self.threshold = threshold
        self.sums = {region: {t: [0.0, 0.0] for t in timesteps} for region in ("moving", "still")}

    def __call__(self, clip: int, step: int, x0_hat: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> None:
        mask = moving_cells(x0, self.threshold)
        for region, weight in (("moving", mask), ("still", 1.0 - mask)):
            # the training loss with the region as its cell weight: its mean times the element count is the sum
            self.sums[region][step][0] += float(diffusion_loss(x0_hat, x0, abar, weight)) * x0.numel() / x0.shape[2]
            self.sums[region][step][1] += float(weight.sum())

    def values(self) -> dict[str, dict[str, float]]:
        """{"moving": {t: v-MSE}, "still": {t: v-MSE}}."""
        return {region: {str(t): total / max(count, 1e-12) for t, (total, count) in by_t.items()}
                for region, by_t in self.sums.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--timesteps", default=DEFAULT_VAL_TIMESTEPS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--moving-threshold", type=float, default=None,
                        help="also split the loss into moving and still latent cells (deviation threshold)")
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)

    from lamo_cli.backbones import load_backbone

    try:
        if args.clips < 1:
            raise LamoError(f"--clips {args.clips}: must be at least 1")
        if args.moving_threshold is not None and not args.moving_threshold > 0:
            raise LamoError(f"--moving-threshold {args.moving_threshold}: must be positive")
        timesteps = parse_val_timesteps(args.timesteps)
        rows = []
        for model in args.models:
            backbone = load_backbone(model, device="cpu")
            held = load_heldout_set(args.cache, args.clips, timesteps, backbone.latent_fingerprint(), backbone.scaling_factor, model)
            backbone.transformer.eval()
            split = None if args.moving_threshold is None else RegionLoss(args.moving_threshold, timesteps)
            totals = heldout_loss(lambda x, t, c: backbone.predict_v(x, t, c), held, backbone.alphas_cumprod(), args.batch_size,
                                  on_prediction=split)
            rows.append({"model": model, "clips": len(held.x0), **heldout_values(totals, timesteps)})
            by_t = "  ".join(f"t={t} {v:.5f}" for t, v in rows[-1]["val_loss_by_t"].items())
            print(f"{model}: {rows[-1]['val_loss']:.5f}  ({by_t})", flush=True)
            if split is not None:
                regions = split.values()
                rows[-1]["by_region"] = regions
                for region, values in regions.items():
                    print(f"  {region:6s} " + "  ".join(f"t={t} {v:.5f}" for t, v in values.items()), flush=True)
    except LamoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_json(args.out, {"cache": args.cache, "timesteps": list(timesteps), "models": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
