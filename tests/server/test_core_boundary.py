"""No cache rule in ``kvsim/server/``: the server never reads the block table's columns
(``<manager>.table.t``) nor a private attribute of a core object (``mgr._x``,
``mgr.storage._x``, ``mgr.table._x``); every rule is a public call of the core.

An AST check over every module of the package (comments and strings cannot trigger it,
any spelling of the access does), with a self-test that it catches each form.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kvsim.server

SERVER = Path(kvsim.server.__file__).resolve().parent
CORE_NAMES = {"mgr", "manager", "table", "storage", "registry"}


def _chain(node: ast.AST) -> list[str]:
    """The dotted names of an attribute chain, outermost last (``a.b.c`` -> a, b, c)."""
    out: list[str] = []
    while isinstance(node, ast.Attribute):
        out.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        out.append(node.id)
    return out[::-1]


def violations(source: str, name: str = "<src>") -> list[str]:
    """Every access of a table column or a core object's private attribute."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _chain(node)
        if len(chain) < 2:
            continue
        head, last = chain[:-1], chain[-1]
        if last == "t" and head[-1] == "table":
            bad.append(f"{name}:{node.lineno}: {'.'.join(chain)} (a table column)")
        elif (last.startswith("_") and not last.startswith("__")
              and any(n in CORE_NAMES for n in head[1:] + head[:1] if n != "self")
              and head[-1] in CORE_NAMES):
            bad.append(f"{name}:{node.lineno}: {'.'.join(chain)} (private core attribute)")
    return bad


def test_the_check_catches_each_form() -> None:
    src = ("x = self.mgr.table.t.loc[r]\n"
           "y = svc.mgr._sessions[1].rows\n"
           "z = self.mgr.storage._health\n"
           "w = mgr._groups\n"
           "ok = self.mgr.storage.usable('a'); ok2 = self._lock; ok3 = svc._group_cfg\n")
    got = violations(src)
    assert len(got) == 4, got
    assert all(":5:" not in g for g in got)


def test_server_reads_no_table_column_nor_private_core_attribute() -> None:
    bad = []
    for path in sorted(SERVER.rglob("*.py")):
        bad += violations(path.read_text(), path.name)
    assert not bad, "cache rules belong in kvsim/core:\n" + "\n".join(bad)


def test_service_shrank() -> None:
    """The storage rules left ``service.py`` (2,190 lines before they moved)."""
    n = len((SERVER / "service.py").read_text().splitlines())
    assert n < 2000, n


def test_server_never_reaches_into_the_block_table() -> None:
    """Not even the table object: ``mgr.table.rows`` / ``ensure_rows`` became the public
    ``CacheManager.row_capacity`` / ``reserve_rows`` (issue 18)."""
    bad = []
    for path in sorted(SERVER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "table":
                chain = _chain(node)
                if len(chain) >= 2 and chain[-2] in {"mgr", "manager"}:
                    bad.append(f"{path.name}:{node.lineno}: {'.'.join(chain)}")
    assert not bad, "use CacheManager's public calls:\n" + "\n".join(bad)
