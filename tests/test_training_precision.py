"""fp32 master weights whenever the policy would be loaded in 16 bits, whatever the flags: ``dtype: bfloat16``
with ``bf16: false`` (no autocast) must not train bf16 parameters with bf16 optimizer state."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "training" / "recipes"


def _args(bf16=False, fp16=False, deepspeed=None, mixed_precision="no"):
    return SimpleNamespace(
        bf16=bf16,
        fp16=fp16,
        deepspeed=deepspeed,
        mixed_precision=mixed_precision,
        distributed_state=SimpleNamespace(distributed_type="NO"),
        model_init_kwargs=None,
    )


@pytest.mark.parametrize(
    "requested, args, peft, loaded",
    [
        ("bfloat16", _args(bf16=False), False, "float32"),  # the case the issue found: no autocast, bf16 weights
        ("bfloat16", _args(bf16=True), False, "float32"),  # autocast: fp32 master weights, bf16 forward
        ("float16", _args(fp16=True), False, "float32"),
        ("auto", _args(), False, "float32"),  # the checkpoint's dtype (bf16 for Qwen2.5-VL)
        (None, _args(), False, "float32"),
        ("float32", _args(), False, "float32"),
        ("bfloat16", _args(mixed_precision="bf16"), False, "float32"),  # accelerate's bf16, no DeepSpeed
        ("bfloat16", _args(bf16=True, deepspeed="zero2.json"), False, "bfloat16"),  # ZeRO keeps fp32 masters
        ("bfloat16", _args(deepspeed="zero2.json", mixed_precision="bf16"), False, "bfloat16"),
        ("bfloat16", _args(deepspeed="zero2.json"), False, "float32"),  # DeepSpeed without mixed precision
        ("bfloat16", _args(), True, "bfloat16"),  # PEFT: frozen bf16 base, fp32 adapters
    ],
)
def test_policy_dtype_rule(requested, args, peft, loaded, caplog):
    from medbridge.training.model_utils import fp32_master_kwargs

    kwargs = {"attn_implementation": "sdpa"} | ({} if requested is None else {"dtype": requested})
    with caplog.at_level(logging.WARNING):
        out = fp32_master_kwargs(kwargs, args, peft=peft)
    assert out.get("dtype", "float32") == loaded and out["attn_implementation"] == "sdpa"
    assert kwargs.get("dtype") == requested  # the caller's dict is not changed
    # Said when a requested 16-bit dtype is replaced; nothing to say for an unset one (TRL's default is fp32).
    replaced = requested not in (None, "float32") and loaded != requested
    assert ("loading the policy in float32" in caplog.text) == replaced


def test_recipe_model_init_kwargs_cannot_undo_the_rule():
    from medbridge.training.model_utils import policy_init_kwargs

    model_args = SimpleNamespace(model_revision=None, attn_implementation=None, dtype="float32", use_peft=False)
    assert policy_init_kwargs(model_args, _args(), {"dtype": "bfloat16"})["dtype"] == "float32"


def test_a_loaded_16bit_policy_is_cast_to_fp32():
    import torch
    from medbridge.training.model_utils import fp32_master_policy

    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    assert next(fp32_master_policy(model, _args()).parameters()).dtype == torch.float32
    kept = torch.nn.Linear(4, 4).to(torch.bfloat16)
    assert next(fp32_master_policy(kept, _args(bf16=True, deepspeed="z.json")).parameters()).dtype == torch.bfloat16
    args = _args()
    args.model_init_kwargs = {"dtype": "bfloat16"}
    assert fp32_master_policy("some/path", args) == "some/path" and args.model_init_kwargs == {"dtype": "float32"}


@pytest.fixture(scope="module")
def medmnist_root(tmp_path_factory):
    from medbridge.tasks.medmnist.catalog import get_set
    from medbridge.tasks.medmnist.fixtures import build_medmnist_fixture

    root = tmp_path_factory.mktemp("medmnist")
    build_medmnist_fixture(get_set("breastmnist"), root, {"train": 4, "val": 1, "test": 2}, 0)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["care", "sft"])
def test_bfloat16_recipe_without_bf16_trains_fp32_weights_and_optimizer_state(
    kind, tiny_model_dir, medmnist_root, tmp_path, monkeypatch
):
    """The recipe says dtype bfloat16 (and model_init_kwargs bfloat16) with bf16 false: after one optimizer
    step the policy, its gradients' optimizer moments and (CARE) the EMA reference are fp32."""
    import torch
    from medbridge.training.configs import parse_recipe

    monkeypatch.setenv("MEDBRIDGE_MEDMNIST_ROOT", str(medmnist_root))
    argv = [
        "--config", str(RECIPES / f"tiny_cpu_{kind}.yaml"),
        "--model_name_or_path", str(tiny_model_dir),
        "--output_dir", str(tmp_path / "out"),
        "--ckpt_eval", "false", "--save_strategy", "no", "--max_steps", "1",
        "--dtype", "bfloat16", "--bf16", "false",
        "--model_init_kwargs", '{"dtype": "bfloat16"}',
    ]  # fmt: skip
    script, cfg, model_args = parse_recipe(kind, argv)
    assert model_args.dtype == "bfloat16" and cfg.bf16 is False
    if kind == "sft":
        from medbridge.training.sft import build_sft_trainer

        trainer = build_sft_trainer(script, cfg, model_args)
    else:
        from medbridge.training.grpo import build_trainer

        trainer = build_trainer(kind, script, cfg, model_args)
    trainer.train()
    dtypes = {p.dtype for p in trainer.model.parameters()}
    moments = {
        t.dtype for state in trainer.optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.dim()
    }
    print(f"{kind}: parameters {dtypes}, optimizer state {moments}")
    assert dtypes == {torch.float32} and moments == {torch.float32}
    if kind == "care":
        assert {p.dtype for p in trainer.care_ref_model.parameters()} == {torch.float32}
        assert {t.dtype for t in trainer.care_ema.shadow} == {torch.float32}
