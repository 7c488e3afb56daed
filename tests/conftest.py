import os
import subprocess
import sys
from pathlib import Path

import pytest
from medbridge.tasks.medmnist.catalog import SETS

# Nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GREEDY_TASKS = [f"medmnist_mcq_{s.name}" for s in SETS]
SAMPLED_TASKS = [f"{t}_passk" for t in GREEDY_TASKS]


def run_lmms_eval(
    args: list[str],
    data_root: Path,
    *,
    module: str = "medbridge.tests.run_lmms_eval",
    cwd: Path | None = None,
    env_extra: dict | None = None,
    timeout: int = 1200,
) -> subprocess.CompletedProcess:
    """The real lmms-eval CLI in a fresh process (through our launcher when the test-only
    oracle model is needed)."""
    env = dict(os.environ)
    env.pop("LMMS_EVAL_PLUGINS", None)
    env.update(MEDBRIDGE_MEDMNIST_ROOT=str(data_root), TOKENIZERS_PARALLELISM="false")
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", module] + args
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from medbridge.tiny_model import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny") / "tiny-qwen2.5-vl")


@pytest.fixture(scope="session")
def tiny_answering_model_dir(request, tmp_path_factory):
    """The tiny Qwen2.5-VL fine-tuned so its answers depend on the item (<answer>X</answer>, X read from
    the image; medbridge/tiny_finetune.py), for tests that compare two ways of producing answers.

    Built once per content key (builder sources, library versions) into pytest's cache folder
    (.pytest_cache/d/medbridge_tiny_models), so later sessions reuse it; without the cache plugin, into
    the session's tmp."""
    from medbridge.tiny_model import cached_tiny_qwen2_5_vl

    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("medbridge_tiny_models")) if cache is not None else tmp_path_factory.mktemp("tiny")
    return cached_tiny_qwen2_5_vl(root, seed=0, fine_tune=True)
