#!/usr/bin/env bash
# Runs long enough to learn, from a clone pinned to one commit (results/README.md, "Runs long enough
# to learn"). The working tree may change while they run; the pinned clone does not, and each run's
# config.json records the commit it ran (code_commit).
#   bash results/long.sh pin [COMMIT]            # clone this repository at COMMIT (default HEAD) into $PINNED
#   bash results/long.sh run TASK MODEL NAME SEED [--set key=value ...]
#   bash results/long.sh curve TASK MODEL SEED   # the backbone's learning curve at the task's largest budget
# TASK is one of the budgets below. A run trains into $PINNED/runs/long/<task>/<name>-seed<seed>, is
# scored on the test split, and its config, JSONL log, summary and test score are copied to
# results/long/<task>/<name>-seed<seed>/ of this checkout with machine.json, the machine it ran on (tokens/s
# compare only between runs on one machine). A run whose copy exists is skipped. A run cut short (the
# session ended, or it was stopped) continues from its last checkpoint (every eval_every steps) when
# started again with the same arguments: `serpent train --resume` restores model, optimiser, RNG and data
# position and counts only the seconds trained; its log says so (resumed.txt in its copy), and where it
# resumed on another machine than it started on, its copy holds shared_cpu.txt (its seconds mix two
# machines and stay out of the tables). RESUME=0 starts it afresh instead.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD
PINNED=${PINNED:-$HERE/../serpent-pinned}  # one clone per pinned commit: PINNED=../serpent-pinned-<commit>
PYTHON=${PYTHON:-$HERE/.venv/bin/python}

# task -> "config-task steps eval_every [--set ...]": budgets written down before the main runs
declare -A BUDGET=(
  [listops-demo]="listops 3000 250 --set data.data_dir=data/demo --set data.generate.n_train=4000 \
--set data.generate.n_val=500 --set data.generate.n_test=500 --set data.generate.min_len=50 \
--set data.generate.max_len=200 --set data.generate.seed=0"
  [listops-short]="listops 3000 250 --set data.data_dir=data/listops-short --set data.generate.n_train=20000 \
--set data.generate.n_val=1000 --set data.generate.n_test=1000 --set data.generate.min_len=50 \
--set data.generate.max_len=200 --set data.generate.seed=0"
  [fashion-mnist]="fashion-mnist 1000 250"
  [english]="english 2000 250"
  [sparse-digits]="sparse-digits 2000 250"
)

serpent() {  # the pinned clone's code, with this checkout's environment
  (cd "$PINNED" && PYTHONPATH="$PINNED/src" "$PYTHON" -m serpent_ssm.cli "$@")
}

pin() {
  local commit=${1:-$(git rev-parse HEAD)}
  [[ -d $PINNED/.git ]] || git clone -q "$HERE" "$PINNED"
  git -C "$PINNED" fetch -q "$HERE" && git -C "$PINNED" checkout -q "$commit"
  echo "pinned $(git -C "$PINNED" rev-parse HEAD) at $PINNED"
}

run() {  # run TASK MODEL NAME SEED [--set key=value ...]
  local task=$1 model=$2 name=$3 seed=$4; shift 4
  read -r -a spec <<< "${BUDGET[$task]:?unknown task $task}"
  local cfg_task=${spec[0]} steps=${spec[1]} every=${spec[2]}
  local out=runs/long/$task/$name-seed$seed keep=$HERE/results/long/$task/$name-seed$seed
  [[ -f $keep/summary.json ]] && { echo "skip $keep"; return; }
  [[ -d $PINNED/.git ]] || { echo "no pinned clone at $PINNED: run '$0 pin' first" >&2; return 2; }
  local resume=() since
  if [[ ${RESUME:-1} != 0 && -f $PINNED/$out/checkpoints/index.json && -f $PINNED/$out.machine.json ]]; then
    resume=(--resume)
    since=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['last']['step'])" \
      "$PINNED/$out/checkpoints/index.json")
    echo "$(date -u '+%F %T') UTC: resumed from its last checkpoint, step $since" \
      | tee -a "$PINNED/$out.resumed"
  else
    rm -rf "${PINNED:?}/$out" "$PINNED/$out".{log,resumed,machine.json} && mkdir -p "$PINNED/$(dirname "$out")"
    machine > "$PINNED/$out.machine.json"
  fi
  echo "$(date +%T) train $task $name seed $seed at $(git -C "$PINNED" rev-parse --short HEAD) ${resume[*]}"
  serpent train "configs/$cfg_task/$model.yaml" --out "$out" --max-steps "$steps" "${resume[@]}" \
    --set train.seed="$seed" --set train.eval_every="$every" --set train.checkpoint_every="$every" \
    "${spec[@]:3}" "$@" >> "$PINNED/$out.log" 2>&1 || { tail -20 "$PINNED/$out.log"; return 1; }
  serpent eval "$out" --split test >> "$PINNED/$out.log" 2>&1
  mkdir -p "$keep"
  cp "$PINNED/$out"/{config.json,metrics.jsonl,summary.json,eval_test.json} "$keep"/
  cp "$PINNED/$out.machine.json" "$keep/machine.json"  # the machine it started on
  if [[ -f $PINNED/$out.resumed ]]; then
    cp "$PINNED/$out.resumed" "$keep/resumed.txt"
    machine > "$PINNED/$out.machine-now.json"
    cmp -s "$PINNED/$out.machine.json" "$PINNED/$out.machine-now.json" \
      || echo "resumed on another machine than it started on: its seconds mix two machines" > "$keep/shared_cpu.txt"
  fi
}

machine() {  # this machine, as JSON (summary.json has it too from commits after 22d453b; earlier pins do not)
  PYTHONPATH="$HERE/src" "$PYTHON" -c "import json; from serpent_ssm.utils.machine import machine_info; \
print(json.dumps(machine_info(), indent=1))"
}

case ${1:-} in
  pin) shift; pin "$@" ;;
  run) shift; run "$@" ;;
  curve) shift; run "$1" "$2" "$2-curve" "$3" ;;
  *) echo "usage: $0 pin [COMMIT] | run TASK MODEL NAME SEED [--set k=v ...] | curve TASK MODEL SEED" >&2
     exit 2 ;;
esac
