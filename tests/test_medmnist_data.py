import json

import numpy as np
import pytest
from medbridge.tasks.medmnist import data
from medbridge.tasks.medmnist.catalog import MODALITIES, SETS, get_set, medmnist_info
from medbridge.tasks.medmnist.fixtures import build_all, build_medmnist_fixture


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("medmnist")
    build_all(r, test_per_class=3, train_per_class=1, val_per_class=1)
    return r


def _build_one(root, name, test_per_class=1):
    """One dataset's fixture file (building all of them takes seconds: the tests need one)."""
    return build_medmnist_fixture(get_set(name), root, {"train": 1, "val": 1, "test": test_per_class})


@pytest.mark.slow  # imports medmnist, which imports torch
def test_the_info_table_read_without_importing_medmnist_is_medmnist_s_own():
    import medmnist

    assert medmnist_info() == medmnist.INFO


def test_catalog_matches_medmnist_info():
    for spec in SETS:
        info = medmnist_info()[spec.flag]
        assert len(info["label"]) == spec.n_classes, spec.flag
        assert (info["n_channels"] == 3) == spec.rgb, spec.flag
        # The answer rule follows medmnist's own task type.
        want = {"multi-label, binary-class": "multilabel_exactly_one", "ordinal-regression": "ordinal"}
        assert spec.rule == want.get(info["task"], "single"), spec.flag
        assert spec.modality in MODALITIES
    assert all(any(s.modality == m for s in SETS) for m in MODALITIES)


def test_fixture_files_have_the_real_layout(root):
    for spec in SETS:
        with np.load(data.npz_path(spec.flag, root)) as npz:
            assert set(npz.files) == {f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")}
            img = npz["test_images"]
            assert img.dtype == np.uint8
            assert img.shape[1:] == ((224, 224, 3) if spec.rgb else (224, 224))
            assert npz["test_labels"].shape[1] == (spec.n_classes if spec.rule == "multilabel_exactly_one" else 1)


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


def _cache_file(npz, split="test"):
    from medbridge.tasks.content_hash import hash_file

    return npz.parent / data.cache_name(npz, split, hash_file(npz))


def test_images_are_read_lazily_from_a_content_keyed_memory_mapped_cache(tmp_path):
    import os

    _build_one(tmp_path, "dermamnist", test_per_class=2)
    npz = data.npz_path("dermamnist", tmp_path)
    images, labels = data.load_split("dermamnist", "test", tmp_path)
    assert isinstance(images, np.memmap) and images.mode == "r"
    cache = _cache_file(npz)
    assert cache.is_file() and str(images.filename) == str(cache)
    with np.load(npz) as arrays:
        assert np.array_equal(images, arrays["test_images"])

    items = data.build_items("dermamnist", "test", root=tmp_path, with_images=False)
    assert "image" not in items[0] and items[0]["source_file"] == str(npz)
    for item in items[:3]:
        assert np.array_equal(np.asarray(data.doc_image(item)), images[item["index"]])

    # Touching the file without changing it keeps the cache (the content hash decides).
    before = cache.stat().st_mtime_ns
    os.utime(npz, ns=(before + 2 * 10**9, before + 2 * 10**9))
    data.load_split("dermamnist", "test", tmp_path)
    assert cache.stat().st_mtime_ns == before


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    """Each test's own hash memo and fallback cache folder (never the user's ~/.cache)."""
    folder = tmp_path_factory.mktemp("data_cache")
    monkeypatch.setenv("MEDBRIDGE_DATA_CACHE", str(folder))
    from medbridge.tasks import content_hash

    monkeypatch.setattr(content_hash, "_MEMO", {})
    data._open_split.cache_clear()
    return folder


def _same_size_replacement(npz, seed, in_place):
    """Another npz of exactly the same byte size (stored, not compressed), given the old mtime."""
    import os

    st = npz.stat()
    with np.load(npz) as old:
        arrays = {k: old[k] for k in old.files}
    rng = np.random.default_rng(seed)
    arrays["test_images"] = rng.integers(0, 256, arrays["test_images"].shape, dtype=np.uint8)
    new = npz.with_name("replacement.npz")
    np.savez(new, **arrays)
    assert new.stat().st_size == st.st_size
    if in_place:  # the same inode, rewritten
        npz.write_bytes(new.read_bytes())
        new.unlink()
    else:
        os.replace(new, npz)
    os.utime(npz, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (npz.stat().st_size, npz.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    return arrays["test_images"]


@pytest.mark.parametrize("in_place", [False, True], ids=["replaced", "rewritten_in_place"])
def test_adversarial_replaced_npz_with_the_same_size_and_mtime_serves_the_new_images(tmp_path, in_place):
    path = data.npz_path("octmnist", tmp_path)
    arrays = {f"{s}_images": np.full((4, 224, 224), 7, np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.arange(4).reshape(4, 1) for s in ("train", "val", "test")})
    np.savez(path, **arrays)
    old, _ = data.load_split("octmnist", "test", tmp_path)
    assert np.all(np.asarray(old) == 7)
    del old
    want = _same_size_replacement(path, seed=3, in_place=in_place)
    data._open_split.cache_clear()
    again, _ = data.load_split("octmnist", "test", tmp_path)
    assert np.array_equal(np.asarray(again), want)
    items = data.build_items("octmnist", root=tmp_path, per_class="all", with_images=False)
    assert np.array_equal(np.asarray(data.doc_image(items[0])), want[items[0]["index"]])
    # Only the current version's cache stays next to the npz.
    assert sorted(p.name for p in tmp_path.glob("octmnist_224.test_images.*")) == [_cache_file(path).name]


def _damage_member(npz, member, damage):
    """Damage one member's stored data in place (what a bad disk or a cut copy does): ``middle`` flips
    bytes in the middle of it, ``block_type`` sets the first deflate block's type to the reserved value
    (the stream itself breaks: zlib.error)."""
    import zipfile

    with zipfile.ZipFile(npz) as zf:
        info = zf.getinfo(member)
    raw = bytearray(npz.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    if damage == "block_type":
        raw[start] |= 0b110
    else:
        middle = start + info.compress_size // 2
        for i in range(middle, middle + min(64, info.compress_size // 4)):
            raw[i] ^= 0xA5
    npz.write_bytes(bytes(raw))


@pytest.mark.parametrize("member", ["test_images.npy", "test_labels.npy"])
@pytest.mark.parametrize(
    "compressed, damage",
    [(True, "block_type"), (True, "middle"), (False, "middle")],
    ids=["deflate_stream_broken", "deflate_bytes_flipped", "stored_bytes_flipped"],
)
def test_adversarial_damaged_npz_names_the_file_and_the_member(tmp_path, member, compressed, damage):
    path = data.npz_path("bloodmnist", tmp_path)
    # Smooth pictures, as real ones are (deflate codes them with Huffman tables).
    ramp = np.add.outer(np.arange(224), np.arange(224)).astype(np.uint8)
    picture = np.stack([np.stack([ramp + k] * 3, axis=-1) for k in range(6)])
    arrays = {f"{s}_images": picture for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.arange(6).reshape(6, 1) % 8 for s in ("train", "val", "test")})
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    _damage_member(path, member, damage)
    for _ in range(2):  # and again: nothing half-written is served the second time
        with pytest.raises(data.MedMNISTFileError) as err:
            data.load_split("bloodmnist", "test", tmp_path)
        assert str(path) in str(err.value) and f"member '{member}'" in str(err.value)
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob(".*tmp"))


def _refuse_writes_under(monkeypatch, *folders):
    """Every open for writing under ``folders`` fails with EROFS, as on a read-only mount."""
    import builtins
    import errno
    import os

    real_open = builtins.open
    real_mkdir = type(folders[0]).mkdir

    def inside(path):
        return any(os.path.abspath(path).startswith(os.path.abspath(f)) for f in folders)

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)

    def fake_mkdir(self, *args, **kwargs):
        if inside(self) and not self.is_dir():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(type(folders[0]), "mkdir", fake_mkdir)


def test_adversarial_read_only_data_folder_caches_in_the_data_cache(tmp_path, monkeypatch, data_cache):
    _build_one(tmp_path, "pathmnist", test_per_class=1)
    npz = data.npz_path("pathmnist", tmp_path)
    _refuse_writes_under(monkeypatch, tmp_path)
    images, _ = data.load_split("pathmnist", "test", tmp_path)
    assert isinstance(images, np.memmap) and str(images.filename).startswith(str(data_cache / "medmnist"))
    with np.load(npz) as arrays:
        assert np.array_equal(images, arrays["test_images"])
    assert not list(tmp_path.glob("*.npy"))


def test_adversarial_nothing_writable_reads_into_memory(tmp_path, monkeypatch, data_cache, caplog):
    _build_one(tmp_path, "retinamnist", test_per_class=1)
    _refuse_writes_under(monkeypatch, tmp_path, data_cache)
    items = data.build_items("retinamnist", root=tmp_path, per_class="all")
    assert len(items) == 5 and "Read-only file system" in caplog.text
    with np.load(data.npz_path("retinamnist", tmp_path)) as arrays:
        assert np.array_equal(np.asarray(items[0]["image"]), arrays["test_images"][items[0]["index"]])


@pytest.mark.slow  # a subprocess in its own mount namespace (about 3 s)
def test_adversarial_a_real_read_only_mount_works(tmp_path):
    """The data folder bind-mounted read-only (EROFS from the kernel, not a simulation); skipped where
    the machine cannot make a mount namespace."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("unshare/mount not available")
    src, ro, cache = tmp_path / "src", tmp_path / "ro", tmp_path / "cache"
    for d in (src, ro, cache):
        d.mkdir()
    _build_one(src, "octmnist", test_per_class=1)
    script = (
        "import numpy as np; from medbridge.tasks.medmnist import data; "
        f"im, _ = data.load_split('octmnist', 'test', {str(ro)!r}); "
        "print(type(im).__name__, im.shape[0], im.filename if isinstance(im, np.memmap) else '-')"
    )
    cmd = (f"mount --bind {src} {ro} && mount -o remount,ro,bind {ro} && touch {ro}/probe 2>/dev/null; "
           f"test $? -ne 0 && MEDBRIDGE_DATA_CACHE={cache} {sys.executable} -c \"{script}\"")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "mount" in proc.stderr and "Traceback" not in proc.stderr:
        pytest.skip(f"no read-only bind mount here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    kind, n, where = proc.stdout.split()
    assert kind == "memmap" and int(n) == 4 and where.startswith(str(cache))


def test_items_carry_the_sha256_of_the_file_they_were_read_from_hashed_once(tmp_path, monkeypatch):
    import hashlib

    from medbridge.tasks import content_hash

    _build_one(tmp_path, "breastmnist", test_per_class=1)
    npz = data.npz_path("breastmnist", tmp_path)
    calls = []
    real = content_hash.hash_file
    monkeypatch.setattr(content_hash, "hash_file", lambda p: calls.append(p) or real(p))
    items = data.build_items("breastmnist", root=tmp_path, with_images=False)
    assert all(it["data_sha256"] == {npz.name: hashlib.sha256(npz.read_bytes()).hexdigest()} for it in items)
    assert len(calls) == 1
    # A new process (no in-process memo) reads the digest from the memo on disk: still no second hash.
    monkeypatch.setattr(content_hash, "_MEMO", {})
    data._open_split.cache_clear()
    data.build_items("breastmnist", root=tmp_path, with_images=False)
    assert len(calls) == 1


def test_process_docs_carries_no_pixels(tmp_path, monkeypatch):
    import datasets
    from medbridge.tasks.medmnist import utils

    _build_one(tmp_path, "bloodmnist", test_per_class=1)
    monkeypatch.setenv("MEDBRIDGE_MEDMNIST_ROOT", str(tmp_path))
    docs = utils.process_docs(datasets.Dataset.from_list([{"flag": "bloodmnist"}]))
    assert "image" not in docs.column_names and len(docs) == 8
    visual = utils.doc_to_visual(docs[0])
    assert visual[0].mode == "RGB" and visual[0].size == (224, 224)


def test_adversarial_corrupt_cache_is_rebuilt(tmp_path):
    _build_one(tmp_path, "octmnist", test_per_class=1)
    images, _ = data.load_split("octmnist", "test", tmp_path)
    expected = np.array(images)
    npy = _cache_file(data.npz_path("octmnist", tmp_path))
    del images
    npy.write_bytes(b"garbage")  # a truncated cache: not the array its name promises
    again, _ = data.load_split("octmnist", "test", tmp_path)
    assert np.array_equal(again, expected)
