"""lmms-eval hooks of the medmnist_mcq tasks (referenced from _template.yaml)."""

from medbridge.harness_ext.scoring import aggregation, process_greedy, process_sampled  # noqa: F401
from medbridge.tasks.medmnist.data import build_items


def process_docs(dataset):
    """The task's data file names only the MedMNIST flag; the items come from the real npz."""
    import datasets

    flags = sorted(set(dataset["flag"]))
    if len(flags) != 1:
        raise ValueError(f"a medmnist_mcq data file must name exactly one flag, got {flags}")
    items = build_items(flags[0], "test")
    return datasets.Dataset.from_list(items).cast_column("image", datasets.Image())


def doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["prompt"]


agg_acc1 = aggregation("acc1")
agg_unparsed_greedy = aggregation("unparsed_greedy")
agg_pass_at_01 = aggregation("pass_at_01")
agg_pass_at_02 = aggregation("pass_at_02")
agg_pass_at_04 = aggregation("pass_at_04")
agg_pass_at_08 = aggregation("pass_at_08")
agg_pass_at_16 = aggregation("pass_at_16")
agg_maj_at_16 = aggregation("maj_at_16")
agg_all_at_16 = aggregation("all_at_16")
agg_unparsed_sampled = aggregation("unparsed_sampled")
