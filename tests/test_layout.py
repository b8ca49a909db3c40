"""kit/layout.py owns the on-disk contract: the paths it gives, and no file name of it spelled elsewhere.

.venv/bin/python -m pytest -q tests/test_layout.py    # < 1 s
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import kit.layout as layout
from kit.layout import ShardPaths, cache_folder, checkpoint_step, parse_repo_path, shard_dirs

KIT = Path(__file__).resolve().parent.parent / "kit"


def test_a_shard_has_the_same_layout_on_this_machine_and_in_its_repo(tmp_path):
    local, there = ShardPaths(tmp_path, 3), ShardPaths.in_repo(3)
    assert local.status == tmp_path / "shard-03" / "status.json" and str(there.status) == "shard-03/status.json"
    assert str(there.checkpoint(40)) == "shard-03/checkpoint-40" and local.checkpoint(40).name == "checkpoint-40"
    assert [str(p) for p in (there.adapter, there.metrics, there.pointer)] == [
        "shard-03/adapter",
        "shard-03/metrics.json",
        "shard-03/latest.json",
    ]
    assert local.pull_staging("checkpoint-4").parent == local.dir and local.push_staging.parent == local.dir


def test_listed_repo_files_are_parsed_into_shard_checkpoint_and_rest():
    assert parse_repo_path("shard-03/checkpoint-40/COMPLETE") == (3, 40, "COMPLETE")
    assert parse_repo_path("shard-03/status.json") == (3, None, "status.json")
    assert parse_repo_path("README.md") == (None, None, "README.md")
    assert parse_repo_path("shard-xx/status.json") == (None, None, "shard-xx/status.json")
    assert checkpoint_step("runs/x/shard-00/checkpoint-12") == 12 and checkpoint_step("checkpoint-12.tmp") is None


def test_shard_folders_are_found_in_shard_order_and_nothing_else(tmp_path):
    for name in ("shard-10", "shard-02", "notes", ".shard-01.tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / "shard-03").write_text("a file, not a shard")
    assert [p.name for p in shard_dirs(tmp_path)] == ["shard-02", "shard-10"]
    assert shard_dirs(tmp_path / "missing") == []


def test_a_remote_things_cache_folder_is_one_flat_name(monkeypatch, tmp_path):
    monkeypatch.setenv("KIT_CACHE", str(tmp_path))
    assert cache_folder("runs", "me/run") == tmp_path / "runs" / "me--run"
    assert cache_folder("merged", "me/run", "merges/best/") == tmp_path / "merged" / "me--run--merges--best"
    assert cache_folder("tokenized") == tmp_path / "tokenized"


def _code_strings(tree: ast.AST):
    """Every string constant (f-string parts too) that is not a docstring."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node


def layout_literals_outside_layout() -> list[str]:
    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and ("." in v or v.isupper())}
    # A path being built: shard-03, shard-{...}, checkpoint-40, checkpoint-{...}. "shard-II" in a message is prose.
    built = re.compile(r"\b(shard|checkpoint)-(\d|\{|$)")
    found = []
    # bootstrap.py is exempt: the install cell runs before kit is installed (its names are checked below).
    for path in sorted(p for p in KIT.rglob("*.py") if p.name not in ("layout.py", "bootstrap.py")):
        for node in _code_strings(ast.parse(path.read_text())):
            hits = sorted(n for n in names if n in node.value) + (["a built path"] if built.search(node.value) else [])
            if hits:
                found.append(f"{path.relative_to(KIT.parent)}:{node.lineno}: {node.value!r} ({', '.join(hits)})")
    return found


def test_no_file_name_of_the_run_layout_is_spelled_outside_kit_layout():
    assert layout_literals_outside_layout() == []


def test_the_literal_scan_would_see_a_spelled_file_name(tmp_path, monkeypatch):
    planted = tmp_path / "kit"
    planted.mkdir()
    (planted / "planted.py").write_text('"""docstring may say metrics.json"""\nPATH = "runs/shard-00/metrics.json"\n')
    monkeypatch.setattr(f"{__name__}.KIT", planted)
    found = layout_literals_outside_layout()
    assert len(found) == 1 and "metrics.json" in found[0] and "a built path" in found[0]


def test_the_install_cell_reads_the_split_files_layout_names():
    source = (KIT / "bootstrap.py").read_text()
    assert f'"{layout.MANIFEST}"' in source
