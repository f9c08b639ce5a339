#!/usr/bin/env bash
# Reproduce every training run behind results/README.md, one at a time, on the CPU.
#   bash results/run.sh main 0        # the 16 main-table runs of seed 0 (task x model)
#   bash results/run.sh ablations english   # the SeRpEnt ablations on a task (seed 0)
#   bash results/run.sh ablations fashion-mnist abl-linear-k1 abl-full-branch   # only these variants
#   bash results/run.sh one english serpent-mamba abl-gate 0 --set model.serpent.gate=true   # any one run
#   bash results/run.sh scale         # step time/memory at 1K/4K/16K + one Path-X-size (16K) run
# Each run trains into runs/results/<task>/<name>-seed<seed>, is scored on the test split, and its
# config, JSONL log, summary and test score are copied to results/runs/<task>/<name>-seed<seed>/
# (checkpoints stay in runs/, which git ignores). A run whose copy exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
SERPENT=${SERPENT:-.venv/bin/serpent}

# the CPU budget per task: training steps (same for every model), warm-up 20 steps
declare -A STEPS=([listops]=200 [pathfinder]=100 [fashion-mnist]=150 [english]=300)

run() {  # run TASK MODEL NAME SEED [--set key=value ...]
  local task=$1 model=$2 name=$3 seed=$4; shift 4
  local steps=${RUN_STEPS:-${STEPS[$task]}} out=runs/results/$task/$name-seed$seed keep=results/runs/$task/$name-seed$seed
  [[ -f $keep/summary.json ]] && { echo "skip $keep"; return; }
  rm -rf "$out" && mkdir -p "$(dirname "$out")"
  echo "$(date +%T) train $task $name seed $seed"
  "$SERPENT" train "configs/$task/$model.yaml" --out "$out" --max-steps "$steps" \
    --set train.seed="$seed" --set train.eval_every=$((steps / 2)) --set train.checkpoint_every="$steps" \
    --set optim.warmup_steps=20 "$@" > "$out.log" 2>&1 || { tail -20 "$out.log"; return 1; }
  "$SERPENT" eval "$out" --split test >> "$out.log" 2>&1
  mkdir -p "$keep"
  cp "$out"/{config.json,metrics.jsonl,summary.json,eval_test.json} "$keep"/
}

main_table() {
  for task in listops pathfinder fashion-mnist english; do
    for model in mamba serpent-mamba s4d serpent-s4d; do run "$task" "$model" "$model" "$1"; done
  done
}

ablations() {  # ablations TASK [VARIANT ...]: one run per variant of serpent-mamba, seed 0 (all by default)
  local task=$1; shift
  local only=" $* " base=()
  if [[ $task == english ]]; then  # the English ablations vary the causal configuration of their
    base=(--set model.d_model=64 --set model.serpent.include_full_branch=false)  # time: no full branch
  fi
  abl() {  # abl NAME [--set ...]: run the variant unless a list of variants was given without it
    local name=$1; shift
    if [[ $only == "  " || $only == *" $name "* ]]; then run "$task" serpent-mamba "$name" 0 "${base[@]}" "$@"; fi
  }
  abl abl-linear-k3 --set model.serpent.aggregate=linear
  abl abl-kernel-k3 --set model.serpent.aggregate=kernel
  abl abl-linear-k1 --set model.serpent.aggregate=linear --set model.serpent.window=1
  abl abl-linear-k5 --set model.serpent.aggregate=linear --set model.serpent.window=5
  abl abl-rates-0.5 --set "model.serpent.rates=[0.5]"
  abl abl-rates-1-0.5-0.25 --set "model.serpent.rates=[1.0, 0.5, 0.25]"
  abl abl-bounds-paper --set model.serpent.interval_bounds=paper
  abl abl-full-branch --set model.serpent.include_full_branch=true
  if [[ $task != english ]]; then  # restore: hold/scatter against the non-causal default interp
    abl abl-restore-hold --set model.serpent.restore=hold
  fi  # causal (english): hold is the default and interp would read the future
  abl abl-restore-scatter --set model.serpent.restore=scatter
}

scale() {
  [[ -f results/scale_benchmark.md ]] || .venv/bin/python benchmarks/scale.py > results/scale_benchmark.md
  RUN_STEPS=150 run pathfinder serpent-mamba pathx128-serpent-mamba 0 --set data.size=128 \
    --set data.batch_size=4 --set data.eval_batch_size=8 \
    --set "data.generate={n_train: 2000, n_val: 200, n_test: 200}"
}

case ${1:-} in
  main) main_table "${2:?seed}" ;;
  ablations) shift; ablations "${1:?task}" "${@:2}" ;;
  scale) scale ;;
  one) shift; run "$@" ;;
  *) echo "usage: $0 main SEED | ablations TASK [VARIANT ...] | one TASK MODEL NAME SEED [--set k=v ...] | scale" >&2
     exit 2 ;;
esac
