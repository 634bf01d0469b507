"""Opening the store at start: a corrupt database is moved aside and a fresh one started.

The check (`check`): open the file read-only, read its schema, `PRAGMA quick_check`. When SQLite
says the file is not a database or is malformed, the file and its -wal, -shm (and -journal) are renamed to
`<path>.corrupt-<UTC stamp>` (`-wal` etc. appended, so SQLite finds them together again for a
forensic look) and a fresh database with a new id takes its place. Nothing is deleted. The nodes
see the new id in their next acknowledgement and send everything their spools still hold, which
refills the fresh database.

Anything else (a locked file, no permission, a schema from a newer gateway, a full disk) is NOT
corruption: the file stays where it is and the error goes up.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .store import Store, integrity
from .store.integrity import is_corruption

log = logging.getLogger(__name__)

_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class MovedAside:
    """A corrupt database that was moved out of the way."""

    problem: str  # what SQLite said
    moved: tuple[tuple[Path, Path], ...]  # (from, to) for the file and each side file there was

    @property
    def target(self) -> Path:
        return self.moved[0][1]


def open_store(path: Path) -> tuple[Store, MovedAside | None]:
    """The store at `path`, checked; a corrupt one is moved aside and a fresh one opened instead."""
    problem = check(path) if path.exists() else None
    if problem is None:
        try:
            return Store(path), None
        except sqlite3.DatabaseError as e:  # what the read-only look could not see
            if not is_corruption(e):
                raise
            problem = str(e)
    moved = move_aside(path, problem)
    return Store(path), moved


def check(path: Path) -> str | None:
    """None when SQLite finds the file sound, else what it found (store/integrity.py: read-only,
    `PRAGMA quick_check`). Raises what is not corruption (a locked or unreadable file)."""
    return integrity.check(path)


def move_aside(path: Path, problem: str) -> MovedAside:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    k = 1
    while any(Path(f"{target}{side}").exists() for side in ("", *_SIDE_FILES)):
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{k}")
        k += 1
    moved = []
    for side in ("", *_SIDE_FILES):
        src = Path(f"{path}{side}")
        if src.exists():
            dst = Path(f"{target}{side}")
            os.rename(src, dst)
            moved.append((src, dst))
    _sync_dir(path.parent)
    return MovedAside(problem, tuple(moved))


def _sync_dir(folder: Path) -> None:
    # The renames are durable once the folder is synced: a power cut cannot bring the file back.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
