#!/usr/bin/env bash
# The by-hand benchmarks, run one after another on a quiet machine (each writes under benchmarks/runs/ and
# benchmarks/results/; `python benchmarks/summarize.py` then prints the tables that RESULTS.md quotes).
#   bash benchmarks/run_all.sh [speed|iw|estimators|remedies|ae|literature|pythae|full ...]   (default: the first five)
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin/vaelab
R=benchmarks/runs
mkdir -p "$R" benchmarks/results
parts=("$@"); [ ${#parts[@]} -gt 0 ] || parts=(speed iw estimators remedies ae)

train() {  # train NAME CONFIG ARGS... : skip a finished run, resume an interrupted one
  local name=$1; shift
  if [ -f "$R/$name/eval.json" ]; then return; fi
  if [ -d "$R/$name/checkpoint" ]; then $V train --resume "$R/$name" --quiet; else $V train "$@" --out "$R/$name" --quiet; fi
}

for part in "${parts[@]}"; do case $part in
speed) .venv/bin/python benchmarks/speed.py --repeats 3 ;;
iw) .venv/bin/python benchmarks/iw_eval.py --images 200 --k 5000 ;;
estimators)  # issue 3: the DisARM paper's nonlinear setting, 5 epochs (5,000 steps of batch 50) per estimator
  for est in sfe-avg nvil rloo vimco disarm relax gumbel; do
    train "est_$est" configs/literature/disarm_nonlinear.yaml --estimator "$est" --epochs 5
    [ -f "$R/est_$est/eval.json" ] || $V evaluate "$R/est_$est" --iw-samples 100 --quiet > /dev/null
  done
  $V gradvar "$R/est_disarm" --estimators sfe,sfe-avg,nvil,rloo,disarm,relax,gumbel,st --draws 200 \
     --out benchmarks/results/gradvar_trained ;;
remedies)  # issue 7: the seed's Bernoulli VAE and each remedy, 3 epochs each; Gaussian VAE with conv and IWAE
  train rem_bernoulli_baseline configs/bernoulli_vae.yaml --epochs 3
  train rem_gaussian_baseline configs/gaussian_vae.yaml --epochs 3
  for cfg in configs/remedies/*.yaml; do train "rem_$(basename "$cfg" .yaml)" "$cfg" --epochs 3; done
  for d in "$R"/rem_*; do [ -f "$d/eval.json" ] || $V evaluate "$d" --iw-samples 100 --quiet > /dev/null; done ;;
ae)  # issue 4: AE + GMM (2-D and 16-D codes, K = 20 and BIC's K) next to the Gaussian VAE of the same size
  for d in 2 16; do
    train "ae_$d" configs/ae_gmm.yaml --set model.latent_dim=$d
    train "vae_$d" configs/gaussian_vae.yaml --set model.latent_dim=$d
    for k in 20 auto; do
      [ -f "$R/ae_${d}_$k.json" ] && continue
      $V fit-density "$R/ae_$d" --components $k --no-figures > /dev/null
      $V evaluate "$R/ae_$d" --iw-samples 500 --quiet > /dev/null && cp "$R/ae_$d/eval.json" "$R/ae_${d}_$k.json"
    done
    [ -f "$R/vae_$d/eval.json" ] || $V evaluate "$R/vae_$d" --iw-samples 500 --quiet > /dev/null
  done ;;
literature)  # issue 2: the literature presets within a CPU budget, K = 5000 on all 10,000 test images
  train lit_static configs/literature/vae_784_400_40_static.yaml --epochs 10
  train lit_iwae configs/literature/iwae_vae_1layer.yaml --epochs 5
  for d in "$R"/lit_*; do [ -f "$d/eval.json" ] || $V evaluate "$d" --iw-samples 5000 --quiet > /dev/null; done ;;
pythae)  # issue 8: vaelab vs Pythae 0.1.2 (its own venv, $PYTHAE_VENV), alternating, 5 rounds of 3 epochs each
  P=${PYTHAE_VENV:-.venv-pythae}
  [ -x "$P/bin/python" ] || { python3 -m venv "$P" && "$P/bin/pip" install -q torch==2.13.0 && "$P/bin/pip" install -q pythae==0.1.2; }
  C=benchmarks/pythae_compare.py
  rm -rf "$R/pythae" && .venv/bin/python $C export "$R/pythae"
  for r in 0 1 2 3 4; do
    .venv/bin/python $C vaelab "$R/pythae" --round $r          # fp32 first: its weights feed Pythae's get_nll
    "$P/bin/python" $C pythae "$R/pythae" --round $r > "$R/pythae/pythae$r.log" 2>&1
    for v in bf16 bf16-compile fp32-compile; do .venv/bin/python $C vaelab "$R/pythae" --round $r --variant $v; done
  done
  .venv/bin/python $C report "$R/pythae" ;;
full) time $V reproduce --out reports/full ;;
*) echo "unknown part $part: speed iw estimators remedies ae literature pythae full" >&2; exit 2 ;;
esac; done
