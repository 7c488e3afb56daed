#!/usr/bin/env bash
# GPU smoke checks: one prepared script for the first GPU machine (one GPU, under 10 minutes, nothing to
# download). Each check prints ONE line of figures ("CHECK <name>: PASS|FAIL|SKIP ..."); logs go to WORKDIR.
#
#   scripts/gpu_smoke.sh [--workdir DIR] [--only NAME[,NAME...]]     # on the GPU machine
#   scripts/gpu_smoke.sh --dry-run [--workdir DIR]                     # anywhere: prints the commands, checks
#                                                                      # the files, runs what needs no GPU
# Checks (estimated minutes on one H100, not measured):
#   passk_transformers  benchmarks/passk_cost.py on a 7B-shaped random Qwen2.5-VL built on the GPU: lmms-eval's
#                       standard backend vs medbridge_vlm (transformers engine); its figures line     (~2.5)
#   passk_vllm          the same checkpoint, task pair and items through lmms-eval with medbridge_vlm
#                       engine=vllm; wall time, items/s, prefills per item from the engine's stats    (~2)
#   judge_vllm          benchmarks/judge_throughput.py against `medbridge judge serve` (GPU vLLM) of the
#                       tiny random judge: verdicts/s one at a time vs concurrent                     (~1)
#   care_zero2_colocate GRPO-CARE on the tiny model, DeepSpeed ZeRO-2 (accelerate), vLLM colocate, 20 steps:
#                       straight; killed (SIGKILL) inside step 13; resumed with --resume_from_checkpoint
#                       true; final policy and EMA reference (care_ema.pt) compared with the straight run (~3)
#   vllm_ranks          (2+ GPUs; SKIP on one) medbridge_vlm engine=vllm under torchrun: each rank's engine on its
#                       own GPU, from the per-rank stats (multi-GPU block near the end)                (~2)
# Environment: PYTHON (default: .venv/bin/python, else python3) must have medbridge[training,vllm,deepspeed];
# VLLM_PYTHON (default PYTHON) runs the judge server. Exit status: 0 when no check FAILed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY_RUN=0
WORKDIR=""
ONLY=""
while (( $# )); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --workdir) WORKDIR=${2:?--workdir needs a folder}; shift ;;
        --only) ONLY=${2:?--only needs check names}; shift ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_smoke.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
VLLM_PYTHON=${VLLM_PYTHON:-$PYTHON}
W=${WORKDIR:-$(mktemp -d /tmp/medbridge-gpu-smoke.XXXXXX)}
mkdir -p "$W"
W=$(cd "$W" && pwd)
cd "$REPO"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MEDBRIDGE_MEDMNIST_ROOT=$W/medmnist PYTHONUNBUFFERED=1
FAILED=0
REWARD=medbridge.tests.training_rewards:low_token_share
RANDOM_7B=$W/qwen2.5-vl-7b-random

NEEDED_FILES=(
    benchmarks/passk_cost.py benchmarks/judge_throughput.py
    training/recipes/tiny_cpu_care.yaml training/accelerate/zero2.yaml
    training/slurm/train_multinode.slurm tests/training_rewards.py
)
missing=()
for f in "${NEEDED_FILES[@]}"; do [[ -f $f ]] || missing+=("$f"); done
if (( ${#missing[@]} )); then
    echo "gpu_smoke.sh: missing in $REPO: ${missing[*]}" >&2
    exit 1
fi
# wait_for_server URL PID DEADLINE_S [POLL_S]: the multi-node script's health wait (tested there).
source training/slurm/train_multinode.slurm

wanted() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
result() { echo "CHECK $1: ${*:2}" | tee -a "$W/figures.txt"; [[ $2 == FAIL ]] && FAILED=1; return 0; }
show() { printf '  $'; printf ' %q' "$@"; printf '\n'; }

# run NAME TIMEOUT_S CMD...: the command's output goes to $W/NAME.log; in a dry run it is only printed.
run() {
    local name=$1 limit=$2
    shift 2
    if (( DRY_RUN )); then show "$@"; return 0; fi
    timeout --signal=TERM --kill-after=30 "$limit" "$@" > "$W/$name.log" 2>&1
}

# A background job in its own process group (so SIGKILL reaches the launcher, its ranks and vLLM's helpers);
# its pid (= its process group) in GROUP_PID.
start_group() { local log=$1; shift; setsid "$@" > "$log" 2>&1 & GROUP_PID=$!; }
kill_group() { kill -"$1" -- "-$2" 2>/dev/null || true; wait "$2" 2>/dev/null || true; }

# ------------------------------------------------------------------------------------------------------
echo "gpu_smoke: workdir $W; python $PYTHON; vLLM python $VLLM_PYTHON; dry run $DRY_RUN"
preflight=$("$PYTHON" - <<'EOF' 2>&1
import importlib.util, importlib.metadata as m
found = []
for name in ("torch", "transformers", "trl", "deepspeed", "vllm", "lmms_eval", "medbridge"):
    dist = {"lmms_eval": "lmms_eval", "medbridge": "medbridge"}.get(name, name)
    if importlib.util.find_spec(name) is None:
        found.append(f"{name}=MISSING")
    else:
        try:
            found.append(f"{name}={m.version(dist)}")
        except m.PackageNotFoundError:
            found.append(f"{name}=present")
try:
    import torch
    found.append(f"cuda={torch.cuda.device_count()}x{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cuda=none")
except Exception as err:  # noqa: BLE001
    found.append(f"cuda=unknown({err})")
print(" ".join(found))
EOF
)
echo "preflight: $preflight"
if (( ! DRY_RUN )) && [[ $preflight == *cuda=none* || $preflight == *MISSING* ]]; then
    echo "gpu_smoke: this machine lacks what the checks need (above); install medbridge[training,vllm,deepspeed]" \
        "on a CUDA machine, or run with --dry-run" >&2
    exit 1
fi

# What every check needs and no GPU builds: MedMNIST-format fixtures, the tiny VLM, the tiny judge.
"$PYTHON" -m medbridge.cli build-fixtures --root "$W/medmnist" > "$W/fixtures.log" 2>&1 \
    && "$PYTHON" -m medbridge.cli build-tiny-model --out "$W/tiny" > "$W/tiny.log" 2>&1 \
    && "$PYTHON" -c "import sys; from medbridge.tiny_judge import build_tiny_judge; build_tiny_judge(sys.argv[1])" \
        "$W/tiny-judge" > "$W/tiny-judge.log" 2>&1 \
    || { echo "gpu_smoke: building the fixtures / tiny models failed; see $W/*.log" >&2; exit 1; }
VOCAB_HALF=$("$PYTHON" -c "import sys; from transformers import AutoTokenizer as T; print(len(T.from_pretrained(sys.argv[1])) // 2)" "$W/tiny")
export MEDBRIDGE_TEST_VOCAB_HALF=$VOCAB_HALF
echo "built: fixtures, tiny model, tiny judge in $W (no GPU needed)"

# ------------------------------------------------------------------------------------------------------
if wanted passk_transformers; then
    if run passk_transformers 300 "$PYTHON" benchmarks/passk_cost.py --random-7b "$RANDOM_7B" --device cuda \
        --data-root "$W/medmnist" --workdir "$W/passk" --limit 8 --max-new-tokens 64 --repeats 1 \
        --min-pixels 200704 --max-pixels 1605632 --json "$W/passk_transformers.json"; then
        if (( DRY_RUN )); then result passk_transformers DRY "command prepared"
        else result passk_transformers PASS "$(tail -n 1 "$W/passk_transformers.log")"; fi
    else
        result passk_transformers FAIL "exit $? (log $W/passk_transformers.log)"
    fi
fi

if wanted passk_vllm; then
    # The same checkpoint, task pair and items as passk_cost (greedy + its Pass@16 twin), on the vLLM engine.
    started=$SECONDS
    if run passk_vllm 240 "$PYTHON" -m lmms_eval --model medbridge_vlm \
        --model_args "pretrained=$RANDOM_7B,engine=vllm,seed=0,gpu_memory_utilization=0.6,min_pixels=200704,max_pixels=1605632,stats_path=$W/passk_vllm_stats.json" \
        --tasks medmnist_mcq_blood,medmnist_mcq_blood_passk --limit 8 --gen_kwargs max_new_tokens=64 \
        --output_path "$W/passk_vllm"; then
        if (( DRY_RUN )); then result passk_vllm DRY "command prepared (needs the checkpoint passk_transformers builds)"
        else
            result passk_vllm PASS "$("$PYTHON" - "$W/passk_vllm_stats.json" "$((SECONDS - started))" <<'EOF'
import json, sys
from pathlib import Path
stats = json.loads(Path(sys.argv[1]).read_text())
engine, items, wall = stats["engine"], stats["items_generated"], int(sys.argv[2])
print(f"items={items} wall_s={wall} (model load included) harness_wall_s={stats['wall_seconds']:.1f} "
      f"items_per_s={items / stats['wall_seconds']:.3f} prefills_per_item={engine['prefill_prompts'] / items:.2f} "
      f"engine_s={engine['engine_seconds']:.1f}")
EOF
)"
        fi
    else
        result passk_vllm FAIL "exit $? (log $W/passk_vllm.log)"
    fi
fi

if wanted judge_vllm; then
    port=$(( 20000 + RANDOM % 20000 ))
    serve=("$PYTHON" -m medbridge.cli judge serve --model "$W/tiny-judge" --served-name judge --port "$port"
           --vllm-python "$VLLM_PYTHON" --max-model-len 2048 --timeout 240 -- --gpu-memory-utilization 0.3)
    bench=("$PYTHON" benchmarks/judge_throughput.py --base-url "http://127.0.0.1:$port/v1" --model judge
           -n 256 --concurrency 32)
    if (( DRY_RUN )); then
        show "${serve[@]}"; show "${bench[@]}"
        result judge_vllm DRY "commands prepared"
    else
        start_group "$W/judge_server.log" "${serve[@]}"
        pid=$GROUP_PID
        if wait_for_server "http://127.0.0.1:$port/health" "$pid" 300 5 && run judge_vllm 180 "${bench[@]}"; then
            result judge_vllm PASS "$(grep -E 'speedup=|verdicts' "$W/judge_vllm.log" | tail -n 2 | tr '\n' ' ')"
        else
            result judge_vllm FAIL "see $W/judge_server.log and $W/judge_vllm.log"
        fi
        kill_group TERM "$pid"
    fi
fi

if wanted care_zero2_colocate; then
    care() {  # care OUTPUT_DIR [extra flags...]: the tiny GRPO-CARE run, ZeRO-2 + vLLM colocate, 20 steps
        local out=$1
        shift
        printf '%s\0' "$PYTHON" -m accelerate.commands.launch --config_file training/accelerate/zero2.yaml \
            --num_processes 1 --main_process_port $(( 29500 + RANDOM % 1000 )) \
            -m medbridge.training.grpo care --config training/recipes/tiny_cpu_care.yaml \
            --model_name_or_path "$W/tiny" --output_dir "$out" --ckpt_eval false --use_cpu false --bf16 true \
            --use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.3 \
            --max_steps 20 --save_steps 5 --max_completion_length 16 --learning_rate 1e-3 --seed 3 \
            --reward_names "$REWARD" --care_accuracy_reward "$REWARD" --care_ema_interval 1 --care_ema_decay 0.9 "$@"
    }
    mapfile -d '' straight < <(care "$W/care-straight")
    mapfile -d '' killed < <(care "$W/care-split")
    mapfile -d '' resumed < <(care "$W/care-split" --resume_from_checkpoint true)
    if (( DRY_RUN )); then
        show "${straight[@]}"
        echo "  (then, with MEDBRIDGE_TEST_STALL_AT_CALL=13: the same into care-split, SIGKILL inside step 13)"
        show "${resumed[@]}"
        result care_zero2_colocate DRY "commands prepared"
    else
        started=$SECONDS
        ok=1
        run care_straight 240 "${straight[@]}" || ok=0
        marker=$W/care-stalled
        MEDBRIDGE_TEST_STALL_AT_CALL=13 MEDBRIDGE_TEST_STALL_MARKER=$marker start_group "$W/care_killed.log" "${killed[@]}"
        pid=$GROUP_PID
        deadline=$((SECONDS + 240))
        while [[ ! -f $marker ]] && kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 1; done
        [[ -f $marker ]] || ok=0
        kill_group KILL "$pid"
        run care_resumed 240 "${resumed[@]}" || ok=0
        figures=$("$PYTHON" - "$W/care-straight" "$W/care-split" <<'EOF' 2>&1
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
a, b = Path(sys.argv[1]), Path(sys.argv[2])
wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
policy_gap = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
ea = torch.load(a / "checkpoint-20" / "care_ema.pt", weights_only=True)
eb = torch.load(b / "checkpoint-20" / "care_ema.pt", weights_only=True)
ema_gap = max((x - y).abs().max().item() for x, y in zip(ea["shadow"], eb["shadow"]))
steps = json.loads((b / "checkpoint-20" / "trainer_state.json").read_text())["global_step"]
print(f"steps={steps} ema_updates={ea['updates']}/{eb['updates']} policy_gap={policy_gap:.3g} ema_gap={ema_gap:.3g}")
EOF
)
        if (( ok )) && [[ $figures == steps=20\ ema_updates=20/20* ]]; then
            result care_zero2_colocate PASS "$figures wall_s=$((SECONDS - started)) (vLLM sampling restarts from the seed after a resume: gaps are reported, not required to be 0)"
        else
            result care_zero2_colocate FAIL "$figures (logs $W/care_*.log)"
        fi
    fi
fi

# ======================================================================================================
# Multi-GPU block (engineer "backends", issue 26): medbridge_vlm engine=vllm under torchrun, one engine per
# GPU. Needs 2+ GPUs (prints SKIP on one). Each rank's stats record the CUDA devices its engine was built on;
# PASS when rank r's engine got the r-th visible GPU and both ranks generated their shard.
#   vllm_ranks  torchrun --nproc_per_node min(GPUs, 8) on the tiny model, blood greedy + Pass@16, 8 items (~2)
# ======================================================================================================
if wanted vllm_ranks; then
    NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
    NPROC=$(( NGPU > 8 ? 8 : NGPU ))
    ranks_cmd=("$PYTHON" -m torch.distributed.run --nproc_per_node "$(( NPROC > 1 ? NPROC : 2 ))"
               --master_port $(( 29500 + RANDOM % 1000 )) -m lmms_eval --model medbridge_vlm
               --model_args "pretrained=$W/tiny,engine=vllm,dtype=bfloat16,seed=0,gpu_memory_utilization=0.3,max_model_len=4096,min_pixels=3136,max_pixels=50176,stats_path=$W/vllm_ranks_stats.json"
               --tasks medmnist_mcq_blood,medmnist_mcq_blood_passk --limit 8 --gen_kwargs max_new_tokens=16
               --output_path "$W/vllm_ranks")
    if (( DRY_RUN )); then
        show "${ranks_cmd[@]}"
        result vllm_ranks DRY "command prepared (runs with 2+ GPUs)"
    elif (( NGPU < 2 )); then
        result vllm_ranks SKIP "needs 2+ GPUs, found $NGPU"
    elif run vllm_ranks 300 "${ranks_cmd[@]}"; then
        figures=$("$PYTHON" - "$W" "$NPROC" <<'EOF2' 2>&1
import json, os, sys
from pathlib import Path
w, n = Path(sys.argv[1]), int(sys.argv[2])
stats = [json.loads((w / f"vllm_ranks_stats.rank{r}.json").read_text()) for r in range(n)]
visible = os.environ.get("CUDA_VISIBLE_DEVICES")
gpus = visible.split(",") if visible else [str(i) for i in range(n)]
devices = [s["devices"]["devices"] for s in stats]
ok = devices == [[gpus[r]] for r in range(n)] and all(s["items_generated"] > 0 for s in stats)
print(("ok " if ok else "MISMATCH ") + f"ranks={n} devices={json.dumps(devices)} "
      f"items_per_rank={[s['items_generated'] for s in stats]} memory={[s['devices']['gpu_memory_utilization'] for s in stats]}")
EOF2
)
        if [[ $figures == ok* ]]; then result vllm_ranks PASS "${figures#ok }"; else result vllm_ranks FAIL "$figures"; fi
    else
        result vllm_ranks FAIL "exit $? (log $W/vllm_ranks.log)"
    fi
fi
# ======================================================================================================

# What needs no GPU, run in a dry run too: the comparison above, on the tiny model against itself.
if (( DRY_RUN )); then
    "$PYTHON" - "$W/tiny" <<'EOF' || FAILED=1
import sys
from safetensors.torch import load_file
w = load_file(sys.argv[1] + "/model.safetensors")
gap = max((w[k].float() - w[k].float()).abs().max().item() for k in w)
print(f"dry run: checkpoint comparison helper ok ({len(w)} tensors, self-gap {gap})")
EOF
fi
echo "figures: $W/figures.txt"
exit $FAILED
