"""The benchmarks keep up with the code they measure: every `from tlbench... import name` in
benchmarks/*.py resolves (read statically, so no benchmark runs), and every benchmark with an
argparse command line answers `--help`.

Imports are found at the top, inside functions and in the child scripts a benchmark runs from a
string. `--help` is asked only of argparse benchmarks: the others read sys.argv themselves and
would start measuring (parallel_throughput.py runs its whole grid). Together they take about
12 s on 2 busy cores; the one that imports Keras at the top costs most of that.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))


def trees(path: Path) -> list[tuple[ast.Module, int]]:
    """The file's syntax tree, and those of the Python scripts it holds as strings (a child
    process's code), each with the line its text starts on."""
    tree = ast.parse(path.read_text())
    found = [(tree, 1)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "tlbench" in node.value and "import" in node.value:
            try:
                found.append((ast.parse(node.value), node.lineno))
            except SyntaxError:  # prose, not a script
                continue
    return found


def tlbench_imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None for `import module`, line) of each tlbench import."""
    found = []
    for tree, first_line in trees(path):
        for node in ast.walk(tree):
            line = first_line + node.lineno - 1 if hasattr(node, "lineno") else first_line
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "tlbench":
                found += [(node.module, alias.name, line) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [(alias.name, None, line) for alias in node.names
                          if alias.name.split(".")[0] == "tlbench"]
    return found


def unresolved(module: str, name: str | None) -> str | None:
    """Why `from module import name` (or `import module`) would fail, or None if it works."""
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        return f"module {module} cannot be imported ({exc})"
    if name is None or hasattr(imported, name):
        return None
    if hasattr(imported, "__path__") and importlib.util.find_spec(f"{module}.{name}"):
        return None  # a submodule, imported by the from-import itself
    return f"{module} has no {name!r}"


def uses_argparse(path: Path) -> bool:
    """Whether the benchmark imports argparse (so `--help` prints its usage and exits)."""
    return any(isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names)
               for node in ast.walk(ast.parse(path.read_text())))


def test_benchmarks_are_found():
    """The glob sees the benchmarks (an empty list would pass every check below)."""
    assert ROOT / "benchmarks" / "speed_vs_keras_recipe.py" in BENCHMARKS


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda path: path.name)
def test_tlbench_imports_resolve(path):
    """Each tlbench name the benchmark imports exists in the module it names."""
    problems = [f"benchmarks/{path.name}:{line}: {why}"
                for module, name, line in tlbench_imports(path)
                if (why := unresolved(module, name))]
    assert not problems, "\n".join(problems)


def test_the_import_check_finds_a_missing_name(tmp_path):
    """A name removed from a module is reported with its file and line, in a child script too."""
    script = tmp_path / "stale.py"
    script.write_text("from tlbench.config import RunConfig, gone\n"
                      "CHILD = '''\nimport os\nfrom tlbench.rowcache import Rows, vanished\n'''\n")
    problems = [(line, unresolved(module, name)) for module, name, line in tlbench_imports(script)]
    assert [(line, why) for line, why in problems if why] == [
        (1, "tlbench.config has no 'gone'"), (4, "tlbench.rowcache has no 'vanished'")]


@pytest.mark.parametrize("path", [path for path in BENCHMARKS if uses_argparse(path)],
                         ids=lambda path: path.name)
def test_help(path):
    """The benchmark starts and prints its usage."""
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]
