"""Every lmms-eval task family medbridge ships, in one registry.

A family is one catalog (tasks/<folder>/catalog.py: one entry per dataset or benchmark) plus the
facts everything else derives from it: the task names (``<family>_<entry>`` for the greedy task,
``<family>_<entry>_passk`` for its Pass@K twin), the lmms-eval group names, the summary rows the
report shows (modality means, the overall mean) and the leaderboard table the numbers feed.
The plugin, the report, the leaderboard, the training CLI and the benchmarks ask this module; no
other module builds a task name from a string or imports a catalog by name. Three families:
``MEDMNIST`` (medmnist_mcq), ``MEDVQA`` (medvqa) and ``MEDVLTHINKER`` (medvqa_medvlthinker: the VQA
catalog under MedVLThinker's protocol).

    from medbridge.tasks.families import FAMILIES, MEDMNIST, passk_twin
    MEDMNIST.task("blood")             # 'medmnist_mcq_blood'
    passk_twin("medmnist_mcq_blood")   # 'medmnist_mcq_blood_passk'
    entry_of("medvqa_pmc_passk").title  # 'PMC-VQA'

Adding a dataset or benchmark is one catalog entry: the generators, the README's option tables,
the counts in comments and titles and the tests all read the catalogs through this module. The
catalogs are the bottom: their entries carry no task names and never import this module; ask the
family (``MEDMNIST.task(entry)``, ``MEDVQA.passk_task(entry)``, ``entry_of(task)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medbridge.tasks.medmnist import catalog as medmnist_catalog
from medbridge.tasks.medvqa import catalog as medvqa_catalog

# lmms-eval task name of a greedy task's sampled (Pass@K) twin: <greedy task><SAMPLED_SUFFIX>.
SAMPLED_SUFFIX = "_passk"

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")


def count_word(n: int) -> str:
    """``n`` as an English word up to twenty (as prose writes small counts), else digits."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def passk_twin(task: str) -> str:
    """The sampled (Pass@K) twin of a greedy task name (a sampled name is returned unchanged)."""
    return task if is_sampled(task) else task + SAMPLED_SUFFIX


def greedy_twin(task: str) -> str:
    """The greedy task a sampled task name is the twin of (a greedy name is returned unchanged)."""
    return task.removesuffix(SAMPLED_SUFFIX)


def is_sampled(task: str) -> bool:
    return task.endswith(SAMPLED_SUFFIX)


@dataclass(frozen=True)
class TaskFamily:
    """One task family: its catalog entries and every name and grouping derived from them."""

    name: str  # lmms-eval group of all its tasks, and the prefix of every task name: <name>_<entry>
    folder: str  # tasks/<folder> holds its generated YAMLs
    entries: tuple[Any, ...]  # the catalog's entries, in table order; each has a unique ``.name``
    noun: str  # what one entry is, for prose ("MedMNIST dataset")
    report_label: str  # prefix of its report rows ("medmnist" -> "medmnist radiology", "medmnist overall")
    overall_label: str  # the report row of the mean of all its entries
    leaderboard_table: str  # id of the leaderboard table its greedy numbers feed
    modalities: tuple[str, ...] = ()  # report rows per modality (entries carry ``.modality``)
    sampled: bool = True  # every greedy task has a Pass@K twin
    _by_name: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {e.name: e for e in self.entries}
        if len(by_name) != len(self.entries):
            raise ValueError(f"family {self.name}: two catalog entries share a name")
        object.__setattr__(self, "_by_name", by_name)

    # ---- task names
    def task(self, entry: str | Any) -> str:
        """The greedy task of an entry (given as the entry or its short name)."""
        short = entry if isinstance(entry, str) else entry.name
        return f"{self.name}_{short}"

    def passk_task(self, entry: str | Any) -> str:
        return passk_twin(self.task(entry))

    def group(self, part: str) -> str:
        """An lmms-eval group of this family other than the whole family (``medmnist_mcq_radiology``)."""
        return f"{self.name}_{part}"

    @property
    def greedy_tasks(self) -> list[str]:
        return [self.task(e) for e in self.entries]

    @property
    def sampled_tasks(self) -> list[str]:
        return [self.passk_task(e) for e in self.entries] if self.sampled else []

    @property
    def task_names(self) -> frozenset[str]:
        return frozenset(self.greedy_tasks + self.sampled_tasks)

    @property
    def count(self) -> int:
        return len(self.entries)

    @property
    def count_word(self) -> str:
        """The number of entries as prose writes it ("twelve"): titles and comments derive it here."""
        return count_word(len(self.entries))

    def entry(self, task: str) -> Any | None:
        """The catalog entry of one of this family's task names (greedy or sampled), else None."""
        if is_sampled(task) and not self.sampled:
            return None
        short = greedy_twin(task).removeprefix(f"{self.name}_")
        return self._by_name.get(short) if short != greedy_twin(task) else None

    # ---- report rows
    def group_label(self, part: str) -> str:
        """A report row label: a modality, or ``overall_label`` (``medmnist radiology``)."""
        return f"{self.report_label} {part}"

    def report_groups(self) -> dict[str, list[str]]:
        """Summary rows of ``medbridge report``: label -> greedy task names averaged (unweighted)."""
        groups = {
            self.group_label(m): [self.task(e) for e in self.entries if e.modality == m] for m in self.modalities
        }
        groups[self.group_label(self.overall_label)] = self.greedy_tasks
        return groups


MEDMNIST = TaskFamily(
    name="medmnist_mcq",
    folder="medmnist",
    entries=medmnist_catalog.SETS,
    noun="MedMNIST dataset",
    report_label="medmnist",
    overall_label="overall",
    leaderboard_table="table2",
    modalities=medmnist_catalog.MODALITIES,
)

MEDVQA = TaskFamily(
    name="medvqa",
    folder="medvqa",
    entries=medvqa_catalog.SETS,
    noun="medical VQA benchmark",
    report_label="medvqa",
    overall_label="average",
    leaderboard_table="table3",
)

# The same benchmarks under MedVLThinker's own evaluation protocol (tasks/medvqa/medvlthinker.py):
# every row, their prompt, greedy x 3 runs, their grader beside ours. Greedy only: no Pass@K twins.
MEDVLTHINKER = TaskFamily(
    name="medvqa_medvlthinker",
    folder="medvqa_medvlthinker",
    entries=medvqa_catalog.SETS,
    noun="medical VQA benchmark",
    report_label="medvlthinker",
    overall_label="average",
    leaderboard_table="medvlthinker",
    sampled=False,
)

FAMILIES: tuple[TaskFamily, ...] = (MEDMNIST, MEDVQA, MEDVLTHINKER)


def all_task_names() -> frozenset[str]:
    """Every lmms-eval task medbridge ships (greedy and sampled), across families."""
    return frozenset().union(*(f.task_names for f in FAMILIES))


def family_of(task: str) -> TaskFamily | None:
    """The family a task name (greedy or sampled) belongs to, else None."""
    for family in FAMILIES:
        if family.entry(task) is not None:
            return family
    return None


def entry_of(task: str) -> Any | None:
    """The catalog entry behind a task name (greedy or sampled) of any family, else None."""
    family = family_of(task)
    return family.entry(task) if family else None


def report_groups(families: Sequence[TaskFamily] = FAMILIES) -> dict[str, list[str]]:
    """Every family's summary rows (label -> greedy task names), in registry order."""
    groups: dict[str, list[str]] = {}
    for family in families:
        groups.update(family.report_groups())
    return groups
