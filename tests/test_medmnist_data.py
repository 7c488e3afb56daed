import json

import numpy as np
import pytest
from medbridge.tasks.medmnist import data
from medbridge.tasks.medmnist.catalog import MODALITIES, SETS, get_set
from medbridge.tasks.medmnist.fixtures import build_all, build_medmnist_fixture


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("medmnist")
    build_all(r, test_per_class=3, train_per_class=2, val_per_class=1)
    return r


def test_catalog_matches_medmnist_info():
    import medmnist

    assert len(SETS) == 12
    for spec in SETS:
        info = medmnist.INFO[spec.flag]
        assert len(info["label"]) == spec.n_classes, spec.flag
        assert (info["n_channels"] == 3) == spec.rgb, spec.flag
        assert spec.modality in MODALITIES
    assert [s.name for s in SETS if s.modality == "microscopy"] == ["blood", "path", "tissue"]
    assert [s.name for s in SETS if s.modality == "photography"] == ["derma", "oct", "retina"]


def test_fixture_files_have_the_real_layout(root):
    for spec in SETS:
        with np.load(data.npz_path(spec.flag, root)) as npz:
            assert set(npz.files) == {f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")}
            img = npz["test_images"]
            assert img.dtype == np.uint8
            assert img.shape[1:] == ((224, 224, 3) if spec.rgb else (224, 224))
            assert npz["test_labels"].shape[1] == (14 if spec.flag == "chestmnist" else 1)


def test_items_are_read_through_medmnist_and_balanced(root):
    for spec in SETS:
        items = data.build_items(spec.name, root=root, per_class=2, seed=7)
        labels = [it["label"] for it in items]
        assert sorted(set(labels)) == list(range(spec.n_classes))
        assert all(labels.count(c) == 2 for c in range(spec.n_classes))
        for it in items:
            options = json.loads(it["options"])
            assert len(options) == spec.n_classes
            assert options[it["answer_letter"]] == spec.classes[it["label"]]
            assert it["prompt"].count("\n") >= spec.n_classes + 1
            assert it["image"].size == (224, 224)


def test_subset_is_deterministic_and_seed_dependent(root):
    a = [it["item_id"] for it in data.build_items("organa", root=root, per_class=1, seed=1, with_images=False)]
    b = [it["item_id"] for it in data.build_items("organa", root=root, per_class=1, seed=1, with_images=False)]
    c = [it["item_id"] for it in data.build_items("organa", root=root, per_class=1, seed=2, with_images=False)]
    assert a == b
    assert a != c


def test_full_split_option(root, monkeypatch):
    monkeypatch.setenv(data.PER_CLASS_ENV, "all")
    items = data.build_items("derma", root=root, with_images=False)
    assert len(items) == 3 * 7
    assert items[0]["subset"].startswith("full")


def test_option_order_is_shuffled_so_no_letter_is_always_right(root):
    items = data.build_items("organa", root=root, per_class=3, seed=0, with_images=False)
    letters = {it["answer_letter"] for it in items}
    assert len(letters) >= 5
    orders = {tuple(it["option_order"]) for it in items}
    assert len(orders) > 1


def test_chest_keeps_only_images_with_exactly_one_finding(root):
    spec = get_set("chest")
    _, labels = data.load_split("chestmnist", "test", root)
    y = data.single_labels(spec, labels)
    assert (y[labels.sum(1) != 1] == -1).all()
    assert (y[labels.sum(1) == 1] == labels[labels.sum(1) == 1].argmax(1)).all()
    items = data.build_items("chest", root=root, per_class=100, with_images=False)
    assert len(items) == 14 * 3  # the fixture's 4 zero/two-finding images per split are left out


def test_retina_grades_stay_in_order(root):
    for it in data.build_items("retina", root=root, per_class=3, with_images=False):
        assert it["option_order"] == [0, 1, 2, 3, 4]
        assert it["answer_letter"] == "ABCDE"[it["label"]]


def test_missing_file_error_names_file_layout_and_fetch_command(tmp_path):
    with pytest.raises(data.MedMNISTFileError) as err:
        data.load_split("pathmnist", "test", tmp_path)
    msg = str(err.value)
    assert "pathmnist_224.npz" in msg and "test_images" in msg and "N x 224 x 224 x 3" in msg
    assert "medbridge data medmnist --flags pathmnist" in msg


def test_corrupt_file_error(tmp_path):
    data.npz_path("breastmnist", tmp_path).write_bytes(b"not a zip file")
    with pytest.raises(data.MedMNISTFileError, match="breastmnist_224.npz"):
        data.load_split("breastmnist", "test", tmp_path)


def test_wrong_shape_error(tmp_path):
    path = data.npz_path("bloodmnist", tmp_path)
    arrays = {f"{s}_images": np.zeros((2, 28, 28, 3), np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.zeros((2, 1), np.int64) for s in ("train", "val", "test")})
    np.savez(path, **arrays)
    with pytest.raises(data.MedMNISTFileError, match=r"wrong layout.*\(2, 28, 28, 3\)"):
        data.load_split("bloodmnist", "test", tmp_path)


def test_missing_key_error(tmp_path):
    path = data.npz_path("octmnist", tmp_path)
    np.savez(path, test_images=np.zeros((1, 224, 224), np.uint8))
    with pytest.raises(data.MedMNISTFileError, match="octmnist_224.npz"):
        data.load_split("octmnist", "test", tmp_path)


def test_bad_per_class_value(root):
    with pytest.raises(ValueError, match="positive integer or 'all'"):
        data.resolve_per_class("lots")


def _write_npz(path, images, labels):
    arrays = {f"{s}_images": images for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": labels for s in ("train", "val", "test")})
    np.savez(path, **arrays)


def test_adversarial_zero_d_image_array_is_a_layout_error(tmp_path):
    _write_npz(data.npz_path("octmnist", tmp_path), np.array(7, np.uint8), np.zeros((1, 1), np.int64))
    with pytest.raises(data.MedMNISTFileError, match="0-d array") as err:
        data.load_split("octmnist", "test", tmp_path)
    assert "octmnist_224.npz" in str(err.value) and "0-d" in str(err.value)


@pytest.mark.parametrize("bad_value", [2, -1, 255])
def test_adversarial_chest_labels_must_be_zero_or_one(tmp_path, bad_value):
    labels = np.zeros((2, 14), np.int64)
    labels[0, 3] = 1
    labels[1, 5] = bad_value  # a shifted (2), negative or overflowed (255) multi-hot label
    _write_npz(data.npz_path("chestmnist", tmp_path), np.zeros((2, 224, 224), np.uint8), labels)
    with pytest.raises(data.MedMNISTFileError, match=rf"must be 0/1 per finding, found \[{bad_value}\]") as err:
        data.load_split("chestmnist", "test", tmp_path)
    assert "chestmnist_224.npz" in str(err.value)


def test_adversarial_empty_split_is_an_error_not_an_empty_task(tmp_path):
    _write_npz(data.npz_path("pneumoniamnist", tmp_path), np.zeros((0, 224, 224), np.uint8), np.zeros((0, 1), np.int64))
    with pytest.raises(data.MedMNISTFileError, match=r"'test_images' is empty \(0 images\).*pneumoniamnist_224.npz"):
        data.build_items("pneumoniamnist", "test", root=tmp_path)


def test_adversarial_chest_split_without_single_finding_images_is_an_error(tmp_path):
    labels = np.zeros((3, 14), np.int64)
    labels[1, [0, 1]] = 1  # no image has exactly one finding
    _write_npz(data.npz_path("chestmnist", tmp_path), np.zeros((3, 224, 224), np.uint8), labels)
    with pytest.raises(data.MedMNISTFileError, match=r"no test image of .*chestmnist_224.npz has a single answer"):
        data.build_items("chestmnist", "test", root=tmp_path)


def test_file_errors_are_user_errors():
    from medbridge.harness_ext.errors import MedbridgeError

    assert issubclass(data.MedMNISTFileError, MedbridgeError)


# ---------------------------------------------------------------------------------------------
# Lazy images: a memory-mapped cache next to the npz, decoded per doc


def test_images_are_read_lazily_from_a_stamped_memory_mapped_cache(tmp_path):
    import os

    build_all(tmp_path, test_per_class=2, train_per_class=1, val_per_class=1)
    npz = data.npz_path("dermamnist", tmp_path)
    images, labels = data.load_split("dermamnist", "test", tmp_path)
    assert isinstance(images, np.memmap) and images.mode == "r"
    npy, stamp_path = data.cache_paths(npz, "test")
    stamp = json.loads(stamp_path.read_text())
    assert stamp["npz_size"] == npz.stat().st_size and len(stamp["npz_md5"]) == 32
    with np.load(npz) as arrays:
        assert np.array_equal(images, arrays["test_images"])

    items = data.build_items("dermamnist", "test", root=tmp_path, with_images=False)
    assert "image" not in items[0] and items[0]["source_file"] == str(npz)
    for item in items[:3]:
        assert np.array_equal(np.asarray(data.doc_image(item)), images[item["index"]])

    # A replaced npz (different content, same name) makes the cache stale: it is rebuilt.
    built = npy.stat().st_mtime_ns
    build_medmnist_fixture(get_set("dermamnist"), tmp_path, {"train": 1, "val": 1, "test": 3}, seed=5)
    os.utime(npz, ns=(built + 10**9, built + 10**9))
    again, _ = data.load_split("dermamnist", "test", tmp_path)
    assert again.shape[0] == 7 * 3 and json.loads(stamp_path.read_text())["npz_md5"] != stamp["npz_md5"]
    # Touching the file without changing it keeps the cache (the MD5 decides).
    before = npy.stat().st_mtime_ns
    os.utime(npz, ns=(before + 2 * 10**9, before + 2 * 10**9))
    data.load_split("dermamnist", "test", tmp_path)
    assert npy.stat().st_mtime_ns == before


def test_process_docs_carries_no_pixels(tmp_path, monkeypatch):
    import datasets
    from medbridge.tasks.medmnist import utils

    build_all(tmp_path, test_per_class=1, train_per_class=1, val_per_class=1)
    monkeypatch.setenv("MEDBRIDGE_MEDMNIST_ROOT", str(tmp_path))
    docs = utils.process_docs(datasets.Dataset.from_list([{"flag": "bloodmnist"}]))
    assert "image" not in docs.column_names and len(docs) == 8
    visual = utils.doc_to_visual(docs[0])
    assert visual[0].mode == "RGB" and visual[0].size == (224, 224)


def test_adversarial_corrupt_cache_is_rebuilt(tmp_path):
    build_all(tmp_path, test_per_class=1, train_per_class=1, val_per_class=1)
    images, _ = data.load_split("octmnist", "test", tmp_path)
    expected = np.array(images)
    npy, _ = data.cache_paths(data.npz_path("octmnist", tmp_path), "test")
    del images
    npy.write_bytes(b"garbage")  # a truncated cache: its size no longer matches the stamp
    again, _ = data.load_split("octmnist", "test", tmp_path)
    assert np.array_equal(again, expected)
