"""Run the real lmms-eval CLI with the test-only ``messy`` model (tests/judge_messy_model.py).

Usage: python -m medbridge.tests.run_lmms_eval_judge --model messy --tasks ... (any lmms-eval flags).
"""

from lmms_eval.models import MODEL_REGISTRY_V2
from lmms_eval.models.registry_v2 import ModelManifest


def main() -> None:
    MODEL_REGISTRY_V2.register_manifest(
        ModelManifest(model_id="messy", simple_class_path="medbridge.tests.judge_messy_model.MessyModel"), overwrite=True
    )
    from lmms_eval.cli.dispatch import main as lmms_eval_main

    lmms_eval_main()


if __name__ == "__main__":
    main()
