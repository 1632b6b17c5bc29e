"""The shape of the code in `python/ddm`, checked on its syntax tree (part of `make lint`).

- No function is longer than 80 lines, its docstring excluded, or takes more than 12 parameters (`self`
  and `cls` excluded): a function that long or that wide is several functions, or wants a config object.
- Every import inside a function says why on a one-line comment, on the line above or at the end of the
  line (an optional dependency, a heavy module loaded on first use, a cycle): an unexplained local import
  usually hides an import cycle. A run of consecutive imports shares one comment.
- import-linter's contracts have no `ignore_imports`: the layers hold with no exception.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the `tomli` backport of Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "ddm"
MAX_LINES = 80
MAX_PARAMS = 12
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class Source:
    path: Path
    tree: ast.Module
    comment_lines: frozenset[int]  # lines with a comment token
    comment_only: frozenset[int]  # lines that hold nothing but a comment

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))


def _read(path: Path) -> Source:
    text = path.read_text(encoding="utf-8")
    comments, code = set(), set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comments.add(tok.start[0])
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code.update(range(tok.start[0], tok.end[0] + 1))
    return Source(path, ast.parse(text, str(path)), frozenset(comments), frozenset(comments - code))


SOURCES = [_read(p) for p in sorted(PACKAGE.rglob("*.py"))]


def _functions(tree: ast.AST):
    return (node for node in ast.walk(tree) if isinstance(node, FUNCTIONS))


def _length(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from `def` to the last statement, less the docstring's."""
    lines = fn.end_lineno - fn.lineno + 1
    first = fn.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names)


def too_long() -> list[str]:
    return [
        f"{s.name}:{fn.lineno} {fn.name}: {_length(fn)} lines"
        for s in SOURCES
        for fn in _functions(s.tree)
        if _length(fn) > MAX_LINES
    ]


def too_wide() -> list[str]:
    return [
        f"{s.name}:{fn.lineno} {fn.name}: {_params(fn)} parameters"
        for s in SOURCES
        for fn in _functions(s.tree)
        if _params(fn) > MAX_PARAMS
    ]


def unexplained_imports() -> list[str]:
    bad = []
    for s in SOURCES:
        local = {
            node.lineno: node
            for fn in _functions(s.tree)
            for node in ast.walk(fn)
            if isinstance(node, (ast.Import, ast.ImportFrom))
        }
        explained: set[int] = set()
        for line in sorted(local):
            node = local[line]
            above = line - 1
            ok = (
                line in s.comment_lines
                or node.end_lineno in s.comment_lines
                or above in s.comment_only
                or above in explained  # the run of imports that a comment above explains
            )
            if ok:
                explained.update(range(line, node.end_lineno + 1))
            else:
                bad.append(f"{s.name}:{line} {ast.unparse(node)}")
    return bad


def test_the_checks_see_the_package() -> None:
    assert len(SOURCES) > 40 and any(s.name.endswith("graphs.py") for s in SOURCES)


def test_no_function_is_over_80_lines() -> None:
    assert too_long() == [], "split these functions:\n" + "\n".join(too_long())


def test_no_function_takes_over_12_parameters() -> None:
    assert too_wide() == [], "group these parameters (a config object):\n" + "\n".join(too_wide())


def test_every_import_inside_a_function_says_why() -> None:
    bad = unexplained_imports()
    assert bad == [], "add a one-line comment saying why each is imported here:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "code, lines, params, unexplained",
    [
        ("def f(a, b):\n    '''Doc\n\n    more.'''\n    return a\n", 2, 2, 0),
        ("class C:\n    def m(self, *a, k=1, **kw):\n        pass\n", 2, 3, 0),
        ("def f():\n    import os\n    return os\n", 3, 0, 1),
        ("def f():\n    import os  # why\n    import sys\n    return os, sys\n", 4, 0, 0),
        ("def f():\n    # why\n    from os import (\n        path,\n    )\n    return path\n", 6, 0, 0),
        ("def f():\n    import os  # why\n    x = 1\n    import sys\n    return x\n", 5, 0, 1),
        ("def f():\n    s = '# not a comment'\n    import os\n    return s\n", 4, 0, 1),
    ],
)
def test_the_checks_themselves(tmp_path, code, lines, params, unexplained) -> None:
    path = tmp_path / "m.py"
    path.write_text(code)
    s = _read(path)
    fn = next(_functions(s.tree))
    assert (_length(fn), _params(fn)) == (lines, params)
    saved = SOURCES[:]
    SOURCES[:] = [Source(ROOT / "m.py", s.tree, s.comment_lines, s.comment_only)]
    try:
        assert len(unexplained_imports()) == unexplained
    finally:
        SOURCES[:] = saved


def test_import_linter_has_no_ignore_imports() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    assert "ignore_imports" not in config
    contracts = config["contracts"]
    assert len(contracts) >= 2
    for contract in contracts:
        assert "ignore_imports" not in contract, f"contract {contract['name']!r} has ignore_imports"
