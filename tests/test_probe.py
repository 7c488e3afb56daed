"""The vision-tower linear probe on MedMNIST-format fixtures with the tiny Qwen2.5-VL.

The fixtures' pixels depend on the class, so even the tiny random vision tower's features
separate them; the probe has to beat chance by a clear margin on every dataset.
Measured (tiny model, merger features, 4/2/3 images per class for train/val/test):
breast 100%, organa 93.9%, blood 100% test accuracy (chance 50%, 9.1%, 12.5%).
"""

from __future__ import annotations

import numpy as np
import pytest
from medbridge.leaderboard import probe as probe_mod
from medbridge.leaderboard.probe import format_results, ingest_probe, run_probe
from medbridge.leaderboard.store import count, fetch_rows, open_store
from medbridge.leaderboard.tables import table1
from medbridge.leaderboard.view import View
from medbridge.tasks.medmnist.catalog import get_set
from medbridge.tasks.medmnist.data import MedMNISTFileError
from medbridge.tasks.medmnist.fixtures import build_all

DATASETS = ["breast", "organa", "blood"]


@pytest.fixture(scope="module")
def probe_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    build_all(root / "data", test_per_class=3, train_per_class=4, val_per_class=2)
    cache = root / "cache"
    results = run_probe(tiny_model_dir, DATASETS, root=root / "data", cache=cache, progress=False)
    return results, root, cache


@pytest.mark.slow  # the tiny model's vision tower over the fixtures
def test_probe_beats_chance_by_a_clear_margin(probe_run):
    results, _, _ = probe_run
    print(format_results(results))
    assert [r.dataset for r in results] == DATASETS
    for r in results:
        spec = get_set(r.dataset)
        assert r.n_test == 3 * spec.n_classes and r.n_train == 4 * spec.n_classes
        assert r.chance == pytest.approx(1 / spec.n_classes)
        assert r.accuracy >= r.chance + 0.25, (r.dataset, r.accuracy, r.chance)
        assert r.ci[0] <= r.accuracy <= r.ci[1]
        assert r.best_c in probe_mod.C_GRID


@pytest.mark.slow  # the tiny model's vision tower over the fixtures
def test_features_are_cached_and_reused_without_loading_the_model(probe_run, tiny_model_dir, monkeypatch):
    results, root, cache = probe_run
    files = sorted(p.name for p in cache.glob("*.npz"))
    assert len(files) == 3 * len(DATASETS)  # train / val / test per dataset
    with np.load(next(cache.glob("breastmnist_test_*.npz"))) as z:
        assert z["x"].shape == (6, 64)  # 6 test images, tiny tower's 64-d merged features
        assert list(z["ids"][:1]) == ["breastmnist/test/0"]

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although every split is cached")

    monkeypatch.setattr(probe_mod, "VisionTower", no_model)
    again = run_probe(tiny_model_dir, DATASETS, root=root / "data", cache=cache, progress=False)
    assert [(r.dataset, r.accuracy, r.best_c) for r in again] == [(r.dataset, r.accuracy, r.best_c) for r in results]


@pytest.mark.slow  # the tiny model's vision tower over the fixtures
def test_changed_data_file_invalidates_the_cache(tiny_model_dir, tmp_path):
    build_all(tmp_path / "data", test_per_class=1, train_per_class=2, val_per_class=1)
    mhash = probe_mod.model_hash(tiny_model_dir)
    first = probe_mod.cache_path(mhash, "breast", "test", tmp_path / "data", tmp_path / "c", "merger")
    build_all(tmp_path / "data", test_per_class=2, train_per_class=2, val_per_class=1)
    assert probe_mod.cache_path(mhash, "breast", "test", tmp_path / "data", tmp_path / "c", "merger") != first
    assert probe_mod.cache_path(mhash, "breast", "test", tmp_path / "data", tmp_path / "c", "tower") != first


@pytest.mark.slow  # the tiny model's vision tower over the fixtures
def test_probe_rows_land_in_table1_once(probe_run, tiny_model_dir, tmp_path):
    results, _, _ = probe_run
    store = tmp_path / "lb.sqlite"
    assert ingest_probe(store, tiny_model_dir, results, model="tiny") == len(DATASETS)
    assert ingest_probe(store, tiny_model_dir, results, model="tiny") == 0
    with open_store(store) as conn:
        assert count(conn, "runs") == 1
        view = View(fetch_rows(conn))
    t = table1(view, [])
    assert t.columns == ["Model", "breast", "organa", "blood", "Mean"]
    (row,) = t.rows
    assert row[0].text == "tiny"
    assert [c.sort for c in row[1:4]] == pytest.approx([r.accuracy for r in results])
    assert row[4].sort == pytest.approx(np.mean([r.accuracy for r in results]))


@pytest.mark.slow  # the tiny model's vision tower over the fixtures
def test_missing_data_file_names_the_file(tiny_model_dir, tmp_path):
    with pytest.raises(MedMNISTFileError, match="pathmnist_224.npz"):
        run_probe(tiny_model_dir, ["path"], root=tmp_path, cache=tmp_path / "c", progress=False)


def test_probe_of_a_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="weight files"):
        probe_mod.model_hash(tmp_path)
