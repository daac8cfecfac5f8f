"""Repository hygiene: no large tracked files, the README's commands are the ones CI runs,
dependencies declared as used, documentation links inside the repository."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_TRACKED_BYTES = 1_000_000

# import name -> distribution name, for the third-party imports of src/
DISTRIBUTION = {
    "numpy": "numpy", "scipy": "scipy", "ase": "ase", "featomic": "featomic", "metatensor": "metatensor-core",
    "typer": "typer", "rich": "rich", "matplotlib": "matplotlib", "h5py": "h5py", "threadpoolctl": "threadpoolctl",
    "jsonschema": "jsonschema", "quippy": "quippy-ase", "dask": "dask", "skmatter": "skmatter", "pytest": "pytest",
    "quests": "quests",
}


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def test_no_large_tracked_file():
    files = tracked_files()
    assert "pyproject.toml" in files
    sizes = {p: (ROOT / p).stat().st_size for p in files if (ROOT / p).is_file()}
    large = {p: s for p, s in sizes.items() if s > MAX_TRACKED_BYTES}
    assert not large, f"tracked files over 1 MB: {large}"


def ci_commands() -> list[str]:
    """The command lines of .ci/run after its setup (venv, pip upgrade, environment)."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    setup = ("#", "set ", "cd ", "python3 -m venv", "source ", "python -m pip install --upgrade", "export ")
    return [ln for ln in lines if ln and not ln.startswith(setup)]


def test_readme_second_line_is_the_ci_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = ci_commands()
    test_commands = [c for c in commands if "pytest" in c]
    assert test_commands, commands
    assert all(c == readme[1] for c in test_commands), (readme[1], test_commands)


def third_party_imports(folder: Path) -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in stdlib and n != "mlipdoe"}


def requirement_names(requirements) -> dict[str, str]:
    out = {}
    for req in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
        out[name] = req
    return out


def test_dependencies_declared_as_used():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = requirement_names(project["dependencies"])
    extras = {k: requirement_names(v) for k, v in project["optional-dependencies"].items()}
    optional = {"quippy-ase": "gap", "dask": "dask", "quests": "baselines"}  # imported lazily, only by the features needing them
    used = third_party_imports(ROOT / "src")
    unknown = used - set(DISTRIBUTION)
    assert not unknown, f"imports with no known distribution: {sorted(unknown)}"
    dists = {DISTRIBUTION[n] for n in used}
    for dist in sorted(dists):
        if dist in optional:
            assert any(d.startswith(dist) for d in extras[optional[dist]]), dist
        else:
            assert dist in runtime, f"{dist} is imported in src/ but not a runtime dependency"
            assert ">=" in runtime[dist], f"{dist} needs a lower bound: {runtime[dist]!r}"
    unused = set(runtime) - dists
    assert not unused, f"runtime dependencies never imported in src/: {sorted(unused)}"
    tests_use = {DISTRIBUTION.get(n, n) for n in third_party_imports(ROOT / "tests")} - {"conftest"}
    test_extra = {d for d in extras["test"] if not d.startswith("mlipdoe")}
    assert test_extra <= tests_use, f"test extras never imported in tests/: {sorted(test_extra - tests_use)}"


def test_documentation_links_stay_inside_the_repository():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", path.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{path.name} links outside the repository: {target}"
            assert resolved.exists(), f"{path.name} links to a missing file: {target}"
