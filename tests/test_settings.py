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
    """Except test-only plumbing (``MEDBRIDGE_TEST_*``), read by tests' own subprocess helpers."""
    tests = REPO / "tests"
    reads = [r for path in package_sources() for r in environment_reads(path)
             if not (path.is_relative_to(tests) and r.split(" reads ")[1].startswith(settings.TEST_ONLY_PREFIX))]
    assert not reads, "read MEDBRIDGE_* through harness_ext/settings.py, not os.environ:\n" + "\n".join(reads)


def test_test_only_variables_stay_in_tests():
    reads = [r for path in package_sources() if not path.is_relative_to(REPO / "tests")
             for r in environment_reads(path) if r.split(" reads ")[1].startswith(settings.TEST_ONLY_PREFIX)]
    assert not reads and not any(name.startswith(settings.TEST_ONLY_PREFIX) for name in settings.SETTINGS)


# ------------------------------------------------------------------ getters name the variable


@pytest.mark.parametrize(("read", "value", "message"), [
    (lambda env: settings.get_int("MEDBRIDGE_MEDMNIST_SEED", env=env), "abc",
     "MEDBRIDGE_MEDMNIST_SEED='abc' is not an integer"),
    (lambda env: settings.get_int("MEDBRIDGE_JUDGE_CONCURRENCY", minimum=1, env=env), "0",
     "MEDBRIDGE_JUDGE_CONCURRENCY='0' must be >= 1"),
    (lambda env: settings.get_float("MEDBRIDGE_JUDGE_TIMEOUT", env=env), "soon",
     "MEDBRIDGE_JUDGE_TIMEOUT='soon' is not a number"),
    (lambda env: settings.get_float("MEDBRIDGE_JUDGE_TIMEOUT", env=env), "nan",
     "MEDBRIDGE_JUDGE_TIMEOUT='nan' must be a finite number"),
    (lambda env: settings.get_float("MEDBRIDGE_JUDGE_TIMEOUT", minimum=0.0, env=env), "-5",
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


def test_getters_read_good_values():
    env = {"MEDBRIDGE_MEDMNIST_SEED": " 7 ", "MEDBRIDGE_JUDGE_TIMEOUT": "2.5", "MEDBRIDGE_MEDMNIST_DOWNLOAD": "Yes",
           "MEDBRIDGE_MEDMNIST_ROOT": "~/data", "MEDBRIDGE_MEDVQA_SOURCE_PATHVQA": "/vqa"}
    assert settings.get_int("MEDBRIDGE_MEDMNIST_SEED", env=env) == 7
    assert math.isclose(settings.get_float("MEDBRIDGE_JUDGE_TIMEOUT", env=env), 2.5)
    assert settings.get_flag("MEDBRIDGE_MEDMNIST_DOWNLOAD", env=env) is True
    assert settings.get_path("MEDBRIDGE_MEDMNIST_ROOT", env=env) == Path("~/data").expanduser()
    assert settings.get_str("MEDBRIDGE_MEDVQA_SOURCE_PATHVQA", env=env) == "/vqa"
    assert settings.is_set("MEDBRIDGE_MEDMNIST_SEED", env=env)
    assert not settings.is_set("MEDBRIDGE_MEDVQA_SEED", env=env)


# ------------------------------------------------------------------ one default each: the table's


def test_unset_or_blank_variables_give_the_tables_default():
    blank = {"MEDBRIDGE_MEDVQA_SPLIT": "  ", "MEDBRIDGE_JUDGE_CONCURRENCY": ""}
    assert settings.get_str("MEDBRIDGE_MEDVQA_SPLIT", env=blank) == "test"  # blank is unset
    assert settings.get_int("MEDBRIDGE_JUDGE_CONCURRENCY", env=blank) == 16
    assert settings.get_float("MEDBRIDGE_JUDGE_DEADLINE", env={}) == 7200.0
    assert settings.get_flag("MEDBRIDGE_MEDVQA_SKIP_BAD", env={}) is False
    assert settings.get_path("MEDBRIDGE_LOG_DIR", env={}) == Path("~/.cache/medbridge/logs").expanduser()
    assert settings.get_str("MEDBRIDGE_JUDGE_BASE_URL", env={}) is None  # unset by default
    assert settings.get_str("MEDBRIDGE_MEDVQA_SOURCE_PATHVQA", env={}) is None  # an override has no default
    assert settings.default("MEDBRIDGE_MEDVQA_SUBSET") == "200" and settings.default("MEDBRIDGE_JUDGE_ID") is None


READERS = {"str": settings.get_str, "path": settings.get_path, "int": settings.get_int,
           "float": settings.get_float, "flag": settings.get_flag}


@pytest.mark.parametrize("row", settings._TABLE, ids=lambda row: row.name)
def test_every_default_reads_back_with_its_kind(row):
    """A typo in the table (e.g. `"1 6"` for an int) fails here, not in a user's run."""
    assert row.kind in settings.KINDS
    value = READERS[row.kind](row.name, env={})
    if not row.default:
        assert value is None and row.kind in ("str", "path"), f"{row.name}: a typed setting needs a default"
    elif row.kind == "path":
        assert value == Path(row.default).expanduser()
    else:
        assert str(value).lower() == row.default.lower() or float(value) == float(row.default)


def test_a_getter_of_another_kind_is_refused():
    with pytest.raises(TypeError, match="MEDBRIDGE_JUDGE_TIMEOUT is a float setting; read it with get_float"):
        settings.get_int("MEDBRIDGE_JUDGE_TIMEOUT", env={})
    with pytest.raises(TypeError):
        settings.get_int("MEDBRIDGE_MEDMNIST_SEED", 1234)  # no caller default: the table's is the one


def _getter_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in GETTERS:
                yield node


GETTERS = {f"get_{kind}" for kind in settings.KINDS}


def caller_defaults(path: Path, source: str | None = None) -> list[str]:
    """Where ``path`` carries a default of its own for a setting: ``get_x(NAME) or FALLBACK`` (a fallback
    that is not itself a getter), a second positional argument to a getter, or the table's default read
    by hand (``SETTINGS[...].default``)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    found = []
    getter_calls = set(map(id, _getter_calls(tree)))
    for node in ast.walk(tree):
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and id(node.values[0]) in getter_calls:
            if any(id(v) not in getter_calls for v in node.values[1:]):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} falls back to its own default")
        elif isinstance(node, ast.Call) and id(node) in getter_calls and len(node.args) > 1:
            found.append(f"{path.relative_to(REPO)}:{node.lineno} passes a default to {ast.unparse(node.func)}")
        elif isinstance(node, ast.Attribute) and node.attr == "default" and isinstance(node.value, ast.Subscript) \
                and "SETTINGS" in ast.unparse(node.value.value):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} reads the table by hand (use settings.default)")
    return found


def test_scanner_finds_every_kind_of_caller_default():
    code = ('from medbridge.harness_ext import settings\nfrom medbridge.harness_ext.settings import get_path\n'
            'a = settings.get_path("MEDBRIDGE_X") or Path("/x")\nb = get_int("MEDBRIDGE_Y", 8, minimum=1)\n'
            'c = settings.SETTINGS["MEDBRIDGE_Z"].default\n'
            'd = settings.get_str("MEDBRIDGE_MEDVQA_SOURCE_A") or settings.get_str("MEDBRIDGE_MEDVQA_SOURCE")\n'
            'e = settings.get_int("MEDBRIDGE_Y", minimum=1, env={})\n')
    found = caller_defaults(REPO / "tests" / "sample.py", source=code)
    assert [f.split(":")[1].split()[0] for f in found] == ["3", "4", "5"], found


def test_no_caller_carries_its_own_default():
    this_file = Path(__file__).resolve()  # its examples are deliberate
    found = [f for path in package_sources() if path != this_file for f in caller_defaults(path)]
    assert not found, "take the default from harness_ext/settings.py's table:\n" + "\n".join(found)


SHELL_DEFAULT = re.compile(r"\$\{(MEDBRIDGE_[A-Z0-9_]+):-([^}]*)\}")


def test_shell_scripts_use_the_tables_defaults():
    """Scripts that run before medbridge is installed state the default in bash; it must be the table's."""
    seen = {}
    for script in sorted(REPO.rglob("*.sh")):
        if ".venv" in script.parts:
            continue
        for name, value in SHELL_DEFAULT.findall(script.read_text()):
            seen[name] = value
            assert value.replace("$HOME", "~") == settings.SETTINGS[name].default, (script.name, name, value)
    assert {"MEDBRIDGE_VLLM_VENV", "MEDBRIDGE_VLLM_CPU_VERSION", "MEDBRIDGE_VLLM_VISION"} <= set(seen)


def test_defaults_agree_with_the_facts_they_stand_for():
    """Where a default is a fact of another package or a field of ours, the two are one value."""
    from medbridge.judges.config import JudgeConfig
    from medbridge.tasks.medvqa.catalog import HUB_ID, HUB_SPLIT
    from medmnist.info import DEFAULT_ROOT

    assert settings.get_path("MEDBRIDGE_MEDMNIST_ROOT", env={}) == Path(DEFAULT_ROOT).expanduser()
    assert HUB_ID == settings.default("MEDBRIDGE_MEDVQA_SOURCE") == "UCSC-VLAA/MedVLThinker-Eval"
    assert HUB_SPLIT == settings.default("MEDBRIDGE_MEDVQA_SPLIT") == "test"
    config = JudgeConfig()
    assert (config.concurrency, config.timeout_s, config.max_attempts, config.deadline_s) == (16, 120.0, 8, 7200.0)


def test_unregistered_names_are_refused():
    with pytest.raises(KeyError, match="MEDBRIDGE_TYPO_ROOT is not a registered medbridge setting"):
        settings.get_str("MEDBRIDGE_TYPO_ROOT", env={})
