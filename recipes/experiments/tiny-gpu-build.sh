#!/usr/bin/env bash
# Build a 2x-temporal `tiny` on one GPU in a fixed time (docs/RESULTS.md, "`tiny` built on one GPU").
# The VAE recipe whose reconstructions passed PC 68% there (batches of 16: plain, then the
# frame-difference + moment losses, then the decoder alone on noisy latents), except that the
# plain phase is replaced by the shipped 4x VAE's weights (VAE_INIT; they reconstruct as well in
# the 2x architecture before any training; VAE_INIT= trains that phase from scratch instead),
# scaled to VAE_MINUTES; then the transformer from scratch for TRANSFORMER_MINUTES at batch 128
# (build-tiny measures each phase's speed first and fits the step counts; plan.json records them).
# About VAE_MINUTES + TRANSFORMER_MINUTES + 2 minutes in all (world, decoding, encoding, probes).
# Run from the repository root where lamo and its dependencies are installed. Then, on any machine:
#   lamo generate --backbone "$OUT/model" --prompts-file recipes/experiments/test-prompts-36.txt \
#     --steps 30 --prior none --out gen && lamo eval gen
set -euo pipefail
OUT=${OUT:-tiny-gpu}
DEVICE=${DEVICE:-cuda}
CLIPS=${CLIPS:-3000}
VAE_MINUTES=${VAE_MINUTES:-3.5}
TRANSFORMER_MINUTES=${TRANSFORMER_MINUTES:-4}
VAE_INIT=${VAE_INIT-lamo_cli/weights/tiny}
TRANSFORMER_INIT=${TRANSFORMER_INIT-}  # e.g. lamo_cli/weights/tiny: start from the shipped denoiser, not from scratch
VAE_BATCH=${VAE_BATCH:-16}
TRANSFORMER_BATCH=${TRANSFORMER_BATCH:-128}
LAMO=${LAMO:-lamo}  # e.g. LAMO="python3 -m lamo_cli.cli" where the package is on PYTHONPATH only
if [ -n "$VAE_INIT" ]; then FIRST_VAE_PHASE=(--vae-init-from "$VAE_INIT" --vae-steps 0)
else FIRST_VAE_PHASE=(--vae-steps 1433 --vae-small-crop-steps 477); fi
TRANSFORMER_START=()
[ -z "$TRANSFORMER_INIT" ] || TRANSFORMER_START=(--transformer-init-from "$TRANSFORMER_INIT")

$LAMO build-tiny --out "$OUT" --device "$DEVICE" --clips "$CLIPS" --temporal-compression 2 \
  --vae-batch-size "$VAE_BATCH" "${FIRST_VAE_PHASE[@]}" --motion-steps 1013 --moment-weight 0.5 \
  --decoder-steps 380 --vae-minutes "$VAE_MINUTES" \
  --transformer-batch-size "$TRANSFORMER_BATCH" --transformer-lr 1e-3 --transformer-steps 20000 "${TRANSFORMER_START[@]}" \
  --transformer-minutes "$TRANSFORMER_MINUTES" --transformer-timestep-sampling logit-normal --transformer-logit-mean -0.5 \
  --no-progress
