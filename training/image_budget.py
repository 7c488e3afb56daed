"""The image budget of a run: the paper's pixel limits and the keyword arguments that fix them.

One image geometry: the processor of the trainer, the vLLM engine that generates (colocated or served)
and the lmms-eval run that evaluates a checkpoint all get the same ``min_pixels`` / ``max_pixels``, so a
prompt has the same number of image tokens everywhere. Imports nothing: recipes (configs.py), the
trainer's helpers (model_utils.py) and the vLLM server command (vllm_server.py) all read it.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MIN_PIXELS", "PAPER_MAX_PIXELS", "image_geometry"]

# The paper's image budget for its final run (Qwen2.5-VL pixels: 1024 * 28 * 28).
PAPER_MAX_PIXELS = 802816
DEFAULT_MIN_PIXELS = 3136


def image_geometry(max_pixels: int, min_pixels: int) -> dict[str, int]:
    """The processor keyword arguments that fix the image budget (also vLLM's ``mm_processor_kwargs``)."""
    if min_pixels > max_pixels:
        raise ValueError(
            f"min_pixels {min_pixels} > max_pixels {max_pixels}: lower min_pixels or raise max_pixels in the recipe"
        )
    return {"max_pixels": int(max_pixels), "min_pixels": int(min_pixels)}
