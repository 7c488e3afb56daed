"""README's "Layout" section stays true: every module is named under its folder, every installed folder is
in the table, and the "where a newcomer adds" rows name one existing file each and commands that exist."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
NOT_LISTED = ("tests/", "setup.py")  # tests are not modules of the product; setup.py is the build


def layout_section(text: str = README) -> str:
    start = text.index("\n## Layout\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def folder_bullets(section: str) -> dict[str, str]:
    """``- `folder/`: ...`` bullets (with their indented continuation lines), by folder."""
    bullets: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        m = re.match(r"- `([\w./]+/)`: ", line)
        if m:
            current = m.group(1)
            bullets[current] = line[m.end() :]
        elif current and line.startswith("  "):
            bullets[current] += " " + line.strip()
        else:
            current = None
    return bullets


def python_modules() -> list[str]:
    """Every tracked .py file outside tests/, except package markers and setup.py."""
    try:
        out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the layout is the repository's")
    return sorted(
        rel
        for rel in out.stdout.split()
        if not rel.startswith(NOT_LISTED) and Path(rel).name != "__init__.py" and (REPO / rel).is_file()
    )


def test_every_module_is_named_under_its_folder():
    bullets = folder_bullets(layout_section())
    missing = []
    for rel in python_modules():
        folder, name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
        if f"`{name}`" not in bullets.get(folder + "/", ""):
            missing.append(rel)
    assert not missing, (
        f"README's Layout section names no {missing}: add each to the '- `<its folder>/`: ...' line "
        "with its one job"
    )


def test_the_bullet_parser_sees_a_missing_module():
    section = "\n## Layout\n\n- `judges/`: `client.py` (one client),\n  `cache.py`.\n- `training/`: `grpo.py`.\n"
    bullets = folder_bullets(section)
    assert bullets == {"judges/": "`client.py` (one client), `cache.py`.", "training/": "`grpo.py`."}
    assert "`http.py`" not in bullets["judges/"]


def test_every_installed_folder_is_in_the_table():
    table = layout_section().split("\n\n", 2)[1]
    setup = (REPO / "setup.py").read_text()
    folders = dict(re.findall(r'"(medbridge(?:\.\w+)?)": "(\w+)"', setup))
    assert len(folders) >= 7, folders
    for package, folder in folders.items():
        assert f"| `{folder}/` | `{package}` |" in table, (folder, package)


def _additions() -> list[list[str]]:
    section = layout_section()
    rows = section.split("| to add | edit (the one file) | then | what follows by itself |", 1)[1]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows.splitlines() if line.startswith("| ")]
    return [row for row in cells if not set(row[0]) <= {"-"}]


def test_each_addition_names_one_existing_file_and_commands_that_exist():
    rows = _additions()
    assert [r[0] for r in rows] == [
        "a MedMNIST dataset",
        "a VQA benchmark",
        "a reward",
        "a judge prompt",
        "a metric",
        "a leaderboard table",
    ]
    for what, edit, then, _ in rows:
        paths = [p for p in re.findall(r"`([\w./]+\.(?:py|yaml))`", edit)]
        assert len(paths) == 1, (what, paths)  # one file to edit
        assert (REPO / paths[0]).is_file(), (what, paths[0])
        for module in re.findall(r"python -m ([\w.]+)", then):
            assert importlib.util.find_spec(module) is not None, (what, module)
