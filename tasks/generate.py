"""Regenerate every task family's files and the README's generated tables in one run.

    python -m medbridge.tasks.generate [--out-root DIR] [--readme PATH]

The one command to run after adding a catalog entry (a MedMNIST dataset, a VQA benchmark: one entry
can feed several families) or a metric. It writes each family of ``tasks/families.py`` through its
generator (``tasks/<folder>/_generate_configs.py``: task YAMLs, data-pointer files, the family's
README table) and the README's metric table from ``harness_ext/metric_registry.py``. The files are
checked in; tests/test_task_configs.py fails while any of them, or a README block, differs from
what this writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

from medbridge.harness_ext import metric_registry as registry
from medbridge.tasks import config_writer
from medbridge.tasks.families import FAMILIES
from medbridge.tasks.medmnist import _generate_configs as medmnist_generator
from medbridge.tasks.medvqa import _generate_configs as medvqa_generator
from medbridge.tasks.medvqa_medvlthinker import _generate_configs as medvlthinker_generator

GENERATOR = "tasks/generate.py"
TASKS_DIR = Path(__file__).resolve().parent
# One generator per family of tasks/families.py, named by its folder (checked by generators()).
GENERATORS = (medmnist_generator, medvqa_generator, medvlthinker_generator)
METRICS_BLOCK = "metrics"
METRICS_SOURCE = "harness_ext/metric_registry.py"

_REPORTED_BY = {
    "greedy": "greedy task",
    "sampled": "sampled (`_passk`) task",
    "both": "greedy and sampled tasks",
}


def generators() -> dict[str, ModuleType]:
    """Family folder -> its generator module; a family without one (or a generator without a family)
    is an error, so a new family cannot be left out of the one command."""
    found = {gen.FOLDER.name: gen for gen in GENERATORS}
    wanted = [family.folder for family in FAMILIES]
    if sorted(found) != sorted(wanted):
        raise RuntimeError(f"{GENERATOR}: GENERATORS cover {sorted(found)}, the families are {sorted(wanted)}")
    return {folder: found[folder] for folder in wanted}


def metric_table() -> str:
    """The README's table of every reported metric, from the registry (and the support gap)."""
    lines = [
        "| reported name | label | reported by | higher is better | meaning |",
        "|---|---|---|---|---|",
    ]
    for m in registry.METRICS.values():
        by = _REPORTED_BY[m.task_kind] + (", judge modes only" if m.judged_only else "")
        better = "yes" if m.higher_is_better else "no"
        lines.append(f"| `{m.name}` | {m.label} | {by} | {better} | {m.description} |")
    gap = registry.GAP
    lines.append(
        f"| `{gap.name}` | {gap.label} | `medbridge report` and ingest (a greedy task and its twin) "
        f"| {'yes' if gap.higher_is_better else 'no'} | {gap.description} |"
    )
    return "\n".join(lines)


def readme_blocks() -> dict[str, str]:
    """The README blocks written here besides the families' own."""
    return {METRICS_BLOCK: metric_table()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-root", type=Path, default=TASKS_DIR,
                        help="folder to write each family's folder into (default: the tasks folder)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="README to update (default: the checkout's README.md when writing the tasks folder)")
    args = parser.parse_args(argv)
    readme = args.readme or (config_writer.README_PATH if args.out_root.resolve() == TASKS_DIR else None)
    if readme is not None and not readme.is_file():
        readme = None  # an installed package has no README to keep in step
    for folder, gen in generators().items():
        family = gen.family()
        for path in config_writer.write_family(family, args.out_root / folder):
            print(path)
        if readme is not None and family.readme_blocks:
            config_writer.write_readme(family, readme)
    if readme is not None:
        text = readme.read_text()
        new = config_writer.readme_with_blocks(text, readme_blocks(), GENERATOR, METRICS_SOURCE)
        if new != text:
            readme.write_text(new)
        print(readme)


if __name__ == "__main__":
    main()
