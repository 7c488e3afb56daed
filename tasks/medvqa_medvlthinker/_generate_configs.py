"""Write the medvqa_medvlthinker task YAMLs, data-pointer files and group YAML from the VQA catalog.

    python -m medbridge.tasks.medvqa_medvlthinker._generate_configs [--out DIR]

The tasks reuse the medvqa loader and catalog; what MedVLThinker's protocol does differently (items,
prompt, decoding, runs, grader) lives in tasks/medvqa/medvlthinker.py, which the YAMLs name. The written
files are checked in; tests/test_task_configs.py fails when they drift from this output.
"""

from __future__ import annotations

from pathlib import Path

from medbridge.tasks.config_writer import SHARED_HOOKS, Family, GroupFile, TaskFile, generator_main
from medbridge.tasks.families import MEDVLTHINKER
from medbridge.tasks.medvqa import medvlthinker as protocol
from medbridge.tasks.medvqa.catalog import SETS

FOLDER = Path(__file__).resolve().parent

TEMPLATE_COMMENT = f"""\
# Shared by the {MEDVLTHINKER.count_word} {MEDVLTHINKER.name}_<benchmark> tasks: MedVLThinker's evaluation
# protocol (tasks/medvqa/medvlthinker.py) on every row of the benchmark in MedVLThinker-Eval:
# their prompt, greedy decoding with at most {protocol.MAX_NEW_TOKENS} new tokens, {protocol.RUNS} runs,
# their grader beside ours.
"""
RUNS_COMMENT = f"""\
# {protocol.RUNS} greedy runs per item (MedVLThinker's table is the mean of {protocol.RUNS}); every response is graded.
"""


def readme_blocks() -> dict[str, str]:
    lines = [
        "| Task | Benchmark | dataset_name | Items (every row) |",
        "|---|---|---|---|",
    ]
    for spec in SETS:
        lines.append(f"| `{MEDVLTHINKER.task(spec)}` | {spec.title} | `{spec.dataset_name}` | {spec.n_rows} |")
    return {f"{MEDVLTHINKER.name} tasks": "\n".join(lines)}


def family() -> Family:
    tasks = [
        TaskFile(MEDVLTHINKER.task(spec), False, f"{spec.name}.jsonl", {"dataset_name": spec.dataset_name})
        for spec in SETS
    ]
    names = [m.name for m in protocol.METRICS]
    groups = [
        GroupFile("_group.yaml", MEDVLTHINKER.name, MEDVLTHINKER.greedy_tasks,
                  comment=f"MedVLThinker's protocol on the {MEDVLTHINKER.count_word} benchmarks and their unweighted "
                  "average (MedVLThinker's Avg column).",
                  sampled=False, metrics=("acc1", *names)),
    ]
    return Family(
        folder=MEDVLTHINKER.folder,
        generator="tasks/medvqa_medvlthinker/_generate_configs.py",
        greedy=protocol.DECODING,
        sampled=None,
        template_comment=TEMPLATE_COMMENT,
        tasks=tasks,
        groups=groups,
        extra_greedy_comment=RUNS_COMMENT,
        readme_blocks=readme_blocks(),
        hooks={
            "process_docs": f"{protocol.__name__}.process_docs",
            "doc_to_visual": "medbridge.tasks.medvqa.utils.doc_to_visual",
            "doc_to_text": f"{SHARED_HOOKS}.doc_to_text",
            "process_results": f"{protocol.__name__}.process_results",
        },
        greedy_metrics=protocol.metric_lines(),
        greedy_repeats=protocol.RUNS,
    )


def main(argv: list[str] | None = None) -> None:
    generator_main(family(), FOLDER, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
