"""harness_ext/settings.py is the one place MEDBRIDGE_* variables are declared and read: the README
shows its table verbatim, no other module reads them from the environment, and a bad value is an error
that names the variable."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
from medbridge.harness_ext import settings
from medbridge.harness_ext.errors import MedbridgeError, SettingError

REPO = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = ("tasks", "harness_ext", "judges", "training", "leaderboard", "medbridge", "tests")
SETTINGS_FILE = REPO / "harness_ext" / "settings.py"
NAME = re.compile(r"MEDBRIDGE_[A-Z0-9_]*[A-Z0-9]")


def package_sources() -> list[Path]:
    return sorted(p for folder in PACKAGE_FOLDERS for p in (REPO / folder).rglob("*.py") if p != SETTINGS_FILE)


# ------------------------------------------------------------------ README


def readme_settings_table() -> str:
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("## Settings (environment variables)")
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("| variable |"))
    end = header
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[header:end])


def test_readme_holds_exactly_the_settings_table():
    assert readme_settings_table() == settings.markdown_table(), (
        "README's settings table differs from harness_ext/settings.py: paste "
        "`python -c 'from medbridge.harness_ext import settings; print(settings.markdown_table())'`")


def test_table_rows_are_unique_and_named_medbridge():
    names = [s.name for s in settings._TABLE]
    assert len(names) == len(set(names)) == len(settings.SETTINGS)
    assert all(NAME.fullmatch(n) for n in names)
    assert all(s.help.strip() for s in settings._TABLE)


# ------------------------------------------------------------------ no reads outside settings.py


def _medbridge_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "MEDBRIDGE_..." constants (modules often name their variable once)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                and str(node.value.value).startswith("MEDBRIDGE_"):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or \
        (isinstance(node, ast.Name) and node.id == "environ")


def environment_reads(path: Path, source: str | None = None) -> list[str]:
    """Each place ``path`` reads a MEDBRIDGE_* variable from os.environ / os.getenv (writes are fine:
    tests and launchers set variables for child processes)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    constants = _medbridge_constants(tree)

    def medbridge_name(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("MEDBRIDGE_"):
            return node.value
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                and str(node.values[0].value).startswith("MEDBRIDGE_"):
            return str(node.values[0].value) + "..."
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return None

    reads = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            is_get = isinstance(func, ast.Attribute) and func.attr in ("get", "pop", "setdefault") \
                and _is_environ(func.value)
            is_getenv = (isinstance(func, ast.Attribute) and func.attr == "getenv") or \
                (isinstance(func, ast.Name) and func.id == "getenv")
            if is_get or is_getenv:
                name = medbridge_name(node.args[0])
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            name = medbridge_name(node.slice)
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                and any(_is_environ(c) for c in node.comparators):
            name = medbridge_name(node.left)
        if name:
            reads.append(f"{path.relative_to(REPO)}:{node.lineno} reads {name}")
    return reads


def test_scanner_finds_every_kind_of_read():
    code = ('import os\nfrom os import environ, getenv\nROOT_ENV = "MEDBRIDGE_MEDMNIST_ROOT"\n'
            'a = os.environ.get("MEDBRIDGE_A")\nb = os.getenv(ROOT_ENV)\nc = os.environ["MEDBRIDGE_C"]\n'
            'd = "MEDBRIDGE_D" in os.environ\ne = environ.get(f"MEDBRIDGE_E_{a}")\nf = getenv("MEDBRIDGE_F")\n'
            'os.environ["MEDBRIDGE_WRITE"] = "1"\nenv = {"MEDBRIDGE_DICT": "1"}\nos.environ.get("HOME")\n')
    reads = environment_reads(REPO / "tests" / "sample.py", source=code)
    assert [r.split(" reads ")[1] for r in reads] == [
        "MEDBRIDGE_A", "MEDBRIDGE_MEDMNIST_ROOT", "MEDBRIDGE_C", "MEDBRIDGE_D", "MEDBRIDGE_E_...", "MEDBRIDGE_F"]


def test_no_module_reads_medbridge_variables_outside_settings():
    reads = [r for path in package_sources() for r in environment_reads(path)]
    assert not reads, "read MEDBRIDGE_* through harness_ext/settings.py, not os.environ:\n" + "\n".join(reads)


# ------------------------------------------------------------------ getters name the variable


@pytest.mark.parametrize(("read", "value", "message"), [
    (lambda env: settings.get_int("MEDBRIDGE_MEDMNIST_SEED", 1234, env=env), "abc",
     "MEDBRIDGE_MEDMNIST_SEED='abc' is not an integer"),
    (lambda env: settings.get_int("MEDBRIDGE_JUDGE_CONCURRENCY", 16, minimum=1, env=env), "0",
     "MEDBRIDGE_JUDGE_CONCURRENCY='0' must be >= 1"),
    (lambda env: settings.get_float("MEDBRIDGE_JUDGE_TIMEOUT", 120.0, env=env), "soon",
     "MEDBRIDGE_JUDGE_TIMEOUT='soon' is not a number"),
    (lambda env: settings.get_float("MEDBRIDGE_JUDGE_TIMEOUT", 120.0, env=env), "nan",
     "MEDBRIDGE_JUDGE_TIMEOUT='nan' must be a finite number"),
    (lambda env: settings.get_float("MEDBRIDGE_JUDGE_TIMEOUT", 120.0, minimum=0.0, env=env), "-5",
     "MEDBRIDGE_JUDGE_TIMEOUT='-5' must be >= 0.0"),
    (lambda env: settings.get_flag("MEDBRIDGE_MEDMNIST_DOWNLOAD", env=env), "maybe",
     "MEDBRIDGE_MEDMNIST_DOWNLOAD='maybe' must be one of"),
])
def test_getters_name_the_variable_on_a_bad_value(read, value, message):
    name = message.split("=")[0]
    with pytest.raises(SettingError) as err:
        read({name: value})
    assert str(err.value).startswith(message)
    assert isinstance(err.value, MedbridgeError)  # the command prints it as a user error (exit 2)


def test_getters_read_good_values_and_defaults():
    env = {"MEDBRIDGE_MEDMNIST_SEED": " 7 ", "MEDBRIDGE_JUDGE_TIMEOUT": "2.5", "MEDBRIDGE_MEDMNIST_DOWNLOAD": "Yes",
           "MEDBRIDGE_MEDMNIST_ROOT": "~/data", "MEDBRIDGE_MEDVQA_SOURCE_PATHVQA": "/vqa",
           "MEDBRIDGE_MEDVQA_SPLIT": "  "}
    assert settings.get_int("MEDBRIDGE_MEDMNIST_SEED", 1234, env=env) == 7
    assert math.isclose(settings.get_float("MEDBRIDGE_JUDGE_TIMEOUT", 120.0, env=env), 2.5)
    assert settings.get_flag("MEDBRIDGE_MEDMNIST_DOWNLOAD", env=env) is True
    assert settings.get_flag("MEDBRIDGE_MEDVQA_SKIP_BAD", env=env) is False
    assert settings.get_path("MEDBRIDGE_MEDMNIST_ROOT", env=env) == Path("~/data").expanduser()
    assert settings.get_str("MEDBRIDGE_MEDVQA_SOURCE_PATHVQA", env=env) == "/vqa"
    assert settings.get_str("MEDBRIDGE_MEDVQA_SPLIT", env=env) is None  # blank is unset
    assert settings.get_int("MEDBRIDGE_JUDGE_CONCURRENCY", 16, env=env) == 16


def test_unregistered_names_are_refused():
    with pytest.raises(KeyError, match="MEDBRIDGE_TYPO_ROOT is not a registered medbridge setting"):
        settings.get_str("MEDBRIDGE_TYPO_ROOT", env={})
