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
from medbridge.leaderboard.tables import gap_table, table2
from medbridge.leaderboard.verdict import COLLAPSED, recipe
from medbridge.leaderboard.view import View

from .synthetic_runs import medmnist_run, records, write_run

# "$\\bogus{$" is mathtext that matplotlib cannot parse: with math parsing on, every build fails.
HOSTILE = "$\\bogus{$ <script>alert(1)</script> | *b* _u_ [l](http://e)"
SHARED_TABLES = Path(__file__).resolve().parents[2] / "shared" / "paper" / "medbridgerl_tables.json"


def _ingest(store: Path, run_path: Path, **labels) -> int:
    return ingest_run(store, run_path, **labels)


@pytest.mark.slow  # two builds with figures (~5 s)
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
    lines = md.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| ") and "@ step 10" in line)
    row = lines[at]
    header = next(line for line in reversed(lines[:at]) if line.startswith("| Model |"))  # its own table's
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


def test_judge_failures_refuse_ingest_unless_partial_and_are_never_scored(tmp_path):
    """Issue 20 item 3, ingest side: a judge outage used to be stored as a complete 0% row. Items
    whose verdict failed are left out (report's own check), the run is refused without
    --allow-partial, and with it the row is marked partial and computed over the answered items."""
    greedy = records("breast", 10, p=1.0)
    for r in greedy[:4]:
        r["outcomes"] = ["judge_failed"]
        r["c"] = 0
    run = write_run(tmp_path / "run", {"medmnist_mcq_breast": greedy})
    store = tmp_path / "lb.sqlite"
    with pytest.raises(IngestError, match=r"failed judge verdicts"):
        _ingest(store, run)
    code, out, err = _cli(["leaderboard", "ingest", str(run), "--store", str(store)])
    assert code == 2 and "failed judge verdicts" in err and "--allow-partial" in err
    assert _ingest(store, run, model="judged", allow_partial=True) > 0
    with open_store(store) as conn:
        row = fetch_rows(conn, "metric = 'acc1'")[0]
        partial = conn.execute("SELECT partial FROM runs").fetchone()[0]
    assert "failed judge verdicts" in partial and "medmnist_mcq_breast: 4" in partial
    assert row["value"] == 1.0 and row["n"] == 6  # the 6 answered items, all correct; not 60%


def test_a_refused_run_writes_nothing_and_the_partial_ingest_after_it_says_it_added_the_run(tmp_path):
    """Every item's verdict failed: the refused ingest writes nothing; --allow-partial then adds the run
    (marked partial, no numbers) and says so; it used to print 'already in the store, nothing added'."""
    greedy = records("breast", 5, p=1.0)
    for r in greedy:
        r["outcomes"], r["c"] = ["judge_failed"], 0
    run = write_run(tmp_path / "run", {"medmnist_mcq_breast": greedy})
    store = tmp_path / "lb.sqlite"

    def stored() -> tuple[list, int]:
        with open_store(store) as conn:
            return [tuple(r) for r in conn.execute("SELECT partial FROM runs")], count(conn, "results")

    code, out, err = _cli(["leaderboard", "ingest", str(run), "--store", str(store)])
    assert code == 2 and "failed judge verdicts" in err
    assert "0 run(s) added with 0 rows; 0 already in the store; 1 skipped" in out
    assert stored() == ([], 0)
    code, out, err = _cli(["leaderboard", "ingest", str(run), "--store", str(store), "--allow-partial"])
    assert code == 0, err
    assert "already in the store" not in out.splitlines()[0]
    assert "run added, 0 rows added (no item was answered, so it has no numbers); marked partial: 5 item(s) with " \
        "failed judge verdicts (medmnist_mcq_breast: 5)" in out
    assert "1 run(s) added with 0 rows; 0 already in the store; 0 skipped" in out
    assert stored() == ([("5 item(s) with failed judge verdicts (medmnist_mcq_breast: 5)",)], 0)
    code, out, err = _cli(["leaderboard", "ingest", str(run), "--store", str(store), "--allow-partial"])
    assert code == 0 and "already in the store, nothing added" in out
    assert "0 run(s) added with 0 rows; 1 already in the store; 0 skipped" in out


def test_collapsed_sampling_is_flagged_on_the_page_and_in_the_verdict(tmp_path):
    tasks = {
        "medmnist_mcq_breast": records("breast", 8, p=0.5),
        "medmnist_mcq_breast_passk": records("breast", 8, p=0.5, k=16, distinct=1),
        "medmnist_mcq_organa": records("organa", 8, p=0.5),
        "medmnist_mcq_organa_passk": records("organa", 8, p=0.5, k=16, distinct=7),
    }
    for r in tasks["medmnist_mcq_breast_passk"]:  # its backend recorded a sampler that cannot sample
        r["decoding"] = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 1}
    store = tmp_path / "lb.sqlite"
    _ingest(store, write_run(tmp_path / "run", tasks), model="collapser")
    with open_store(store) as conn:
        view = View(fetch_rows(conn))
    t = gap_table(view)
    cells = {head.split()[0]: c.text for head, c in zip(t.columns, t.rows[0])}
    assert cells["breast"].endswith("(collapsed)") and "collapsed" not in cells["organa"]
    assert "breast †" in t.columns  # top_k 1 is not the paper's sampler, and the column says so
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
    assert "breast [A]" in heads and "breast [B]" in heads and "breast [C]" not in heads
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
    assert "64.91" in page  # Table 3's printed average
    assert "breast 54.99% of 156 test images" in page  # no k/156 gives 54.99%
    assert "answer verified by Qwen2.5-VL-32B-Instruct" in page  # the paper's stated setting


def test_published_values_are_shown_as_printed_with_the_papers_own_inconsistency_and_item_counts(tmp_path):
    """Issue 20 item 8. Old code showed one decimal: 70 of 133 values lost their second decimal
    (54.99 -> 55.0) with inconsistent rounding (80.95 -> 81.0, 93.35 -> 93.3)."""
    import html

    index = build_leaderboard(tmp_path / "none.sqlite", tmp_path / "site")
    page = html.unescape(index.read_text())
    refs = [r for r in load_references() if r.table in ("table1", "table2", "table3")]  # the paper's
    shown = 0
    for ref in refs:
        body = page.split(f'id="{ref.table}"', 1)[1].split("</table>", 1)[0]
        row = body.split(f"Published: {ref.label}", 1)[1].split("</tr>", 1)[0]
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
        for value in [*ref.values.values(), *ref.extra.values()]:  # Table 3's printed Avg too
            assert f"{value:.2f}" in cells, (ref.table, ref.label, value)
            shown += 1
    assert shown == 133
    for printed in ("54.99", "8.70", "80.95", "93.35", "88.00", "91.00"):
        assert f">{printed}<" in page, printed
    table3 = page.split('id="table3"', 1)[1].split("<h2", 1)[0]
    assert "The paper prints Avg 64.91 for MedBridgeRL (Ours, 7B)" in table3
    assert "the mean of its printed values is 64.82" in table3
    assert "multiple of 1/200 (MMMU (medical): 1/170)" in table3 and "about ±7 points" in table3
    assert "±6.9 over 200" in table3 and "±7.5 over 170" in table3
    # only Table 3 gets the caveat: Tables 1 and 2 rest on subsets the paper does not size
    assert "multiple of 1/" not in page.split('id="table3"', 1)[0]
    assert "multiple of 1/" not in page.split('id="medvlthinker"', 1)[1]  # means of 3 runs over full sets


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
    col = t.columns.index("breast")
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
    assert "2 run(s) added with " in capsys.readouterr().out
    with open_store(store) as conn:
        assert sorted(r["model"] for r in conn.execute("SELECT model FROM runs")) == ["ckpt-100", "ckpt-200"]


def test_a_new_table_is_one_decorated_function_in_both_outputs(tmp_path, monkeypatch):
    from medbridge.leaderboard import tables
    from medbridge.leaderboard.cells import Cell, Table

    monkeypatch.setattr(tables, "SECTIONS", list(tables.SECTIONS))  # the registration below is this test's only

    @tables.on_page
    def extra(view):
        t = Table("extra", "Extra table <b>", "caption", ["Model", "Runs"])
        t.add([Cell("all"), Cell(str(len(view.entries)))])
        return t

    assert tables.SECTIONS[-1].__name__ == "extra" and extra.__name__ == "extra"  # the function itself is kept
    index = build_leaderboard(tmp_path / "none.sqlite", tmp_path / "site")
    assert '<table class="sortable" id="extra">' in index.read_text() and "Extra table &lt;b&gt;" in index.read_text()
    md = (tmp_path / "site" / "leaderboard.md").read_text()
    assert "## Extra table &lt;b&gt;" in md and "| all | 0 |" in md
    assert md.index("## Ingested runs") < md.index("## Extra table")  # page order is definition order
    with pytest.raises(TypeError, match=r"@on_page typo: parameter\(s\) \['veiw'\] are not Page fields"):

        @tables.on_page
        def typo(veiw):
            return None


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
    assert "breast" in table2(view, []).columns  # greedy records carry no decoding difference: one column
    t = gap_table(view)
    assert "breast [A]" in t.columns and "breast [B] †" in t.columns  # B: top_k 1, not the paper's sampler
    assert any("provenance.decoding" in n and "'top_k': 1" in n for n in t.notes)
    assert any(
        n.startswith("† Decoding differs") and "breast [B]: top_k 1 (paper: off)" in n
        for n in t.notes
    )


def test_the_verdict_and_the_leaderboard_load_no_training_code_and_no_demo():
    """verdict finds recipes through the path medbridge.training exports (its __init__ loads nothing
    heavy): no training module, TRL, torch or the demo comes with the leaderboard."""
    import subprocess
    import sys

    code = (
        "import sys, medbridge.leaderboard.verdict, medbridge.leaderboard.build, medbridge.leaderboard.ingest; "
        "from medbridge.leaderboard.verdict import RECIPES_DIR; from medbridge.training import RECIPES_DIR as R; "
        "assert RECIPES_DIR == R and R.is_dir(), R; "
        "print(sorted(m for m in sys.modules if m.startswith(('medbridge.training.', 'medbridge.demo', 'trl', "
        "'torch', 'transformers'))))"
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


# ------------------------------------------------------------------ the store under damage and load (issue 21)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """The medbridge command in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from medbridge.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_store_read_commands_write_nothing_and_run_no_ddl(tmp_path):
    """build and recipe open the store read-only: not a byte of it changes (the old open dropped and
    recreated a view on every read, so it wrote the file), and no journal is left beside it."""
    import sqlite3

    store = tmp_path / "lb.sqlite"
    _ingest(store, medmnist_run(tmp_path / "a", ("breast", "organa")), model="m")
    before = _sha(store)
    schema_before = sqlite3.connect(store).execute("PRAGMA schema_version").fetchone()[0]
    build_leaderboard(store, tmp_path / "site")
    recipe("m", store=store)
    with open_store(store) as conn:
        assert count(conn, "runs") == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("CREATE TABLE x (y)")
    assert _sha(store) == before
    assert sqlite3.connect(store).execute("PRAGMA schema_version").fetchone()[0] == schema_before
    assert sorted(p.name for p in tmp_path.glob("lb.sqlite*")) == ["lb.sqlite", "lb.sqlite.last-good"]


def test_a_store_written_by_the_old_schema_is_read_without_migration_and_migrated_by_a_write(tmp_path):
    """A version-2 store (a 'rows' view, no provenance/partial columns) builds read-only as it is;
    the next ingest migrates it under the write lock."""
    import sqlite3

    store = tmp_path / "old.sqlite"
    _ingest(store, medmnist_run(tmp_path / "a", ("breast",)), model="old-run")
    conn = sqlite3.connect(store)
    conn.executescript(
        "CREATE TABLE results2 AS SELECT run_id, task, dataset, metric, value, ci_low, ci_high, n, config_hash,"
        " subset_hash, prompt_version, judge_model, judge_prompt_version, gen_settings FROM results;"
        "DROP TABLE results; ALTER TABLE results2 RENAME TO results;"
        "CREATE VIEW rows AS SELECT r.* FROM results r JOIN runs u USING (run_id);"
        "UPDATE meta SET value = '2' WHERE key = 'schema_version';"
    )
    conn.commit()
    conn.close()
    before = _sha(store)
    page = build_leaderboard(store, tmp_path / "site").read_text()
    assert "old-run" in page and _sha(store) == before
    _ingest(store, medmnist_run(tmp_path / "b", ("breast",), seed=5), model="new-run")
    with open_store(store) as conn:
        assert {r["name"] for r in conn.execute("PRAGMA table_info(results)")} >= {"provenance"}
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'rows'").fetchone()[0] == 0
        assert {r["model"] for r in fetch_rows(conn)} == {"old-run", "new-run"}


def test_a_build_after_an_ingest_killed_mid_write_reads_the_last_committed_state(tmp_path):
    """kill -9 inside an ingest's transaction leaves a hot journal, which a read-only connection cannot
    roll back: the read rolls it back once (SQLite's own recovery) and builds from what was committed."""
    import subprocess
    import sys

    store = tmp_path / "lb.sqlite"
    _ingest(store, medmnist_run(tmp_path / "a", ("breast",)), model="committed")
    killer = (
        "import os, sys; from medbridge.leaderboard.store import connect; c = connect(sys.argv[1], write=True); "
        "c.execute('PRAGMA cache_size=1'); c.execute('BEGIN IMMEDIATE'); "
        "c.executemany('INSERT INTO items VALUES (?,?,?,?,?,?)', [('x', 't', str(i), 1, 1, 1) for i in range(50000)]); "
        "os._exit(9)"
    )
    subprocess.run([sys.executable, "-c", killer, str(store)], timeout=120)
    assert Path(f"{store}-journal").exists()  # the killed writer's unfinished transaction
    page = build_leaderboard(store, tmp_path / "site").read_text()
    assert "committed" in page
    with open_store(store) as conn:
        assert count(conn, "items") == 12 * 2 and count(conn, "runs") == 1


def _open_and_count(store: str) -> int:
    with open_store(store) as conn:
        return len(fetch_rows(conn, "metric = 'acc1'"))


def _ingest_one(args: tuple[str, str, str]) -> int:
    store, run, name = args
    return ingest_run(store, run, model=name)


def _build(args: tuple[str, str]) -> str:
    return str(build_leaderboard(args[0], args[1]))


@pytest.mark.slow
def test_300_concurrent_opens_and_11_ingests_during_builds_all_succeed(tmp_path):
    """Old code: every open ran DDL ('view rows already exists': 1 in 300 opens; 4 of 11 ingests
    failed while a build ran). Now readers run no DDL and writers take SQLite's lock in turn."""
    import multiprocessing

    store = tmp_path / "lb.sqlite"
    _ingest(store, medmnist_run(tmp_path / "seed", ("breast",)), model="seed")
    runs = [str(medmnist_run(tmp_path / f"r{i}", ("breast",), seed=i + 10, n_items=6)) for i in range(11)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6) as pool:
        builds = [pool.apply_async(_build, ((str(store), str(tmp_path / f"site{i}")),)) for i in range(2)]
        ingests = [pool.apply_async(_ingest_one, ((str(store), run, f"m{i}"),)) for i, run in enumerate(runs)]
        opens = [pool.apply_async(_open_and_count, (str(store),)) for _ in range(300)]
        results = [job.get(timeout=600) for job in builds + ingests + opens]
    assert all(Path(p).is_file() for p in results[:2])
    assert all(n > 0 for n in results[2:13])
    assert all(n >= 1 for n in results[13:])
    with open_store(store) as conn:
        assert count(conn, "runs") == 12


def _damage(path: Path) -> None:
    """Noise over every page after the first (the header stays intact, so SQLite opens the file)."""
    data = path.read_bytes()
    path.write_bytes(data[:4096] + bytes((i * 7 + 3) % 251 for i in range(len(data) - 4096)))


def test_a_damaged_store_is_refused_before_any_write_naming_the_file_and_its_last_good_copy(tmp_path):
    """Old code: ingest into a damaged store printed 'rows added', exited 0 and wrote into the
    malformed file; build and recipe took the bug path."""
    store = tmp_path / "lb.sqlite"
    _ingest(store, medmnist_run(tmp_path / "a", ("breast", "organa")), model="first")
    _ingest(store, medmnist_run(tmp_path / "b", ("breast", "organa"), seed=3), model="second")
    backup = tmp_path / "lb.sqlite.last-good"
    assert backup.is_file()
    _damage(store)
    damaged = _sha(store)
    code, out, err = _cli(
        ["leaderboard", "ingest", str(medmnist_run(tmp_path / "c", ("blood",))), "--store", str(store)]
    )
    assert code == 2 and "rows added" not in out, (out, err)
    assert f"leaderboard store {store} is damaged" in err and f"cp {backup} {store}" in err
    assert "rebuild from the runs" in err and "Traceback" not in err
    assert _sha(store) == damaged  # nothing was written into the damaged file
    for argv in (
        ["leaderboard", "build", "--store", str(store), "--out", str(tmp_path / "site")],
        ["recipe", "first", "--store", str(store)],
    ):
        code, out, err = _cli(argv)
        assert code == 2 and "is damaged" in err and str(backup) in err, (argv, err)
    assert not (tmp_path / "site").exists()
    # the advice works: the last good copy holds both runs and takes new ones
    import shutil

    shutil.copy(backup, store)
    code, out, err = _cli(["leaderboard", "ingest", str(tmp_path / "c"), "--store", str(store)])
    assert code == 0, err
    with open_store(store) as conn:
        assert sorted(r["model"] for r in conn.execute("SELECT model FROM runs")) == ["first", "second", "synthetic"]


def test_a_store_path_that_is_a_folder_or_a_fifo_is_refused_in_one_paragraph(tmp_path):
    import os
    import subprocess
    import sys

    folder = tmp_path / "folder"
    folder.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for store, says in ((folder, "is a folder"), (fifo, "not a regular file")):
        # a subprocess with a timeout: an open() of a FIFO blocks forever
        code = (
            "import sys; from medbridge.cli import main; "
            f"sys.exit(main(['leaderboard', 'build', '--store', {str(store)!r}, '--out', {str(tmp_path / 'site')!r}]))"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_one_odd_run_is_named_and_skipped_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """Old code: `ingest good odd good` stored one good run and left on the bug path (exit 1) for a
    run folder whose name is not UTF-8 or a checkpoint step of 10**20."""
    import os

    from medbridge.leaderboard import ingest as lb_ingest

    good1 = medmnist_run(tmp_path / "good1", ("breast",), seed=1)
    not_utf8 = medmnist_run(Path(os.fsdecode(bytes(tmp_path / "run-") + b"\xff\xfe")), ("breast",), seed=2)
    huge_step = medmnist_run(
        tmp_path / "huge", ("breast",), seed=3, model_args="pretrained=/ckpts/rq3/checkpoint-100000000000000000000"
    )
    crashes = medmnist_run(tmp_path / "crashes", ("breast",), seed=4)
    good2 = medmnist_run(tmp_path / "good2", ("breast",), seed=5)
    real = lb_ingest.run_identity

    def identity(run):  # a bug of ours in one run (an exception nobody listed)
        if "crashes" in str(run.results_path):
            raise ZeroDivisionError("an unforeseen bug")
        return real(run)

    monkeypatch.setattr(lb_ingest, "run_identity", identity)
    store = tmp_path / "lb.sqlite"
    code, out, err = _cli(
        ["leaderboard", "ingest", *map(str, (good1, not_utf8, huge_step, crashes, good2)), "--store", str(store)]
    )
    assert code == 0, err
    assert re.search(r"3 run\(s\) added with \d+ rows; 0 already in the store; 2 skipped", out)
    assert "huge" in err and "training step 100000000000000000000 is out of range" in err
    assert "crashes" in err and "ZeroDivisionError: an unforeseen bug" in err
    with open_store(store) as conn:
        sources = sorted(r["source"] for r in conn.execute("SELECT source FROM runs"))
    assert len(sources) == 3 and any("run-\\xff\\xfe" in s for s in sources)  # the odd name, stored as text
    assert "run-\\xff\\xfe" in out


# ------------------------------------------------------------------ the site swap (issue 21)


def _site_with_two_builds(tmp_path: Path) -> tuple[Path, Path]:
    store = tmp_path / "lb.sqlite"
    _ingest(store, medmnist_run(tmp_path / "a", ("breast", "organa"), seed=1), model="m", run="r", step=0)
    _ingest(store, medmnist_run(tmp_path / "b", ("breast", "organa"), seed=2), model="m", run="r", step=5)
    site = tmp_path / "site"
    build_leaderboard(store, site)
    return store, site


@pytest.mark.slow  # eleven builds per case
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "file-by-file"])
def test_whatever_step_of_the_swap_is_killed_index_html_is_there(tmp_path, monkeypatch, exchange):
    """Old code: a kill between its two renames left index.html missing (the old site only in a
    hidden folder). Every rename/replace of the swap is made to die in turn (KeyboardInterrupt
    stands for the kill); after each, the page is the old one or the new one."""
    import os

    store, site = _site_with_two_builds(tmp_path)
    old_page = (site / "index.html").read_text()
    if not exchange:
        monkeypatch.setattr(lb_build, "_renameat2_exchange", lambda a, b: False)
    real_rename, real_replace = os.rename, os.replace
    for fail_at in range(1, 12):
        calls = {"n": 0}

        def dying(real, fail_at=fail_at, calls=calls):
            def op(src, dst, *args, **kwargs):
                calls["n"] += 1
                if calls["n"] == fail_at:
                    raise KeyboardInterrupt("killed")
                return real(src, dst, *args, **kwargs)

            return op

        monkeypatch.setattr(os, "rename", dying(real_rename))
        monkeypatch.setattr(os, "replace", dying(real_replace))
        try:
            build_leaderboard(store, site)
        except KeyboardInterrupt:
            pass
        monkeypatch.setattr(os, "rename", real_rename)
        monkeypatch.setattr(os, "replace", real_replace)
        page = site / "index.html"
        assert page.is_file(), f"index.html missing after a kill at filesystem step {fail_at}"
        text = page.read_text()
        assert text.startswith(old_page[:60]) and text.rstrip().endswith("</html>")  # a whole page
        for img in re.findall(r'<img src="([^"]+)"', page.read_text()):
            assert (site / img).is_file(), (fail_at, img)


@pytest.mark.slow
def test_a_build_killed_at_random_moments_never_leaves_the_page_missing(tmp_path):
    """Real SIGKILLs of a build process at moments spread over its run; then a clean build removes
    every leftover temporary folder."""
    import signal
    import subprocess
    import sys
    import time

    store, site = _site_with_two_builds(tmp_path)
    code = (
        "import sys; from medbridge.leaderboard.build import build_leaderboard; "
        "build_leaderboard(sys.argv[1], sys.argv[2])"
    )
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", code, str(store), str(site)], check=True, timeout=300)
    full = time.monotonic() - start
    for frac in (0.5, 0.7, 0.8, 0.9, 0.95, 1.0):
        proc = subprocess.Popen([sys.executable, "-c", code, str(store), str(site)])
        time.sleep(full * frac)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert (site / "index.html").is_file(), f"index.html missing after a kill at {frac:.0%} of a build"
    build_leaderboard(store, site)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".site.")] == []


def test_leftovers_of_killed_builds_are_cleaned_by_the_next_build_but_a_running_ones_kept(tmp_path):
    """Old code: killed builds left `.site.building-*` folders for good."""
    import subprocess
    import sys

    store, site = _site_with_two_builds(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stale = [tmp_path / ".site.building-x1y2", tmp_path / ".site.building-999999999-ab", tmp_path / ".site.old-q"]
        running = tmp_path / f".site.building-{sleeper.pid}-cd"
        for folder in stale + [running]:
            folder.mkdir()
            (folder / "index.html").write_text("half")
        other = tmp_path / ".sites.building-1-keep"  # another site's name: not ours to remove
        other.mkdir()
        build_leaderboard(store, site)
        assert [p for p in stale if p.exists()] == []
        assert running.is_dir() and other.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_out_is_refused_when_it_is_the_current_folder_the_stores_folder_or_above(tmp_path, monkeypatch):
    """Old code: `--out .` copied the current folder into a temporary one and failed with EBUSY; an
    --out of the store's folder would have moved the store aside with the old site."""
    work = tmp_path / "work"
    store_dir = work / "lb"
    store = store_dir / "leaderboard.sqlite"
    _ingest(store, medmnist_run(tmp_path / "a", ("breast",)), model="m")
    (work / "mine.txt").write_text("keep")
    monkeypatch.chdir(work)
    for out, says in (
        (".", "is the current folder"),
        (str(work), "is the current folder"),
        (str(tmp_path), "is a folder above the current folder"),
        (str(store_dir), "is the store's folder"),
        ("lb", "is the store's folder"),
        (str(store), "is the store file itself"),
    ):
        code, stdout, err = _cli(["leaderboard", "build", "--store", str(store), "--out", out])
        assert code == 2 and says in err and "--out" in err and "Traceback" not in err, (out, err)
    assert (work / "mine.txt").read_text() == "keep" and store.is_file()
    assert sorted(p.name for p in work.iterdir()) == ["lb", "mine.txt"]
    code, stdout, err = _cli(["leaderboard", "build", "--store", str(store), "--out", "lb/site"])
    assert code == 0 and (store_dir / "site" / "index.html").is_file(), err


def test_the_site_is_readable_by_others(tmp_path):
    """Old code: the site folder was mode 0700 (tempfile.mkdtemp's)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        store, site = _site_with_two_builds(tmp_path)
        build_leaderboard(store, site)
    finally:
        os.umask(old)
    assert stat.S_IMODE(site.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in site.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_build_without_a_store_says_so_and_still_shows_the_published_rows(tmp_path):
    """Old code: silently a page of published rows, and the page named the machine's absolute path."""
    store = tmp_path / "nowhere" / "leaderboard.sqlite"
    code, out, err = _cli(["leaderboard", "build", "--store", str(store), "--out", str(tmp_path / "site")])
    assert code == 0, err
    assert f"no leaderboard store at {store}" in out and "published rows only" in out
    page = (tmp_path / "site" / "index.html").read_text()
    assert "No leaderboard store at leaderboard.sqlite yet" in page and '<tr class="reference">' in page
    assert str(tmp_path) not in page and str(tmp_path) not in (tmp_path / "site" / "leaderboard.md").read_text()
    assert not store.exists() and not store.parent.exists()


# ------------------------------------------------------------------ the page reads like the paper (issue 24)


def test_table2_is_acc1_only_in_16_columns_and_the_gap_has_its_own_table(tmp_path):
    """Old code: Table 2 interleaved Acc@1 and gap in 33 columns (only radiology visible at 1400 px)."""
    from medbridge.tasks.families import MEDMNIST

    store = tmp_path / "lb.sqlite"
    _ingest(store, medmnist_run(tmp_path / "all", [s.name for s in MEDMNIST.entries], n_items=4), model="m")
    with open_store(store) as conn:
        view = View(fetch_rows(conn))
    t2 = table2(view, load_references())
    names = [s.name for m in MEDMNIST.modalities for s in MEDMNIST.entries if s.modality == m]  # banded by modality
    assert t2.columns == ["Model", *names, *MEDMNIST.modalities]
    assert len(t2.columns) == 1 + MEDMNIST.count + len(MEDMNIST.modalities)  # 16 for the paper's 12 datasets
    assert [band for band, _ in t2.groups] == ["", *MEDMNIST.modalities, "modality means"]
    gaps = gap_table(view)
    assert gaps.columns == t2.columns and gaps.rows[0][1].text.startswith(("+", "-", "−", "0"))
    values = [c.sort for c in gaps.rows[0][1:]]
    assert all(isinstance(v, float) and -1 <= v <= 1 for v in values)


def test_the_page_has_no_absolute_paths_and_dates_in_utc(tmp_path):
    """Old code: the header showed the store's absolute path, and 'Date' was lmms-eval's
    Asia/Singapore time without a zone."""
    ckpt = tmp_path / "secret-home" / "ckpts" / "rq3_organa" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    store = tmp_path / "secret-home" / "lb" / "leaderboard.sqlite"
    run = medmnist_run(
        tmp_path / "secret-home" / "out", ("breast",), stamp="20260301_120000", model_args=f"pretrained={ckpt}"
    )
    _ingest(store, run)
    index = build_leaderboard(store, tmp_path / "site")
    for text in (index.read_text(), (tmp_path / "site" / "leaderboard.md").read_text()):
        assert str(tmp_path) not in text
        assert "2026-03-01 04:00 UTC" in text  # 12:00 in Singapore (UTC+8)
    assert "Run date (UTC)" in index.read_text()
    with open_store(store) as conn:  # stored with its zone, so no reader has to guess it
        assert conn.execute("SELECT date FROM runs").fetchone()[0] == "2026-03-01T04:00:00+00:00"


def test_with_one_dataset_per_modality_the_page_says_what_the_store_holds(tmp_path):
    """Old code: 'no sampled results yet' while the gap column showed Pass@K."""
    store = tmp_path / "lb.sqlite"
    from medbridge.tasks.families import MEDMNIST

    _ingest(store, medmnist_run(tmp_path / "one", ("breast", "blood", "derma")), model="m")
    page = build_leaderboard(store, tmp_path / "site").read_text()
    assert "no sampled" not in page
    assert "sampled results for 3 dataset(s) (breast, blood, derma)" in page
    sizes = {m: sum(s.modality == m for s in MEDMNIST.entries) for m in MEDMNIST.modalities}  # 6, 3, 3 in the paper
    assert ", ".join(f"{m} 1 of {n}" for m, n in sizes.items()) in page
    gap = page.split('id="gap"', 1)[1].split("</table>", 1)[0]
    assert gap.count('<td data-v="') >= 3  # the three gaps are there


def test_passk_axis_fits_the_data_and_the_legend_is_outside_the_plot(tmp_path):
    """Old code: a 0-100 axis for a curve near 2% and the legend over the CI band."""
    import matplotlib

    matplotlib.use("Agg")
    rows = [{"value": v, "ci_low": v - 0.01, "ci_high": v + 0.01} for v in (0.01, 0.015, 0.02, 0.025, 0.03)]
    lines = [(f"model {i}", rows, {"value": 0.01}) for i in range(3)]
    fig = figures.passk_figure("t", lines)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert -3 <= low <= 0 and 3 <= high <= 10, (low, high)  # the data (0-4%) with a margin, not 0-100
    fig.canvas.draw()
    legend, plot = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.y1 <= plot.y0, (legend, plot)  # entirely below the plot area


# ------------------------------------------------------------------ MedVLThinker's published table (issue 23)


def _protocol_run(out: Path, *, model_args: str, p: float = 0.6, seed: int = 0) -> Path:
    """A run of the medvqa_medvlthinker tasks: 3 greedy runs per item, both graders' verdicts."""
    import random

    from medbridge.tasks.families import MEDVLTHINKER

    rng = random.Random(seed)
    tasks, configs = {}, {}
    for spec in MEDVLTHINKER.entries:
        task = MEDVLTHINKER.task(spec)
        recs = records(spec.name, 10, p=p, k=3, seed=seed)
        for r in recs:
            ours = [o == "correct" for o in r["outcomes"]]
            theirs = [v if rng.random() < 0.9 else not v for v in ours]  # the graders mostly agree
            r["medvlthinker"] = {"predictions": [f"{c}." for c in r["choices"]], "correct": theirs}
            r["runs"] = 3
        tasks[task] = recs
        configs[task] = {
            "task": task,
            "dataset_path": "json",
            "repeats": 3,
            "generation_kwargs": {"do_sample": False, "temperature": 0.0, "max_new_tokens": 4096, "until": []},
        }
    return write_run(out, tasks, model_args=model_args, configs=configs)


def test_the_medvlthinker_metric_names_are_the_protocols():
    from medbridge.leaderboard.view import PROTOCOL_METRIC, PROTOCOL_SPREAD
    from medbridge.tasks.medvqa import medvlthinker

    assert {PROTOCOL_METRIC, PROTOCOL_SPREAD} <= {m.name for m in medvlthinker.METRICS}


def test_an_empty_store_shows_medvlthinkers_published_table_with_its_protocol(tmp_path):
    code, out, err = _cli(
        ["leaderboard", "build", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "s")]
    )
    assert code == 0, err
    page = (tmp_path / "s" / "index.html").read_text()
    assert "Published (MedVLThinker protocol)" in page
    section = page.split('id="medvlthinker"', 1)[1].split("<h2", 1)[0]
    assert section.count('<tr class="reference">') == 7
    for printed in ("44.77", "52.94", "18.89", "65.39", "65.71", "68.75", "53.50", "70.00", "63.74"):
        assert f">{printed}<" in section, printed
    caption = page.split('id="h-medvlthinker"', 1)[1].split("</p>", 1)[0]
    for stated in ("MedVLThinker-Eval", "greedy", "4,096", "lenient grader", "mean of 3 greedy runs"):
        assert stated in caption, stated
    table3 = page.split('id="table3"', 1)[1].split("</table>", 1)[0]
    assert "MedVLThinker-7B RL(m23k)" not in table3 and table3.count('<tr class="reference">') == 7


def test_a_medvlthinker_run_lands_in_that_table_with_deltas_to_the_same_models_published_row(tmp_path):
    from medbridge.leaderboard.cells import DASH
    from medbridge.leaderboard.reference import load_references
    from medbridge.leaderboard.tables import medvlthinker_table, table3
    from medbridge.tasks.families import MEDVLTHINKER

    store = tmp_path / "lb.sqlite"
    run = _protocol_run(tmp_path / "q7", model_args="pretrained=Qwen/Qwen2.5-VL-7B-Instruct")
    _ingest(store, run)
    with open_store(store) as conn:
        view = View(fetch_rows(conn))
        stored = {r["task"]: r for r in fetch_rows(conn, "metric = 'medvlthinker_acc'")}
    assert set(stored) == set(MEDVLTHINKER.greedy_tasks)
    refs = load_references()
    t = medvlthinker_table(view, refs)
    ours = next(cells for cells, cls in zip(t.rows, t.row_classes) if cls == "")
    assert ours[0].text == "Qwen/Qwen2.5-VL-7B-Instruct"
    delta = next(cells for cells, cls in zip(t.rows, t.row_classes) if cls == "delta")
    published = next(r for r in refs if r.table == "medvlthinker" and r.label == "Qwen2.5-VL-7B-Instruct")
    for col, cell in zip(t.columns[1:-1], delta[1:-1]):
        task = next(MEDVLTHINKER.task(s) for s in MEDVLTHINKER.entries if s.title == col)
        if task not in published.values:  # a benchmark added to the catalog that MedVLThinker did not publish
            assert cell.sort is None and cell.text == DASH
            continue
        assert cell.sort == pytest.approx(stored[task]["value"] - published.values[task] / 100)
        lo, hi = stored[task]["ci_low"], stored[task]["ci_high"]
        assert lo <= stored[task]["value"] <= hi  # a bootstrap CI over items
    assert delta[0].text == "Δ Qwen/Qwen2.5-VL-7B-Instruct − published"
    # a protocol run is not a Table 3 number: that table keeps the paper's rows only
    t3 = table3(view, refs)
    assert all(cls == "reference" for cls in t3.row_classes)


def test_adversarial_ingest_api_refuses_a_folder_holding_several_runs(tmp_path):
    """ingest_run on a folder with two runs names both and writes nothing; it never stores "the newest"."""
    folder = tmp_path / "out"
    first = medmnist_run(folder, ("breast",), n_items=2, stamp="20260101_000000")
    second = medmnist_run(folder, ("blood",), n_items=2, stamp="20260102_000000")
    store = tmp_path / "lb.sqlite"
    with pytest.raises(IngestError, match="holds 2 lmms-eval runs") as err:
        ingest_run(store, folder)
    assert str(first) in str(err.value) and str(second) in str(err.value)
    assert not store.exists()
    assert ingest_run(store, second) > 0  # naming the run works
