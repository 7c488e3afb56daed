"""Resume as the README says: ``--resume_from_checkpoint true|last|PATH`` in every trainer, through the
command line, after the training process was killed with SIGKILL.

Each trainer runs three times with the tiny random Qwen2.5-VL on a reward that moves the weights: straight
to the last step; killed (SIGKILL) inside step 3 (GRPO, CARE: the reward stalls there) or as soon as
checkpoint-2 is complete (SFT); then resumed with ``--resume_from_checkpoint true`` (or ``last``) next to
an incomplete newer checkpoint (a save cut short). The resumed run must end where the straight one ends:
the same weights, the same per-step logs after the resume and, for CARE, the same EMA reference and count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "training" / "recipes"
REWARD = "medbridge.tests.training_rewards:low_token_share"


# ------------------------------------------------------------------------------------------------
# The resolver on folders (fast)
# ------------------------------------------------------------------------------------------------


def _checkpoint(root: Path, step: int, *files: str) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("x")
    return folder


def test_resolver_picks_the_newest_complete_checkpoint(tmp_path, caplog):
    from medbridge.training.resume import resolve_resume_checkpoint

    _checkpoint(tmp_path, 2, "trainer_state.json", "care_ema.pt")
    _checkpoint(tmp_path, 10, "trainer_state.json", "care_ema.pt")
    _checkpoint(tmp_path, 9, "trainer_state.json", "care_ema.pt")  # numeric order, not text order
    _checkpoint(tmp_path, 12, "model.safetensors")  # a save killed before trainer_state.json
    _checkpoint(tmp_path, 11, "trainer_state.json")  # CARE wrote care_ema.pt after trainer_state.json
    (tmp_path / "checkpoint-x").mkdir()
    for value in (True, "true", "True", "last", " last "):
        assert resolve_resume_checkpoint(value, tmp_path, ["care_ema.pt"]) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-12 (no trainer_state.json, care_ema.pt), checkpoint-11 (no care_ema.pt)" in caplog.text
    assert resolve_resume_checkpoint("last", tmp_path) == str(tmp_path / "checkpoint-11")  # GRPO needs no EMA
    for value in (None, False, "false", "", "None"):
        assert resolve_resume_checkpoint(value, tmp_path) is None
    assert resolve_resume_checkpoint(str(tmp_path / "checkpoint-2"), tmp_path, ["care_ema.pt"]) == str(
        tmp_path / "checkpoint-2"
    )


def test_resolver_refuses_what_cannot_be_resumed(tmp_path):
    from medbridge.harness_ext.errors import MedbridgeError
    from medbridge.training.resume import ResumeError, resolve_resume_checkpoint

    with pytest.raises(ResumeError, match="holds no complete checkpoint-N folder"):
        resolve_resume_checkpoint("true", tmp_path / "empty")
    _checkpoint(tmp_path, 3, "model.safetensors")
    with pytest.raises(ResumeError, match=r"incomplete: checkpoint-3 \(no trainer_state.json\)"):
        resolve_resume_checkpoint(True, tmp_path)
    with pytest.raises(ResumeError, match="no such checkpoint folder"):
        resolve_resume_checkpoint("true-ish", tmp_path)
    with pytest.raises(ResumeError, match="incomplete"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-3"), tmp_path)
    _checkpoint(tmp_path, 4, "trainer_state.json")
    with pytest.raises(ResumeError, match=r"no care_ema\.pt"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-4"), tmp_path, ["care_ema.pt"])
    assert issubclass(ResumeError, MedbridgeError)  # exit 2 from the CLI, one paragraph


# ------------------------------------------------------------------------------------------------
# Through the CLI after SIGKILL
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def medmnist_root(tmp_path_factory):
    from medbridge.tasks.medmnist.catalog import get_set
    from medbridge.tasks.medmnist.fixtures import build_medmnist_fixture

    root = tmp_path_factory.mktemp("medmnist")
    build_medmnist_fixture(get_set("breastmnist"), root, {"train": 4, "val": 1, "test": 2}, 0)
    return root


def _env(medmnist_root: Path, tiny_model_dir: Path, **extra: str) -> dict[str, str]:
    from transformers import AutoTokenizer

    half = len(AutoTokenizer.from_pretrained(tiny_model_dir)) // 2
    env = dict(
        os.environ,
        MEDBRIDGE_MEDMNIST_ROOT=str(medmnist_root),
        MEDBRIDGE_TEST_VOCAB_HALF=str(half),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",  # the same kernels in every run (and a fair share of a small machine)
    )
    env.pop("MEDBRIDGE_TEST_STALL_AT_CALL", None)
    env.update(extra)
    return env


def _command(kind: str, model: Path, out: Path, max_steps: int, *extra: str) -> list[str]:
    recipe = {"care": "tiny_cpu_care.yaml", "grpo": "tiny_cpu_grpo.yaml", "sft": "tiny_cpu_sft.yaml"}[kind]
    args = [
        sys.executable, "-m", "medbridge.cli", "train", kind,
        "--config", str(RECIPES / recipe),
        "--model_name_or_path", str(model),
        "--output_dir", str(out),
        "--ckpt_eval", "false",
        "--max_steps", str(max_steps),
        "--save_steps", "1",
        "--lr_scheduler_type", "linear",
        "--seed", "3",
    ]  # fmt: skip
    if kind == "sft":
        args += ["--learning_rate", "1e-3"]
    else:
        args += ["--learning_rate", "1e-2", "--max_completion_length", "8", "--reward_names", REWARD]
    if kind == "care":
        args += ["--care_accuracy_reward", REWARD, "--care_ema_interval", "1", "--care_ema_decay", "0.9"]
    return args + list(extra)


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-6000:])
    return proc


def _kill_when(cmd: list[str], env: dict[str, str], cwd: Path, ready, timeout: float = 600) -> None:
    """Start ``cmd``; SIGKILL it as soon as ``ready()`` holds (it must still be running then)."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the run ended (exit {proc.returncode}) before it could be killed: {err[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the run never reached the point where it is killed")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _max_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _logs(checkpoint: Path) -> dict[int, dict]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    drop = ("epoch",)  # logged identically; timing fields differ between processes
    return {
        h["step"]: {k: v for k, v in h.items() if k not in drop and "time" not in k and "per_second" not in k}
        for h in state["log_history"]
        if "loss" in h
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind, resume", [("care", "true"), ("grpo", "last"), ("sft", "true")])
def test_resume_after_sigkill_through_the_cli(kind, resume, tiny_model_dir, medmnist_root, tmp_path):
    steps = 4 if kind != "sft" else 8
    env = _env(medmnist_root, tiny_model_dir)
    straight, split = tmp_path / "straight", tmp_path / "split"
    proc = _run(_command(kind, tiny_model_dir, straight, steps), env, tmp_path)
    assert "FutureWarning" not in proc.stderr, proc.stderr[-3000:]  # the tiny run prints none

    if kind == "sft":  # no reward to stall in: killed as soon as checkpoint-2 is complete
        _kill_when(
            _command(kind, tiny_model_dir, split, steps),
            env,
            tmp_path,
            lambda: (split / "checkpoint-2" / "trainer_state.json").is_file(),
        )
    else:  # the reward of step 3 stalls: killed inside step 3, checkpoints 1 and 2 saved
        marker = tmp_path / "stalled"
        stall = _env(
            medmnist_root, tiny_model_dir, MEDBRIDGE_TEST_STALL_AT_CALL="3", MEDBRIDGE_TEST_STALL_MARKER=str(marker)
        )
        _kill_when(_command(kind, tiny_model_dir, split, steps), stall, tmp_path, marker.is_file)
    complete = sorted(
        int(p.name.split("-")[1]) for p in split.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    )
    assert complete and complete[-1] < steps, complete
    resumed_from = complete[-1]
    if kind == "care":
        assert (split / f"checkpoint-{resumed_from}" / "care_ema.pt").is_file()
    # A save cut short by the kill: a newer checkpoint folder without trainer_state.json.
    cut = split / f"checkpoint-{resumed_from + 1}"
    cut.mkdir(exist_ok=True)
    (cut / "trainer_state.json").unlink(missing_ok=True)
    (cut / "model.safetensors").write_bytes((split / f"checkpoint-{resumed_from}" / "model.safetensors").read_bytes())

    proc = _run(_command(kind, tiny_model_dir, split, steps, "--resume_from_checkpoint", resume), env, tmp_path)
    assert f"checkpoint-{resumed_from + 1} (no trainer_state.json)" in proc.stderr  # skipped, with a warning
    assert f"final model (step {steps}): {split}" in proc.stdout

    base = _weights(tiny_model_dir)  # saved by save_pretrained like every checkpoint: the same key names
    a, b = _weights(straight), _weights(split)
    moved = _max_gap(a, {k: base[k] for k in a})
    gap = _max_gap(a, b)
    print(f"{kind}: resumed from checkpoint-{resumed_from}; weights moved {moved:.3g}; straight vs resumed {gap:.3g}")
    assert moved > 1e-3  # the reward really moved the weights
    assert gap <= 1e-6 * max(moved, 1.0)  # seen here: 0 (bit-identical on the CPU)
    final_straight, final_split = straight / f"checkpoint-{steps}", split / f"checkpoint-{steps}"
    logs_straight, logs_split = _logs(final_straight), _logs(final_split)
    after = [s for s in logs_straight if s > resumed_from]
    assert after
    for s in after:
        assert logs_split[s].keys() == logs_straight[s].keys()
        for key, value in logs_straight[s].items():
            if isinstance(value, float | int):
                assert logs_split[s][key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (s, key)
            else:
                assert logs_split[s][key] == value, (s, key)
    if kind == "care":
        import torch

        ema_a = torch.load(final_straight / "care_ema.pt", weights_only=True)
        ema_b = torch.load(final_split / "care_ema.pt", weights_only=True)
        assert ema_a["updates"] == ema_b["updates"] == steps
        ema_gap = max((x - y).abs().max().item() for x, y in zip(ema_a["shadow"], ema_b["shadow"], strict=True))
        print(f"care: EMA straight vs resumed {ema_gap:.3g}")
        assert ema_gap <= 1e-6 * max(moved, 1.0)


@pytest.mark.slow
def test_resume_true_without_a_checkpoint_is_a_user_error(tiny_model_dir, medmnist_root, tmp_path):
    env = _env(medmnist_root, tiny_model_dir)
    cmd = _command("grpo", tiny_model_dir, tmp_path / "none", 2, "--resume_from_checkpoint", "true")
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "holds no complete checkpoint-N folder" in proc.stderr and "Traceback" not in proc.stderr
