"""pyproject states the version ranges medbridge supports; exact pins live only in constraints/cpu-tests.txt,
and every pin there lies inside the range pyproject states for that package."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in names]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints" / "cpu-tests.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_pyproject_states_ranges_and_the_constraints_pins_lie_inside_them():
    exact = [str(r) for r in _requirements() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert exact == [], f"exact pins belong in constraints/cpu-tests.txt, not pyproject: {exact}"
    pins = _pins()
    assert pins["medmnist"] == "3.0.2"
    outside = [f"{r} (pinned {pins[canonicalize_name(r.name)]})" for r in _requirements()
               if canonicalize_name(r.name) in pins and not r.specifier.contains(pins[canonicalize_name(r.name)],
                                                                                   prereleases=True)]
    assert outside == []
