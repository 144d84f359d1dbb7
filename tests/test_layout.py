"""The layout's rules, checked on the source: imports point down the layers with no
cycles (imports inside functions and under TYPE_CHECKING count), storage clients live in
jobs/storage only, and files stay small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "jobs")
MAX_LINES = 300  # product modules; most stay under ~250


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports anywhere in its body."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from jobs.report import store` imports the module jobs.report.store
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def test_no_import_cycles():
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_layers_point_down():
    known = modules()
    for m, p in known.items():
        text = p.read_text()
        if m.startswith("detector"):
            assert not any(n.startswith("jobs") for n in imports(p, known)), f"{m} imports jobs/"
            for lib in ("ray", "boto3", "pyarrow"):
                assert f"import {lib}" not in text and f"from {lib}" not in text, f"{m} imports {lib}"
        if not m.startswith("jobs.storage"):
            assert "import boto3" not in text and "from botocore" not in text, f"{m}: S3 clients live in jobs/storage"


def test_jobs_top_level_and_file_sizes():
    top = [p.name for p in (REPO / "jobs").iterdir() if p.name != "__pycache__"]
    assert {"scan", "train", "report", "storage"} <= set(top) and len(top) <= 14, sorted(top)
    long = {str(p.relative_to(REPO)): n for p in modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
