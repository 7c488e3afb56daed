"""The medical VQA benchmarks of the paper's Table 3: names, sources, sizes.

All are read from MedVLThinker's evaluation set (``UCSC-VLAA/MedVLThinker-Eval``, split
``test``), which stores every benchmark as multiple choice in one schema and tells them apart by
the ``dataset_name`` column. The ``dataset_name`` strings below come from MedVLThinker's own
data-building scripts (found by code search, not by opening the hub parquet, which is not
reachable from here): the first script writes ``pmc_vqa``, ``pathvqa_closed``, ``slake_closed``
and ``vqa_rad_closed`` (from ``AdaptLLM/biomed-VQA-benchmark``, test split, closed questions,
options extracted for the yes/no questions); the second adds ``MMMU-medical`` and
``MedXpertQA-MM`` and renumbers ``dataset_index`` over the combined set. A third-party README
lists the same names as the subsets of that set. A source whose names differ can be mapped
with ``source_names`` (every alias is accepted). Adding a benchmark is one entry in ``SETS``, then
``python -m medbridge.tasks.generate`` (every family built from this catalog: ``medvqa`` and
``medvqa_medvlthinker``, and the README's tables).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from medbridge.harness_ext import settings
from medbridge.harness_ext.decoding import GREEDY, PASSK, Decoding

# The source's defaults live in the settings table (MEDBRIDGE_MEDVQA_SOURCE, MEDBRIDGE_MEDVQA_SPLIT).
HUB_ID = settings.default("MEDBRIDGE_MEDVQA_SOURCE")
HUB_SPLIT = settings.default("MEDBRIDGE_MEDVQA_SPLIT")


# How the tasks decode (harness_ext/decoding.py). Answer length: reasoning models write long.
# MedVLThinker's evaluation allows 4096 new tokens, Med-R1 256; ours is 2048, which covers the
# reasoning traces of the 3B/7B models we compare (override per run with --gen_kwargs max_new_tokens=4096).
MAX_NEW_TOKENS = 2048
GREEDY_DECODING: Decoding = replace(GREEDY, max_new_tokens=MAX_NEW_TOKENS)
SAMPLED_DECODING: Decoding = replace(PASSK, max_new_tokens=MAX_NEW_TOKENS)


@dataclass(frozen=True)
class MedVQASet:
    name: str  # short name: tasks medvqa_<name> and medvqa_<name>_passk
    title: str  # the column header of Table 3
    source_names: tuple[str, ...]  # accepted values of `dataset_name`; the first is the hub's
    n_rows: int  # rows in MedVLThinker-Eval (test)
    original: str  # where the questions come from and which part of it

    @property
    def dataset_name(self) -> str:
        return self.source_names[0]


# Table 3's column order.
SETS: tuple[MedVQASet, ...] = (
    MedVQASet("pmc", "PMC-VQA", ("pmc_vqa",), 2000,
              "PMC-VQA test (xmcmic/PMC-VQA; via AdaptLLM/biomed-VQA-benchmark 'PMC-VQA' test): 4-option MCQ"),
    MedVQASet("mmmu", "MMMU (medical)", ("MMMU-medical", "mmmu_medical"), 170,
              "MMMU/MMMU validation + dev of the five Health & Medicine subjects (Basic_Medical_Science, "
              "Clinical_Medicine, Diagnostics_and_Laboratory_Medicine, Pharmacy, Public_Health), "
              "multiple-choice questions only (test has no public answers); up to 7 images"),
    MedVQASet("medxpertqa", "MedXpertQA-MM", ("MedXpertQA-MM", "medxpertqa_mm"), 2000,
              "TsinghuaC3I/MedXpertQA config MM, test split: 5-option MCQ, one or more images"),
    MedVQASet("pathvqa", "PathVQA", ("pathvqa_closed", "pathvqa"), 3362,
              "PathVQA test, closed (yes/no) questions only, as two-option MCQ"),
    MedVQASet("slake", "SLAKE", ("slake_closed", "slake"), 416,
              "SLAKE test, English, closed questions only, as MCQ"),
    MedVQASet("vqarad", "VQA-RAD", ("vqa_rad_closed", "vqa_rad"), 272,
              "VQA-RAD test, closed questions only (mostly yes/no, as two-option MCQ)"),
)

_BY_NAME = {s.name: s for s in SETS}


def get_set(name: str) -> MedVQASet:
    """A benchmark by short name (``pmc``) or any source name (a task name's entry: ``MEDVQA.entry(task)``)."""
    spec = _BY_NAME.get(name)
    if spec is not None:
        return spec
    for spec in SETS:
        if name in spec.source_names:
            return spec
    raise KeyError(f"unknown medical VQA benchmark {name!r}; known: {', '.join(_BY_NAME)}")
