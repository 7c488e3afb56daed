"""Write the medmnist_mcq task YAMLs, data-pointer files and group YAMLs from catalog.py.

    python -m medbridge.tasks.medmnist._generate_configs [--out DIR]

The written files are checked in; tests/test_task_configs.py fails when they drift from this output.
"""

from __future__ import annotations

from pathlib import Path

from medbridge.tasks.config_writer import Family, GroupFile, TaskFile, generator_main
from medbridge.tasks.families import MEDMNIST
from medbridge.tasks.medmnist.catalog import (
    GREEDY_DECODING,
    MODALITIES,
    SAMPLED_DECODING,
    SETS,
    medmnist_info,
    sets_of_modality,
)

FOLDER = Path(__file__).resolve().parent
MODALITY_TITLES = {"radiology": "Radiology", "microscopy": "Microscopy", "photography": "Visible-light photography"}

TEMPLATE_COMMENT = f"""\
# Shared by the {MEDMNIST.count_word} greedy {MEDMNIST.name}_<dataset> tasks. A task file adds its name and the
# one-line data-pointer file that names its MedMNIST flag; the items are built from the real npz.
"""


def readme_blocks() -> dict[str, str]:
    """The README's group list and option table of the family, from the catalog (and medmnist's INFO
    for the official test-split sizes)."""
    groups = ", ".join(
        f"`{MEDMNIST.group(m)}` ({', '.join(s.name for s in sets_of_modality(m))})" for m in MODALITIES
    )
    lines = [
        f"Groups: {groups} and `{MEDMNIST.name}` (all {MEDMNIST.count_word}); `{MEDMNIST.group('greedy')}` runs the "
        "greedy tasks alone. Group numbers are means of datasets (not of items), as in the paper.",
        "",
        "| task | MedMNIST flag | modality | official test images | options (class index: text) |",
        "|---|---|---|---|---|",
    ]
    for spec in SETS:
        options = "; ".join(f"{i}: {text}" for i, text in enumerate(spec.classes))
        n_test = medmnist_info()[spec.flag]["n_samples"]["test"]
        lines.append(f"| `{MEDMNIST.task(spec)}` | {spec.flag} | {spec.modality} | {n_test} | {options} |")
    return {"medmnist_mcq tasks": "\n".join(lines)}


def family() -> Family:
    tasks = []
    for spec in SETS:
        pointer = f"{spec.flag}.jsonl"
        tasks += [
            TaskFile(MEDMNIST.task(spec), False, pointer, {"flag": spec.flag}),
            TaskFile(MEDMNIST.passk_task(spec), True, pointer, {"flag": spec.flag}),
        ]
    groups = [
        GroupFile(
            f"_group_{m}.yaml",
            MEDMNIST.group(m),
            [t for s in sets_of_modality(m) for t in (MEDMNIST.task(s), MEDMNIST.passk_task(s))],
            alias=MODALITY_TITLES[m],
        )
        for m in MODALITIES
    ]
    groups += [
        GroupFile(
            "_group_all.yaml",
            MEDMNIST.name,
            [MEDMNIST.group(m) for m in MODALITIES],
            comment=f"Greedy Acc@1 and sampled Pass@K on all {MEDMNIST.count_word} datasets, grouped by modality.",
        ),
        GroupFile(
            "_group_greedy.yaml",
            MEDMNIST.group("greedy"),
            MEDMNIST.greedy_tasks,
            comment=f"Acc@1 only (greedy), all {MEDMNIST.count_word} datasets.",
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
        readme_blocks=readme_blocks(),
    )


def main(argv: list[str] | None = None) -> None:
    generator_main(family(), FOLDER, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
