"""The trainers on the CPU with the tiny random Qwen2.5-VL and MedMNIST-format fixtures:
GRPO-CARE's consistency and bonus inside the real trainer, GRPO / CARE / SFT steps with checkpoints
that reload, a learning test on a dense reward, and the tiny recipe end to end (two checkpoints,
each evaluated by lmms-eval in its own process and added to the leaderboard)."""

import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

# Every test here trains or evaluates the tiny model (tens of seconds each): out of the fast lane.
pytestmark = pytest.mark.slow

RECIPES = Path(__file__).resolve().parents[1] / "training" / "recipes"


def parse_recipe(kind: str, argv: list[str]):
    from medbridge.training.configs import parse_recipe as parse  # TRL: imported by the tests that run

    return parse(kind, argv)
CPU = ["--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--dataloader_num_workers", "0"]


@pytest.fixture(scope="module")
def medmnist_root(tmp_path_factory):
    from medbridge.tasks.medmnist.catalog import get_set
    from medbridge.tasks.medmnist.fixtures import build_medmnist_fixture

    root = tmp_path_factory.mktemp("medmnist")
    build_medmnist_fixture(get_set("breastmnist"), root, {"train": 4, "val": 1, "test": 2}, 0)
    return root


@pytest.fixture(autouse=True)
def _offline(monkeypatch, medmnist_root):
    monkeypatch.setenv("MEDBRIDGE_MEDMNIST_ROOT", str(medmnist_root))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def _recipe_args(recipe: str, model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(RECIPES / recipe),
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--ckpt_eval",
        "false",
        *CPU,
        *extra,
    ]


@pytest.fixture(scope="module")
def care_trainer(tiny_model_dir, medmnist_root, tmp_path_factory):
    os.environ["MEDBRIDGE_MEDMNIST_ROOT"] = str(medmnist_root)
    from medbridge.training.grpo import build_trainer

    out = tmp_path_factory.mktemp("care-unit")
    script, cfg, model = parse_recipe("care", _recipe_args("tiny_cpu_care.yaml", tiny_model_dir, out))
    trainer = build_trainer("care", script, cfg, model)
    trainer.model.train()
    return trainer


def _group(trainer, answers: list[str]):
    from trl.data_utils import prepare_multimodal_messages

    row = trainer.train_dataset[0]
    prompt = prepare_multimodal_messages(row["prompt"], images=[row["image"]])
    inputs = [dict(row) for _ in answers]
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    return row, [prompt] * len(answers), inputs, completions


def _sampled_ids(trainer, completions) -> list[list[int]]:
    """Token ids as the policy would have sampled them (ending in the end-of-turn token)."""
    tok = trainer.processing_class.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    return [tok(c[0]["content"], add_special_tokens=False)["input_ids"] + [end] for c in completions]


def test_care_consistency_matches_a_direct_reference_forward(care_trainer):
    import torch
    from trl.data_utils import apply_chat_template

    trainer = care_trainer
    row, prompts, _, completions = _group(
        trainer, ["<think>the image is bright</think><answer>B</answer>", "no tags at all"]
    )
    forwards = trainer.care_reference_forwards
    c = trainer._care_consistency(prompts, _sampled_ids(trainer, completions), [row["options"]] * 2)
    assert math.isnan(c[1].item())  # no answer tag -> no consistency -> no bonus
    assert trainer.care_reference_forwards == forwards + 2  # ... but a forward all the same (same count on every rank)
    # Independent computation: one forward of the reference over prompt + completion text.
    text = completions[0][0]["content"]
    proc = trainer.processing_class
    prompt_text = apply_chat_template({"prompt": prompts[0]}, proc)["prompt"]
    full = proc(text=[prompt_text + text], images=[row["image"]], return_tensors="pt")
    n_prompt = proc(text=[prompt_text], images=[row["image"]], return_tensors="pt")["input_ids"].shape[1]
    ids = full["input_ids"][0]
    with torch.no_grad():
        logits = trainer.care_ref_model(**full).logits[0].float()
    logps = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[1:, None])[:, 0]
    # Tokens of the completion that cover the letter, found by decoding prefixes (no offset mapping).
    comp_ids = ids[n_prompt:].tolist()
    assert proc.tokenizer.decode(comp_ids) == text
    letter_at = text.index("<answer>") + len("<answer>")
    ends = [len(proc.tokenizer.decode(comp_ids[: k + 1])) for k in range(len(comp_ids))]
    starts = [0] + ends[:-1]
    pos = [
        k for k in range(len(comp_ids)) if starts[k] <= letter_at < ends[k] or letter_at <= starts[k] < letter_at + 1
    ]
    assert pos
    expected = min(math.exp(sum(logps[n_prompt + k - 1].item() for k in pos) / len(pos)), 0.95)
    assert c[0].item() == pytest.approx(expected, rel=1e-4)
    assert 0.0 < c[0].item() < 0.95


def test_care_bonus_is_added_after_gathering_inside_the_trainer(care_trainer):
    trainer = care_trainer
    row, prompts, inputs, completions = _group(
        trainer,
        [
            "<think>first look</think><answer>{a}</answer>",
            "<think>a quite different and longer look at it</think><answer>{a}</answer>",
            "<think>x</think><answer>{w}</answer>",
            "I cannot tell",
        ],
    )
    right = row["answer_letter"]
    wrong = next(k for k in json.loads(row["options"]) if k != right)
    for comp in completions:
        comp[0]["content"] = comp[0]["content"].format(a=right, w=wrong)
    ids = _sampled_ids(trainer, completions)
    rewards = trainer._calculate_rewards(inputs, prompts, completions, ids)
    names = trainer.reward_func_names
    assert names == ["accuracy_reward", "format_reward", "care_bonus"]
    assert rewards[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert rewards[:, 1].tolist() == [1.0, 1.0, 1.0, 0.0]
    c = trainer._care_consistency(prompts, ids, [row["options"]] * 4)
    assert c[0] != c[1]
    best = 0 if c[0] > c[1] else 1
    expected = [0.0] * 4
    expected[best] = trainer.args.care_bonus_coef  # only the more consistent of the two accurate answers
    assert rewards[:, 2].tolist() == expected
    assert trainer._metrics["train"]["care/bonus_frac"][-1] == pytest.approx(0.25)


def test_care_trainer_owns_an_ema_reference(care_trainer):
    import torch

    trainer = care_trainer
    assert trainer.ref_model is None  # TRL loads none at beta = 0
    ref, policy = trainer.care_ref_model, trainer.model
    assert ref is not policy and not any(p.requires_grad for p in ref.parameters())
    p_ref = next(ref.parameters())
    p_pol = next(policy.parameters())
    assert p_ref.data_ptr() != p_pol.data_ptr()
    torch.testing.assert_close(p_ref, p_pol)  # a copy of the starting policy


def test_grpo_and_care_steps_save_checkpoints_that_reload(tiny_model_dir, tmp_path):
    from medbridge.training.grpo import run_training
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "care"
    trainer = run_training(
        "care", _recipe_args("tiny_cpu_care.yaml", tiny_model_dir, out, "--max_steps", "2", "--learning_rate", "1e-3")
    )
    assert trainer.state.global_step == 2
    assert trainer.care_ema_updates == 2  # interval 1 in the tiny recipe
    history = [h for h in trainer.state.log_history if "reward" in h]
    assert len(history) == 2 and all("rewards/care_bonus/mean" in h for h in history)
    for step in (1, 2):
        ckpt = out / f"checkpoint-{step}"
        model = AutoModelForImageTextToText.from_pretrained(ckpt)
        AutoProcessor.from_pretrained(ckpt)
        assert sum(p.numel() for p in model.parameters()) > 0
    marker = json.loads((out / "medbridge_training.json").read_text())
    assert marker["trainer"] == "care" and marker["loss_type"] == "grpo" and marker["trained_on"] == "breastmnist/train"

    out = tmp_path / "grpo"
    trainer = run_training("grpo", _recipe_args("tiny_cpu_grpo.yaml", tiny_model_dir, out, "--max_steps", "1"))
    assert trainer.state.global_step == 1 and (out / "checkpoint-1" / "model.safetensors").is_file()


def test_sft_bridge_steps_and_the_result_starts_grpo(tiny_model_dir, tmp_path):
    from medbridge.training.grpo import run_training
    from medbridge.training.sft import run_sft

    out = tmp_path / "sft"
    trainer = run_sft(_recipe_args("tiny_cpu_sft.yaml", tiny_model_dir, out))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    # "bridge, then sharpen": GRPO starts from the SFT output folder.
    grpo = run_training("grpo", _recipe_args("tiny_cpu_grpo.yaml", out, tmp_path / "grpo", "--max_steps", "1"))
    assert grpo.state.global_step == 1


def test_policy_climbs_a_dense_reward(tiny_model_dir, medmnist_root, tmp_path):
    """A random model earns no accuracy, so learning is checked on a reward it can climb: the share
    of completion tokens from the lower half of the vocabulary. Means over several steps, with a margin."""
    from medbridge.training.data import medmnist_dataset
    from medbridge.training.model_utils import load_processor
    from trl import GRPOTrainer

    # TRL's clipping and decay (1, 0): at this toy learning rate the recipes' official 5 / 0.01 overshoot.
    _, cfg, _ = parse_recipe(
        "grpo",
        _recipe_args(
            "tiny_cpu_grpo.yaml",
            tiny_model_dir,
            tmp_path / "learn",
            "--max_steps",
            "12",
            "--learning_rate",
            "5e-2",
            "--save_strategy",
            "no",
            "--per_device_train_batch_size",
            "4",
            "--max_completion_length",
            "8",
            "--max_grad_norm",
            "1.0",
            "--weight_decay",
            "0.0",
        ),
    )
    processor = load_processor(str(tiny_model_dir), max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels)
    half = len(processor.tokenizer) // 2

    def low_token_share(completion_ids, **kwargs):
        return [sum(t < half for t in ids) / max(len(ids), 1) for ids in completion_ids]

    dataset = medmnist_dataset(["breastmnist"], root=medmnist_root, per_class=4, seed=0)
    trainer = GRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[low_token_share],
        args=cfg,
        train_dataset=dataset,
        processing_class=processor,
    )
    trainer.train()
    curve = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    print("dense reward curve:", [round(r, 3) for r in curve])
    assert len(curve) == 12
    first, last = sum(curve[:4]) / 4, sum(curve[-4:]) / 4
    # Seen here: about 0.5 (chance) over the first four steps, above 0.9 over the last four.
    assert last > first + 0.2, curve
    assert min(curve[-4:]) > max(curve[:4]) - 0.05, curve  # a level shift, not one lucky step


@pytest.mark.e2e
def test_tiny_recipe_puts_every_checkpoint_on_the_leaderboard(tiny_model_dir, medmnist_root, tmp_path):
    out, store = tmp_path / "run", tmp_path / "leaderboard.sqlite"
    env = dict(
        os.environ,
        MEDBRIDGE_MEDMNIST_ROOT=str(medmnist_root),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    cmd = [
        sys.executable,
        "-m",
        "medbridge.cli",
        "train",
        "care",
        "--config",
        str(RECIPES / "tiny_cpu_care.yaml"),
        "--model_name_or_path",
        str(tiny_model_dir),
        "--output_dir",
        str(out),
        "--leaderboard_store",
        str(store),
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (out / "evaluations" / "evaluations.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2], records
    # The evaluations ran after the trainer gave back its memory: the same process id (exec), far less held.
    trainer = re.search(r"trainer pid (\d+), resident memory ([\d.]+) MiB", proc.stdout)
    assert trainer, proc.stdout[-3000:]
    print("before hand-over:", trainer.group(0), "| evaluator MiB:", [r["evaluator_rss_mib_before"] for r in records])
    for r in records:
        assert "error" not in r, r
        assert r["evaluator_pid"] == int(trainer.group(1))
        # Seen here: 999 MiB in the trainer, 765 in the evaluator (its libraries; the models are gone).
        assert r["evaluator_rss_mib_before"] < float(trainer.group(2))
        results = json.loads(Path(r["results"]).read_text())
        assert "medmnist_mcq_breast" in results["results"]
        assert r["leaderboard_rows"] > 0
        # The command says where each checkpoint's results and leaderboard rows went.
        assert (
            f"checkpoint-{r['step']}: results {r['results']}; leaderboard {store.resolve()}: "
            f"{r['leaderboard_rows']} row(s) (run tiny-cpu-care, step {r['step']})"
        ) in proc.stdout
    with sqlite3.connect(store) as conn:
        runs = sorted(conn.execute("SELECT run, step FROM runs").fetchall())
        trained_on = {row[0] for row in conn.execute("SELECT trained_on FROM runs")}
    assert runs == [("tiny-cpu-care", 1), ("tiny-cpu-care", 2)]
    assert trained_on == {"breastmnist/train"}


# ------------------------------------------------------------------------------------------------
# Exact resume
# ------------------------------------------------------------------------------------------------


def _care_run(tiny_model_dir, medmnist_root, out: Path, *extra: str, stop_at: int | None = None):
    """A tiny CARE run whose reward moves the weights: 'accuracy' is the share of low-vocabulary tokens."""
    from medbridge.training.care import GRPOCareTrainer
    from medbridge.training.data import medmnist_dataset
    from medbridge.training.model_utils import load_processor
    from transformers import TrainerCallback

    _, cfg, _ = parse_recipe(
        "care",
        _recipe_args(
            "tiny_cpu_care.yaml",
            tiny_model_dir,
            out,
            "--max_steps",
            "4",
            "--save_steps",
            "2",
            "--learning_rate",
            "1e-2",
            "--lr_scheduler_type",
            "linear",
            "--per_device_train_batch_size",
            "4",
            "--max_completion_length",
            "8",
            "--care_ema_interval",
            "1",
            "--care_ema_decay",
            "0.9",
            "--reward_names",
            "accuracy",
            "--seed",
            "3",
            *extra,
        ),
    )
    processor = load_processor(str(tiny_model_dir), max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels)
    half = len(processor.tokenizer) // 2

    def accuracy(completion_ids, **kwargs):
        return [sum(t < half for t in ids) / max(len(ids), 1) for ids in completion_ids]

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop_at is not None and state.global_step >= stop_at:
                control.should_training_stop = True

    dataset = medmnist_dataset(["breastmnist"], root=medmnist_root, per_class=4, seed=0)
    return GRPOCareTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[accuracy],
        args=cfg,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[StopAt()],
    )


def test_care_resume_gives_the_same_policy_and_ema_reference(tiny_model_dir, medmnist_root, tmp_path):
    """4 steps straight == 2 steps, stop, resume from checkpoint-2 to 4: policy weights, optimizer and
    scheduler (through the weights they produce), the EMA reference and its update counter."""
    from transformers import AutoModelForImageTextToText

    straight = _care_run(tiny_model_dir, medmnist_root, tmp_path / "straight")
    straight.train()
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(straight.model.parameters(), base.parameters()))
    assert moved > 1e-3  # the reward really moved the weights

    first = _care_run(tiny_model_dir, medmnist_root, tmp_path / "split", stop_at=2)
    first.train()
    assert first.state.global_step == 2 and (tmp_path / "split" / "checkpoint-2" / "care_ema.pt").is_file()
    resumed = _care_run(tiny_model_dir, medmnist_root, tmp_path / "split")
    resumed.train(resume_from_checkpoint=str(tmp_path / "split" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    assert resumed.care_ema_updates == straight.care_ema_updates == 4

    policy_gap = max(
        (a - b).abs().max().item() for a, b in zip(straight.model.parameters(), resumed.model.parameters())
    )
    ema_gap = max((a - b).abs().max().item() for a, b in zip(straight.care_ema.shadow, resumed.care_ema.shadow))
    ref_gap = max(
        (a - b).abs().max().item()
        for a, b in zip(straight.care_ref_model.parameters(), resumed.care_ref_model.parameters())
    )
    print(
        f"resume: policy moved {moved:.3g}; straight vs resumed: policy {policy_gap:.3g}, "
        f"EMA {ema_gap:.3g}, ref {ref_gap:.3g}"
    )
    # Seen here: all three 0 (bit-identical on the CPU); the tolerance leaves room for other kernels.
    assert max(policy_gap, ema_gap, ref_gap) <= 1e-3 * moved
    rewards_straight = [h["reward"] for h in straight.state.log_history if "reward" in h]
    rewards_resumed = [h["reward"] for h in resumed.state.log_history if "reward" in h]
    assert rewards_resumed[-2:] == pytest.approx(rewards_straight[-2:], abs=1e-6)  # same samples after the resume

    # A checkpoint without the EMA file cannot be resumed silently from the base model's reference.
    (tmp_path / "split" / "checkpoint-2" / "care_ema.pt").unlink()
    from medbridge.harness_ext.errors import MedbridgeError

    again = _care_run(tiny_model_dir, medmnist_root, tmp_path / "split")
    with pytest.raises(MedbridgeError, match="care_ema.pt"):
        again.train(resume_from_checkpoint=str(tmp_path / "split" / "checkpoint-2"))
