#!/usr/bin/env bash
# Build a 2x-temporal `tiny` (docs/RESULTS.md, "`tiny` built on one GPU"): the VAE recipe whose
# reconstructions passed PC 68% there (batches of 16: plain, then the frame-difference + moment
# losses, then the decoder alone on noisy latents), except that the plain phase is replaced by the
# shipped 4x VAE's weights (VAE_INIT; they reconstruct as well in the 2x architecture before any
# training; VAE_INIT= trains that phase from scratch instead); then the transformer from scratch.
#
# On one GPU, in a fixed time (the defaults): the VAE phases scaled to VAE_MINUTES, the transformer
# trained for TRANSFORMER_MINUTES at batch 128 (build-tiny measures each phase's speed first and fits
# the step counts; plan.json records them); about VAE_MINUTES + TRANSFORMER_MINUTES + 2 minutes in all.
#
# On a CPU, by step counts, over as many sittings as it takes (a rerun with the same OUT resumes
# from the last checkpoint, every SAVE_EVERY steps; a batch-16 motion-phase step is ~23 s on 2
# cores, so that phase alone takes ~6.5 hours):
#   DEVICE=cpu VAE_MINUTES=0 TRANSFORMER_MINUTES=0 TRANSFORMER_BATCH=32 TRANSFORMER_LR=5e-4 \
#     TRANSFORMER_STEPS=6000 SAVE_EVERY=10 OUT=tiny-cpu bash recipes/experiments/tiny-2x-build.sh
#
# With a 2x VAE already trained (e.g. the CPU build's, by step counts), the GPU's time can go to the
# transformer alone: VAE_INIT=that/model MOTION_STEPS=0 DECODER_STEPS=0 VAE_MINUTES=0 (its latent
# scaling factor is measured again on the clips).
#
# FRAMES=17 builds 2.1 s clips (9 latent frames at 2x, the shipped transformer's token count: a
# third of the cost of a transformer step at 33 frames; docs/RESULTS.md, "17 frames at 2x").
#
# The transformer phase writes validation videos of VAL_PROMPTS (12 test prompts) at its step 0 and
# every VAL_EVERY steps into $OUT/transformer-run/validation/; score them step by step with
#   lamo eval $OUT/transformer-run/validation/step-* --compare
#
# Run from the repository root where lamo and its dependencies are installed. Then, on any machine:
#   lamo generate --backbone "$OUT/model" --prompts-file recipes/experiments/test-prompts-36.txt \
#     --steps 30 --prior none --out gen && lamo eval gen
set -euo pipefail
OUT=${OUT:-tiny-gpu}
DEVICE=${DEVICE:-cuda}
CLIPS=${CLIPS:-3000}
FRAMES=${FRAMES:-33}
VAE_MINUTES=${VAE_MINUTES:-3.5}
TRANSFORMER_MINUTES=${TRANSFORMER_MINUTES:-4}
VAE_INIT=${VAE_INIT-lamo_cli/weights/tiny}
TRANSFORMER_INIT=${TRANSFORMER_INIT-}  # e.g. lamo_cli/weights/tiny: start from the shipped denoiser, not from scratch
VAE_BATCH=${VAE_BATCH:-16}
TRANSFORMER_BATCH=${TRANSFORMER_BATCH:-128}
TRANSFORMER_LR=${TRANSFORMER_LR:-1e-3}
TRANSFORMER_STEPS=${TRANSFORMER_STEPS:-20000}  # with a time budget: the most it may run
SAVE_EVERY=${SAVE_EVERY:-200}
VAL_PROMPTS=${VAL_PROMPTS-recipes/experiments/test-prompts-12.txt}  # validation videos of the transformer phase ('' = none)
VAL_EVERY=${VAL_EVERY:-1000}
MOTION_STEPS=${MOTION_STEPS:-1013}
DECODER_STEPS=${DECODER_STEPS:-380}
LAMO=${LAMO:-lamo}  # e.g. LAMO="python3 -m lamo_cli.cli" where the package is on PYTHONPATH only
if [ -n "$VAE_INIT" ]; then FIRST_VAE_PHASE=(--vae-init-from "$VAE_INIT" --vae-steps 0)
else FIRST_VAE_PHASE=(--vae-steps 1433 --vae-small-crop-steps 477); fi
TRANSFORMER_START=()
[ -z "$TRANSFORMER_INIT" ] || TRANSFORMER_START=(--transformer-init-from "$TRANSFORMER_INIT")
[ -z "$VAL_PROMPTS" ] || TRANSFORMER_START+=(--transformer-val-prompts "$VAL_PROMPTS" --transformer-val-every "$VAL_EVERY")

$LAMO build-tiny --out "$OUT" --device "$DEVICE" --clips "$CLIPS" --frames "$FRAMES" --temporal-compression 2 \
  --vae-batch-size "$VAE_BATCH" "${FIRST_VAE_PHASE[@]}" --motion-steps "$MOTION_STEPS" --moment-weight 0.5 \
  --decoder-steps "$DECODER_STEPS" --vae-minutes "$VAE_MINUTES" --save-every "$SAVE_EVERY" \
  --transformer-batch-size "$TRANSFORMER_BATCH" --transformer-lr "$TRANSFORMER_LR" --transformer-steps "$TRANSFORMER_STEPS" "${TRANSFORMER_START[@]}" \
  --transformer-minutes "$TRANSFORMER_MINUTES" --transformer-timestep-sampling logit-normal --transformer-logit-mean -0.5 \
  --no-progress
