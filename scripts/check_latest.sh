#!/usr/bin/env bash
# The "latest" check: install medbridge WITHOUT constraints/cpu-tests.txt, i.e. with the newest
# transformers, TRL, vLLM (and everything else) the package index offers inside pyproject.toml's
# ranges, into a throwaway venv, and run the fast test lane there. A failure is an upstream change
# users will meet before our pins move; it is not part of .ci/run (which tests the pinned versions).
#
# usage: bash scripts/check_latest.sh [--keep] [--no-vllm] [--print] [extra pytest arguments]
#   --keep     keep the venv (its path is printed) instead of deleting it at the end
#   --no-vllm  leave out the [vllm] extra (its wheels are CUDA builds of several GB)
#   --print    print the commands without running them
# Needs the network (the package index) and 11 GB of disk with [vllm]; took 20 minutes here (mostly downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS="test,training,vllm"
KEEP=0
PRINT=0
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1 ;;
        --no-vllm) EXTRAS="test,training" ;;
        --print) PRINT=1 ;;
        *) break ;;
    esac
    shift
done
# The README's fast lane: everything but the slow, end-to-end and server tests.
FAST_LANE="not slow and not e2e and not judge_server and not vllm_venv"

run() {
    echo "+ $*"
    if [ "$PRINT" = 0 ]; then "$@"; fi
}

VENV=$(mktemp -d "${TMPDIR:-/tmp}/medbridge-latest.XXXXXX")
cleanup() {
    if [ "$KEEP" = 1 ]; then echo "venv kept: $VENV"; else rm -rf "$VENV"; fi
}
trap cleanup EXIT

run "$PY" -m venv "$VENV"
run "$VENV/bin/python" -m pip install -q --upgrade pip
# No -c constraints/cpu-tests.txt: the resolver takes the newest version each range allows. The registry's
# view, as scripts/check_vllm_extra.sh takes it: no local wheel folder, no machine-wide pip config or caps.
run env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
if [ "$PRINT" = 0 ]; then
    echo "versions under test:"
    "$VENV/bin/python" -m pip list --format=freeze \
        | grep -iE '^(torch|torchvision|transformers|trl|peft|accelerate|vllm|lmms[-_]eval|datasets)==' || true
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "$FAST_LANE" "$@"
