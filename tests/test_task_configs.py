"""The checked-in task YAMLs and data-pointer files are exactly what the generators write from the
catalogs (regenerated into a temporary folder), and they state every decoding setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from medbridge.harness_ext import decoding, scoring
from medbridge.tasks import config_writer
from medbridge.tasks.medmnist import _generate_configs as medmnist_gen
from medbridge.tasks.medmnist import catalog as medmnist_catalog
from medbridge.tasks.medvqa import _generate_configs as medvqa_gen
from medbridge.tasks.medvqa import catalog as medvqa_catalog

FAMILIES = [(medmnist_gen, medmnist_catalog), (medvqa_gen, medvqa_catalog)]


class _TagLoader(yaml.SafeLoader):
    pass


_TagLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_TagLoader)  # noqa: S506 - SafeLoader subclass


@pytest.mark.parametrize("gen, catalog", FAMILIES, ids=["medmnist", "medvqa"])
def test_checked_in_files_equal_a_fresh_generation(gen, catalog, tmp_path):
    gen.main(["--out", str(tmp_path)])
    fresh = config_writer.generated_paths(tmp_path)
    checked_in = config_writer.generated_paths(gen.FOLDER)
    assert fresh == checked_in, f"stale or missing files: rerun python -m {gen.__name__}"
    drifted = [rel for rel in sorted(fresh) if (tmp_path / rel).read_text() != (gen.FOLDER / rel).read_text()]
    assert not drifted, f"{drifted} differ from the generator's output: rerun python -m {gen.__name__}"


def test_drift_is_detected_and_rewritten(tmp_path):
    medmnist_gen.main(["--out", str(tmp_path)])
    (tmp_path / "medmnist_mcq_oct.yaml").write_text("task: medmnist_mcq_oct\n")
    (tmp_path / "medmnist_mcq_gone.yaml").write_text("task: medmnist_mcq_gone\n")
    medmnist_gen.main(["--out", str(tmp_path)])
    assert not (tmp_path / "medmnist_mcq_gone.yaml").exists()
    assert "_template.yaml" in (tmp_path / "medmnist_mcq_oct.yaml").read_text()


@pytest.mark.parametrize("gen, catalog", FAMILIES, ids=["medmnist", "medvqa"])
def test_every_catalog_entry_has_both_tasks_with_explicit_decoding(gen, catalog):
    folder = gen.FOLDER
    greedy = _load(folder / "_template.yaml")["generation_kwargs"]
    sampled = _load(folder / "_template_passk.yaml")["generation_kwargs"]
    keys = {"do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"}
    assert keys <= set(greedy) and keys <= set(sampled)
    assert decoding.task_decoding(greedy) == catalog.GREEDY_DECODING
    assert decoding.task_decoding(sampled) == catalog.SAMPLED_DECODING
    assert (
        catalog.SAMPLED_DECODING.temperature,
        catalog.SAMPLED_DECODING.top_p,
        catalog.SAMPLED_DECODING.top_k,
        catalog.SAMPLED_DECODING.repetition_penalty,
    ) == (0.7, 0.9, None, 1.0)
    assert not catalog.GREEDY_DECODING.do_sample
    for spec in catalog.SETS:
        for task, sampled_task in ((spec.task, False), (spec.task_passk, True)):
            cfg = _load(folder / f"{task}.yaml")
            assert cfg["task"] == task
            assert cfg["include"] == ("_template_passk.yaml" if sampled_task else "_template.yaml")
            pointer = folder / cfg["dataset_kwargs"]["data_files"]["test"]
            assert pointer.is_file() and pointer.parent.name == config_writer.POINTER_DIR
    metrics = [m["metric"] for m in _load(folder / "_template_passk.yaml")["metric_list"]]
    assert metrics == list(scoring.SAMPLED_METRICS + scoring.JUDGE_REPORTED)


def test_group_metric_names_match_only_their_own_metric():
    # lmms-eval's group aggregation matches by substring: no reported name may contain another.
    names = set(scoring.GREEDY_METRICS + scoring.SAMPLED_METRICS + scoring.JUDGE_REPORTED)
    clashes = [(a, b) for a in names for b in names if a != b and a in b]
    assert not clashes
