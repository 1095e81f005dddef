#!/usr/bin/env bash
# LaMo's component ablation in miniature on the embedded `tiny` backbone (docs/RESULTS.md).
# Every arm shares the world, captions, sampling noise and steps; three training seeds.
# Settings come from recipes/tiny.toml (passed explicitly: `lamo demo` alone uses the shorter tiny-demo.toml). Run from the repository root; OUT defaults to results/.
set -euo pipefail
OUT=${OUT:-results}
SEEDS=${SEEDS:-0,1,2}
PROMPTS=${PROMPTS:-12}
SWEEPS=${SWEEPS:-1}  # 0: the ablation and floors only

# the ablation: plain / +drift / +guidance / both, with the ground-truth floor
lamo demo --backbone tiny --recipe tiny --seeds "$SEEDS" --split test --test-prompts "$PROMPTS" --out "$OUT/test"
lamo demo --backbone tiny --recipe tiny --seeds "$SEEDS" --split ood --test-prompts "$PROMPTS" --out "$OUT/ood"

# the autoencoder floor (ground-truth renders beside their tiny VAE reconstructions)
lamo eval "$OUT/test/world-test" --reference --backbone tiny --out "$OUT/test/eval/floors"

# one knob at a time on top of the test-split demo
[ "$SWEEPS" = 1 ] || exit 0
lamo sweep "$OUT/test" --knob guidance-scale --values 0,5,15,50,150
lamo sweep "$OUT/test" --knob guidance-window --values 0.2,0.5,0.8,1.0
lamo sweep "$OUT/test" --knob drift-weight --values 0,0.1,0.4,1.6 --seeds 0
lamo sweep "$OUT/test" --knob field-tau --values 1,2,3 --seeds 0
