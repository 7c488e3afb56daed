"""Training package, fast parts: rewards, verl hook, CARE pieces on hand-made numbers, data builders,
recipe parsing, CLI wiring. The trainers themselves run in test_training_trainers.py."""

import argparse
import copy
import json
import math
from pathlib import Path

import pytest
import torch
from medbridge.harness_ext import answers
from medbridge.training import care, rewards
from medbridge.training.configs import GRPOCareConfig, MedGRPOConfig, parse_recipe

RECIPES = Path(__file__).resolve().parents[1] / "training" / "recipes"
OPTIONS = {"A": "adipose", "B": "lymphocytes", "C": "mucus"}


# ------------------------------------------------------------------------------------------------
# rewards: the evaluation's extractor and format check, nothing re-parsed
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, acc, fmt",
    [
        ("<think>tissue is fat</think><answer>A</answer>", 1.0, 1.0),
        ("<think>x</think><answer>B</answer>", 0.0, 1.0),
        ("The answer is A.", 1.0, 0.0),  # the extractor reads it; the strict format does not
        ("<think>A or B</think>", 0.0, 0.0),  # reasoning alone is never mined for a letter
        ("<think>x</think><answer>A or B</answer>", 0.0, 1.0),  # hedge: no single choice
        ("<think>x</think><answer>adipose</answer>", 1.0, 1.0),  # option text -> its letter
        ("<think>x</think>\n<answer>A</answer>\n<answer>A</answer>", 1.0, 0.0),
    ],
)
def test_rewards_follow_the_evaluation_extractor(response, acc, fmt):
    from medbridge.harness_ext.answers import extract_choice, has_strict_format

    opts = json.dumps(OPTIONS)
    conv = [[{"role": "assistant", "content": response}]]  # TRL's conversational completion
    assert rewards.accuracy_reward(conv, answer_letter=["A"], options=[opts]) == [acc]
    assert rewards.format_reward(conv) == [fmt]
    # Same verdicts as the scorer's functions on the same string.
    assert acc == float(extract_choice(response, OPTIONS) == "A")
    assert fmt == float(has_strict_format(response))


def test_reward_functions_accept_trl_call_and_plain_strings():
    out = rewards.accuracy_reward(
        prompts=[[{"role": "user", "content": "q"}]] * 2,
        completions=[
            "<answer>C</answer>",
            [{"role": "assistant", "content": [{"type": "text", "text": "<answer>C</answer>"}]}],
        ],
        completion_ids=[[1], [2]],
        answer_letter=["C", "B"],
        options=[OPTIONS, json.dumps(OPTIONS)],
        trainer_state=None,
    )
    assert out == [1.0, 0.0]
    with pytest.raises(ValueError, match="JSON object"):
        rewards.accuracy_reward(["<answer>A</answer>"], answer_letter=["A"], options=["not json"])
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.get_reward_funcs(["accuracy", "nope"])


def test_every_registered_reward_takes_trl_s_call_and_is_named_in_the_help():
    """A reward added to REWARDS is called the way TRL calls it (dataset columns as lists, extra keywords)
    and returns one float in [0, 1] per completion; --reward_names' help lists it (from the table)."""
    import dataclasses

    right, wrong = "<think>x</think><answer>C</answer>", "C is my answer, maybe"
    columns = {"answer_letter": ["C", "C"], "options": [OPTIONS, json.dumps(OPTIONS)]}
    for name, fn in rewards.REWARDS.items():
        out = fn(prompts=[[{"role": "user", "content": "q"}]] * 2, completions=[right, wrong],
                 completion_ids=[[1], [2]], trainer_state=None, **columns)
        assert len(out) == 2 and all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out), name
        assert out[0] == 1.0, name  # a right answer in the strict format earns every reward
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(MedGRPOConfig)}
    assert all(repr(name) in helps["reward_names"] for name in rewards.REWARDS)


def _verl_rows():
    # verl parquet rows: ground truth under reward_model, the options in extra_info.
    return [
        {
            "data_source": "medmnist_organa",
            "reward_model": {"style": "rule", "ground_truth": "B"},
            "extra_info": {"options": json.dumps(OPTIONS), "index": 7},
            "response": "<think>cells</think><answer>B</answer><|im_end|>",
        },
        {
            "data_source": "medmnist_organa",
            "reward_model": {"style": "rule", "ground_truth": "B"},
            "extra_info": {"options": OPTIONS, "index": 8},
            "response": "Answer: C",
        },
    ]


def test_compute_score_called_the_way_verls_naive_reward_manager_calls_it():
    # verl's naive manager: keyword arguments, the decoded response possibly still ending in the EOS token,
    # and newer reward loops pass extra keyword arguments of their own.
    scores, extra = [], {}
    for row in _verl_rows():
        result = rewards.compute_score(
            data_source=row["data_source"],
            solution_str=row["response"],
            ground_truth=row["reward_model"]["ground_truth"],
            extra_info=row["extra_info"],
            reward_router_address=None,
            reward_model_tokenizer=None,
        )
        scores.append(result["score"])
        for key, value in result.items():
            extra.setdefault(key, []).append(value)
    assert scores == [2.0, 0.0]
    assert extra == {"score": [2.0, 0.0], "accuracy": [1.0, 0.0], "format": [1.0, 0.0]}
    assert rewards.compute_score("x", "<think>a</think><answer>B</answer>", "B", {"options": OPTIONS}) == {
        "score": 2.0,
        "accuracy": 1.0,
        "format": 1.0,
    }  # positional, as older managers call it
    with pytest.raises(ValueError, match="options"):
        rewards.compute_score("x", "B", "B", {})


def test_compute_score_batch_called_the_way_verls_batch_reward_manager_calls_it():
    rows = _verl_rows()
    scores = rewards.compute_score_batch(
        data_sources=[r["data_source"] for r in rows],
        solution_strs=[r["response"] for r in rows],
        ground_truths=[r["reward_model"].get("ground_truth") for r in rows],
        extra_infos=[r["extra_info"] for r in rows],
        some_future_kwarg=1,
    )
    assert scores == [2.0, 0.0] and all(isinstance(x, float) for x in scores)


# ------------------------------------------------------------------------------------------------
# GRPO-CARE pieces on hand-made numbers
# ------------------------------------------------------------------------------------------------


def test_bonus_rule_on_hand_made_groups():
    nan = float("nan")
    acc = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    c = torch.tensor([0.9, 0.5, 0.7, 0.99, 0.8, 0.8, nan, 0.1, 0.6, nan, 0.9, 0.2])
    bonus = care.care_bonus(acc, c, 4, coef=0.5, margin=0.0)
    # group 1: accurate 0,1,2 -> mu 0.7 -> 0 (0.9) and 2 (0.7, equal counts) get it; 3 is wrong.
    # group 2: nobody accurate -> no bonus.  group 3: accurate 0,1,3 with c for 0 and 3 -> mu 0.4:
    # only 0 (0.6); 1 has no answer span; 2 is wrong however consistent.
    assert bonus.tolist() == [0.5, 0.0, 0.5, 0.0, 0, 0, 0, 0, 0.5, 0.0, 0.0, 0.0]
    # A margin lets slightly less consistent answers in.
    assert care.care_bonus(acc, c, 4, margin=0.25).tolist()[:4] == [0.5, 0.5, 0.5, 0.0]
    # The bonus scales with accuracy, and a partial accuracy below the group mean is not "accurate".
    acc2 = torch.tensor([0.5, 0.2, 0.05, 0.0])
    c2 = torch.tensor([0.3, 0.3, 0.3, 0.3])
    assert care.care_bonus(acc2, c2, 4, coef=0.5).tolist() == pytest.approx([0.25, 0.1, 0.0, 0.0])
    with pytest.raises(ValueError, match="groups of 4"):
        care.care_bonus(acc[:6], c[:6], 4)


def test_bonus_is_computed_on_whole_groups_not_per_process():
    # Two "processes" each hold half of every group (TRL may split a group). The bonus on the
    # gathered rows differs from what each half alone would give, which is why it runs after gathering.
    acc = torch.tensor([1.0, 1.0, 1.0, 1.0])
    c = torch.tensor([0.9, 0.8, 0.2, 0.1])
    whole = care.care_bonus(acc, c, 4)
    halves = torch.cat([care.care_bonus(acc[:2], c[:2], 2), care.care_bonus(acc[2:], c[2:], 2)])
    assert whole.tolist() == [0.5, 0.5, 0.0, 0.0]
    assert halves.tolist() == [0.5, 0.0, 0.5, 0.0]


def test_consistency_from_hand_made_logprobs():
    logps = torch.log(torch.tensor([0.1, 0.5, 0.8, 0.2]))
    mask = [False, True, True, False]
    assert care.consistency_from_logps(logps, mask, clamp=0.95) == pytest.approx(math.sqrt(0.5 * 0.8))
    # clamped from above only
    assert care.consistency_from_logps(torch.log(torch.tensor([0.99, 0.999])), [True, True], clamp=0.95) == 0.95
    assert care.consistency_from_logps(torch.log(torch.tensor([1e-6])), [True], clamp=0.95) == pytest.approx(1e-6)
    assert care.consistency_from_logps(logps, [False] * 4) is None


def test_answer_span_and_token_mask():
    text = "<think>maybe <answer>A</answer> draft</think> <answer> B </answer>"
    start, end = answers.final_answer_span(text)
    assert text[start:end] == "B"  # the final span outside the reasoning, as the extractor reads it
    assert answers.final_answer_span("<think>only reasoning</think>") is None
    assert answers.final_answer_span("<think>x</think><answer>  </answer>") is None
    truncated = "<think>x</think><answer>C because"
    s, e = answers.final_answer_span(truncated)
    assert truncated[s:e] == "C because"
    offsets = [(0, 7), (7, 20), (20, 30), (30, 31), (31, 40)]
    assert care.answer_token_mask(offsets, (29, 31)) == [False, False, True, True, False]
    assert care.answer_token_mask([(5, 5), (5, 6)], (5, 6)) == [False, True]  # empty tokens never count


def test_answer_span_never_scores_a_draft_the_extractor_does_not_read():
    from medbridge.harness_ext.answers import extract_choice

    # A draft inside <think> and a different final answer written after the reasoning: the extractor reads
    # the text after the reasoning, so there is no tag span to score.
    text = "<think>maybe <answer>A</answer></think> So the answer is B."
    assert extract_choice(text, OPTIONS) == "B"
    assert answers.final_answer_span(text, OPTIONS) is None
    assert answers.final_answer_span(text) is None  # without options: text after the reasoning -> no draft
    # Only a draft and nothing that answers after it: the extractor reads the draft, so it is scored.
    only_draft = "<think>I think <answer>C</answer></think>"
    assert extract_choice(only_draft, OPTIONS) == "C"
    s, e = answers.final_answer_span(only_draft, OPTIONS)
    assert only_draft[s:e] == "C"
    trailing_noise = "<think>so <answer>C</answer></think> ..."
    assert extract_choice(trailing_noise, OPTIONS) == "C"
    s, e = answers.final_answer_span(trailing_noise, OPTIONS)
    assert trailing_noise[s:e] == "C"


def test_answer_tokens_are_found_on_the_sampled_ids(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "<think>the lesion is dark</think><answer> B </answer>"
    # Sampled ids need not be the canonical tokenisation of their text: spell the answer letter's
    # neighbourhood character by character, then decode as the trainer does.
    ids = tok("<think>the lesion is dark</think><answer>", add_special_tokens=False)["input_ids"]
    ids += [t for c in " B " for t in tok(c, add_special_tokens=False)["input_ids"]]
    ids += tok("</answer>", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert ids != tok(text, add_special_tokens=False)["input_ids"]

    def decode(x):
        return tok.decode(x, skip_special_tokens=True)

    assert decode(ids) == text
    span = answers.final_answer_span(decode(ids), OPTIONS)
    mask = care.answer_token_mask_from_ids(decode, ids, span)
    assert [tok.decode([t]) for t, m in zip(ids, mask) if m] == ["B"]
    # Every token in a span covering the whole answer block is found, none outside it.
    start = text.index("<answer>")
    mask = care.answer_token_mask_from_ids(decode, ids, (start, len(text)))
    assert "".join(tok.decode([t]) for t, m in zip(ids, mask) if m) == text[start:]


def test_ema_update_blends_parameters():
    torch.manual_seed(0)
    ref, policy = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ref0 = [p.detach().clone() for p in ref.parameters()]
    pol = [p.detach().clone() for p in policy.parameters()]
    care.ema_update(ref, policy, decay=0.9)
    for r, r0, p in zip(ref.parameters(), ref0, pol):
        torch.testing.assert_close(r.detach(), 0.9 * r0 + 0.1 * p)
    for p, p0 in zip(policy.parameters(), pol):
        torch.testing.assert_close(p.detach(), p0)  # the policy is untouched
    # Repeated updates converge to the policy geometrically: distance shrinks by the decay each time.
    before = sum((r - p).abs().sum() for r, p in zip(ref.parameters(), policy.parameters()))
    care.ema_update(ref, policy, decay=0.9)
    after = sum((r - p).abs().sum() for r, p in zip(ref.parameters(), policy.parameters()))
    assert after.item() == pytest.approx(0.9 * before.item(), rel=1e-5)


def test_bf16_ema_reference_moves_as_the_exact_ema_does():
    """decay 0.995, a policy 3 % away from the reference: a plain bf16 blend never moves (the increment
    is below half a bf16 ulp); the fp32 running average follows the exact EMA and the bf16 reference
    used for forwards is that average rounded to bf16."""
    torch.manual_seed(0)
    decay, steps = 0.995, 40
    ref = torch.nn.Linear(64, 64).to(torch.bfloat16)
    policy = torch.nn.Linear(64, 64).to(torch.bfloat16)
    with torch.no_grad():
        for r, p in zip(ref.parameters(), policy.parameters()):
            p.copy_(r.float() * 1.03)
    start = [r.detach().double().clone() for r in ref.parameters()]
    target = [p.detach().double().clone() for p in policy.parameters()]

    naive = torch.nn.Linear(64, 64).to(torch.bfloat16)
    naive.load_state_dict(ref.state_dict())
    with torch.no_grad():
        for _ in range(steps):  # the old blend, in the parameters' own dtype
            for r, p in zip(naive.parameters(), policy.parameters()):
                r.mul_(decay).add_(p, alpha=1 - decay)
    naive_moved = sum((r.double() - s).abs().sum().item() for r, s in zip(naive.parameters(), start))

    ref_offloaded = copy.deepcopy(ref)
    ema = care.EMAReference(ref)
    offloaded = care.EMAReference(ref_offloaded, offload=True)  # the average in CPU memory: same numbers
    for _ in range(steps):
        ema.update(policy, decay)
        offloaded.update(policy, decay)
    for a, b in zip(ref.parameters(), ref_offloaded.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    exact = [decay**steps * s + (1 - decay**steps) * t for s, t in zip(start, target)]
    for shadow, want in zip(ema.shadow, exact):
        torch.testing.assert_close(shadow.double(), want, rtol=1e-5, atol=1e-6)
    for r, shadow in zip(ref.parameters(), ema.shadow):
        assert r.dtype == torch.bfloat16
        torch.testing.assert_close(r.detach(), shadow.to(torch.bfloat16), rtol=0, atol=0)
    moved = sum((r.double() - s).abs().sum().item() for r, s in zip(ref.parameters(), start))
    expected_move = sum((w - s).abs().sum().item() for w, s in zip(exact, start))
    print(
        f"bf16 EMA after {steps} updates: naive moved {naive_moved:.3g}, fp32 shadow moved {moved:.3g} "
        f"(exact EMA {expected_move:.3g})"
    )
    assert naive_moved < 0.05 * expected_move  # the defect the shadow fixes
    assert moved == pytest.approx(expected_move, rel=0.1)
    assert ema.updates == steps
    # The counter and the average survive a checkpoint round trip.
    fresh = care.EMAReference(naive)
    fresh.load_state_dict(ema.state_dict(), "test")
    assert fresh.updates == steps
    for a, b in zip(fresh.shadow, ema.shadow):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------
# Recipes: TrlParser semantics
# ------------------------------------------------------------------------------------------------

CPU = ["--use_cpu", "true", "--bf16", "false"]


def _kind(path: Path) -> str:
    kind = path.stem.rsplit("_", 1)[-1]  # recipes are named <what>_<trainer>.yaml
    assert kind in ("sft", "grpo", "care"), path
    return kind


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_parses_into_its_config(recipe):
    kind = _kind(recipe)
    _, cfg, model = parse_recipe(kind, ["--config", str(recipe), "--output_dir", "/tmp/unused", *CPU])
    assert model.model_name_or_path
    assert cfg.max_pixels >= cfg.min_pixels > 0
    if kind != "sft":
        assert isinstance(cfg, MedGRPOConfig)
        assert cfg.loss_type == "grpo" and cfg.beta == 0.0
        assert "loss_type" in recipe.read_text()  # recorded in the recipe, not left to TRL's default


def test_final_recipe_has_the_papers_hyperparameters():
    _, cfg, model = parse_recipe("care", ["--config", str(RECIPES / "final_octomed7b_pmcvqa8k_care.yaml"), *CPU])
    assert isinstance(cfg, GRPOCareConfig)
    assert "OctoMed-7B" in model.model_name_or_path
    assert (cfg.num_generations, cfg.learning_rate, cfg.beta, cfg.care_bonus_coef, cfg.max_pixels) == (
        8,
        5e-7,
        0.0,
        0.5,
        802816,
    )
    assert (cfg.care_ema_decay, cfg.care_ema_interval, cfg.care_consistency_clamp) == (0.995, 10, 0.95)
    assert cfg.num_train_epochs == 1


def test_flags_override_yaml_and_unknown_keys_fail(tmp_path):
    recipe = RECIPES / "tiny_cpu_care.yaml"
    script, cfg, _ = parse_recipe(
        "care", ["--config", str(recipe), "--learning_rate", "0.5", "--care_margin", "0.01", "--per_class", "3"]
    )
    assert cfg.learning_rate == 0.5 and cfg.care_margin == 0.01 and script.per_class == 3
    assert cfg.num_generations == 4  # from the YAML

    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text() + "care_bonus_coeff: 0.7\n")  # misspelt key
    with pytest.raises(ValueError, match="care_bonus_coeff"):
        parse_recipe("care", ["--config", str(bad)])
    # A CARE key in a plain GRPO recipe is unknown to MedGRPOConfig.
    with pytest.raises(ValueError, match="care_ema_decay"):
        parse_recipe("grpo", ["--config", str(recipe)])
    with pytest.raises(ValueError, match="no_such_flag"):
        parse_recipe("care", ["--config", str(recipe), "--no_such_flag", "1"])


# ------------------------------------------------------------------------------------------------
# Data builders
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def medmnist_root(tmp_path_factory):
    from medbridge.tasks.medmnist.catalog import get_set
    from medbridge.tasks.medmnist.fixtures import build_medmnist_fixture

    root = tmp_path_factory.mktemp("medmnist")
    for flag in ("breastmnist", "octmnist"):
        build_medmnist_fixture(get_set(flag), root, {"train": 5, "val": 1, "test": 2}, 0)
    return root


def test_medmnist_training_rows_are_the_evaluation_items(medmnist_root):
    from medbridge.tasks.medmnist.data import build_items
    from medbridge.training.data import medmnist_dataset

    ds = medmnist_dataset(["breastmnist", "octmnist"], root=medmnist_root, per_class=3, seed=7)
    assert len(ds) == 3 * 2 + 3 * 4  # balanced: 3 per class of each set
    assert {"prompt", "image", "answer_letter", "options", "item_id", "dataset"} <= set(ds.column_names)
    items = {i["item_id"]: i for i in build_items("octmnist", "train", root=medmnist_root, per_class=3, seed=7)}
    for row in ds:
        if row["item_id"] in items:
            item = items[row["item_id"]]
            assert row["prompt"] == [{"role": "user", "content": item["prompt"]}]  # byte-identical prompt
            assert row["answer_letter"] == item["answer_letter"] and row["options"] == item["options"]
    again = medmnist_dataset(["breastmnist", "octmnist"], root=medmnist_root, per_class=3, seed=7)
    assert again["item_id"] == ds["item_id"]  # seeded
    other = medmnist_dataset(["breastmnist", "octmnist"], root=medmnist_root, per_class=3, seed=8)
    assert other["item_id"] != ds["item_id"]


def test_sft_rows_answer_in_the_evaluated_format(medmnist_root):
    from medbridge.harness_ext.answers import extract_choice, has_strict_format
    from medbridge.training.data import medmnist_dataset

    ds = medmnist_dataset(["octmnist"], root=medmnist_root, per_class=2, seed=0, sft=True)
    for row in ds:
        target = row["completion"][0]["content"]
        assert has_strict_format(target)
        assert extract_choice(target, json.loads(row["options"])) == row["answer_letter"]


def test_keyword_fallback_labels_are_in_the_one_vocabulary():
    from medbridge.judges.prompts import MODALITIES
    from medbridge.training.data import keyword_modalities, keyword_modality, modality_vocabulary

    assert modality_vocabulary() == tuple(MODALITIES) and "none" in MODALITIES
    assert keyword_modality("What does the axial CT scan show?") == "ct"
    assert keyword_modality("Which sequence of MRI is used?") == "mri"
    assert keyword_modality("What is seen in the H&E stained section?") == "microscopy"
    assert keyword_modality("What does the OCT scan of the macula show?") == "oct"
    assert keyword_modality("What is shown in the chest radiograph?") == "x-ray"
    assert keyword_modality("What does the dermoscopy image of the skin lesion show?") == "dermatology"
    assert keyword_modality("What is the PET finding?") == "none"  # not one of the paper's categories
    assert keyword_modality("What is the main finding?") == "none"
    questions = ["CT of the chest", "fundus OCT", "an endoscopy view", "ultrasound of the liver", "stained biopsy"]
    assert set(keyword_modalities(questions)) <= set(MODALITIES)


def test_judge_modalities_without_a_judge_names_the_settings(monkeypatch):
    from medbridge.harness_ext.errors import MedbridgeError
    from medbridge.training.data import judge_modalities

    monkeypatch.delenv("MEDBRIDGE_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("MEDBRIDGE_JUDGE_MODEL", raising=False)
    with pytest.raises(MedbridgeError, match="MEDBRIDGE_JUDGE_BASE_URL"):
        judge_modalities(["What does this CT show?"])


def test_balanced_subset_spreads_spare_places():
    from medbridge.training.data import balanced_subset

    labels = {f"a{i}": "a" for i in range(10)} | {"b0": "b"} | {f"c{i}": "c" for i in range(3)}
    picked = balanced_subset(labels, 7, seed=0)
    counts = {k: sum(1 for p in picked if labels[p] == k) for k in "abc"}
    assert counts == {"a": 3, "b": 1, "c": 3}
    assert balanced_subset(labels, 7, seed=0) == picked
    assert len(balanced_subset(labels, 100, seed=0)) == 14


# ------------------------------------------------------------------------------------------------
# CLI wiring and the evaluation command
# ------------------------------------------------------------------------------------------------


def test_cli_registers_commands_next_to_an_existing_data_command():
    from medbridge.training.cli import add_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data").add_subparsers(dest="dataset", required=True)
    data.add_parser("medmnist")
    add_parser(sub)
    args = parser.parse_args(["train", "care", "--config", "r.yaml", "--learning_rate", "1e-6"])
    assert args.trainer == "care" and args.recipe_args == ["--config", "r.yaml", "--learning_rate", "1e-6"]
    assert parser.parse_args(["data", "medmnist"]).dataset == "medmnist"
    args = parser.parse_args(["data", "build-pmc-vqa", "--csv", "t.csv", "--out", "o"])
    assert args.size == 8000 and callable(args.func)
    args = parser.parse_args(["eval-checkpoint", "ckpt", "--tasks", "a,b", "c", "--limit", "2"])
    assert args.tasks == ["a,b", "c"] and args.limit == 2


def test_eval_command_fills_the_model_args_template():
    from medbridge.training.callbacks import EvalSettings, build_eval_command

    s = EvalSettings(
        tasks=["medmnist_mcq_breast"],
        model_args="pretrained={checkpoint},max_pixels={max_pixels},min_pixels={min_pixels},x={other}",
        max_pixels=50176,
        min_pixels=3136,
        limit=2,
        gen_kwargs="max_new_tokens=8",
    )
    cmd = build_eval_command("/ck/checkpoint-3", s, "/out")
    assert (
        cmd[cmd.index("--model_args") + 1] == "pretrained=/ck/checkpoint-3,max_pixels=50176,min_pixels=3136,x={other}"
    )
    assert cmd[cmd.index("--limit") + 1] == "2" and "--log_samples" in cmd
    assert cmd[cmd.index("--gen_kwargs") + 1] == "max_new_tokens=8"


def _fake_checkpoint(folder: Path, step: int) -> Path:
    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_text("w")
    (ckpt / "optimizer.pt").write_text("o")
    (ckpt / "care_ema.pt").write_text("e")
    return ckpt


def test_checkpoint_eval_queue_does_not_block_and_records_failures(tmp_path, monkeypatch):
    import threading
    import time

    from medbridge.training import callbacks

    release = threading.Event()
    seen = []

    def fake_evaluate(checkpoint, settings, output_path):
        release.wait(5)
        seen.append(Path(checkpoint).name)
        if Path(checkpoint).name == "checkpoint-2":
            raise callbacks.CheckpointEvalError("no results for task(s) ['t']")
        Path(output_path).mkdir(parents=True, exist_ok=True)
        return Path(output_path) / "x_results.json"

    monkeypatch.setattr(callbacks, "evaluate_checkpoint", fake_evaluate)
    # With a device of its own, evaluation runs during training, in the background.
    cb = callbacks.CheckpointEvalCallback(
        callbacks.EvalSettings(tasks=["t"]), eval_root=tmp_path / "ev", run_name="r", during_training=True
    )
    for step in (1, 2, 3):
        ckpt = _fake_checkpoint(tmp_path, step)
        started = time.monotonic()
        cb.submit(ckpt, step)
        assert time.monotonic() - started < 0.5  # training goes on while evaluations queue up
    assert cb.records == []
    release.set()
    records = cb.wait(timeout=10)
    assert seen == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]  # one at a time, in order
    assert [r["step"] for r in records] == [1, 2, 3]
    assert "error" in records[1] and "error" not in records[0] and "error" not in records[2]
    lines = (tmp_path / "ev" / "evaluations.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]

    # Staging keeps the model files (hard links) and leaves training state (optimizer, EMA) behind.
    staged = callbacks._stage(tmp_path / "checkpoint-1", tmp_path / "staged" / "r" / "checkpoint-1")
    assert sorted(p.name for p in staged.iterdir()) == ["model.safetensors"]


def test_checkpoint_eval_waits_for_the_end_of_training_by_default(tmp_path, monkeypatch):
    """Without ckpt_eval_device nothing runs during training (no training GPU is used, no rank waits on one
    inside a collective); finish() runs the queue; the staged copy that the leaderboard rows point to stays."""
    from types import SimpleNamespace

    from medbridge.training import callbacks

    evaluated, ingested = [], []

    def fake_evaluate(checkpoint, settings, output_path):
        evaluated.append(Path(checkpoint))
        Path(output_path).mkdir(parents=True, exist_ok=True)
        return Path(output_path) / "x_results.json"

    monkeypatch.setattr(callbacks, "evaluate_checkpoint", fake_evaluate)
    monkeypatch.setattr(callbacks, "ingest_into_leaderboard", lambda store, out, **kw: ingested.append(kw) or 3)
    script = SimpleNamespace(
        ckpt_eval=True,
        ckpt_eval_device=None,
        ckpt_eval_tasks=["t"],
        ckpt_eval_model="m",
        ckpt_eval_model_args="pretrained={checkpoint}",
        ckpt_eval_limit=None,
        ckpt_eval_gen_kwargs=None,
        ckpt_eval_batch_size=1,
        leaderboard_run_name="run",
        leaderboard_store=str(tmp_path / "lb.sqlite"),
    )
    args = SimpleNamespace(output_dir=str(tmp_path / "out"), max_pixels=50176, min_pixels=3136)
    cb = callbacks.checkpoint_eval_callback(script, args)
    assert cb.during_training is False and "CUDA_VISIBLE_DEVICES" not in cb.settings.env
    state = SimpleNamespace(is_world_process_zero=True, global_step=1)
    _fake_checkpoint(Path(args.output_dir), 1)
    cb.on_save(args, state, None)
    assert cb.wait(timeout=1) == [] or evaluated == []  # queued, not started
    assert evaluated == []
    records = cb.finish(timeout=10)
    assert [r["step"] for r in records] == [1] and records[0]["leaderboard_rows"] == 3
    assert evaluated[0].is_dir() and (evaluated[0] / "model.safetensors").is_file()  # kept after evaluation
    assert ingested == [{"model": "run", "run": "run", "step": 1}]

    on_device = callbacks.checkpoint_eval_callback(SimpleNamespace(**{**vars(script), "ckpt_eval_device": "7"}), args)
    assert on_device.during_training is True and on_device.settings.env == {"CUDA_VISIBLE_DEVICES": "7"}


def test_train_help_prints_the_recipe_fields_without_a_recipe(capsys):
    from medbridge.cli import main

    for trainer, field in (("grpo", "--reward_names"), ("care", "--care_ema_decay"), ("sft", "--max_pixels")):
        assert main(["train", trainer, "--help"]) == 0
        out = capsys.readouterr().out
        assert f"medbridge train {trainer}" in out and field in out and "--ckpt_eval_device" in out
    assert main(["train", "care", "--learning_rate", "1e-6"]) == 2  # no recipe: an error that points to --help
    assert "medbridge train care --help" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# One image geometry: trainer processor, colocated vLLM engine, vLLM server
# ------------------------------------------------------------------------------------------------


def _image_tokens(processor, image) -> int:
    text = "<|vision_start|><|image_pad|><|vision_end|>What is shown?"
    ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0]
    return int((ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())


def test_trainer_and_vllm_see_the_same_number_of_image_tokens(tiny_model_dir):
    """vLLM builds its processor with ``from_pretrained(model, **mm_processor_kwargs)``; with the recipe's
    budget passed as mm_processor_kwargs it cuts every image into the trainer's grid, and without it
    (the checkpoint's own defaults) it does not."""
    from medbridge.training.image_budget import image_geometry
    from medbridge.training.model_utils import load_processor
    from PIL import Image
    from transformers import AutoProcessor

    max_pixels, min_pixels = 200704, 3136  # the tiny checkpoint's own default is 50176
    trainer_proc = load_processor(str(tiny_model_dir), max_pixels=max_pixels, min_pixels=min_pixels)
    vllm_proc = AutoProcessor.from_pretrained(str(tiny_model_dir), **image_geometry(max_pixels, min_pixels))
    default_proc = AutoProcessor.from_pretrained(str(tiny_model_dir))
    differs = 0
    for size in [(28, 28), (224, 224), (640, 480), (1000, 800), (2048, 512)]:
        image = Image.new("RGB", size, (90, 30, 200))
        n_trainer, n_vllm = _image_tokens(trainer_proc, image), _image_tokens(vllm_proc, image)
        assert n_trainer == n_vllm, size
        assert n_trainer * 28 * 28 <= max_pixels
        differs += _image_tokens(default_proc, image) != n_trainer
    assert differs >= 2  # large images: the engine's defaults would have cut another grid


def test_colocated_vllm_engine_and_server_get_the_recipes_image_budget():
    from medbridge.training import model_utils, vllm_server

    built = []

    class FakeLLM:
        def __init__(self, **kwargs):
            built.append(kwargs)

    from trl.generation import vllm_generation

    original = getattr(vllm_generation, "LLM", None)
    vllm_generation.LLM = FakeLLM
    try:
        with model_utils.vllm_image_geometry(802816, 3136):
            vllm_generation.LLM(model="m", tensor_parallel_size=1)  # what TRL's colocate mode calls
        assert vllm_generation.LLM is FakeLLM  # restored after the block
    finally:
        vllm_generation.LLM = original
    assert built == [
        {"model": "m", "tensor_parallel_size": 1, "mm_processor_kwargs": {"max_pixels": 802816, "min_pixels": 3136}}
    ]

    cmd = vllm_server.vllm_serve_command(
        "OctoMed/OctoMed-7B", max_pixels=802816, min_pixels=3136, tensor_parallel_size=2
    )
    assert cmd[:3] == ["vllm", "serve", "OctoMed/OctoMed-7B"]
    assert cmd[cmd.index("--data-parallel-size") + 1] == "1"  # TRL: > 1 errors on dense models
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert json.loads(cmd[cmd.index("--mm-processor-kwargs") + 1]) == {"max_pixels": 802816, "min_pixels": 3136}
    assert "--weight-transfer-config" in cmd and "--logprobs-mode" in cmd  # what TRL's client needs
    shell = vllm_server.vllm_serve_shell(str(RECIPES / "final_octomed7b_pmcvqa8k_care.yaml"), 1, 8000)
    assert shell.startswith("VLLM_SERVER_DEV_MODE=1 vllm serve OctoMed/OctoMed-7B ") and '"max_pixels": 802816' in shell
    # The multi-node script starts exactly that command, not the deprecated `trl vllm-serve` with data parallel 8.
    slurm = (RECIPES.parent / "slurm" / "train_multinode.slurm").read_text()
    code = "\n".join(line for line in slurm.splitlines() if not line.lstrip().startswith("#"))
    assert "medbridge.training.model_utils vllm-serve" in code
    assert "trl vllm-serve" not in code and "data_parallel" not in code and "data-parallel" not in code
