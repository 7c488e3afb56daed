"""Imaging-modality labels for questions (and their images) through the judge: the classifier that
balances PMC-VQA over the paper's categories (``prompts.MODALITIES``).

    from medbridge.judges import MODALITIES, classify_modalities
    labels = classify_modalities(questions, images=None, config=None)

Each label is one of ``MODALITIES`` (which includes "none": the modality is uncommon, ambiguous
or unstated), or None when the judge gave no usable label: its reply was ``unknown`` (a well-formed
label outside the vocabulary, such as "pet"; never cached, counted in ``pool.stats["unknown"]``),
``invalid`` (not the reply format; counted in ``pool.stats["invalid"]``) or the request ``failed``
(not cached, asked again next time). ``modality_verdicts`` tells these apart; they are never guessed.
Labels are cached in the verdict cache and asked concurrently (the config's concurrency).
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medbridge.harness_ext.errors import MedbridgeError
from medbridge.judges.client import Verdict, get_pool
from medbridge.judges.config import JudgeConfig
from medbridge.judges.prompts import MODALITY

__all__ = ["classify_modalities", "image_data_url", "modality_verdicts"]


def image_data_url(image: Any) -> str:
    """A ``data:image/png;base64,...`` URL for a PIL image, PNG/JPEG bytes or an image file path."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise MedbridgeError(f"modality classifier: image file {path} does not exist")
        image = path.read_bytes()
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
        mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    elif hasattr(image, "save"):  # a PIL image
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    else:
        raise MedbridgeError(f"modality classifier: cannot use an image of type {type(image).__name__}")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _config(config: JudgeConfig | None) -> JudgeConfig:
    config = config or JudgeConfig.resolve()  # the mode does not matter here: every question goes to the judge
    if not config.configured:
        raise MedbridgeError(
            "the modality classifier needs a judge: set MEDBRIDGE_JUDGE_BASE_URL and MEDBRIDGE_JUDGE_MODEL "
            "(e.g. `medbridge judge serve --model Qwen/Qwen2.5-VL-32B-Instruct`), or use the keyword fallback"
        )
    return config


def modality_verdicts(
    questions: Sequence[str], images: Sequence[Any] | None = None, config: JudgeConfig | None = None,
    reask: bool = False,
) -> list[Verdict]:
    """The judge's verdicts, in order: status "label" (value: the label), "unknown" (value: the word outside
    the vocabulary), "invalid" or "failed". ``reask``: ask again what got an invalid or unknown reply earlier
    in this process (a builder's retry round)."""
    if images is not None and len(images) != len(questions):
        raise MedbridgeError(f"modality classifier: {len(questions)} questions but {len(images)} images")
    inputs = []
    for i, question in enumerate(questions):
        item: dict[str, Any] = {"question": str(question)}
        image = images[i] if images is not None else None
        if image is not None:
            url = image_data_url(image)
            item["image_url"] = url
            item["image_sha256"] = hashlib.sha256(url.encode("ascii")).hexdigest()
        inputs.append(item)
    return get_pool(_config(config)).judge_many(MODALITY, inputs, reask=reask)


def classify_modalities(
    questions: Sequence[str], images: Sequence[Any] | None = None, config: JudgeConfig | None = None
) -> list[str | None]:
    """One label of ``MODALITIES`` per question, or None where the judge gave no usable label."""
    return [v.value if v.status == "label" else None for v in modality_verdicts(questions, images, config)]
