#!/usr/bin/env bash
# OFA's claim at small scale (experiments/README.md, "Pretraining on the synthetic world"): fine-tune ofa_nano from a
# pretrain_nano_synthetic checkpoint and from random weights, same steps, data, optimiser and seed, on grounding,
# classification, VQA and captioning (64-pixel images, as the pretraining) or a language task, then print the test
# metrics.
#   experiments/pretrain_claim.sh outputs/pretrain_nano_synthetic/<run>/checkpoints/last.ckpt [STEPS] [TASKS...]
# The whole set runs under the heavy-run lock of the shared machine (/tmp/ofa_heavy.lock, taken once: one wait, not
# one per run); runs land in outputs/claim_<task>_<init>, their logs beside them.
set -euo pipefail
[[ -z ${CLAIM_LOCKED:-} ]] && exec env CLAIM_LOCKED=1 flock /tmp/ofa_heavy.lock "$0" "$@"
CKPT=${1:?usage: pretrain_claim.sh PRETRAIN_CKPT [STEPS] [TASKS...]}
STEPS=${2:-300}
shift $(( $# > 1 ? 2 : 1 ))
TASKS=("${@:-grounding image_classify vqa caption}")
read -r -a TASKS <<< "${TASKS[*]}"
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
for task in "${TASKS[@]}"; do
  extra=()
  [[ $task == caption ]] && extra+=(task.meteor=false)
  # a language task reads its text world with the pretraining's vocabulary (both arms), so token ids mean the same
  [[ $task =~ ^(cola|sst2|mnli|rte|qnli|mrpc|qqp|gigaword)$ ]] && extra+=(tokenizer.path=data/synthetic/tokenizer.json)
  for init in pretrained scratch; do
    from=$([[ $init == pretrained ]] && echo "$CKPT" || echo null)
    dir=outputs/claim_${task}_${init}
    start=$(date +%s); load=$(cut -d' ' -f1 /proc/loadavg)
    .venv/bin/python train.py task="$task" task.image_size=64 "${extra[@]}" \
      init_from="$from" logger=csv trainer.enable_progress_bar=false data.batches_per_epoch=$((STEPS / 3)) \
      trainer.max_epochs=3 trainer.check_val_every_n_epoch=3 hydra.run.dir="$dir" run_name="claim_${task}_${init}" \
      > "$dir.log" 2>&1 || { echo "$task $init failed: $dir.log"; continue; }
    echo "$task $init: $(( $(date +%s) - start )) s wall, load $load -> $(cut -d' ' -f1 /proc/loadavg)," \
         "test: $(python3 -c "import json,sys; m=json.load(open('$dir/metrics.json')); print({k: round(v, 3) for k, v in m.items() if k.startswith('test/') and v is not None and not k.endswith('loss')})")"
  done
done
