"""A checkpoint whose generation_config.json sets every field transformers' GenerationConfig knows to a
non-default value, for the tests that decoding is built from nothing (issue 20 item 1).

The fields are enumerated from ``GenerationConfig()`` itself, so a field a future transformers adds is
covered: ``hostile_generation_config`` raises, naming it, until ``HOSTILE`` gives it a value. Each value
is one that changes what ``generate`` produces (or makes it fail) if it reaches decoding: suppressed and
banned tokens, forced tokens, lengths, penalties, beams, other decoding modes, output formats.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medbridge.harness_ext.decoding import SPECIAL_TOKEN_FIELDS

# Not decoding settings: written by transformers itself.
BOOKKEEPING = ("transformers_version", "_from_model_config")
# Fields a generation_config.json cannot carry at all: transformers refuses the file (checked by
# ``refused_from_a_file``), so no checkpoint can bring them to decoding. compile_config must be a CompileConfig
# object, which JSON cannot hold.
UNLOADABLE = {"compile_config": {"fullgraph": False, "dynamic": True}}


def generation_config_fields() -> list[str]:
    """Every field of this transformers' GenerationConfig, bookkeeping left out."""
    from transformers import GenerationConfig

    return sorted(set(GenerationConfig().to_dict()) - set(BOOKKEEPING))


def _ids(vocab: int, special: set[int], lower: bool) -> list[int]:
    """Half of the ordinary token ids (the lower or the upper half), special tokens left out."""
    half = range(0, vocab // 2) if lower else range(vocab // 2, vocab)
    return [i for i in half if i not in special]


# field -> value, as a function of (vocab size, special token ids). Lower-half ids are suppressed, upper-half
# ids are banned or forced, so no single field empties the whole vocabulary.
HOSTILE: dict[str, Callable[[int, set[int]], Any]] = {
    "do_sample": lambda v, s: True,
    "temperature": lambda v, s: 0.05,
    "top_k": lambda v, s: 1,
    "top_p": lambda v, s: 0.01,
    "min_p": lambda v, s: 0.9,
    "top_h": lambda v, s: 0.3,
    "typical_p": lambda v, s: 0.2,
    "epsilon_cutoff": lambda v, s: 0.0009,
    "eta_cutoff": lambda v, s: 0.0009,
    "repetition_penalty": lambda v, s: 3.0,
    "encoder_repetition_penalty": lambda v, s: 2.0,
    "no_repeat_ngram_size": lambda v, s: 1,
    "encoder_no_repeat_ngram_size": lambda v, s: 1,
    "bad_words_ids": lambda v, s: [[i] for i in _ids(v, s, lower=False)[::2]],
    "force_words_ids": lambda v, s: [[_ids(v, s, lower=False)[1]]],
    "constraints": lambda v, s: [],
    "suppress_tokens": lambda v, s: _ids(v, s, lower=True),
    "begin_suppress_tokens": lambda v, s: _ids(v, s, lower=True)[::3],
    "sequence_bias": lambda v, s: [[[_ids(v, s, lower=False)[3]], 50.0]],
    "forced_bos_token_id": lambda v, s: _ids(v, s, lower=False)[5],
    "forced_eos_token_id": lambda v, s: _ids(v, s, lower=False)[7],
    "decoder_start_token_id": lambda v, s: _ids(v, s, lower=False)[9],
    "exponential_decay_length_penalty": lambda v, s: [1, 3.0],
    "min_length": lambda v, s: 60,
    "min_new_tokens": lambda v, s: 50,
    "max_length": lambda v, s: 3,
    "max_new_tokens": lambda v, s: 2,
    "max_time": lambda v, s: 0.0001,
    "stop_strings": lambda v, s: ["a", "e", "\n"],
    "num_beams": lambda v, s: 3,
    "num_beam_groups": lambda v, s: 3,
    "diversity_penalty": lambda v, s: 1.5,
    "length_penalty": lambda v, s: -4.0,
    "early_stopping": lambda v, s: True,
    "num_return_sequences": lambda v, s: 2,
    "penalty_alpha": lambda v, s: 0.6,
    "dola_layers": lambda v, s: "low",
    "guidance_scale": lambda v, s: 3.0,
    "low_memory": lambda v, s: True,
    "remove_invalid_values": lambda v, s: True,
    "renormalize_logits": lambda v, s: True,
    "token_healing": lambda v, s: True,
    "watermarking_config": lambda v, s: {"greenlist_ratio": 0.5, "bias": 8.0, "hashing_key": 15485863,
                                         "seeding_scheme": "lefthash", "context_width": 1},
    "use_cache": lambda v, s: False,
    "cache_implementation": lambda v, s: "static",
    "cache_config": lambda v, s: {"max_cache_len": 16},
    "max_cache_len": lambda v, s: 16,
    "prefill_chunk_size": lambda v, s: 2,
    "disable_compile": lambda v, s: True,
    "continuous_batching_config": lambda v, s: {"block_size": 8},
    "return_dict_in_generate": lambda v, s: True,
    "output_scores": lambda v, s: True,
    "output_logits": lambda v, s: True,
    "output_attentions": lambda v, s: True,
    "output_hidden_states": lambda v, s: True,
    "num_assistant_tokens": lambda v, s: 3,
    "num_assistant_tokens_schedule": lambda v, s: "heuristic",
    "assistant_confidence_threshold": lambda v, s: 0.1,
    "assistant_lookbehind": lambda v, s: 3,
    "target_lookbehind": lambda v, s: 3,
    "assistant_early_exit": lambda v, s: 1,
    "assistant_ensemble_weight": lambda v, s: 0.5,
    "prompt_lookup_num_tokens": lambda v, s: 3,
    "max_matching_ngram_size": lambda v, s: 2,
    "is_assistant": lambda v, s: True,
    "speculation_type": lambda v, s: "prompt_lookup",
    "use_mtp": lambda v, s: True,
}


def hostile_generation_config(vocab_size: int, special: dict[str, Any]) -> dict[str, Any]:
    """Every GenerationConfig field at a non-default value; the special token ids (the allow-list) as given."""
    fields = [f for f in generation_config_fields() if f not in SPECIAL_TOKEN_FIELDS and f not in UNLOADABLE]
    uncovered = [f for f in fields if f not in HOSTILE]
    if uncovered:
        raise KeyError(f"transformers' GenerationConfig has fields this test gives no value: {uncovered}; add them "
                       "to tests/generation_config_fields.py HOSTILE")
    ids = {int(i) for v in special.values() for i in (v if isinstance(v, list) else [v]) if v is not None}
    config = {f: HOSTILE[f](vocab_size, ids) for f in fields}
    return {**config, **special}


def refused_from_a_file(field: str, folder: Path) -> bool:
    """Whether transformers refuses a generation_config.json that sets ``field`` to its UNLOADABLE value."""
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generation_config.json").write_text(json.dumps({field: UNLOADABLE[field]}))
    try:
        GenerationConfig.from_pretrained(folder)
    except ValueError:
        return True
    return False


def special_tokens_of(model_dir: Path) -> dict[str, Any]:
    config = json.loads((Path(model_dir) / "generation_config.json").read_text())
    return {f: config[f] for f in SPECIAL_TOKEN_FIELDS if f in config}


def vocab_size_of(model_dir: Path) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("text_config", config)["vocab_size"])


def checkpoint_with_generation_config(model_dir: Path, out: Path, generation_config: dict[str, Any]) -> Path:
    """A copy of ``model_dir`` (weights hard-linked when possible) with ``generation_config`` written as is."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in Path(model_dir).iterdir():
        if f.is_file() and f.name != "generation_config.json":
            try:
                (out / f.name).hardlink_to(f)
            except OSError:
                shutil.copy2(f, out / f.name)
    (out / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    return out


def hostile_and_neutral_checkpoints(model_dir: Path, root: Path) -> tuple[Path, Path]:
    """(every field hostile, special token ids only): two copies of one checkpoint."""
    special = special_tokens_of(model_dir)
    hostile = hostile_generation_config(vocab_size_of(model_dir), special)
    return (checkpoint_with_generation_config(model_dir, Path(root) / "hostile", hostile),
            checkpoint_with_generation_config(model_dir, Path(root) / "neutral", special))
