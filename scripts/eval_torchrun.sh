#!/usr/bin/env bash
# One node's share of a data-parallel evaluation with medbridge_vlm: start it on every node (by hand,
# or from scripts/eval_multinode.slurm) with the same MASTER_ADDR/MASTER_PORT and NNODES and this
# node's NODE_RANK. torchrun forms one process group over all nodes; lmms-eval gives each global
# rank its shard of the documents; per-item seeds make the samples those of a one-process run; all
# ranks share one judge URL, one judge cache and one sample cache; global rank 0 writes the results
# into one folder, and (INGEST=1) node 0 then adds them to the leaderboard store.
#
#   MODEL=/models/Qwen2.5-VL-7B-Instruct OUT=/shared/runs/qwen7b NNODES=2 NODE_RANK=0 \
#   MASTER_ADDR=node0 MEDBRIDGE_JUDGE_BASE_URL=http://judge:8000/v1 MEDBRIDGE_JUDGE_MODEL=judge \
#       bash scripts/eval_torchrun.sh
#
# Settings (environment): MODEL (required), OUT (required; on a file system all nodes see),
# TASKS (medmnist_mcq,medvqa), NNODES (1), NODE_RANK (0), NPROC_PER_NODE (GPUs on this node, or 1),
# MASTER_ADDR (127.0.0.1), MASTER_PORT (29500), DEVICE (cuda; cpu for a CPU run), ENGINE
# (transformers), SEED (0), BATCH_SIZE (1), MODEL_ARGS (extra model_args, e.g. dtype=float32),
# LIMIT (unset: all items), INGEST (1: node 0 ingests the results), LEADERBOARD (store path),
# PYTHON (python3), EXTRA_ARGS (more lmms-eval flags). MEDBRIDGE_* settings (the judge's among
# them) pass through the environment to every rank.
set -euo pipefail

: "${MODEL:?set MODEL to the checkpoint to evaluate}"
: "${OUT:?set OUT to the results folder (on a file system every node sees)}"
TASKS=${TASKS:-medmnist_mcq,medvqa}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
DEVICE=${DEVICE:-cuda}
ENGINE=${ENGINE:-transformers}
SEED=${SEED:-0}
BATCH_SIZE=${BATCH_SIZE:-1}
INGEST=${INGEST:-1}
PYTHON=${PYTHON:-python3}
if [ -z "${NPROC_PER_NODE:-}" ]; then
    if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null 2>&1; then
        NPROC_PER_NODE=$(nvidia-smi --list-gpus | wc -l)
    else
        NPROC_PER_NODE=1
    fi
fi

model_args="pretrained=${MODEL},engine=${ENGINE},device=${DEVICE},seed=${SEED}"
model_args+=",cache_dir=${OUT}/sample_cache${MODEL_ARGS:+,${MODEL_ARGS}}"
limit_args=()
[ -n "${LIMIT:-}" ] && limit_args=(--limit "$LIMIT")
mkdir -p "$OUT"

echo "node ${NODE_RANK}/${NNODES}: ${NPROC_PER_NODE} processes, rendezvous ${MASTER_ADDR}:${MASTER_PORT}" >&2
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
"$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m lmms_eval --model medbridge_vlm --model_args "$model_args" --batch_size "$BATCH_SIZE" --tasks "$TASKS" \
    "${limit_args[@]}" \
    --output_path "$OUT/results" --log_samples ${EXTRA_ARGS:-}

# lmms-eval exits 0 even when a task failed: the results file is the proof of a finished run.
if [ "$NODE_RANK" = 0 ]; then
    if ! find "$OUT/results" -name '*_results.json' | grep -q .; then
        echo "no results file under $OUT/results: the evaluation failed (see the log above)" >&2
        exit 1
    fi
    if [ "$INGEST" = 1 ]; then
        "$PYTHON" -m medbridge.cli leaderboard ingest ${LEADERBOARD:+--store "$LEADERBOARD"} "$OUT/results"
    fi
fi
