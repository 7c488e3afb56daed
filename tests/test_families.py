"""The task-family registry (tasks/families.py): every task name, group and report row comes from it,
and it agrees with the task YAMLs lmms-eval indexes."""

from pathlib import Path

import pytest
import yaml
from medbridge.tasks import families
from medbridge.tasks.families import FAMILIES, MEDMNIST, MEDVLTHINKER, MEDVQA

TASKS_DIR = Path(families.__file__).resolve().parent


def test_task_names_are_family_name_entry_name_and_the_passk_twin():
    assert MEDMNIST.task("blood") == "medmnist_mcq_blood"
    assert MEDMNIST.passk_task("blood") == "medmnist_mcq_blood_passk"
    assert MEDVQA.task(MEDVQA.entries[0]) == "medvqa_pmc"
    assert families.passk_twin("medvqa_pmc") == "medvqa_pmc_passk"
    assert families.passk_twin("medvqa_pmc_passk") == "medvqa_pmc_passk"
    assert families.greedy_twin("medvqa_pmc_passk") == "medvqa_pmc"
    assert families.greedy_twin("medvqa_pmc") == "medvqa_pmc"
    # Task names are the registry's alone: a catalog entry carries none (catalogs never import the registry).
    for family in (MEDMNIST, MEDVQA):
        assert not any(hasattr(entry, "task") or hasattr(entry, "task_passk") for entry in family.entries)
    # A family without Pass@K twins (MedVLThinker's protocol) names greedy tasks only.
    assert MEDVLTHINKER.task("pmc") == "medvqa_medvlthinker_pmc" and MEDVLTHINKER.sampled_tasks == []


def test_every_task_name_maps_back_to_its_family_and_catalog_entry():
    seen = set()
    for family in FAMILIES:
        for entry in family.entries:
            tasks = (family.task(entry), family.passk_task(entry)) if family.sampled else (family.task(entry),)
            for task in tasks:
                assert families.family_of(task) is family
                assert families.entry_of(task) is entry
                seen.add(task)
    assert seen == families.all_task_names()
    for stranger in ("medmnist_mcq", "medmnist_mcq_nosuch", "medvqa_", "mmlu_blood", "medvqa_pmc_passk_passk",
                     "medvqa_medvlthinker_pmc_passk"):
        assert families.family_of(stranger) is None, stranger
        assert families.entry_of(stranger) is None, stranger


@pytest.mark.slow  # imports lmms-eval (5 s)
def test_the_plugin_registers_exactly_the_registry_s_tasks():
    from medbridge.harness_ext.plugin import medbridge_task_names

    assert medbridge_task_names() == families.all_task_names()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_registry_task_has_its_yaml_and_every_yaml_task_is_in_the_registry(family):
    folder = TASKS_DIR / family.folder
    declared = set()
    for path in folder.glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text().replace("!function", ""))
        if "task" in cfg and isinstance(cfg["task"], str):
            declared.add(cfg["task"])
    assert declared == set(family.task_names)


def test_report_groups_are_modality_means_and_the_overall_mean_of_greedy_tasks():
    groups = MEDMNIST.report_groups()
    assert list(groups) == [f"medmnist {m}" for m in MEDMNIST.modalities] + ["medmnist overall"]
    assert groups["medmnist overall"] == MEDMNIST.greedy_tasks
    for m in MEDMNIST.modalities:
        assert groups[f"medmnist {m}"] == [MEDMNIST.task(e) for e in MEDMNIST.entries if e.modality == m]
    # Every dataset sits in exactly one modality row.
    assert sorted(t for m in MEDMNIST.modalities for t in groups[f"medmnist {m}"]) == sorted(MEDMNIST.greedy_tasks)
    assert MEDVQA.report_groups() == {"medvqa average": MEDVQA.greedy_tasks}
    assert MEDVLTHINKER.report_groups() == {"medvlthinker average": MEDVLTHINKER.greedy_tasks}
    assert families.report_groups() == {**MEDMNIST.report_groups(), **MEDVQA.report_groups(),
                                        **MEDVLTHINKER.report_groups()}


def test_count_words_follow_the_catalogs():
    assert MEDMNIST.count_word == families.count_word(len(MEDMNIST.entries))
    assert families.count_word(12) == "twelve" and families.count_word(6) == "six"
    assert families.count_word(21) == "21"


def test_two_entries_with_one_name_are_refused():
    entry = MEDVQA.entries[0]
    with pytest.raises(ValueError, match="share a name"):
        families.TaskFamily("x", "x", (entry, entry), "thing", "x", "all", "t")
