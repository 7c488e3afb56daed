#!/usr/bin/env bash
# Does `pip install 'medbridge[vllm]'` resolve with the registry's vLLM? A resolver dry run in a
# throwaway venv: package metadata only, no multi-GB wheels (about 5-10 minutes; needs PyPI).
# Prints the versions pip would install for the packages that matter and exits with pip's status.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
# The registry's view: no local wheel folder (PIP_FIND_LINKS), no machine-wide pip config or caps.
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$work/venv/bin/python" -m pip install --dry-run --quiet \
    --report "$work/report.json" ".[vllm]"
"$work/venv/bin/python" - "$work/report.json" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
wanted = {"medbridge", "vllm", "torch", "torchvision", "transformers", "lmms-eval", "lmms_eval"}
print(f"[vllm] resolves on Python {report['environment']['python_full_version']}:")
for item in report["install"]:
    meta = item["metadata"]
    if meta["name"].lower() in wanted:
        print(f"  {meta['name']} {meta['version']}")
PY
