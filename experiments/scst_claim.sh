#!/usr/bin/env bash
# Issue 16's claim (experiments/README.md, "SCST from a converged cross-entropy base"): from one caption_nano_synthetic
# checkpoint, STEPS more steps of SCST (CIDEr-D reward, beam 5 keeping 5 candidates, leave-one-out baseline, no label
# smoothing) and, as the control, STEPS more steps of the same cross-entropy (label smoothing 0.1), same lr, batch,
# schedule (6% warmup, linear decay) and seed; then every checkpoint captions the world's test split and
# experiments/caption_bootstrap.py scores them with a paired bootstrap over the test images.
#   experiments/scst_claim.sh BASE_CKPT WORLD_DIR OUT_DIR [STEPS] [LR] [SEEDS...]
# WORLD_DIR: a synthetic world with large val/test splits (experiments/README.md says how it was generated).
# The set runs under the heavy-run lock of the shared machine (/tmp/ofa_heavy.lock, taken once); CLAIM_LOCKED=1 when
# the caller holds it. Runs land in OUT_DIR/<arm>_s<seed> (logs beside them), wall times in OUT_DIR/runs.tsv.
# SCST_EXTRA: more train.py overrides for both arms, e.g. SCST_EXTRA="task.image_size=64" from a 64-px base.
set -euo pipefail
[[ -z ${CLAIM_LOCKED:-} ]] && exec env CLAIM_LOCKED=1 flock /tmp/ofa_heavy.lock "$0" "$@"
BASE=${1:?usage: scst_claim.sh BASE_CKPT WORLD_DIR OUT_DIR [STEPS] [LR] [SEEDS...]}
WORLD=${2:?world dir}
OUT=${3:?out dir}
STEPS=${4:-300}
LR=${5:-5e-5}
shift $(( $# > 5 ? 5 : $# ))
SEEDS=("${@:-1}")
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
checkpoints=(base="$BASE")
for seed in "${SEEDS[@]}"; do
  for arm in ce_more scst; do
    read -r -a extra <<< "${SCST_EXTRA:-}"
    [[ $arm == scst ]] && extra+=(task.scst.enabled=true task.label_smoothing=0)
    dir=$OUT/${arm}_s$seed
    start=$(date +%s); load=$(cut -d' ' -f1 /proc/loadavg)
    .venv/bin/python train.py experiment=caption_nano_synthetic data.synthetic_dir=null data.root="$WORLD" \
      init_from="$BASE" optim.lr="$LR" data.batch_size=8 data.batches_per_epoch="$STEPS" trainer.max_epochs=1 \
      trainer.limit_val_batches=0 test_after_fit=false seed="$seed" "${extra[@]}" logger=csv \
      trainer.enable_progress_bar=false hydra.run.dir="$dir" run_name="scst_claim_${arm}_s$seed" > "$dir.log" 2>&1
    printf '%s\t%s\t%s\t%s\n' "${arm}_s$seed" "$(date -u -d "@$start" +%H:%M:%S)" "$(( $(date +%s) - start ))" \
      "$load" >> "$OUT/runs.tsv"
    checkpoints+=("${arm}_s$seed=$dir/checkpoints/last.ckpt")
  done
done
.venv/bin/python experiments/caption_bootstrap.py --shards "$WORLD/test-*.tar" --out "$OUT/eval" "${checkpoints[@]}"
