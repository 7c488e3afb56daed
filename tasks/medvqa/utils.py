"""lmms-eval hooks of the medvqa tasks (referenced from _template.yaml).

Only what this family does its own way; the hooks every family shares (doc_to_text, process_results,
the aggregations) are named in the YAMLs by their module path, medbridge.harness_ext.scoring."""

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

