"""The MedMNIST-v2 2D datasets as multiple-choice tasks: names, modalities, option wording.

MedMNIST's own label names (``medmnist.INFO[flag]["label"]``) are terse ("pleural", "0", "normal,
benign"); the option texts below are the clinical names we show the model instead, one per class,
in the class-index order of the official files. Adding a dataset is one entry in ``SETS``, then
``python -m medbridge.tasks.generate`` (task YAMLs, pointer files, the README's tables); task names,
groups and report rows follow from tasks/families.py.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbridge.harness_ext.decoding import GREEDY, PASSK, Decoding

MODALITIES = ("radiology", "microscopy", "photography")


@dataclass(frozen=True)
class MedMNISTSet:
    name: str  # short name used in task names: medmnist_mcq_<name>
    flag: str  # medmnist's flag, file {flag}_224.npz
    modality: str  # one of MODALITIES (the paper's grouping)
    image_kind: str  # what the picture is, used in the question
    classes: tuple[str, ...]  # option text per class index
    rule: str = "single"  # "single" | "multilabel_exactly_one" | "ordinal"
    rgb: bool = False

    @property
    def n_classes(self) -> int:
        return len(self.classes)


# How the tasks decode (harness_ext/decoding.py): the paper's greedy Acc@1 and Pass@K sampling.
GREEDY_DECODING: Decoding = GREEDY
SAMPLED_DECODING: Decoding = PASSK

_ORGANS = (
    "Bladder",
    "Left femur",
    "Right femur",
    "Heart",
    "Left kidney",
    "Right kidney",
    "Liver",
    "Left lung",
    "Right lung",
    "Pancreas",
    "Spleen",
)

SETS: tuple[MedMNISTSet, ...] = (
    MedMNISTSet("breast", "breastmnist", "radiology", "breast ultrasound image",
                ("Malignant breast lesion", "Normal or benign breast tissue")),
    MedMNISTSet("chest", "chestmnist", "radiology", "frontal chest X-ray",
                ("Atelectasis", "Cardiomegaly", "Pleural effusion", "Infiltration", "Mass", "Nodule",
                 "Pneumonia", "Pneumothorax", "Consolidation", "Pulmonary edema", "Emphysema",
                 "Pulmonary fibrosis", "Pleural thickening", "Hernia"),
                rule="multilabel_exactly_one"),
    MedMNISTSet("pneumonia", "pneumoniamnist", "radiology", "pediatric chest X-ray",
                ("Normal chest", "Pneumonia")),
    MedMNISTSet("organa", "organamnist", "radiology", "axial abdominal CT slice", _ORGANS),
    MedMNISTSet("organc", "organcmnist", "radiology", "coronal abdominal CT slice", _ORGANS),
    MedMNISTSet("organs", "organsmnist", "radiology", "sagittal abdominal CT slice", _ORGANS),
    MedMNISTSet("blood", "bloodmnist", "microscopy", "blood smear microscopy image of a single cell",
                ("Basophil", "Eosinophil", "Erythroblast",
                 "Immature granulocyte (myelocyte, metamyelocyte or promyelocyte)", "Lymphocyte",
                 "Monocyte", "Neutrophil", "Platelet"), rgb=True),
    MedMNISTSet("path", "pathmnist", "microscopy", "colorectal histopathology tile (H&E stain)",
                ("Adipose tissue", "Background", "Debris", "Lymphocytes", "Mucus", "Smooth muscle",
                 "Normal colon mucosa", "Cancer-associated stroma",
                 "Colorectal adenocarcinoma epithelium"), rgb=True),
    MedMNISTSet("tissue", "tissuemnist", "microscopy", "kidney cortex microscopy image",
                ("Collecting duct or connecting tubule", "Distal convoluted tubule",
                 "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
                 "Podocytes", "Proximal tubule segments", "Thick ascending limb")),
    MedMNISTSet("derma", "dermamnist", "photography", "dermatoscopic image of a skin lesion",
                ("Actinic keratosis or intraepithelial carcinoma", "Basal cell carcinoma",
                 "Benign keratosis-like lesion", "Dermatofibroma", "Melanoma", "Melanocytic nevus",
                 "Vascular lesion"), rgb=True),
    MedMNISTSet("oct", "octmnist", "photography", "retinal optical coherence tomography (OCT) scan",
                ("Choroidal neovascularization", "Diabetic macular edema", "Drusen", "Normal retina")),
    MedMNISTSet("retina", "retinamnist", "photography", "color fundus photograph",
                ("Grade 0: no diabetic retinopathy", "Grade 1: mild non-proliferative diabetic retinopathy",
                 "Grade 2: moderate non-proliferative diabetic retinopathy",
                 "Grade 3: severe non-proliferative diabetic retinopathy",
                 "Grade 4: proliferative diabetic retinopathy"),
                rule="ordinal", rgb=True),
)

BY_NAME: dict[str, MedMNISTSet] = {s.name: s for s in SETS}
BY_FLAG: dict[str, MedMNISTSet] = {s.flag: s for s in SETS}


def get_set(name_or_flag: str) -> MedMNISTSet:
    key = name_or_flag.lower()
    if key in BY_NAME:
        return BY_NAME[key]
    if key in BY_FLAG:
        return BY_FLAG[key]
    raise KeyError(f"unknown MedMNIST dataset {name_or_flag!r}; known: {', '.join(BY_NAME)}")


def sets_of_modality(modality: str) -> list[MedMNISTSet]:
    return [s for s in SETS if s.modality == modality]


@functools.cache
def medmnist_info() -> dict[str, dict[str, Any]]:
    """medmnist's own ``INFO`` table (label names, task type, split sizes, URLs, MD5s), read from the
    installed package's ``info.py`` without importing the package, whose ``__init__`` imports torch
    (seconds of CPU for a lookup). Raises ModuleNotFoundError when medmnist is not installed."""
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("medmnist is not installed (pip install medmnist)")
    path = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    loader_spec = importlib.util.spec_from_file_location("medbridge._medmnist_info", path)
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    return module.INFO

