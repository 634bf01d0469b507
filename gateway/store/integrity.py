"""Is the file sound? The look recovery.py takes at start, before the store is opened: its schema
read and `PRAGMA quick_check`, on a read-only connection of its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def is_corruption(e: sqlite3.DatabaseError) -> bool:
    """SQLite says the file is not a database or is malformed (not: locked, no permission, full)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    text = str(e)
    return "file is not a database" in text or "malformed" in text


def check(path: Path) -> str | None:
    """None when SQLite finds the file sound (its schema reads, `PRAGMA quick_check` says ok), else
    what it found. Read-only: a writing connection would checkpoint the WAL into a broken file and
    delete the -wal and -shm when it closes. Reads the whole file: seconds for a large store on an
    SD card. Raises what is not corruption (a locked or unreadable file)."""
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    con = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        con.execute("PRAGMA busy_timeout = 5000")
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        problems = [row[0] for row in con.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as e:
        if not is_corruption(e):
            raise
        return str(e)
    finally:
        con.close()
    if problems == ["ok"]:
        return None
    lines = [line for p in problems for line in str(p).splitlines() if not line.startswith("*** ")]
    return "quick_check: " + "; ".join(lines)
