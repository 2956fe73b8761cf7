"""The public API: every name in shoal.__all__ resolves; light imports stay light."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import shoal
import shoal.errors as _errors


def test_every_public_name_resolves() -> None:
    """Each name is the real object, defined in shoal under that name (not a stand-in)."""
    assert "App" in shoal.__all__
    for name in shoal.__all__:
        if name == "__version__":
            assert isinstance(shoal.__version__, str) and shoal.__version__[0].isdigit()
            continue
        obj = getattr(shoal, name)
        assert obj.__module__.startswith("shoal."), (name, obj.__module__)
        assert obj.__name__ == name, (name, obj)
        assert getattr(importlib.import_module(obj.__module__), name) is obj


def test_importing_shoal_loads_nothing_heavy() -> None:
    code = (
        "import sys, shoal; heavy = [m for m in ('grpc', 'pydantic', 'etcd3aio', 'yaml') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_all_is_exactly_the_public_names() -> None:
    """``shoal.__all__`` = the lazily exported names (+ ``__version__``), no more, no
    less, sorted; each resolves to the object of the module it is said to live in,
    and the names typing tools see (the TYPE_CHECKING imports) are the same."""
    exports = shoal._EXPORTS
    assert set(shoal.__all__) == set(exports) | {"__version__"}
    assert len(shoal.__all__) == len(set(shoal.__all__))
    for name, module in exports.items():
        assert getattr(shoal, name) is getattr(importlib.import_module(module), name), name
    source = Path(shoal.__file__).read_text()
    block = source[source.index("if TYPE_CHECKING:"):]
    typed = set(re.findall(r"^\s+(\w+),?$", block, re.M))
    typed |= {n for line in re.findall(r"import ([\w, ]+)$", block, re.M)
              for n in (x.strip() for x in line.split(",")) if n}
    assert typed == set(exports)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = shoal.nope


def _tree() -> list[type[BaseException]]:
    return [obj for obj in vars(_errors).values()
            if isinstance(obj, type) and issubclass(obj, BaseException)
            and obj.__module__ == "shoal.errors"]


def test_every_exported_error_is_in_the_tree_and_every_tree_error_is_exported() -> None:
    exported = [getattr(shoal, n) for n in shoal.__all__]
    errors = {e for e in exported if isinstance(e, type) and issubclass(e, BaseException)}
    assert errors, "no errors exported?"
    for error in errors:
        assert issubclass(error, shoal.ShoalError), error
    assert set(_tree()) == errors  # nothing in _errors is left unexported


def test_the_tree_picture_names_every_error_under_its_parent() -> None:
    doc = _errors.__doc__ or ""
    picture = [line for line in doc.splitlines() if re.search(r"[├└]──|^\s+ShoalError$", line)]
    depth: dict[str, int] = {}
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in picture:
        name = re.search(r"(\w+)", line.split("──")[-1]).group(1)  # type: ignore[union-attr]
        level = line.find("──") if "──" in line else 0
        while stack and stack[-1][0] >= level:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        depth[name] = level
        stack.append((level, name))
    classes = {e.__name__: e for e in _tree()}
    assert set(depth) == set(classes)
    for name, parent in parents.items():
        assert classes[parent] in classes[name].__bases__, (name, parent)


def test_usage_errors_are_also_the_builtin_kinds() -> None:
    assert issubclass(shoal.InvalidArgument, ValueError)
    assert issubclass(shoal.InvalidArgumentType, TypeError)
    assert issubclass(shoal.WrongState, RuntimeError)
    assert issubclass(shoal.StartTimeout, TimeoutError)
    assert issubclass(shoal.InvalidTransaction, ValueError)
    assert issubclass(shoal.InvalidDocument, ValueError)


_BUILTIN = {"ValueError", "TypeError", "RuntimeError", "TimeoutError", "Exception",
            "KeyError", "OSError", "LookupError", "IndexError"}
# helpers that pydantic runs as validators (AfterValidator or called by a validator):
# pydantic turns a plain ValueError into a validation error, so they raise one
_VALIDATOR_HELPERS = {"check_name", "_check_secret", "existing_file", "_check_endpoint"}


def test_every_raise_in_src_is_in_the_error_tree() -> None:
    """No ``raise ValueError(...)`` & co outside pydantic validators: every error a
    caller can see is a ShoalError (usage errors are also ValueError/TypeError)."""
    bad = []
    for path in sorted(Path(shoal.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        kinds = ast.FunctionDef | ast.AsyncFunctionDef
        functions = [n for n in ast.walk(tree) if isinstance(n, kinds)]
        for fn in functions:
            validator = fn.name in _VALIDATOR_HELPERS or any(
                "validator" in ast.unparse(d) for d in fn.decorator_list
            )
            for node in ast.walk(fn):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                    if isinstance(exc, ast.Name) and exc.id in _BUILTIN and not validator:
                        bad.append(f"{path.name}:{node.lineno} {fn.name}: raise {exc.id}")
    assert bad == []


def test_the_private_etcd3aio_protobuf_is_imported_in_one_module_only() -> None:
    root = Path(shoal.__file__).parent
    users = sorted(
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if re.search(r"etcd3aio\._protobuf|from etcd3aio import _protobuf", p.read_text())
    )
    assert users == ["store/_etcd_pb.py"]
