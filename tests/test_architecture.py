"""The package's shape: stages that import downwards only, and an analysis layer that reads a
study folder with neither torch nor Hydra installed."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "bench"
HEAVY = ("torch", "lightning", "hydra", "omegaconf", "optuna", "gensim", "transformers", "peft")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the bench modules it imports, at the top or inside functions alike."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from bench import config` names a module
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle: the strongly connected parts with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_bench_counting_imports_inside_functions():
    graph = import_graph()
    assert "bench.study.sweep" in graph and "bench.analysis.report" in graph
    assert cycles(graph) == []


def test_analysis_never_imports_the_study_or_training_layers():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("bench.analysis"):
            upward = {d for d in deps if d.startswith(("bench.study", "bench.training",
                                                       "bench.config", "bench.models"))}
            assert not upward, (name, upward)


BLOCKER = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is blocked in this test")
sys.meta_path.insert(0, Blocked())
from bench.cli import main
main(sys.argv[1:])
"""


def test_report_runs_without_torch_or_hydra(tmp_path):
    """``transfer-bench report`` (tables and figures) on a committed study, with every heavy
    dependency made unimportable: the same tables as committed."""
    study = REPO / "results" / "movie_to_amazon_strategies"
    copy = tmp_path / study.name
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("report", "reproductions"))
    proc = subprocess.run([sys.executable, "-c", BLOCKER, "report", str(copy), "--no-plots",
                           "--against", "full"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for table in ("table.md", "gains_vs_full.md", "variance.md"):
        assert (copy / "report" / table).read_bytes() == \
            (study / "report" / table).read_bytes(), table
    proc = subprocess.run([sys.executable, "-c", BLOCKER, "sweep", "hpo=none"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and "is blocked in this test" in proc.stderr  # the blocker bites
