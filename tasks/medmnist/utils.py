"""lmms-eval hooks of the medmnist_mcq tasks (referenced from _template.yaml)."""

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
from medbridge.tasks.medmnist.data import build_items, doc_image


def process_docs(dataset):
    """The task's data file names only the MedMNIST flag; the items come from the real npz.

    Docs carry the item's index and metadata, not pixels: ``doc_to_visual`` decodes each image from
    the split's memory-mapped cache when lmms-eval asks for it."""
    import datasets

    flags = sorted(set(dataset["flag"]))
    if len(flags) != 1:
        raise ValueError(f"a medmnist_mcq data file must name exactly one flag, got {flags}")
    return datasets.Dataset.from_list(build_items(flags[0], "test", with_images=False))


def doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    return [doc_image(doc).convert("RGB")]
