"""The package's shape: one module per concept, imports that go one way, and inference without Lightning."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tangshi"
INFERENCE = ("tangshi.checkpoint", "tangshi.decoding", "tangshi.studio", "tangshi.analysis")


def _imports() -> dict[str, set[str]]:
    """Every tangshi module and the tangshi modules it imports anywhere in its body (lazy imports included)."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        name = "tangshi" if path.stem == "__init__" else f"tangshi.{path.stem}"
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tangshi"):
                found |= {f"tangshi.{a.name}" for a in node.names} if node.module == "tangshi" else {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("tangshi.")}
        graph[name] = found - {name}
    return graph


def test_the_import_graph_has_no_cycles():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
    assert "tangshi.model" in graph and not graph["tangshi.poetics"]  # poetics depends on nothing of ours


def test_inference_modules_import_no_lightning():
    for module in INFERENCE:
        code = (
            f"import sys, {module}; assert 'lightning' not in sys.modules, [m for m in sys.modules if 'lightning' in m]"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        assert done.returncode == 0, (module, done.stderr[-1500:])
