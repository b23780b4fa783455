"""The product apart from its tooling, and the lock that every install goes through.

Two distributions: orders-platform (the repository root: what serves orders) and orders-tools
(tools/: dev stack, sandbox providers, bench and chaos). requirements/production.txt pins the
product for the image; requirements/dev.txt pins both for `make` and CI.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import cli.main
from cli.main import TOOL_COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = {"core", "workflows", "activities", "workers", "api", "cli"}
TOOL_PACKAGES = {"devstack", "sandbox", "bench", "drill"}


def pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def requirements(project: dict) -> list[Requirement]:
    declared = list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        declared += extra
    return [Requirement(text) for text in declared]


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if match:
            found[canonicalize_name(match[1])] = match[2]
    return found


ROOT_PROJECT = pyproject(ROOT / "pyproject.toml")
TOOLS_PROJECT = pyproject(ROOT / "tools" / "pyproject.toml")


@pytest.mark.parametrize(
    ("lock", "projects"),
    [("dev.txt", [ROOT_PROJECT, TOOLS_PROJECT]), ("production.txt", [ROOT_PROJECT])],
)
def test_the_lock_pins_every_declared_dependency_within_its_range(lock, projects):
    pinned = pins(ROOT / "requirements" / lock)
    for project in projects:
        declared = (
            requirements(project) if lock == "dev.txt" else [Requirement(r) for r in project["project"]["dependencies"]]
        )
        for requirement in declared:
            name = canonicalize_name(requirement.name)
            assert name in pinned, f"{requirement} is not pinned in requirements/{lock} (run `make lock`)"
            assert requirement.specifier.contains(pinned[name], prereleases=True), (
                f"requirements/{lock} pins {name}=={pinned[name]}, outside {requirement} (run `make lock`)"
            )


def test_every_product_dependency_has_an_upper_bound():
    for requirement in [Requirement(r) for r in ROOT_PROJECT["project"]["dependencies"]]:
        assert any(spec.operator in {"<", "<=", "==", "~="} for spec in requirement.specifier), requirement


def test_the_production_lock_holds_no_tooling():
    production = pins(ROOT / "requirements" / "production.txt")
    tooling = {canonicalize_name(r.name) for r in requirements(TOOLS_PROJECT)}
    assert not tooling & set(production), f"tool-only packages pinned for production: {tooling & set(production)}"
    test_only = {canonicalize_name(r) for r in ("pytest", "schemathesis", "ruff", "mypy", "hypothesis")}
    assert not test_only & set(production)


def test_each_distribution_packages_only_its_own_code():
    assert {
        p.rstrip("*") for p in ROOT_PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    } == PRODUCT_PACKAGES
    assert {p.rstrip("*") for p in TOOLS_PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]} == TOOL_PACKAGES
    top_level = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert top_level - {"tests"} == PRODUCT_PACKAGES, "a new top-level package must be product or live in tools/"
    assert {path.parent.name for path in (ROOT / "tools").glob("*/__init__.py")} == TOOL_PACKAGES


def test_the_production_image_holds_no_tooling():
    stages: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if match := re.match(r"^FROM (\S+) AS (\S+)", line):
            current = match[2]
            stages[current] = [f"FROM {match[1]}"]
        elif current is not None and line.strip():
            stages[current].append(line)
    assert list(stages)[-1] == "production", "a plain `docker build .` must make the production image"
    chain, stage = [], "production"
    while stage in stages:  # follow FROM <stage> back to the base image
        chain.append(stage)
        stage = stages[stage][0].split()[1]
    copied_from = {m for s in chain for line in stages[s] for m in re.findall(r"COPY --from=(\S+)", line)}
    for name in set(chain) | copied_from:
        for line in stages[name]:
            assert not re.match(r"^COPY (?!--from)\S*tools", line), f"stage {name} copies the tools: {line}"
            assert "./tools" not in line or not line.startswith("RUN"), f"stage {name} installs the tools: {line}"
            assert "requirements/dev.txt" not in line


def test_a_tool_command_without_the_tools_says_how_to_get_them(monkeypatch, capsys):
    monkeypatch.setattr(cli.main, "entry_points", lambda group: [])
    for name in TOOL_COMMANDS:
        assert cli.main.main([name, "--concurrency", "4"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1, error
        assert error.startswith(f"orders: error: `orders {name}` comes with the development tools"), error
        assert "pip install -e ./tools" in error
    with pytest.raises(SystemExit):  # other commands still refuse options they do not know
        cli.main.main(["token", "--sub", "a", "--no-such-option"])


def test_the_installed_tools_provide_every_tool_command():
    assert set(TOOLS_PROJECT["project"]["entry-points"]["orders.commands"]) == set(TOOL_COMMANDS)
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in TOOL_COMMANDS:
        handler = commands[name].get_default("func")
        assert handler.__module__.split(".")[0] in TOOL_PACKAGES, f"`orders {name}` is not the tools' command"
