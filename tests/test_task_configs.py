"""The checked-in task YAMLs and data-pointer files are exactly what the generators write from the
catalogs (regenerated into a temporary folder), and they state every decoding setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from medbridge.harness_ext import decoding, metric_registry, scoring
from medbridge.tasks import config_writer, generate
from medbridge.tasks.families import FAMILIES as REGISTRY
from medbridge.tasks.families import MEDMNIST, MEDVQA
from medbridge.tasks.medmnist import _generate_configs as medmnist_gen
from medbridge.tasks.medmnist import catalog as medmnist_catalog
from medbridge.tasks.medvqa import _generate_configs as medvqa_gen
from medbridge.tasks.medvqa import catalog as medvqa_catalog
from medbridge.tasks.medvqa_medvlthinker import _generate_configs as medvlthinker_gen

# The families with Pass@K twins: generator, catalog, registry entry.
FAMILIES = [(medmnist_gen, medmnist_catalog, MEDMNIST), (medvqa_gen, medvqa_catalog, MEDVQA)]
# Every family of the registry and its generator: the list `python -m medbridge.tasks.generate` runs.
GENERATORS = generate.generators()


class _TagLoader(yaml.SafeLoader):
    pass


_TagLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_TagLoader)  # noqa: S506 - SafeLoader subclass


def test_every_registry_family_has_its_generator():
    assert {f.folder for f in REGISTRY} == set(GENERATORS) == {"medmnist", "medvqa", "medvqa_medvlthinker"}
    assert all(GENERATORS[f.folder].FOLDER.name == f.folder for f in REGISTRY)
    assert GENERATORS["medvqa"] is medvqa_gen and GENERATORS["medvqa_medvlthinker"] is medvlthinker_gen


def test_a_family_without_a_generator_is_an_error(monkeypatch):
    monkeypatch.setattr(generate, "GENERATORS", (medmnist_gen, medvqa_gen))
    with pytest.raises(RuntimeError, match=r"GENERATORS cover \['medmnist', 'medvqa'\], the families are"):
        generate.generators()


def test_the_one_command_writes_every_family_and_the_readme_in_step(tmp_path):
    """`python -m medbridge.tasks.generate` on a copy: every family's files are the checked-in ones and
    the README (in step) is unchanged; a stale metric table is rewritten from the registry."""
    readme = tmp_path / "README.md"
    checked_in = config_writer.README_PATH.read_text()
    readme.write_text(checked_in)
    generate.main(["--out-root", str(tmp_path / "tasks"), "--readme", str(readme)])
    for folder, gen in GENERATORS.items():
        assert config_writer.generated_paths(tmp_path / "tasks" / folder) == config_writer.generated_paths(gen.FOLDER)
    assert readme.read_text() == checked_in
    begin, end = config_writer._markers(generate.METRICS_BLOCK)
    head, rest = checked_in.split(begin, 1)
    readme.write_text(head + begin + "\n| `maj_at_16` | stale |\n" + end + rest.split(end, 1)[1])
    generate.main(["--out-root", str(tmp_path / "tasks"), "--readme", str(readme)])
    assert readme.read_text() == checked_in


def test_the_readme_metric_table_is_the_registry_s():
    readme = config_writer.README_PATH.read_text()
    written = config_writer.readme_with_blocks(readme, generate.readme_blocks(), generate.GENERATOR,
                                               generate.METRICS_SOURCE)
    assert written == readme, "README metric table drifted from the registry: rerun python -m medbridge.tasks.generate"
    for name in [*metric_registry.METRICS, metric_registry.GAP.name]:  # every metric has its row
        assert f"| `{name}` | {metric_registry.get(name).label} |" in readme, name


@pytest.mark.parametrize("gen", GENERATORS.values(), ids=GENERATORS)
def test_checked_in_files_equal_a_fresh_generation(gen, tmp_path):
    gen.main(["--out", str(tmp_path)])
    fresh = config_writer.generated_paths(tmp_path)
    checked_in = config_writer.generated_paths(gen.FOLDER)
    assert fresh == checked_in, "stale or missing files: rerun python -m medbridge.tasks.generate"
    drifted = [rel for rel in sorted(fresh) if (tmp_path / rel).read_text() != (gen.FOLDER / rel).read_text()]
    assert not drifted, f"{drifted} differ from the generator's output: rerun python -m medbridge.tasks.generate"


def test_drift_is_detected_and_rewritten(tmp_path):
    medmnist_gen.main(["--out", str(tmp_path)])
    (tmp_path / "medmnist_mcq_oct.yaml").write_text("task: medmnist_mcq_oct\n")
    (tmp_path / "medmnist_mcq_gone.yaml").write_text("task: medmnist_mcq_gone\n")
    medmnist_gen.main(["--out", str(tmp_path)])
    assert not (tmp_path / "medmnist_mcq_gone.yaml").exists()
    assert "_template.yaml" in (tmp_path / "medmnist_mcq_oct.yaml").read_text()


@pytest.mark.parametrize("gen, catalog, family", FAMILIES, ids=["medmnist", "medvqa"])
def test_every_catalog_entry_has_both_tasks_with_explicit_decoding(gen, catalog, family):
    folder = gen.FOLDER
    greedy = _load(folder / "_template.yaml")["generation_kwargs"]
    sampled = _load(folder / "_template_passk.yaml")["generation_kwargs"]
    keys = {"do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens"}
    assert keys <= set(greedy) and keys <= set(sampled)
    assert decoding.task_decoding(greedy) == catalog.GREEDY_DECODING
    assert decoding.task_decoding(sampled) == catalog.SAMPLED_DECODING
    assert (
        catalog.SAMPLED_DECODING.temperature,
        catalog.SAMPLED_DECODING.top_p,
        catalog.SAMPLED_DECODING.top_k,
        catalog.SAMPLED_DECODING.repetition_penalty,
    ) == (0.7, 0.9, None, 1.0)
    assert not catalog.GREEDY_DECODING.do_sample
    for spec in catalog.SETS:
        for task, sampled_task in ((family.task(spec), False), (family.passk_task(spec), True)):
            cfg = _load(folder / f"{task}.yaml")
            assert cfg["task"] == task
            assert cfg["include"] == ("_template_passk.yaml" if sampled_task else "_template.yaml")
            pointer = folder / cfg["dataset_kwargs"]["data_files"]["test"]
            assert pointer.is_file() and pointer.parent.name == config_writer.POINTER_DIR
    metrics = [m["metric"] for m in _load(folder / "_template_passk.yaml")["metric_list"]]
    assert metrics == list(metric_registry.reported("sampled"))


@pytest.mark.parametrize("family", REGISTRY, ids=lambda f: f.name)
def test_the_readme_tables_are_the_generator_s(family):
    gen = GENERATORS[family.folder]
    written = gen.family()
    assert written.readme_blocks, "every family documents its tasks in the README"
    drift = config_writer.readme_drift(written)
    assert not drift, f"README blocks {drift} differ from the catalog: rerun python -m medbridge.tasks.generate"
    readme = config_writer.README_PATH.read_text()
    for task in family.greedy_tasks:  # every catalog entry has its row
        assert f"| `{task}` " in readme, task


def test_readme_blocks_are_rewritten_and_missing_markers_named(tmp_path):
    family = medvqa_gen.family()
    (block,) = family.readme_blocks
    begin, end = config_writer._markers(block)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{begin}\n| stale | table |\n{end}\n\nafter\n")
    medvqa_gen.main(["--out", str(tmp_path / "tasks"), "--readme", str(readme)])
    text = readme.read_text()
    assert "| stale |" not in text and text.startswith("# title\n\n") and text.endswith(f"{end}\n\nafter\n")
    assert config_writer.readme_drift(family, readme) == []
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match=block):
        config_writer.write_readme(family, readme)


@pytest.mark.parametrize("gen", GENERATORS.values(), ids=GENERATORS)
def test_every_hook_a_yaml_names_resolves_where_lmms_eval_looks(gen):
    """lmms-eval resolves ``!function a.b`` to a.py beside the YAML, else to an importable module; the
    hooks every family shares are named by module path, so they are the scoring module's own objects."""
    import importlib

    for path in sorted(gen.FOLDER.glob("*.yaml")):
        for ref in re.findall(r"!function (\S+)", path.read_text()):
            module, _, name = ref.rpartition(".")
            beside = gen.FOLDER / f"{module}.py"
            if beside.is_file():
                assert f"def {name}(" in beside.read_text(), (path.name, ref)
            else:
                assert module.startswith("medbridge."), (path.name, ref)
                assert callable(getattr(importlib.import_module(module), name)), (path.name, ref)


@pytest.mark.slow  # imports lmms-eval (about 5 s)
def test_lmms_eval_loads_every_task_config_with_our_hooks():
    from lmms_eval.utils import load_yaml_config

    for gen, catalog, family in FAMILIES:
        spec = catalog.SETS[0]
        greedy = load_yaml_config(str(gen.FOLDER / f"{family.task(spec)}.yaml"))
        sampled = load_yaml_config(str(gen.FOLDER / f"{family.passk_task(spec)}.yaml"))
        assert greedy["process_results"] is scoring.process_greedy
        assert sampled["process_results"] is scoring.process_sampled
        assert greedy["doc_to_text"] is scoring.doc_to_text
        assert greedy["process_docs"].__module__ == "utils" and callable(greedy["doc_to_visual"])
        for entry in greedy["metric_list"] + sampled["metric_list"]:
            assert entry["aggregation"] is getattr(scoring, scoring.AGGREGATION_PREFIX + entry["metric"])


def test_group_metric_names_match_only_their_own_metric():
    # lmms-eval's group aggregation matches by substring: no reported name may contain another.
    names = set(metric_registry.reported("greedy") + metric_registry.reported("sampled"))
    clashes = [(a, b) for a in names for b in names if a != b and a in b]
    assert not clashes
