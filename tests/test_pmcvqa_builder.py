"""The PMC-VQA modality-balanced subset builder (training/data.py): labels from the judge's modality prompt,
a failed or unparsable classification is never a label (asked again, then left out and counted; too many
refuse the build with exit 2), words outside the vocabulary are counted apart and never cached, and the
manifest says all of it. Against the stub judge over HTTP (tests/fake_judge_server.py), failing a quarter
of its requests, and against plain classifier functions."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
from medbridge.tests.fake_judge_server import MODEL_NAME, FakeJudgeServer

MODALITY_WORDS = ("CT", "MRI", "ultrasound", "x-ray", "microscopy", "dermatology", "OCT")


def _write_pmc_csv(folder: Path, rows: list[tuple[str, str]]) -> Path:
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    path = folder / "train.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        header = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
        w.writerow(header)
        for i, (question, label) in enumerate(rows):
            name = f"PMC{i}_fig.jpg"
            Image.new("RGB", (40 + i % 50, 30), (i * 3 % 255, 80, 120)).save(images / name)
            w.writerow([name, question, "second", " A:first ", " B:second", " C:third", " D:fourth ", label])
    return path


def _questions(n: int) -> list[tuple[str, str]]:
    """n questions: every modality of the vocabulary, genuine "none" ones, and PET (outside the vocabulary)."""
    rows = []
    for i in range(n):
        kind = i % 9
        if kind < 7:
            rows.append((f"What does this {MODALITY_WORDS[kind]} image {i} show?", "ABCD"[i % 4]))
        elif kind == 7:
            rows.append((f"What is the main finding {i}?", "ABCD"[i % 4]))  # no modality stated: none
        else:
            rows.append((f"Which PET tracer is used in case {i}?", "ABCD"[i % 4]))  # outside the vocabulary
    return rows


@pytest.fixture
def judge_env(monkeypatch, tmp_path):
    """Point the judge settings at a stub server (started by the test) with fast retries and its own cache."""

    def use(server: FakeJudgeServer) -> None:
        monkeypatch.setenv("MEDBRIDGE_JUDGE_BASE_URL", server.base_url)
        monkeypatch.setenv("MEDBRIDGE_JUDGE_MODEL", MODEL_NAME)
        monkeypatch.setenv("MEDBRIDGE_JUDGE_CACHE", str(tmp_path / "verdicts.sqlite"))
        monkeypatch.setenv("MEDBRIDGE_JUDGE_MAX_ATTEMPTS", "3")
        monkeypatch.delenv("MEDBRIDGE_JUDGE_API_KEY", raising=False)
        monkeypatch.delenv("MEDBRIDGE_JUDGE_ID", raising=False)

    return use


def test_pmc_vqa_builder_balances_modalities_and_writes_a_manifest(tmp_path):
    import datasets
    from medbridge.training.data import build_pmc_vqa_subset

    questions = [(f"What does this CT image {i} show?", "B") for i in range(6)]
    questions += [(f"Which MRI sequence is image {i}?", "A") for i in range(2)]
    questions += [(f"What is the finding {i}?", "C") for i in range(3)]
    questions += [("Which PET tracer is used?", "D")]
    csv_path = _write_pmc_csv(tmp_path / "pmc", questions)
    calls = []

    def judge(batch, images):  # stands in for the judge: a batch of questions in, one label (or None) each out
        calls.append((list(batch), images))
        return ["CT" if "CT" in q else "mri" if "MRI" in q else "pet" if "PET" in q else "none" for q in batch]

    out = tmp_path / "subset"
    manifest = build_pmc_vqa_subset(csv_path, out, classify=judge, labeler="test-judge", size=7, seed=3)
    assert manifest["counts_per_modality"] == {"ct": 3, "mri": 2, "none": 2}  # round-robin over sorted labels
    assert manifest["available_per_modality"] == {"ct": 6, "mri": 2, "none": 4}
    # "CT" is the vocabulary's "ct"; "pet" is outside the vocabulary: none, and counted.
    assert manifest["label_validation"] == {
        "labeled": 12, "from_cache": 0, "asked": 12, "retried": 0, "retries": 2, "unknown_to_none": {"pet": 1},
        "failed": 0, "failed_rows": [], "failed_share": 0.0, "max_failed_share": 0.01,
    }
    assert sum(manifest["counts_per_modality"].values()) == manifest["size"] == 7
    assert manifest["seed"] == 3 and manifest["labeler"] == "test-judge" and manifest["source"].endswith("train.csv")
    assert manifest["modality_labels"] == [
        "mri",
        "ct",
        "ultrasound",
        "x-ray",
        "microscopy",
        "dermatology",
        "oct",
        "none",
    ]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 7 and sorted(set(ds["modality"])) == ["ct", "mri", "none"]
    row = ds[0]
    assert json.loads(row["options"]) == {"A": "first", "B": "second", "C": "third", "D": "fourth"}
    assert "Options:\nA. first\nB. second" in row["prompt"][0]["content"]
    assert row["image"].size[1] == 30  # embedded image bytes
    assert len(calls) == 1 and len(calls[0][0]) == 12 and calls[0][1] is None  # one batch, questions only

    # Resumable: a second build asks the classifier nothing (cache), and the same seed gives the same rows.
    calls.clear()
    again = build_pmc_vqa_subset(
        csv_path,
        tmp_path / "subset2",
        classify=judge,
        labeler="test-judge",
        size=7,
        seed=3,
        cache_path=Path(manifest["modality_cache"]),
    )
    # (only the word outside the vocabulary is asked again: it is never cached as an answer)
    assert calls == [(["Which PET tracer is used?"], None)]
    assert again["counts_per_modality"] == manifest["counts_per_modality"]
    assert datasets.load_from_disk(str(tmp_path / "subset2"))["item_id"] == ds["item_id"]



@pytest.mark.slow
def test_build_against_a_judge_that_fails_a_quarter_of_the_time(tmp_path, judge_env):
    import datasets
    from medbridge.training.data import build_pmc_vqa_subset, judge_modalities

    rows = _questions(180)
    csv_path = _write_pmc_csv(tmp_path / "pmc", rows)
    out = tmp_path / "pmc_vqa_subset"
    with FakeJudgeServer(flaky=0.25, seed=7) as server:
        judge_env(server)
        manifest = build_pmc_vqa_subset(
            csv_path, out, classify=judge_modalities, labeler="judge", size=90, seed=1, retries=2
        )
        counts = dict(server.state.counts)
    (tmp_path / "manifest_flaky_judge.json").write_text(json.dumps(manifest, indent=2))
    print("\nmanifest of the build against a judge failing 25% of its requests:\n" + json.dumps(manifest, indent=2))
    validation = manifest["label_validation"]
    # The stub failed about a quarter of all requests, in three ways.
    failures = sum(counts.get(f"flaky_{k}", 0) for k in ("http_500", "prose", "overloaded"))
    assert 0.18 < failures / counts["requests"] < 0.32 and all(counts.get(f"flaky_{k}") for k in ("prose", "http_500"))
    # Prose replies came back unlabeled and were asked again; what still failed is left out, never "none".
    assert validation["retried"] > 0 and validation["asked"] == 180 + validation["retried"]
    assert validation["failed"] <= validation["max_failed_share"] * 180
    assert manifest["rows_labeled"] == 180 - validation["failed"] == validation["labeled"]
    failed_ids = {f"pmc_vqa/train/{row - 2}" for row in validation["failed_rows"]}  # CSV row 1 is the header
    pet_ids = {f"pmc_vqa/train/{i}" for i in range(180) if i % 9 == 8}
    # PET is counted apart as the judge's own word and mapped to none; it is not a failure.
    assert validation["unknown_to_none"] == {"pet": len(pet_ids - failed_ids)}
    # Every labeled row has the label of its question: no failure became a label of any kind.
    ds = datasets.load_from_disk(str(out))
    expected = {f"pmc_vqa/train/{i}": MODALITY_WORDS[i % 9].lower() if i % 9 < 7 else "none" for i in range(180)}
    assert all(row["modality"] == expected[row["item_id"]] for row in ds)
    assert len(ds) == manifest["size"] == 90 and not failed_ids & set(ds["item_id"])
    # Only vocabulary labels are in the label cache: no failure, no "pet".
    cached = [json.loads(line)["modality"] for line in Path(manifest["modality_cache"]).read_text().splitlines()]
    assert set(cached) <= set(manifest["modality_labels"]) and len(cached) == 180 - len(failed_ids | pet_ids)


def test_build_refuses_when_more_than_the_allowed_share_fails_and_keeps_what_it_got(tmp_path):
    from medbridge.harness_ext.errors import MedbridgeError
    from medbridge.training.data import build_pmc_vqa_subset

    csv_path = _write_pmc_csv(tmp_path / "pmc", [(f"What does this CT image {i} show?", "B") for i in range(20)])
    asked: list[int] = []

    def broken(batch, images):  # a classifier that cannot label question numbers divisible by 4
        asked.append(len(batch))
        return [None if int(q.split()[-2]) % 4 == 0 else "ct" for q in batch]

    out = tmp_path / "subset"
    with pytest.raises(MedbridgeError, match=r"no usable label for 5 of 20 questions \(25\.0%\) after 1 retries, "
                       r"more than the 10\.0% allowed \(--max-failed-share\); nothing was built.*"
                       r"The 15 labels obtained are kept in"):
        build_pmc_vqa_subset(csv_path, out, classify=broken, labeler="j", retries=1, max_failed_share=0.1)
    assert asked == [20, 5] and not out.exists()  # asked once more, then refused before writing anything
    # The 15 labels it got are kept: a rerun with a working classifier asks only the 5 others.
    asked.clear()
    manifest = build_pmc_vqa_subset(
        csv_path, out, classify=lambda batch, images: asked.append(len(batch)) or ["ct"] * len(batch), labeler="j"
    )
    assert asked == [5] and manifest["available_per_modality"] == {"ct": 20}
    assert manifest["label_validation"]["from_cache"] == 15 and manifest["label_validation"]["failed"] == 0
    # A share within the limit: the failures are left out and counted, the build goes on.
    manifest = build_pmc_vqa_subset(csv_path, tmp_path / "lenient", classify=broken, labeler="k", retries=0,
                                    max_failed_share=0.3)
    assert manifest["label_validation"]["failed"] == 5 and manifest["label_validation"]["failed_share"] == 0.25
    assert manifest["rows_labeled"] == 15 and manifest["available_per_modality"] == {"ct": 15}
    assert manifest["label_validation"]["failed_rows"] == [2, 6, 10, 14, 18]  # CSV rows (row 1 is the header)
    with pytest.raises(MedbridgeError, match="between 0 and 1"):
        build_pmc_vqa_subset(csv_path, out, classify=broken, labeler="k", max_failed_share=1.5)


def test_out_of_vocabulary_words_are_counted_apart_and_never_cached(tmp_path):
    from medbridge.training.data import build_pmc_vqa_subset

    csv_path = _write_pmc_csv(tmp_path / "pmc", [("CT of the chest?", "A"), ("PET of the brain?", "B"),
                                                 ("What is seen?", "C")])
    asked: list[list[str]] = []

    def judge(batch, images):
        asked.append(list(batch))
        return ["PET" if "PET" in q else "CT" if "CT" in q else "none" for q in batch]

    cache = tmp_path / "labels.jsonl"
    cache.write_text(json.dumps({"key": "stale", "modality": "pet", "labeler": "j"}) + "\n")  # an old build's entry
    first = build_pmc_vqa_subset(csv_path, tmp_path / "a", classify=judge, labeler="j", cache_path=cache)
    assert first["label_validation"]["unknown_to_none"] == {"pet": 1} and first["label_validation"]["failed"] == 0
    assert first["available_per_modality"] == {"ct": 1, "none": 2}
    second = build_pmc_vqa_subset(csv_path, tmp_path / "b", classify=judge, labeler="j", cache_path=cache)
    assert asked[1] == ["PET of the brain?"]  # the word outside the vocabulary is asked again, never cached
    assert second["label_validation"]["unknown_to_none"] == {"pet": 1}
    assert "pet" not in [json.loads(line)["modality"] for line in cache.read_text().splitlines()[1:]]


def test_judge_classifier_tells_labels_unknown_words_and_failures_apart(tmp_path, judge_env):
    from medbridge.training.data import judge_modalities

    questions = ["Axial CT of the head?", "Which PET tracer?", "What is the finding?"]
    with FakeJudgeServer(reply="garbage") as server:  # prose: no usable answer
        judge_env(server)
        assert judge_modalities(questions) == [None, None, None]
    with FakeJudgeServer() as server:
        judge_env(server)
        assert judge_modalities(questions) == ["ct", "pet", "none"]


def test_build_pmc_vqa_command_passes_retries_and_share_and_exits_2_when_refused(tmp_path, monkeypatch, capsys):
    from medbridge.training import cli, data

    from medbridge.cli import main

    seen = []
    monkeypatch.setattr(data, "judge_modalities", lambda qs, images=None: seen.append(len(qs)) or ["ct"] * len(qs))
    assert cli._modality_classifier("judge")[1] == "judge"
    csv_path = _write_pmc_csv(tmp_path / "pmc", [("What does this CT image show?", "B"), ("What is it?", "A")])
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "build-pmc-vqa", "--csv", str(csv_path), "--out", str(tmp_path / "o")])
    assert args.classifier == "judge" and args.func(args) == 0 and seen == [2]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["labeler"] == "judge" and manifest["counts_per_modality"] == {"ct": 2}
    assert manifest["label_validation"]["max_failed_share"] == data.DEFAULT_MAX_FAILED_SHARE
    args = parser.parse_args(
        ["data", "build-pmc-vqa", "--csv", str(csv_path), "--out", str(tmp_path / "k"), "--classifier", "keyword"]
    )
    assert args.func(args) == 0 and seen == [2]
    manifest = json.loads((tmp_path / "k" / "manifest.json").read_text())
    assert manifest["labeler"] == "keyword-fallback" and manifest["counts_per_modality"] == {"ct": 1, "none": 1}
    # Through the medbridge command: a judge that labels nothing is refused with one paragraph and exit 2.
    monkeypatch.setattr(data, "judge_modalities", lambda qs, images=None: [None] * len(qs))
    code = main(["data", "build-pmc-vqa", "--csv", str(csv_path), "--out", str(tmp_path / "z"), "--retries", "0",
                 "--max-failed-share", "0.5", "--cache", str(tmp_path / "z.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "no usable label for 2 of 2 questions" in err and "Traceback" not in err
    assert not (tmp_path / "z").exists()


def test_pmc_vqa_bad_rows_name_the_file_and_row(tmp_path):
    from medbridge.training.data import read_pmc_vqa_csv

    csv_path = _write_pmc_csv(tmp_path, [("What CT?", "B"), ("What MRI?", "E")])
    with pytest.raises(ValueError, match=r"train\.csv:3: Answer_label 'E'"):
        read_pmc_vqa_csv(csv_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("Figure_path,Question\nx.jpg,q\n")
    with pytest.raises(ValueError, match="missing column"):
        read_pmc_vqa_csv(bad)
