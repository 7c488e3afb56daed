"""Build a tiny, random-weight Qwen2.5-VL checkpoint laid out like a real Hub checkpoint.

The checkpoint is meant for offline tests and demos: it loads through
``AutoProcessor`` / ``Qwen2_5_VLForConditionalGeneration.from_pretrained``, through
lmms-eval's ``qwen2_5_vl`` backend, through TRL, and (with head_dim 32) through a
vLLM CPU server.  Its outputs are noise (the same newlines for every prompt); only the plumbing is real.
With ``fine_tune=True`` (``--fine-tune``) it is then trained for a few seconds (medbridge/tiny_finetune.py)
so that it answers ``<answer>X</answer>`` with a letter read from the image: answers that depend on the
item, for tests that compare two ways of producing them. ``cached_tiny_qwen2_5_vl`` keeps builds in a
folder per content key (builder sources, library versions, seed), for test sessions.

What gets written into ``out_dir``:

* ``config.json`` / ``generation_config.json`` / ``model.safetensors`` (float32),
* a byte-level BPE tokenizer trained here on a generated corpus
  (``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json``, ``merges.txt``),
* the image/video processor configs and ``chat_template.jinja``, plus ``preprocessor_config.json`` in
  the flat form real Qwen2.5-VL checkpoints ship (``min_pixels`` / ``max_pixels``, patch and merge
  sizes), which older loaders and vLLM read,
* ``medbridge_tiny_model.json``, a marker with the builder version and seed (and, when fine-tuned, the
  fine-tune's version, settings and losses); it is written last, so its presence means the build finished.

Configs follow the real checkpoints (Qwen/Qwen2.5-VL-7B-Instruct) except where CPU speed needs
otherwise: ``generation_config.json`` holds the real sampling defaults (do_sample, temperature 0.1,
top_p 0.001, top_k 1, repetition_penalty 1.05), so tests see what a real checkpoint would impose on a
backend that does not set every decoding field; the pixel limits are the real ``min_pixels`` (3136) but
a ``max_pixels`` of 224x224 = 50176 instead of the real 12845056, so a MedMNIST image is 64 image tokens
and anything larger is shrunk (a real checkpoint would keep up to 3584x3584).

The command lives here too: ``add_parser`` declares ``medbridge build-tiny-model`` (medbridge/cli.py
registers it) and ``main`` runs it alone as ``python -m medbridge.tiny_model``, both through
medbridge/cli_run.py (the guarded run, the path alone on stdout).

Heavy libraries (torch, transformers, tokenizers) are imported lazily so that importing
this module (e.g. from the CLI) stays cheap.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from medbridge.cli_args import SEED_MAX, int_range
from medbridge.cli_run import folder_to_write, run_command, stdout_for_the_result_only
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.tiny_tokenizer import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    build_tokenizer,
    finalize_tokenizer_config,
)

# 2: generation_config carries the Qwen2.5-VL sampling defaults; 3: preprocessor_config.json as real checkpoints
TINY_MODEL_VERSION = "3"
MARKER_FILENAME = "medbridge_tiny_model.json"


class OutputFolderError(MedbridgeError, FileExistsError):
    """``out_dir`` is a file, or a folder with other content we must not replace."""

# The model's embedding table is padded up to a multiple of this (as Qwen does).
VOCAB_MULTIPLE = 64

# Image geometry: 14px patches, 2x2 merge -> one LLM token per 28x28 pixels.
# A 224x224 image -> 16x16 = 256 patches -> 64 image tokens.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 56 * 56  # 3136, as the real checkpoints
MAX_PIXELS = 224 * 224  # 50176 (real: 12845056): anything bigger is shrunk, keeping CPU runs fast

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim = 32 (vLLM's smallest supported head size)
    "num_key_value_heads": 1,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.02,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 2,
    "attention_dropout": 0.0,
    "use_cache": True,
    # mrope splits head_dim/2 = 16 rotary frequencies over (temporal, height, width).
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
}

VISION_CONFIG: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "hidden_act": "silu",
    "in_channels": 3,
    "out_hidden_size": 64,  # must equal the text hidden size
    "patch_size": PATCH_SIZE,
    "spatial_merge_size": MERGE_SIZE,
    "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    "window_size": 112,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
    "initializer_range": 0.02,
}


# Files that must exist for a build to count as complete (besides the marker).
REQUIRED_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


# --------------------------------------------------------------------------------------
# Model / processor
# --------------------------------------------------------------------------------------


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _make_config(tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(TEXT_CONFIG)
    text.update(
        vocab_size=_round_up(len(tokenizer), VOCAB_MULTIPLE),
        bos_token_id=ids[PAD_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
        tie_word_embeddings=True,
        rope_parameters=dict(TEXT_CONFIG["rope_parameters"]),
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(VISION_CONFIG),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    config.dtype = "float32"
    return config


def _make_generation_config(tokenizer):
    from transformers import GenerationConfig

    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    # The sampling defaults every Qwen2.5-VL checkpoint ships in generation_config.json: a backend that
    # leaves any of them in place (top_k 1 above all) turns Pass@K into K copies of one answer.
    return GenerationConfig(
        bos_token_id=pad,
        eos_token_id=[eos, pad],
        pad_token_id=pad,
        do_sample=True,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
        repetition_penalty=1.05,
    )


def _make_processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor

    geometry = {
        "patch_size": PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    }
    image_processor = Qwen2VLImageProcessor(**geometry)
    try:
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(**geometry)
    except ImportError:  # pragma: no cover - video processors need torchvision
        video_processor = None
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _make_model(config, seed: int):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    # Seed a forked RNG so building does not disturb the caller's torch random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.eval()
    return model


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _current_fine_tune_version() -> str:
    from medbridge.tiny_finetune import FINE_TUNE_VERSION

    return FINE_TUNE_VERSION


def _fine_tune_version(marker: dict) -> str | None:
    record = marker.get("fine_tune")
    return str(record.get("version")) if isinstance(record, dict) else None


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete_checkpoint(path: str | Path, seed: int | None = None, fine_tune: bool | None = None) -> bool:
    """True if ``path`` holds a finished build of this builder version (and ``seed``, and fine-tuned
    or not as ``fine_tune`` asks; ``None`` accepts either)."""
    path = Path(path)
    marker = _read_marker(path)
    if not isinstance(marker, dict) or marker.get("builder_version") != TINY_MODEL_VERSION:
        return False
    if seed is not None and marker.get("seed") != seed:
        return False
    if fine_tune is not None and _fine_tune_version(marker) != (_current_fine_tune_version() if fine_tune else None):
        return False
    if not all((path / name).is_file() for name in REQUIRED_FILES):
        return False
    return (path / "processor_config.json").is_file() or (path / "preprocessor_config.json").is_file()


def build_tiny_qwen2_5_vl(
    out_dir: str | Path, seed: int = 0, overwrite: bool = False, *, fine_tune: bool = False
) -> Path:
    """Write a tiny random-weight Qwen2.5-VL checkpoint into ``out_dir`` and return it.

    ``fine_tune``: then train it briefly (medbridge/tiny_finetune.py, seconds on one core) so that its
    greedy answers depend on the item (``<answer>X</answer>`` with a letter read from the image) instead
    of being the same newlines for every prompt; configs, tokenizer and processor stay the same.

    Idempotent: if ``out_dir`` already holds a complete build with the same builder version,
    seed and ``fine_tune``, nothing is rebuilt (unless ``overwrite``).  Builds are deterministic per seed.
    The build happens in a temporary sibling directory that is renamed into place, so an
    interrupted build never leaves a half-written checkpoint behind.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if not overwrite and is_complete_checkpoint(out_dir, seed, fine_tune):
        return out_dir
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputFolderError(f"{out_dir} exists and is not a directory; pass a folder path")
        if any(out_dir.iterdir()) and not (out_dir / MARKER_FILENAME).exists():
            # Never delete a directory we did not create, unless asked to and it is at
            # least a model checkpoint (guards against e.g. ``--out . --overwrite``).
            if not overwrite:
                raise OutputFolderError(
                    f"{out_dir} is not empty and was not built by medbridge; pass overwrite to replace it"
                )
            if not (out_dir / "config.json").exists():
                raise OutputFolderError(
                    f"{out_dir} is a non-empty directory that is not a model checkpoint; refusing to replace it"
                )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _build_into(work, seed, fine_tune)
        if out_dir.exists():
            if not overwrite and is_complete_checkpoint(out_dir, seed, fine_tune):
                # Another process finished the same build first; keep theirs.
                shutil.rmtree(work, ignore_errors=True)
                return out_dir
            shutil.rmtree(out_dir)
        try:
            os.replace(work, out_dir)
        except OSError:
            if is_complete_checkpoint(out_dir, seed, fine_tune):
                shutil.rmtree(work, ignore_errors=True)
                return out_dir
            raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


# What a fine-tuned build reads besides this module and the tokenizer's: its training items come from the
# kit's fixture generators, catalogs and prompt layout.
_FINE_TUNE_SOURCES = (
    "medbridge.tiny_finetune",
    "medbridge.harness_ext.prompts",
    "medbridge.tasks.medmnist.catalog",
    "medbridge.tasks.medmnist.data",
    "medbridge.tasks.medmnist.fixtures",
    "medbridge.tasks.medvqa.catalog",
    "medbridge.tasks.medvqa.fixtures",
)


def builder_key(seed: int = 0, fine_tune: bool = False) -> str:
    """A content key for a build: the builder's source files, the libraries that compute the weights, the seed.

    Two builds with the same key are byte-identical (builds are deterministic), so a cache may reuse one;
    any edit to the builder, its training items or a library version gives a new key."""
    import hashlib
    import importlib.util
    from importlib.metadata import version

    names = ("medbridge.tiny_model", "medbridge.tiny_tokenizer") + (_FINE_TUNE_SOURCES if fine_tune else ())
    digest = hashlib.sha256(f"{TINY_MODEL_VERSION}:{seed}:{fine_tune}".encode())
    for library in ("torch", "transformers", "tokenizers", "numpy", "pillow"):
        digest.update(f"{library}={version(library)};".encode())
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"cannot find the source of {name} for the tiny model's content key")
        digest.update(name.encode() + b"\0" + Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


def cached_tiny_qwen2_5_vl(cache_root: str | Path, seed: int = 0, *, fine_tune: bool = False) -> Path:
    """The checkpoint of ``build_tiny_qwen2_5_vl(seed=..., fine_tune=...)`` in ``cache_root/<content key>``.

    Built once per key (a file lock makes concurrent callers wait for the first build instead of
    repeating it), then reused: for test sessions, which would otherwise rebuild it every time."""
    from filelock import FileLock

    root = Path(cache_root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    name = f"tiny-qwen2.5-vl-{'fine-tuned' if fine_tune else 'random'}-seed{seed}-{builder_key(seed, fine_tune)}"
    with FileLock(str(root / f"{name}.lock")):
        return build_tiny_qwen2_5_vl(root / name, seed=seed, fine_tune=fine_tune)


def _build_into(work: Path, seed: int, fine_tune: bool = False) -> None:
    tokenizer, backend = build_tokenizer(work)
    processor = _make_processor(tokenizer)
    config = _make_config(tokenizer)
    model = _make_model(config, seed)
    trained = None
    if fine_tune:
        from medbridge.tiny_finetune import FineTuneSettings
        from medbridge.tiny_finetune import fine_tune as train

        # A copy: padding a batch leaves its settings in the tokenizer, which would then be saved.
        trained = train(model, copy.deepcopy(processor), FineTuneSettings(seed=seed))
    model.generation_config = _make_generation_config(tokenizer)
    _save_quietly(model, work)
    # Saving the processor re-saves the tokenizer (and drops our tokenizer_config edits).
    processor.save_pretrained(work)
    finalize_tokenizer_config(work, backend)
    _add_legacy_config_keys(work / "config.json")
    _write_flat_preprocessor_config(work)
    marker = {
        "builder": "medbridge.tiny_model.build_tiny_qwen2_5_vl",
        "builder_version": TINY_MODEL_VERSION,
        "seed": seed,
        "architecture": "Qwen2_5_VLForConditionalGeneration",
        "vocab_size": config.text_config.vocab_size,
        "tokenizer_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "fine_tune": trained,
    }
    (work / MARKER_FILENAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    # mkdtemp makes a 0700 directory; give the checkpoint ordinary permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)
    for child in work.iterdir():
        os.chmod(child, 0o666 & ~umask)


def _save_quietly(model, path: Path) -> None:
    """save_pretrained without transformers' one-shard progress bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _add_legacy_config_keys(config_path: Path) -> None:
    """Duplicate a few settings under their pre-v5 names for older loaders (e.g. vLLM).

    transformers 5 writes ``rope_parameters`` / ``dtype``; older Qwen2.5-VL loaders look
    for ``rope_scaling`` (with ``mrope_section``), ``rope_theta`` and ``torch_dtype``.
    transformers 5 reads these aliases back to the same values.
    """
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    text = cfg["text_config"]
    rope = text.get("rope_parameters") or {}
    text.setdefault("rope_theta", rope.get("rope_theta", 1000000.0))
    # Same content as rope_parameters, so transformers 5 reads back an identical config.
    text.setdefault("rope_scaling", dict(rope))
    cfg.setdefault("torch_dtype", cfg.get("dtype", "float32"))
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_flat_preprocessor_config(work: Path) -> None:
    """``preprocessor_config.json`` as the real checkpoints ship it (flat, with min/max_pixels).

    transformers 5 saves the image processor inside ``processor_config.json``; vLLM, older
    transformers and lmms-eval's ``min_pixels``/``max_pixels`` overrides read this file. Both files
    state the same limits (``size`` is transformers 5's name for them)."""
    nested = json.loads((work / "processor_config.json").read_text(encoding="utf-8"))["image_processor"]
    flat = {
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "image_mean": nested["image_mean"],
        "image_std": nested["image_std"],
        "image_processor_type": nested["image_processor_type"],
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (work / "preprocessor_config.json").write_text(json.dumps(flat, indent=2) + "\n", encoding="utf-8")


def _cmd_build_tiny_model(args: argparse.Namespace) -> int:
    with stdout_for_the_result_only():
        path = build_tiny_qwen2_5_vl(folder_to_write(args.out, "--out"), seed=args.seed, overwrite=args.overwrite,
                                     fine_tune=args.fine_tune)
    print(path)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``medbridge build-tiny-model`` (medbridge/cli.py registers it; ``main`` below runs it alone)."""
    p = sub.add_parser("build-tiny-model", help="write a tiny random-weight Qwen2.5-VL checkpoint")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--seed", type=int_range(0, SEED_MAX), default=0,
                   help="weight-initialisation seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="rebuild even when a matching checkpoint is there")
    p.add_argument("--fine-tune", action="store_true",
                   help="train it briefly so its answers depend on the item: <answer>X</answer>, the letter read "
                        "from the image (about 10 s more CPU)")
    p.set_defaults(func=_cmd_build_tiny_model)


def _build_tiny_model_parser() -> argparse.ArgumentParser:
    """The `medbridge` parser with this one command: ``python -m medbridge.tiny_model ARGS`` parses
    ``build-tiny-model ARGS`` as the full command does (same help, names in messages, log line)."""
    parser = argparse.ArgumentParser(prog="medbridge")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m medbridge.tiny_model ARGS`` is ``medbridge build-tiny-model ARGS``: one parser, the same
    checks and errors, and the path alone on stdout (what libraries print while building goes to stderr)."""
    return run_command(_build_tiny_model_parser, ["build-tiny-model", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
