#!/bin/bash
# Multi-node training with torchrun (docs/SCALE.md). Run this same script on every node, e.g. 2 nodes x 8 GPUs:
#   node 0:  NODE_RANK=0 HEAD=node0 NNODES=2 GPUS=8 bash docs/recipes/torchrun.sh
#   node 1:  NODE_RANK=1 HEAD=node0 NNODES=2 GPUS=8 bash docs/recipes/torchrun.sh
# torchrun starts one process per GPU and sets RANK / LOCAL_RANK / WORLD_SIZE / GROUP_RANK; Lightning's
# TorchElasticEnvironment reads them (it launches nothing itself). trainer.devices x trainer.num_nodes must equal
# GPUS x NNODES. The run dir is fixed (hydra.run.dir) so that every rank writes to the same one, and a second
# launch of the same command resumes from its last checkpoint.
set -euo pipefail
NNODES=${NNODES:-2}
GPUS=${GPUS:-8}
NODE_RANK=${NODE_RANK:?set NODE_RANK (0 on the node that HEAD names)}
HEAD=${HEAD:?set HEAD (host name of node 0)}
RUN=${RUN:-caption_large_fsdp2}
RESUME=""
if [ -e "outputs/$RUN/torchrun/checkpoints/last.ckpt" ]; then RESUME="ckpt_path=last"; fi

torchrun --nnodes="$NNODES" --nproc-per-node="$GPUS" --node-rank="$NODE_RANK" \
  --master-addr="$HEAD" --master-port=29500 \
  train.py experiment=caption_large trainer=fsdp2 trainer.accelerator=gpu trainer.precision=bf16-mixed \
  trainer.strategy.param_dtype=bfloat16 trainer.devices="$GPUS" trainer.num_nodes="$NNODES" \
  run_name="$RUN" hydra.run.dir="outputs/$RUN/torchrun" $RESUME
