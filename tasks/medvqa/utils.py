"""lmms-eval hooks of the medvqa tasks (referenced from _template.yaml)."""

# Referenced by the task YAMLs as utils.<name>; defined once in harness_ext/scoring.py.
from medbridge.harness_ext.scoring import (  # noqa: F401
    agg_acc1,
    agg_all_at_16,
    agg_distinct_per_item,
    agg_maj_at_16,
    agg_n_by_judge,
    agg_n_by_rules,
    agg_n_judge_down,
    agg_n_judge_invalid,
    agg_n_request_failed,
    agg_n_unparseable,
    agg_pass_at_01,
    agg_pass_at_02,
    agg_pass_at_04,
    agg_pass_at_08,
    agg_pass_at_16,
    agg_rule_judge_agree,
    agg_rule_judge_kappa,
    agg_unparsed_greedy,
    agg_unparsed_sampled,
    doc_to_text,
    process_greedy,
    process_sampled,
)
from medbridge.tasks.medvqa.data import build_items, doc_images, to_dataset


def process_docs(dataset):
    """The task's data file names only the benchmark's dataset_name; the items come from the real
    source (hub id or local folder, see data.py), filtered, subset and checked."""
    names = sorted(set(dataset["dataset_name"]))
    if len(names) != 1:
        raise ValueError(f"a medvqa data file must name exactly one dataset_name, got {names}")
    items, _info = build_items(names[0])
    return to_dataset(items)


def doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    # Every image of the item, in the source's order (MMMU and MedXpertQA items can have several).
    # Decoded from the Arrow source per doc: docs carry the row, not the pixels.
    return [image.convert("RGB") for image in doc_images(doc)]

