"""A tiny random text-only judge model (Qwen2 architecture) for serving tests.

It reuses the tokenizer and chat template of ``medbridge.tiny_model`` (trained locally, no
download) and puts a 2-layer Qwen2ForCausalLM with head_dim 32 behind it, the smallest head size
vLLM's CPU backend accepts. A text model needs no torchvision in the vLLM venv and starts faster
than the VLM. Its replies are noise, which is exactly what the invalid-verdict tests want.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

TINY_JUDGE_VERSION = "1"
MARKER = "medbridge_tiny_judge.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja",
                    "generation_config.json")


def build_tiny_judge(out_dir: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the tiny judge checkpoint into ``out_dir`` (skipped when a complete one is there)."""
    out = Path(out_dir)
    marker = out / MARKER
    if marker.exists() and not overwrite:
        info = json.loads(marker.read_text())
        if info.get("version") == TINY_JUDGE_VERSION and info.get("seed") == seed:
            return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from medbridge.tiny_model import build_tiny_qwen2_5_vl

    with tempfile.TemporaryDirectory(prefix="medbridge-tiny-judge-") as tmp:
        vl_dir = build_tiny_qwen2_5_vl(Path(tmp) / "vl", seed=seed)
        vl_config = json.loads((vl_dir / "config.json").read_text())
        text = vl_config.get("text_config", vl_config)
        work = Path(tmp) / "judge"
        work.mkdir()
        for name in _TOKENIZER_FILES:
            if (vl_dir / name).exists():
                shutil.copy(vl_dir / name, work / name)
        config = Qwen2Config(
            vocab_size=text["vocab_size"],
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,  # head_dim 32
            num_key_value_heads=1,
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=text.get("bos_token_id"),
            eos_token_id=text.get("eos_token_id", vl_config.get("eos_token_id")),
            pad_token_id=text.get("pad_token_id", vl_config.get("pad_token_id")),
        )
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
        model.save_pretrained(work, safe_serialization=True)
        (work / MARKER).write_text(json.dumps({"version": TINY_JUDGE_VERSION, "seed": seed}))
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(work, out)
    return out


if __name__ == "__main__":
    import sys

    print(build_tiny_judge(sys.argv[1] if len(sys.argv) > 1 else "tiny-judge"))
