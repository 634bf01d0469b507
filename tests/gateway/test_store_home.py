"""Every SQL statement on the gateway's tables lives in gateway/store/ (issue 14): a module that
changes a table is found there, not in six others. Outside the store no code may hold SQL on a table
of the store's file, run a PRAGMA, or call a connection's execute or sqlite3.connect.

What counts as SQL: a string literal (an f-string's fixed parts too; docstrings are prose and left
out) in which a keyword that names a table (FROM, INTO, UPDATE, TABLE, JOIN, ON, EXISTS, any case)
is followed by one of the tables the store makes, or that holds PRAGMA. The tables are read from a
fresh store, so a table added later is looked for without editing this test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from meetkit_gateway.export import Selection, Summary, rows
from meetkit_gateway.forward import Forwarder
from meetkit_gateway.forward.core import Result
from meetkit_gateway.payload import parse_batch
from meetkit_gateway.store import Reading, Store

from .conftest import batch, encode

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
STORE = GATEWAY / "store"
_CALLS = {"execute", "executemany", "executescript", "connect"}


def store_tables(tmp_path: Path) -> set[str]:
    """Every table and index in the store's file, sensorthings_entities included."""
    with Store(tmp_path / "tables.db") as s:
        s.prepare_sensorthings()
        names = {n for (n,) in s.db.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
    return names | {"sqlite_master", "sqlite_schema", "dbstat"}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (of the module, a class, a function)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string literal but docstrings; an f-string's fixed parts joined by
    a space where its values go."""
    skip = _docstrings(tree)
    inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = " ".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else " "
                            for v in node.values)
            out.append((node.lineno, text))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
              and id(node) not in inner):
            out.append((node.lineno, node.value))
    return out


def sql_outside_store(root: Path, store: Path, tables: set[str]) -> list[str]:
    """`file:line: what` for each piece of SQL (or way to run it) in `root` outside `store`."""
    on_table = re.compile(r"\b(from|into|update|table|join|on|exists)\s+(" + "|".join(map(re.escape, tables)) +
                          r")\b", re.IGNORECASE)
    pragma = re.compile(r"\bpragma\b", re.IGNORECASE)
    found: list[tuple[str, int, str]] = []
    for path in sorted(root.rglob("*.py")):
        if store in path.parents:
            continue
        tree = ast.parse(path.read_text(), str(path))
        where = str(path.relative_to(root.parent))
        for line, text in _literals(tree):
            m = on_table.search(text) or pragma.search(text)
            if m:
                found.append((where, line, f"SQL {m.group(0)!r}"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _CALLS
                    and (node.func.attr != "connect" or ast.unparse(node.func.value) == "sqlite3")):
                found.append((where, node.lineno, f"{ast.unparse(node.func)}()"))
    return [f"{where}:{line}: {what}" for where, line, what in sorted(found)]


def test_no_sql_on_the_stores_tables_outside_the_store(tmp_path: Path) -> None:
    tables = store_tables(tmp_path)
    assert {"records", "recs", "boots", "forward_cursors", "sensorthings_entities"} <= tables
    assert sql_outside_store(GATEWAY, STORE, tables) == []


def test_the_check_finds_sql_planted_outside_the_store(tmp_path: Path) -> None:
    """The check above would fail on each way SQL can come back: a statement in a literal, in an
    f-string, a PRAGMA, a call to execute on any connection, a connection of its own."""
    tables = store_tables(tmp_path)
    root = tmp_path / "gateway"
    (root / "store").mkdir(parents=True)
    (root / "store" / "fine.py").write_text('Q = "SELECT * FROM records"\n')  # the store's own: allowed
    (root / "export.py").write_text(
        '"""Reads from records JOIN readings, in prose: a docstring is not SQL."""\n'
        'import sqlite3\n'
        'A = "SELECT node FROM nodes ORDER BY node"\n'
        'def f(db, t, marks):\n'
        '    db.cursor().executemany("x", [])\n'
        '    con = sqlite3.connect("x.db")\n'
        '    return f"update forward_cursors set last_id = {t} WHERE target IN ({marks})"\n'
        'B = "PRAGMA quick_check"\n'
        'C = "the node sent no records: nothing to update"  # prose, no table after a keyword\n')
    found = sql_outside_store(root, root / "store", tables)
    assert found == [
        "gateway/export.py:3: SQL 'FROM nodes'",
        "gateway/export.py:5: db.cursor().executemany()",
        "gateway/export.py:6: sqlite3.connect()",
        "gateway/export.py:7: SQL 'update forward_cursors'",
        "gateway/export.py:8: SQL 'PRAGMA'",
    ], found


class _Unused:
    kind = "test"

    def send(self, rows: object) -> Result:
        raise AssertionError("pending() only reads")

    def close(self) -> None:
        pass


def test_every_reader_gets_the_same_reading(tmp_path: Path) -> None:
    """The CLI's readings, the page's latest, export and a forwarder read one reading alike: one
    type, the same values, the flags as the node sent them."""
    t0 = 1795510800
    doc = batch(seqs=range(2), ts0=t0)
    doc["recs"][1]["f"] = {"pm25": ["rh_high", "partial"]}
    path = tmp_path / "gateway.db"
    with Store(path) as s:
        s.add_batch(parse_batch(encode(doc), "ams-001"), received_at=t0 + 200)
        listed = s.readings()
        (latest,) = s.latest()
        with s.snapshot():
            exported = list(rows(s, Selection(), Summary(), now=t0 + 3600))
    f = Forwarder("t", path, _Unused(), clock=lambda: t0 + 3600)
    try:
        forwarded = f.pending().rows
    finally:
        f.close()
    assert all(type(r) is Reading for r in [*listed, *latest.readings.values(), *exported, *forwarded])
    assert [(r.node, r.boot, r.seq, r.start, r.quantity, r.avg, r.min, r.max, r.n) for r in listed] == [
        ("ams-001", 3, 0, t0, "pm25", 5.0, 4.0, 7.0, 58), ("ams-001", 3, 0, t0, "temp", 12.5, 12.0, 13.0, 12),
        ("ams-001", 3, 1, t0 + 60, "pm25", 6.0, 4.0, 8.0, 58), ("ams-001", 3, 1, t0 + 60, "temp", 12.5, 12.0, 13.0, 12)]
    assert listed == exported == forwarded
    assert list(latest.readings.values()) == listed[2:]
    assert (listed[2].flags, listed[2].flag_names) == ("rh_high,partial", ("rh_high", "partial"))
    assert (listed[3].flags, listed[3].flag_names) == ("", ())
