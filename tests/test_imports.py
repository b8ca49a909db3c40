"""How kit's modules depend on each other: no import circle, counting the imports inside functions too.

.venv/bin/python -m pytest -q tests/test_imports.py    # < 1 s, reads the source with ast
"""

from __future__ import annotations

import ast
from pathlib import Path

KIT = Path(__file__).resolve().parent.parent / "kit"


def module_name(path: Path) -> str:
    parts = path.relative_to(KIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """kit module -> the kit modules it imports anywhere (top level or inside a function)."""
    modules = {module_name(p): p for p in KIT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}  # `from kit import layout`
        # The package itself is not a dependency: `kit/__init__.py` loads its names lazily (PEP 562).
        graph[name] = {d for d in deps if d in modules and d not in (name, "kit")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_kit_module_imports_itself_through_others_even_inside_a_function():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"kit.a": {"kit.b"}, "kit.b": {"kit.c"}, "kit.c": {"kit.a"}, "kit.d": set()}
    assert find_cycle(graph) == ["kit.a", "kit.b", "kit.c", "kit.a"]
    assert find_cycle({"kit.a": {"kit.b"}, "kit.b": set()}) is None


def test_the_leaf_modules_need_nothing_of_kit_but_errors():
    graph = import_graph()
    for leaf in ("kit.layout", "kit.errors", "kit.distributed", "kit.runtime", "kit.tables", "kit.bootstrap"):
        assert graph[leaf] == set(), f"{leaf} imports {graph[leaf]}"
    assert graph["kit.config"] <= {"kit.errors", "kit.layout"}


def test_kit_status_and_the_cli_parser_do_not_load_torch_or_transformers():
    import subprocess
    import sys

    code = (
        "import sys, kit.status, kit.cli; kit.cli._parser(); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_loads_and_import_kit_alone_loads_no_torch():
    import subprocess
    import sys

    import kit

    assert all(getattr(kit, name) is not None for name in kit.__all__)
    code = "import sys, kit; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_the_notebooks_call_only_kits_public_names():
    import re

    import kit

    for path in sorted((KIT.parent / "notebooks").glob("*.py")):
        source = path.read_text()
        body = source[source.rindex("install_kit(kit_source") :]  # the cells after the install cell
        used = set(re.findall(r"\bkit\.(\w+)", body))
        assert used and used <= set(kit.__all__), f"{path.name} uses {sorted(used - set(kit.__all__))}"
        assert not re.search(r"^from kit\b", body, re.M), f"{path.name} imports kit's internals"
