"""Run the real lmms-eval CLI with the test-only models registered: ``oracle`` (right with a
known probability, tests/oracle_model.py) and ``messy`` (answers the judge must settle,
tests/judge_messy_model.py).

Usage: python -m medbridge.tests.run_lmms_eval --model oracle --tasks ... (any lmms-eval flags).
"""

from lmms_eval.models import MODEL_REGISTRY_V2
from lmms_eval.models.registry_v2 import ModelManifest


def main() -> None:
    test_models = (
        ("oracle", "medbridge.tests.oracle_model.OracleModel"),
        ("messy", "medbridge.tests.judge_messy_model.MessyModel"),
    )
    for model_id, class_path in test_models:
        manifest = ModelManifest(model_id=model_id, simple_class_path=class_path)
        MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)
    from lmms_eval.cli.dispatch import main as lmms_eval_main

    lmms_eval_main()


if __name__ == "__main__":
    main()
