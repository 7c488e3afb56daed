"""Adversarial inputs for ingest and build: hostile names, inconsistent or corrupt run files, a
build that fails half way; and the paper's rows, partial runs, collapsed sampling, provenance
pins and multi-run folder trees on fast lmms-eval-shaped folders (tests/synthetic_runs.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from medbridge.leaderboard import build as lb_build
from medbridge.leaderboard import figures
from medbridge.leaderboard.build import build_leaderboard
from medbridge.leaderboard.cli import add_parser
from medbridge.leaderboard.ingest import IngestError, ingest_many, ingest_run
from medbridge.leaderboard.reference import REFERENCE_FILE, load_references
from medbridge.leaderboard.store import count, fetch_rows, open_store
from medbridge.leaderboard.tables import table2
from medbridge.leaderboard.verdict import COLLAPSED, recipe
from medbridge.leaderboard.view import View

from .synthetic_runs import medmnist_run, records, write_run

# "$\\bogus{$" is mathtext that matplotlib cannot parse: with math parsing on, every build fails.
HOSTILE = "$\\bogus{$ <script>alert(1)</script> | *b* _u_ [l](http://e)"
SHARED_TABLES = Path(__file__).resolve().parents[2] / "shared" / "paper" / "medbridgerl_tables.json"


def _ingest(store: Path, run_path: Path, **labels) -> int:
    return ingest_run(store, run_path, **labels)


def test_adversarial_hostile_names_are_text_in_html_markdown_and_figures(tmp_path):
    store = tmp_path / "lb.sqlite"
    _ingest(
        store, medmnist_run(tmp_path / "a", ("breast", "organa", "organc"), seed=1), model=HOSTILE, run=HOSTILE, step=0
    )
    _ingest(
        store,
        medmnist_run(tmp_path / "b", ("breast", "organa", "organc"), seed=2, p=0.8),
        model=HOSTILE,
        run=HOSTILE,
        step=10,
    )
    index = build_leaderboard(store, tmp_path / "site")
    page = index.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    md = (tmp_path / "site" / "leaderboard.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert r"\$\\bogus{\$" in md and r"\| \*b\* \_u\_ \[l\](http://e)" in md
    # one table row per model line: the name's "|" did not add a column
    row = next(line for line in md.splitlines() if line.startswith("| ") and "@ step 10" in line)
    header = next(line for line in md.splitlines() if line.startswith("| Model | breast Acc@1"))
    assert len(re.findall(r"(?<!\\)\|", row)) == len(re.findall(r"(?<!\\)\|", header))
    png = next((tmp_path / "site").glob("steps_*.png"))
    assert png.read_bytes()[:4] == b"\x89PNG" and "$" not in png.name and "<" not in png.name


def test_adversarial_failed_build_leaves_the_old_site_and_its_pngs(tmp_path, monkeypatch):
    store = tmp_path / "lb.sqlite"
    _ingest(store, medmnist_run(tmp_path / "a", ("breast", "organa"), seed=1), model="m", run="r", step=0)
    _ingest(store, medmnist_run(tmp_path / "b", ("breast", "organa"), seed=2), model="m", run="r", step=5)
    site = tmp_path / "site"
    build_leaderboard(store, site)
    (site / "notes.txt").write_text("mine")  # a file the build does not write is kept
    before = {p.name: p.read_bytes() for p in site.iterdir()}
    assert "steps_r.png" in before and "index.html" in before

    def broken(*args, **kwargs):
        raise RuntimeError("figure backend exploded")

    monkeypatch.setattr(figures, "steps_figure", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        build_leaderboard(store, site)
    assert {p.name: p.read_bytes() for p in site.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".site.")] == []  # no half-built folder left
    monkeypatch.undo()
    build_leaderboard(store, site)
    assert (site / "notes.txt").read_text() == "mine"


def test_adversarial_bad_runs_are_skipped_by_name_and_the_others_go_on(tmp_path):
    good = medmnist_run(tmp_path / "good", ("breast",))
    bad = {}
    recs = records("breast", 4, p=0.0, k=16)
    recs[0]["c"] = recs[0]["n"] = 16
    recs[0]["outcomes"] = ["incorrect"] * 15 + ["unparsed"]
    bad["inconsistent"] = write_run(tmp_path / "inconsistent", {"medmnist_mcq_breast_passk": recs})
    bad["corrupt_json"] = medmnist_run(tmp_path / "corrupt_json", ("breast",))
    bad["corrupt_json"].write_text(bad["corrupt_json"].read_text()[:-40])
    bad["config_not_dict"] = medmnist_run(tmp_path / "config_not_dict", ("breast",), extra={"config": "pretrained=x"})
    bad["deep"] = medmnist_run(tmp_path / "deep", ("breast",))
    bad["deep"].write_text('{"results": ' + "[" * 200_000 + "]" * 200_000 + "}")
    bad["huge"] = write_run(tmp_path / "huge", {"medmnist_mcq_breast": [dict(records("breast", 1, p=1.0)[0], n=1e999)]})
    bad["not_object"] = medmnist_run(tmp_path / "not_object", ("breast",))
    sample = next(bad["not_object"].parent.glob("*_samples_*breast.jsonl"))
    sample.write_text(sample.read_text() + "[1, 2]\n")
    bad["empty_folder"] = tmp_path / "empty_folder"
    bad["empty_folder"].mkdir()
    store = tmp_path / "lb.sqlite"
    added, skipped = ingest_many(store, [bad["inconsistent"], bad["corrupt_json"], good, *list(bad.values())[2:]])
    assert added > 0
    reasons = dict(skipped)
    assert len(skipped) == len(bad)
    assert "c=16 but 0 of its outcomes are correct" in reasons[str(bad["inconsistent"])]
    assert "not valid JSON" in reasons[str(bad["corrupt_json"])]
    assert "'config' is a str" in reasons[str(bad["config_not_dict"])]
    assert "RecursionError" in reasons[str(bad["deep"])]
    assert "n and c must be integers" in reasons[str(bad["huge"])]
    assert "must be a JSON object" in reasons[str(bad["not_object"])]
    assert "no lmms-eval *_results.json" in reasons[str(bad["empty_folder"])]
    for path, why in skipped:  # every message names the run's file or folder
        assert str(path) in why or str(Path(path).parent) in why, (path, why)
    with open_store(store) as conn:
        assert count(conn, "runs") == 1


def test_adversarial_a_runs_identity_covers_its_sample_logs(tmp_path):
    small = medmnist_run(tmp_path / "small", ("breast",), n_items=4)
    big = medmnist_run(tmp_path / "big", ("breast",), n_items=40)
    big.write_text(small.read_text())  # identical results files, different sample logs
    store = tmp_path / "lb.sqlite"
    assert _ingest(store, small) > 0 and _ingest(store, big) > 0
    assert _ingest(store, big) == 0  # the same run again adds nothing
    with open_store(store) as conn:
        assert count(conn, "runs") == 2


def test_failed_requests_refuse_ingest_unless_partial_and_the_row_says_so(tmp_path):
    recs = records("breast", 10, p=0.5, k=16)
    recs[0]["outcomes"][0] = "request_failed"
    recs[0]["c"] = recs[0]["outcomes"].count("correct")
    run = write_run(
        tmp_path / "run", {"medmnist_mcq_breast": records("breast", 10, p=0.5), "medmnist_mcq_breast_passk": recs}
    )
    store = tmp_path / "lb.sqlite"
    with pytest.raises(IngestError, match=r"1 item\(s\) with failed requests \(medmnist_mcq_breast_passk: 1\)"):
        _ingest(store, run)
    assert _ingest(store, run, model="served", allow_partial=True) > 0
    with open_store(store) as conn:
        row = conn.execute("SELECT partial FROM runs").fetchone()
    assert row["partial"] == "1 item(s) with failed requests (medmnist_mcq_breast_passk: 1)"
    md = (build_leaderboard(store, tmp_path / "site").parent / "leaderboard.md").read_text()
    assert "| served (partial) |" in md


def test_collapsed_sampling_is_flagged_on_the_page_and_in_the_verdict(tmp_path):
    tasks = {
        "medmnist_mcq_breast": records("breast", 8, p=0.5),
        "medmnist_mcq_breast_passk": records("breast", 8, p=0.5, k=16, distinct=1),
        "medmnist_mcq_organa": records("organa", 8, p=0.5),
        "medmnist_mcq_organa_passk": records("organa", 8, p=0.5, k=16, distinct=7),
    }
    store = tmp_path / "lb.sqlite"
    _ingest(store, write_run(tmp_path / "run", tasks), model="collapser")
    with open_store(store) as conn:
        view = View(fetch_rows(conn))
    t = table2(view, [])
    cells = dict(zip(t.columns, [c.text for c in t.rows[0]]))
    assert cells["breast gap"].endswith("(collapsed)") and "collapsed" not in cells["organa gap"]
    _, verdicts = recipe("collapser", store=store)
    by_task = {v.task: v.verdict for v in verdicts}
    assert by_task["medmnist_mcq_breast"] == COLLAPSED and by_task["medmnist_mcq_organa"] != COLLAPSED


def test_rows_whose_provenance_differs_never_share_a_column(tmp_path):
    store = tmp_path / "lb.sqlite"
    _ingest(
        store, medmnist_run(tmp_path / "a", ("breast",), model_args="pretrained=m,max_pixels=50176"), model="m-small"
    )
    _ingest(
        store, medmnist_run(tmp_path / "b", ("breast",), model_args="pretrained=m,max_pixels=1003520"), model="m-large"
    )
    _ingest(
        store,
        medmnist_run(tmp_path / "c", ("breast",), model_args="pretrained=m,max_pixels=50176,device=cuda:1"),
        model="m-small-gpu1",
    )
    with open_store(store) as conn:
        rows = fetch_rows(conn, "task = 'medmnist_mcq_breast' AND metric = 'acc1'")
        view = View(fetch_rows(conn))
    prov = {r["model"]: json.loads(r["provenance"]) for r in rows}
    assert prov["m-small"]["backend"] == "synthetic" and prov["m-small"]["model_args"] == {"max_pixels": "50176"}
    assert prov["m-small"]["extractor_version"] and prov["m-small"]["data"]["path"] == "json"
    assert prov["m-small"] == prov["m-small-gpu1"]  # the device does not change answers
    heads = table2(view, []).columns
    assert "breast Acc@1 [A]" in heads and "breast Acc@1 [B]" in heads and "breast Acc@1 [C]" not in heads
    assert any("max_pixels" in n for n in table2(view, []).notes)


def test_empty_store_shows_the_papers_tables_with_their_settings(tmp_path):
    site = tmp_path / "site"
    index = build_leaderboard(tmp_path / "no-store-yet.sqlite", site)
    assert not (tmp_path / "no-store-yet.sqlite").exists()  # building does not create a store
    page = index.read_text()
    for table_id, n_rows in (("table1", 4), ("table2", 3), ("table3", 7)):
        body = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
        assert body.count('<tr class="reference">') == n_rows, table_id
    assert "Published: MedBridgeRL (Ours, 7B): OctoMed-7B + GRPO-CARE on PMC-VQA 8k" in page
    assert "64.9" in page  # Table 3's printed average
    assert "breast 54.99% (test split: 156 images)" in page  # no k/156 gives 54.99%
    assert "answer verified by Qwen2.5-VL-32B-Instruct" in page  # the paper's stated setting


def test_published_rows_get_deltas_for_a_run_of_the_same_model(tmp_path):
    store = tmp_path / "lb.sqlite"
    _ingest(
        store,
        medmnist_run(tmp_path / "q", ("breast",), n_items=20, model_args="pretrained=Qwen/Qwen2.5-VL-7B-Instruct"),
    )
    with open_store(store) as conn:
        view = View(fetch_rows(conn))
    t = table2(view, load_references())
    delta = next(cells for cells, cls in zip(t.rows, t.row_classes) if cls == "delta")
    col = t.columns.index("breast Acc@1")
    ours = next(r["value"] for r in view.rows if r["task"] == "medmnist_mcq_breast" and r["metric"] == "acc1")
    assert delta[col].sort == pytest.approx(ours - 0.5499)
    assert delta[0].text.startswith("Δ Qwen/Qwen2.5-VL-7B-Instruct")


def test_the_package_reference_file_is_the_shared_transcription():
    if not SHARED_TABLES.is_file():
        pytest.skip(f"{SHARED_TABLES} is not on this machine")
    assert json.loads(REFERENCE_FILE.read_text()) == json.loads(SHARED_TABLES.read_text())


def test_ingest_finds_every_run_in_a_multi_node_output_tree(tmp_path, capsys):
    # lmms-eval writes results and samples from rank 0 only; a sweep over nodes / checkpoints
    # into one --output_path leaves one results file per run somewhere in the tree.
    root = tmp_path / "sweep"
    medmnist_run(root / "node0", ("breast",), model="ckpt-100", stamp="20260101_000100", seed=1)
    medmnist_run(root / "node1" / "retry", ("breast",), model="ckpt-200", stamp="20260101_000200", seed=2)
    (root / "node1" / "rank1.log").write_text("rank 1 writes no results\n")
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    store = tmp_path / "lb.sqlite"
    args = parser.parse_args(["leaderboard", "ingest", str(root), "--store", str(store)])
    assert args.func(args) == 0
    assert "from 2 run(s); 0 skipped" in capsys.readouterr().out
    with open_store(store) as conn:
        assert sorted(r["model"] for r in conn.execute("SELECT model FROM runs")) == ["ckpt-100", "ckpt-200"]


def test_a_new_table_is_one_function_and_one_entry_in_both_outputs(tmp_path, monkeypatch):
    from medbridge.leaderboard.tables import Cell, Table

    def extra(ctx):
        t = Table("extra", "Extra table <b>", "caption", ["Model", "Runs"])
        t.add([Cell("all"), Cell(str(len(ctx.view.entries)))])
        return [lb_build.Section(t.id, t.title, table=t)]

    monkeypatch.setattr(lb_build, "SECTIONS", lb_build.SECTIONS + [extra])
    index = build_leaderboard(tmp_path / "none.sqlite", tmp_path / "site")
    assert '<table class="sortable" id="extra">' in index.read_text() and "Extra table &lt;b&gt;" in index.read_text()
    md = (tmp_path / "site" / "leaderboard.md").read_text()
    assert "## Extra table &lt;b&gt;" in md and "| all | 0 |" in md


def test_recorded_decoding_is_a_pin_and_partial_groups_are_not_stored(tmp_path):
    store = tmp_path / "lb.sqlite"
    for name, top_k in (("top-k-off", 0), ("top-k-one", 1)):
        tasks = {
            "medmnist_mcq_breast_passk": records("breast", 6, p=0.5, k=16),
            "medmnist_mcq_breast": records("breast", 6, p=0.5),
        }
        for r in tasks["medmnist_mcq_breast_passk"]:
            r["decoding"] = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": top_k}
        _ingest(store, write_run(tmp_path / name, tasks), model=name)
    with open_store(store) as conn:
        view = View(fetch_rows(conn))
        assert (
            conn.execute("SELECT COUNT(*) FROM results WHERE task LIKE 'medmnist %'").fetchone()[0] == 0
        )  # 1 of 12: no group row
    t = table2(view, [])
    assert "breast Acc@1" in t.columns  # greedy records carry no decoding difference: one column
    assert "breast gap [A]" in t.columns and "breast gap [B]" in t.columns
    assert any("provenance.decoding" in n and "'top_k': 1" in n for n in t.notes)


def test_the_verdict_and_the_leaderboard_import_neither_training_nor_the_demo():
    import subprocess
    import sys

    code = (
        "import sys, medbridge.leaderboard.verdict, medbridge.leaderboard.build, medbridge.leaderboard.ingest; "
        "print(sorted(m for m in sys.modules if m.startswith(('medbridge.training', 'medbridge.demo'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.e2e
def test_ingest_of_a_real_two_process_run_beside_a_one_process_run(tmp_path):
    """torchrun with two processes (rank 0 writes the results and every rank's samples) and a
    one-process run of the same oracle, in one output tree: one ingest finds both, same numbers."""
    from medbridge.tasks.medmnist.fixtures import build_all

    from .test_backend_dp import ORACLE_LAUNCHER, launch

    data = tmp_path / "data"
    build_all(data, test_per_class=1, train_per_class=1, val_per_class=1)
    root = tmp_path / "sweep"
    base = [
        "--model",
        "oracle",
        "--model_args",
        "p=0.5,seed=3",
        "--tasks",
        "medmnist_mcq_blood,medmnist_mcq_blood_passk",
        "--log_samples",
    ]
    for launcher, folder in (("torchrun", root / "two_procs"), ("single", root / "one_proc")):
        proc = launch(launcher, ORACLE_LAUNCHER, base + ["--output_path", str(folder)], data)
        assert proc.returncode == 0, proc.stderr[-3000:]
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    store = tmp_path / "lb.sqlite"
    args = parser.parse_args(["leaderboard", "ingest", str(root), "--store", str(store)])
    assert args.func(args) == 0
    with open_store(store) as conn:
        rows = fetch_rows(conn, "task = 'medmnist_mcq_blood' AND metric IN ('acc1', 'pass_at_16')")
        assert count(conn, "runs") == 2
    by_source = {}
    for r in rows:
        by_source.setdefault(Path(r["source"]).relative_to(root).parts[0], {})[r["metric"]] = (r["value"], r["n"])
    assert by_source["two_procs"] == by_source["one_proc"] and by_source["two_procs"]["acc1"][1] == 8  # 8 blood classes
