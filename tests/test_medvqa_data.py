"""The medvqa tasks' data path on fixtures in the hub schema, read through datasets.load_dataset."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from medbridge.harness_ext import scoring
from medbridge.tasks.families import MEDVQA
from medbridge.tasks.medvqa import data, utils
from medbridge.tasks.medvqa.catalog import HUB_ID, SETS, get_set
from medbridge.tasks.medvqa.fixtures import BAD_KINDS, SHAPES, answer_image, build_medvqa_fixture

TASK_DIR = Path(data.__file__).parent
# Every catalog benchmark gets rows (a new one too); PMC-VQA more for the subset tests, MMMU fewer.
SIZES = {spec.name: len(SHAPES) for spec in SETS} | {"pmc": 12, "mmmu": 3}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("MEDBRIDGE_MEDVQA_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return build_medvqa_fixture(tmp_path_factory.mktemp("medvqa") / "eval", SIZES)


@pytest.fixture(scope="module")
def bad_source(tmp_path_factory):
    return build_medvqa_fixture(
        tmp_path_factory.mktemp("medvqa_bad") / "eval", 3, bad=[("vqarad", k) for k in BAD_KINDS]
    )


def ids(items):
    return [it["item_id"] for it in items]


def test_fixture_parquet_has_the_hub_layout(source):
    files = sorted((source / "data").glob("*.parquet"))
    assert [f.name for f in files] == ["test-00000-of-00001.parquet"]
    table = pq.read_table(files[0])
    assert str(table.schema.field("images").type) == "list<element: struct<bytes: binary, path: string>>"
    for col in ("question", "options", "answer_label", "answer", "dataset_name"):
        assert str(table.schema.field(col).type) == "string", col
    assert str(table.schema.field("dataset_index").type) == "int64"
    hf = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["images"]["feature"]["_type"] == "Image"
    rows = table.to_pylist()
    assert sorted({r["dataset_name"] for r in rows}) == sorted(s.dataset_name for s in SETS)
    assert [r["dataset_index"] for r in rows] == list(range(len(rows)))
    for r in rows:
        options = json.loads(r["options"])
        assert options[r["answer_label"]] == r["answer"]
    # Awkward cases the loader must handle, in every benchmark with a full cycle of shapes: yes/no as two
    # options, two images, ten options A-J.
    for spec in SETS:
        mine = [r for r in rows if r["dataset_name"] == spec.dataset_name]
        assert len(mine) == SIZES[spec.name]
        shapes = [(len(json.loads(r["options"])), len(r["images"])) for r in mine]
        assert shapes == [SHAPES[i % len(SHAPES)] for i in range(len(mine))], spec.name
        if len(mine) >= len(SHAPES):
            assert sorted(json.loads(mine[0]["options"]).values()) == ["No", "Yes"]
            assert sorted(json.loads(mine[3]["options"])) == list("ABCDEFGHIJ")


def test_fixture_pixels_encode_the_answer():
    assert answer_image("A", "pmc") == answer_image("A", "pmc")
    assert answer_image("A", "pmc") != answer_image("B", "pmc")
    assert answer_image("A", "pmc") != answer_image("A", "slake")


def test_local_folder_and_hub_id_take_the_same_load_dataset_call(source, monkeypatch):
    import datasets

    calls = []
    real = datasets.load_dataset

    def spy(path, *args, **kwargs):
        calls.append((path, kwargs.get("split"), kwargs.get("revision")))
        if path == HUB_ID:
            raise ConnectionError("offline in tests")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    data.load_source.cache_clear()
    items, info = data.build_items("slake", source=source, subset="full")
    assert calls == [(str(source), "test", None)]
    assert info.n_items == len(items) == SIZES["slake"]
    monkeypatch.setenv(data.REVISION_ENV, "abc123")
    with pytest.raises(data.MedVQADataError, match="UCSC-VLAA/MedVLThinker-Eval.*ConnectionError"):
        data.build_items("slake")  # no source given: the default is the hub id
    assert calls[-1] == (HUB_ID, "test", "abc123")
    data.load_source.cache_clear()


def test_each_task_gets_only_its_benchmark(source):
    seen = set()
    for spec in SETS:
        items, info = data.build_items(spec.name, source=source, subset="full")
        assert len(items) == info.n_source_rows == SIZES[spec.name]
        assert {it["source_dataset_name"] for it in items} == {spec.dataset_name}
        assert {it["dataset"] for it in items} == {spec.name}
        for it in items:
            options = json.loads(it["options"])
            assert it["item_id"] == f"{spec.dataset_name}/{it['dataset_index']}"
            assert options[it["answer_letter"]] == it["answer_text"]
            assert it["prompt"].startswith(it["question"])
            assert all(f"\n{k}. {v}\n" in it["prompt"] for k, v in options.items())
            assert it["n_images"] == len(data.doc_images(it)) >= 1 and "images" not in it
            assert it["subset"] == "full" and it["n_skipped_in_source"] == 0
        assert [it["dataset_index"] for it in items] == sorted(it["dataset_index"] for it in items)
        seen.update(ids(items))
    assert len(seen) == sum(SIZES.values())


def test_subset_is_seeded_deterministic_and_recorded(source, monkeypatch):
    first, info = data.build_items("pmc", source=source, subset=5)
    again, _ = data.build_items("pmc", source=source, subset=5)
    assert ids(first) == ids(again) and len(first) == 5
    assert info.tag == "seeded5-seed1234" and {it["subset"] for it in first} == {"seeded5-seed1234"}
    others = [ids(data.build_items("pmc", source=source, subset=5, seed=s)[0]) for s in (1, 2, 3)]
    assert any(set(o) != set(ids(first)) for o in others)
    full, _ = data.build_items("pmc", source=source, subset="full")
    assert set(ids(first)) < set(ids(full)) and len(full) == 12
    # A subset larger than the benchmark is the whole benchmark (MMMU's 170 < 200 in the real set).
    assert len(data.build_items("mmmu", source=source)[0]) == SIZES["mmmu"]
    monkeypatch.setenv(data.SUBSET_ENV, "full")
    assert len(data.build_items("pmc", source=source)[0]) == 12
    monkeypatch.setenv(data.SUBSET_ENV, "7")
    monkeypatch.setenv(data.SEED_ENV, "1")
    items, info = data.build_items("pmc", source=source)
    assert len(items) == 7 and info.tag == "seeded7-seed1"
    monkeypatch.setenv(data.SUBSET_ENV, "lots")
    with pytest.raises(ValueError, match="MEDBRIDGE_MEDVQA_SUBSET"):
        data.build_items("pmc", source=source)


def test_source_is_resolved_per_benchmark_then_globally(monkeypatch, source):
    spec = get_set("pathvqa")
    assert data.resolve_source(spec) == HUB_ID
    monkeypatch.setenv(data.SOURCE_ENV, "/data/all")
    assert data.resolve_source(spec) == "/data/all"
    monkeypatch.setenv(f"{data.SOURCE_ENV}_PATHVQA", "/data/pathvqa")
    assert data.resolve_source(spec) == "/data/pathvqa"
    assert data.resolve_source(get_set("slake")) == "/data/all"
    assert data.resolve_source(spec, source) == str(source)


def test_bad_rows_fail_naming_benchmark_and_item(bad_source):
    good, _ = data.build_items("pmc", source=bad_source, subset="full")  # other benchmarks are unaffected
    assert len(good) == 3
    with pytest.raises(data.MedVQADataError) as err:
        data.build_items("vqarad", source=bad_source, subset="full")
    msg = str(err.value)
    assert msg.startswith("5 bad row(s) in VQA-RAD (task medvqa_vqarad)")
    kept = data.build_items("vqarad", source=bad_source, subset="full", skip_bad=True)[0]
    first_bad = max(it["dataset_index"] for it in kept) + 1  # the fixture appends bad rows after the good ones
    reasons = [
        "image 0 cannot be decoded",
        "the row has no image",
        "options is not valid JSON",
        "answer_label 'C' is not among the options ['A', 'B']",
        "options is empty",
    ]
    for k, reason in enumerate(reasons):
        assert f"vqa_rad_closed/{first_bad + k}: {reason}" in msg
    assert "MEDBRIDGE_MEDVQA_SKIP_BAD=1" in msg


def test_skipping_bad_rows_is_counted_logged_and_recorded(bad_source, monkeypatch):
    from loguru import logger

    messages = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        monkeypatch.setenv(data.SKIP_BAD_ENV, "1")
        items, info = data.build_items("vqarad", source=bad_source, subset="full")
    finally:
        logger.remove(sink)
    assert len(items) == 3 and len(info.skipped) == 5
    assert {it["n_skipped_in_source"] for it in items} == {5}
    assert len(messages) == 1 and "SKIPPED 5 bad row(s) of VQA-RAD" in messages[0]


def test_missing_benchmark_or_column_is_a_clear_error(tmp_path):
    only_pmc = build_medvqa_fixture(tmp_path / "only_pmc", {"pmc": 2})
    with pytest.raises(data.MedVQADataError, match=r"no rows of SLAKE .*'slake_closed'.*\['pmc_vqa'\]"):
        data.build_items("slake", source=only_pmc)
    import datasets

    (tmp_path / "nolabel" / "data").mkdir(parents=True)
    datasets.Dataset.from_list([{"question": "q", "options": "{}", "dataset_name": "pmc_vqa"}]).to_parquet(
        str(tmp_path / "nolabel" / "data" / "test-00000-of-00001.parquet")
    )
    with pytest.raises(data.MedVQADataError, match=r"lacks column\(s\) \['images', 'answer_label', 'dataset_index'\]"):
        data.build_items("pmc", source=tmp_path / "nolabel")
    # Item ids are <dataset_name>/<dataset_index>: a repeated index would make them ambiguous.
    table = pq.read_table(only_pmc / "data" / "test-00000-of-00001.parquet")
    import pyarrow as pa

    table = table.set_column(
        table.schema.get_field_index("dataset_index"), "dataset_index", pa.array([7, 7], pa.int64())
    )
    (tmp_path / "dupes" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "dupes" / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(data.MedVQADataError, match=r"PMC-VQA rows .* repeat dataset_index \['7'\]"):
        data.build_items("pmc", source=tmp_path / "dupes")
    with pytest.raises(data.MedVQADataError, match="cannot load the medical VQA source"):
        data.build_items("pmc", source=tmp_path / "empty_dir_that_is_missing" / "x")


def test_lmms_eval_hooks_on_the_pointer_file(source, monkeypatch):
    import datasets

    monkeypatch.setenv(data.SOURCE_ENV, str(source))
    monkeypatch.setenv(data.SUBSET_ENV, "2")
    pointer = datasets.load_dataset(
        "json", data_files={"test": str(TASK_DIR / "data_pointers" / "mmmu.jsonl")}, split="test"
    )
    docs = utils.process_docs(pointer)
    assert len(docs) == 2
    n_images = []
    for doc in docs:
        visuals = utils.doc_to_visual(doc)
        assert all(v.mode == "RGB" and v.size == (64, 64) for v in visuals)
        n_images.append(len(visuals))
        assert scoring.doc_to_text(doc) == doc["prompt"]
        scored = scoring.process_greedy(doc, [f"<think>x</think><answer>{doc['answer_letter']}</answer>"])
        assert scored["acc1"]["outcomes"] == ["correct"] and scored["acc1"]["item_id"] == doc["item_id"]
        assert scored["acc1"]["subset"] == "seeded2-seed1234" and scored["acc1"]["n_skipped_in_source"] == 0
        # Provenance: the sha256 of the files the item was read from reaches the record and the leaderboard pin.
        assert scored["acc1"]["data_sha256"] == doc["data_sha256"] and len(doc["data_sha256"]) >= 1
        from medbridge.leaderboard.ingest import task_provenance

        assert task_provenance({}, doc["task"], [scored["acc1"]])["data"]["sha256"] == doc["data_sha256"]
        sampled = scoring.process_sampled(doc, [["<answer>A</answer>", "no idea"] * 8])
        assert sampled["pass_at_16"]["n"] == 16 and sampled["pass_at_16"]["source"] == str(source)
    # The subset of 2 out of 3 MMMU rows is seeded; the two-image item is in the full set.
    full = data.build_items("mmmu", source=source, subset="full")[0]
    assert [it["n_images"] for it in full] == [1, 1, 2]
    assert n_images == [it["n_images"] for it in full if it["item_id"] in set(docs["item_id"])]
    # What the model sees is the stored image: pixels follow the answer letter, as the fixture promises.
    import io

    from PIL import Image

    two = data.to_dataset(full)[2]
    want = Image.open(io.BytesIO(answer_image(two["answer_letter"], "mmmu", 1))).convert("RGB")
    assert np.array_equal(np.asarray(utils.doc_to_visual(two)[1]), np.asarray(want))


def test_yaml_files_pointer_files_and_report_groups_agree_with_the_catalog():
    for spec in SETS:
        pointer = [json.loads(x) for x in (TASK_DIR / "data_pointers" / f"{spec.name}.jsonl").read_text().splitlines()]
        assert pointer == [{"dataset_name": spec.dataset_name}]
        for task, template in ((MEDVQA.task(spec), "_template.yaml"),
                               (MEDVQA.passk_task(spec), "_template_passk.yaml")):
            cfg = yaml.safe_load((TASK_DIR / f"{task}.yaml").read_text())
            assert cfg == {
                "task": task,
                "include": template,
                "dataset_kwargs": {"data_files": {"test": f"data_pointers/{spec.name}.jsonl"}},
            }
    group = yaml.safe_load((TASK_DIR / "_group_all.yaml").read_text())
    assert group["group"] == "medvqa"
    assert group["task"] == [t for s in SETS for t in (MEDVQA.task(s), MEDVQA.passk_task(s))]
    assert all(m["weight_by_size"] is False and m["aggregation"] == "mean" for m in group["aggregate_metric_list"])
    assert MEDVQA.report_groups() == {"medvqa average": [MEDVQA.task(s) for s in SETS]}
    titles = [s.title for s in SETS]
    assert len(set(titles)) == len(titles) and all(titles)


# ---------------------------------------------------------------------------------------------
# Hostile rows: errors name the row and the field, and are skippable bad rows, never crashes


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"A": {"B": {"C": "x"}}, "B": "No"}', "option text of ['A'] is not a string (nested JSON"),
        ('{"A": "Yes", "B": "  "}', "option text of ['B'] is empty"),
        ('{"A": "Yes", "B": "No", "C": " yes "}', "options A and C have the same text 'yes'"),
        ('{"A": "Pleural  effusion", "B": "pleural effusion"}', "options A and B have the same text"),
    ],
)
def test_adversarial_options_are_bad_rows(raw, reason):
    with pytest.raises(data.BadRow, match=reason.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")):
        data.parse_options(raw)


def _with_rows(src: Path, dst: Path, changes: dict[int, dict]) -> Path:
    """A copy of the fixture source with some rows' fields replaced (row position -> field -> value)."""
    table = pq.read_table(src / "data" / "test-00000-of-00001.parquet")
    rows = table.to_pylist()
    for pos, fields in changes.items():
        rows[pos].update(fields)
    import pyarrow as pa

    (dst / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), dst / "data" / "test-00000-of-00001.parquet")
    return dst


def test_adversarial_nested_options_row_is_skippable_not_a_recursion_error(tmp_path):
    src = build_medvqa_fixture(tmp_path / "eval", {"vqarad": 3})
    hostile = _with_rows(src, tmp_path / "hostile", {1: {"options": "[" * 50_000 + "]" * 50_000}})
    with pytest.raises(
        data.MedVQADataError, match=r"1 bad row\(s\) in VQA-RAD.*vqa_rad_closed/\d+: options JSON is nested"
    ):
        data.build_items("vqarad", source=hostile, subset="full")
    items, info = data.build_items("vqarad", source=hostile, subset="full", skip_bad=True)
    assert len(items) == 2 and len(info.skipped) == 1


def test_adversarial_image_path_resolves_only_inside_the_dataset_folder(tmp_path):
    src = build_medvqa_fixture(tmp_path / "eval", {"vqarad": 3})
    secret = tmp_path / "secret.png"
    secret.write_bytes(answer_image("A", "vqarad"))
    inside = src / "images" / "ok.png"
    inside.parent.mkdir()
    inside.write_bytes(answer_image("B", "vqarad"))
    escape = [{"bytes": None, "path": "../secret.png"}]
    absolute = [{"bytes": None, "path": str(secret)}]
    relative_ok = [{"bytes": None, "path": "images/ok.png"}]
    hostile = _with_rows(
        src, tmp_path / "eval2", {0: {"images": escape}, 1: {"images": absolute}, 2: {"images": relative_ok}}
    )
    (hostile / "images").mkdir()
    (hostile / "images" / "ok.png").write_bytes(inside.read_bytes())
    (tmp_path / "secret.png").write_bytes(secret.read_bytes())
    with pytest.raises(data.MedVQADataError) as err:
        data.build_items("vqarad", source=hostile, subset="full")
    msg = str(err.value)
    assert msg.startswith("2 bad row(s) in VQA-RAD")
    assert "path '../secret.png' points outside the dataset folder" in msg
    assert f"path {str(secret)!r} points outside the dataset folder" in msg
    items, _ = data.build_items("vqarad", source=hostile, subset="full", skip_bad=True)
    import io

    from PIL import Image

    want = np.asarray(Image.open(io.BytesIO(inside.read_bytes())))
    assert len(items) == 1 and np.array_equal(np.asarray(data.doc_images(items[0])[0]), want)
    # A hub source never reads a bare path from the local disk.
    with pytest.raises(data.BadRow, match="not found in the dataset folder"):
        data.checked_image({"bytes": None, "path": str(secret)}, 0, None)


def test_items_carry_the_sha256_of_the_arrow_files_they_were_read_from(source, monkeypatch, tmp_path):
    import hashlib

    from medbridge.tasks import content_hash

    monkeypatch.setenv("MEDBRIDGE_DATA_CACHE", str(tmp_path / "data_cache"))
    monkeypatch.setattr(content_hash, "_MEMO", {})
    calls = []
    real = content_hash.hash_file
    monkeypatch.setattr(content_hash, "hash_file", lambda p: calls.append(p) or real(p))
    items, _ = data.build_items("pathvqa", source=source, subset="full")
    files = [Path(f["filename"]) for f in data.load_source(str(source), "test", None).cache_files]
    want = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert want and all(it["data_sha256"] == want for it in items)
    data.build_items("slake", source=source, subset="full")  # the same files: hashed once per version
    assert len(calls) == len(files)



def test_adversarial_a_read_only_source_folder_works(tmp_path, monkeypatch):
    """Every write under the source folder fails with EROFS (a read-only mount): the rows load, since
    datasets writes its Arrow files to its own cache, and the items carry their provenance."""
    import builtins
    import errno
    import os

    src = build_medvqa_fixture(tmp_path / "ro" / "eval", {"vqarad": 2})
    monkeypatch.setenv("MEDBRIDGE_DATA_CACHE", str(tmp_path / "data_cache"))
    real_open = builtins.open

    def read_only(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and os.path.abspath(str(file)).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    items, info = data.build_items("vqarad", source=src, subset="full")
    assert info.n_items == 2 and all(it["data_sha256"] for it in items)
    assert len(data.doc_images(items[0])) == items[0]["n_images"]
    data.load_source.cache_clear()
