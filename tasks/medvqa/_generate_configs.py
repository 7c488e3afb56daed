"""Write the medvqa task YAMLs, data-pointer files and group YAMLs from catalog.py.

    python -m medbridge.tasks.medvqa._generate_configs [--out DIR]

The written files are checked in; tests/test_task_configs.py fails when they drift from this output.
"""

from __future__ import annotations

from pathlib import Path

from medbridge.tasks.config_writer import Family, GroupFile, TaskFile, generator_main
from medbridge.tasks.families import MEDVQA
from medbridge.tasks.medvqa.catalog import GREEDY_DECODING, MAX_NEW_TOKENS, SAMPLED_DECODING, SETS
from medbridge.tasks.medvqa.data import DEFAULT_SUBSET

FOLDER = Path(__file__).resolve().parent

TEMPLATE_COMMENT = f"""\
# Shared by the {MEDVQA.count_word} greedy {MEDVQA.name}_<benchmark> tasks. A task file adds its name and the one-line
# data-pointer file naming the benchmark's dataset_name; process_docs reads the real rows from
# MedVLThinker-Eval (or $MEDBRIDGE_MEDVQA_SOURCE), a seeded 200-item subset by default.
"""
LENGTH_COMMENT = f"""\
# Answer length: reasoning models write long; ours is {MAX_NEW_TOKENS} new tokens (see catalog.py).
# Override per run with --gen_kwargs max_new_tokens=4096 (it merges into these settings).
"""


def readme_blocks() -> dict[str, str]:
    """The README's table of the benchmarks, from the catalog."""
    lines = [
        "| Task (greedy / sampled) | Benchmark | Rows in MedVLThinker-Eval | Default subset "
        "| Original source and part |",
        "|---|---|---|---|---|",
    ]
    for spec in SETS:
        subset = f"{spec.n_rows} (all)" if spec.n_rows <= DEFAULT_SUBSET else str(DEFAULT_SUBSET)
        greedy = MEDVQA.task(spec)
        passk = MEDVQA.passk_task(spec).removeprefix(greedy)
        lines.append(f"| `{greedy}` / `{passk}` | {spec.title} | {spec.n_rows} | {subset} | {spec.original} |")
    return {"medvqa tasks": "\n".join(lines)}


def family() -> Family:
    tasks = []
    for spec in SETS:
        pointer = f"{spec.name}.jsonl"
        row = {"dataset_name": spec.dataset_name}
        tasks += [TaskFile(MEDVQA.task(spec), False, pointer, row),
                  TaskFile(MEDVQA.passk_task(spec), True, pointer, row)]
    groups = [
        GroupFile("_group_all.yaml", MEDVQA.name, [t for s in SETS for t in (MEDVQA.task(s), MEDVQA.passk_task(s))],
                  comment="Table 3: each benchmark's greedy Acc@1 and sampled Pass@K, and their unweighted average."),
        GroupFile("_group_greedy.yaml", MEDVQA.group("greedy"), MEDVQA.greedy_tasks,
                  comment=f"Acc@1 only (greedy), the {MEDVQA.count_word} benchmarks and their unweighted average.",
                  sampled=False),
    ]
    return Family(folder="medvqa", generator="tasks/medvqa/_generate_configs.py", greedy=GREEDY_DECODING,
                  sampled=SAMPLED_DECODING, template_comment=TEMPLATE_COMMENT, tasks=tasks, groups=groups,
                  extra_greedy_comment=LENGTH_COMMENT, readme_blocks=readme_blocks())


def main(argv: list[str] | None = None) -> None:
    generator_main(family(), FOLDER, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
