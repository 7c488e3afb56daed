"""Write the medmnist_mcq task YAMLs, data-pointer files and group YAMLs from catalog.py.

    python -m medbridge.tasks.medmnist._generate_configs [--out DIR]

The written files are checked in; tests/test_task_configs.py fails when they drift from this output.
"""

from __future__ import annotations

from pathlib import Path

from medbridge.tasks.config_writer import Family, GroupFile, TaskFile, generator_main
from medbridge.tasks.medmnist.catalog import (
    GREEDY_DECODING,
    MODALITIES,
    SAMPLED_DECODING,
    SETS,
    sets_of_modality,
)

FOLDER = Path(__file__).resolve().parent
MODALITY_TITLES = {"radiology": "Radiology", "microscopy": "Microscopy", "photography": "Visible-light photography"}

TEMPLATE_COMMENT = """\
# Shared by the twelve greedy medmnist_mcq_<dataset> tasks. A task file adds its name and the
# one-line data-pointer file that names its MedMNIST flag; the items are built from the real npz.
"""


def family() -> Family:
    tasks = []
    for spec in SETS:
        pointer = f"{spec.flag}.jsonl"
        tasks += [
            TaskFile(spec.task, False, pointer, {"flag": spec.flag}),
            TaskFile(spec.task_passk, True, pointer, {"flag": spec.flag}),
        ]
    groups = [
        GroupFile(
            f"_group_{m}.yaml",
            f"medmnist_mcq_{m}",
            [t for s in sets_of_modality(m) for t in (s.task, s.task_passk)],
            alias=MODALITY_TITLES[m],
        )
        for m in MODALITIES
    ]
    groups += [
        GroupFile(
            "_group_all.yaml",
            "medmnist_mcq",
            [f"medmnist_mcq_{m}" for m in MODALITIES],
            comment="Greedy Acc@1 and sampled Pass@K on all twelve datasets, grouped by modality.",
        ),
        GroupFile(
            "_group_greedy.yaml",
            "medmnist_mcq_greedy",
            [s.task for s in SETS],
            comment="Acc@1 only (greedy), all twelve datasets.",
            sampled=False,
        ),
    ]
    return Family(
        folder="medmnist",
        generator="tasks/medmnist/_generate_configs.py",
        greedy=GREEDY_DECODING,
        sampled=SAMPLED_DECODING,
        template_comment=TEMPLATE_COMMENT,
        tasks=tasks,
        groups=groups,
    )


def main(argv: list[str] | None = None) -> None:
    generator_main(family(), FOLDER, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
