#!/usr/bin/env bash
# Issue 7's remedies table over 3 seeds (issue 14): the seed's Bernoulli and Gaussian VAEs and every preset of
# configs/remedies/, 3 epochs each, K = 100 test bound; one sweep per preset (a sweep has one base), then one
# compare over all of them:
#   bash benchmarks/sweeps/remedies.sh [OUT]       (default benchmarks/runs/sweeps/remedies)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-benchmarks/runs/sweeps/remedies}
mkdir -p "$OUT/specs"
for preset in bernoulli_vae gaussian_vae $(cd src/vaelab/configs && ls remedies/*.yaml | sed 's/\.yaml$//'); do
  name=$(basename "$preset")
  printf 'base: %s\nset: {train.epochs: 3}\nseeds: 3\nevaluate: {iw_samples: 100}\n' "$preset" > "$OUT/specs/$name.yaml"
  .venv/bin/vaelab sweep "$OUT/specs/$name.yaml" --out "$OUT/$name" --workers 1 --threads 1
done
.venv/bin/vaelab compare "$OUT"/*/ --by name --out benchmarks/results/sweeps/remedies
