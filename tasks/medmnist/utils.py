"""lmms-eval hooks of the medmnist_mcq tasks (referenced from _template.yaml).

Only what this family does its own way; the hooks every family shares (doc_to_text, process_results,
the aggregations) are named in the YAMLs by their module path, medbridge.harness_ext.scoring."""

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
