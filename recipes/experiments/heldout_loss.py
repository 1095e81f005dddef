"""Held-out diffusion loss of saved models, side by side: the number `lamo finetune --val-cache`
logs during a run, for model folders (or backbone names) after the fact.

    python recipes/experiments/heldout_loss.py CACHE MODEL [MODEL ...] [--clips 16] \
        [--timesteps 100,300,500,700,900] [--batch-size 8] [--out heldout.json]

CACHE: a latent cache of held-out clips encoded by the models' backbone (`lamo encode`); every
MODEL must share its latent space (e.g. checkpoints of one run exported into copies of one model
folder). The noise is fixed by the clip and the timestep, so the numbers compare across models
and with the `val_loss` of a run's metrics.jsonl on the same cache and clips. Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

from lamo_cli.errors import LamoError
from lamo_cli.fileio import write_json
from lamo_cli.stages.finetune import DEFAULT_VAL_TIMESTEPS, heldout_loss, heldout_values, load_heldout_set, parse_val_timesteps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--timesteps", default=DEFAULT_VAL_TIMESTEPS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)

    from lamo_cli.backbones import load_backbone

    try:
        if args.clips < 1:
            raise LamoError(f"--clips {args.clips}: must be at least 1")
        timesteps = parse_val_timesteps(args.timesteps)
        rows = []
        for model in args.models:
            backbone = load_backbone(model, device="cpu")
            held = load_heldout_set(args.cache, args.clips, timesteps, backbone.latent_fingerprint(), backbone.scaling_factor, model)
            backbone.transformer.eval()
            totals = heldout_loss(lambda x, t, c: backbone.predict_v(x, t, c), held, backbone.alphas_cumprod(), args.batch_size)
            rows.append({"model": model, "clips": len(held.x0), **heldout_values(totals, timesteps)})
            by_t = "  ".join(f"t={t} {v:.5f}" for t, v in rows[-1]["val_loss_by_t"].items())
            print(f"{model}: {rows[-1]['val_loss']:.5f}  ({by_t})", flush=True)
    except LamoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_json(args.out, {"cache": args.cache, "timesteps": list(timesteps), "models": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
