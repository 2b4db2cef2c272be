"""The house's rules (DESIGN.md, "Top-level layout"), checked on the source itself: pure rules
load no I/O library, the sandbox shares nothing with the engine, imports point down only,
and the CLI holds no SQL."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "campaign"

PURE = ("campaign.binding", "campaign.breaker", "campaign.clock", "campaign.errors", "campaign.events",
        "campaign.identity", "campaign.payloads", "campaign.phone", "campaign.policy", "campaign.send_window", "campaign.states",
        "campaign.statuses", "campaign.templates")
"""Rules with no I/O: tested directly, importable without a database or an HTTP stack."""
IO_LIBRARIES = ("sqlalchemy", "alembic", "aiohttp", "httpx", "starlette", "uvicorn", "psycopg", "pandas", "pyarrow",
                "campaign.db", "campaign.models", "campaign.graph", "campaign.sql")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The `campaign...` and third-party modules a file imports (at module level only, if asked:
    an import inside a function is deferred on purpose and cannot make a cycle at load time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def engine_modules(names: set[str], known: dict[str, Path]) -> set[str]:
    return {name for name in names if name in known}


_PROBE = """
import json, sys
loaded = {}
for name in sys.argv[1:]:
    before = set(sys.modules)
    __import__(name)
    loaded[name] = sorted(set(sys.modules) - before)
print(json.dumps(loaded))
"""


def test_pure_rules_load_no_database_or_http_code() -> None:
    # One fresh interpreter imports them one after another: what each adds is what it loads
    # (a dependency another pure module loaded first is pure too, or that one fails).
    answer = subprocess.run([sys.executable, "-c", _PROBE, *PURE], check=True, capture_output=True, text=True)
    for module, loaded in json.loads(answer.stdout).items():
        offending = [m for m in loaded if any(m == lib or m.startswith(lib + ".") for lib in IO_LIBRARIES)]
        through = [m for m in loaded if m.startswith("campaign.")]
        assert offending == [], f"{module} loads {offending[:5]} (importing {through})"


def test_the_sandbox_imports_nothing_from_the_engine() -> None:
    # An emulator that shares the engine's beliefs about Meta lets a wrong belief pass its own tests.
    known = modules()
    for name, path in known.items():
        if name.startswith("campaign.sandbox"):
            borrowed = {m for m in engine_modules(imports(path, top_level_only=False), known)
                        if not m.startswith("campaign.sandbox") and m != "campaign"}
            assert borrowed == set(), f"{path.name} imports {sorted(borrowed)}"


def test_no_module_imports_one_that_imports_it_back() -> None:
    known = modules()
    graph = {name: engine_modules(imports(path, top_level_only=True), known) - {name, "campaign"}
             for name, path in known.items()}
    cycle = _a_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cli_holds_no_sql() -> None:
    path = PACKAGE / "cli.py"
    names = imports(path, top_level_only=False)
    assert not {n for n in names if n.split(".")[0] == "sqlalchemy" or n.startswith("campaign.models")}
    executes = [node.lineno for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.Attribute) and node.attr in ("execute", "scalar", "scalars")]
    assert executes == [], f"cli.py runs statements itself at lines {executes}"


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if (cycle := visit(child)) is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if (cycle := visit(start)) is not None:
            return cycle
    return None
