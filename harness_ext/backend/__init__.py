"""medbridge's sampling backend for lmms-eval: Pass@K at the cost of one prefill per item.

``MODEL_ID`` names the lmms-eval model (``--model medbridge_vlm``); ``manifests()`` is what the
``lmms_eval.models`` entry point (harness_ext/plugin.py) returns for it. Heavy modules (torch,
transformers, vllm) load only when the model is instantiated.
"""

from __future__ import annotations

MODEL_ID = "medbridge_vlm"
CHAT_CLASS_PATH = "medbridge.harness_ext.backend.model.MedbridgeVLM"


def manifests() -> list:
    """The lmms-eval ModelManifest(s) of this backend."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, chat_class_path=CHAT_CLASS_PATH)]


def register(overwrite: bool = True) -> None:
    """Register the backend in this process's lmms-eval registry (for scripts and tests that
    run lmms-eval in-process before the entry point lists it)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    for manifest in manifests():
        MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=overwrite)
