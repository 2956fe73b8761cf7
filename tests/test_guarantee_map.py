"""The guarantee map: every row of docs/guarantees.md (a guarantee, or a fault of a
primitive) names the tests that check it, and every name is a real test.

Test ids are collected by parsing the test files with :mod:`ast` (no pytest run, no
import), so a renamed or deleted test turns this red at once."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "guarantees.md"

# The tables of the doc that are guarantees x faults: each must have a `tests` column.
MAPPED_SECTIONS = (
    "The guarantees", "Lease session (one lease per node)", "Membership", "Leader", "Duties",
    "Replicated state", "Store backends",
)
TEST_ID = re.compile(r"`(tests/[\w/]+\.py(?:::\w+)+)`")


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row (``|`` inside backticks does not split)."""
    cells, cur, code = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
    cells.append(cur.strip())
    return cells


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Section heading -> rows of the first table under it (header cell -> cell)."""
    out: dict[str, list[dict[str, str]]] = {}
    section, header, rows = "", list[str](), list[dict[str, str]]()
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            section, header = line.lstrip("#").strip(), []
            continue
        if line.startswith("|"):
            cells = _cells(line)
            if not header:
                header, rows = [c.lower() for c in cells], []
                out.setdefault(section, rows)
            elif not set("".join(cells)) <= set("-: "):
                rows.append(dict(zip(header, cells, strict=False)))
        else:
            header = []
    return out


def _node_ids(tree: ast.AST, prefix: str = "") -> set[str]:
    ids: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith("test"):
                ids.add(prefix + node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            ids.add(prefix + node.name)
            ids |= _node_ids(node, f"{prefix}{node.name}::")
    return ids


@cache
def collected(path: str) -> frozenset[str]:
    """The test ids (``func``, ``Class``, ``Class::method``) defined in a test file."""
    file = ROOT / path
    if not file.is_file():
        return frozenset()
    return frozenset(_node_ids(ast.parse(file.read_text(), filename=str(file))))


def missing(test_id: str) -> bool:
    path, _, name = test_id.partition("::")
    return name not in collected(path)


def problems(text: str) -> list[str]:
    found = tables(text)
    out: list[str] = []
    for section in MAPPED_SECTIONS:
        rows = found.get(section)
        if not rows:
            out.append(f"section {section!r}: no table")
            continue
        if "tests" not in rows[0]:
            out.append(f"section {section!r}: the table has no `tests` column")
            continue
        for row in rows:
            label = f"{section} / {next(iter(row.values()))}"
            ids = TEST_ID.findall(row.get("tests", ""))
            if not ids:
                out.append(f"{label}: names no test")
            out += [f"{label}: {t} does not exist" for t in ids if missing(t)]
    return out


def test_every_row_names_tests_that_exist() -> None:
    assert problems(DOC.read_text()) == []


def test_every_guarantee_has_a_row() -> None:
    rows = tables(DOC.read_text())["The guarantees"]
    assert [r["#"] for r in rows] == [f"G{i}" for i in range(1, 7)]


DOC_OK = """
## Lease session (one lease per node)

| fault | promised | tests |
|---|---|---|
| crash | keys vanish | `tests/test_guarantee_map.py::test_every_row_names_tests_that_exist` |
"""


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (DOC_OK.replace("| tests |", "| checked |"), "has no `tests` column"),
        (DOC_OK.replace("`tests/test_guarantee_map.py::test_every_row_names_tests_that_exist`",
                        "see the process tests"), "names no test"),
        (DOC_OK.replace("::test_every_row", "::test_no_such_row"), "does not exist"),
        (DOC_OK.replace("test_guarantee_map.py", "test_gone.py"), "does not exist"),
        (DOC_OK.replace("## Lease session", "## Sessions"), "no table"),
    ],
)
def test_the_map_check_catches_a_broken_row(doc: str, expected: str) -> None:
    found = [p for p in problems(doc) if p.startswith("section 'Lease") or "crash" in p]
    assert any(expected in p for p in found), found


def test_a_good_row_passes_and_classes_and_methods_are_collected() -> None:
    assert not [p for p in problems(DOC_OK) if "Lease session" in p]
    ids = collected("tests/test_guarantee_map.py")
    assert "test_the_map_check_catches_a_broken_row" in ids
    assert "tables" not in ids  # helpers are not tests
    assert "TestConformance::test_put_get_delete" not in collected("tests/test_gone.py")
    assert _node_ids(ast.parse("class TestX:\n    def test_y(self): pass\n")) == {
        "TestX", "TestX::test_y"}
