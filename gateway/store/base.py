"""The store's connection: opening the file (and migrating it), transactions, read snapshots,
counters, `meta`. Every other module of the store is a part of `Store` built on this one."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Self
from urllib.parse import quote

from . import schema
from .keys import Keys
from .schema import StoreError


class Base:
    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        #: counter increments made inside `transaction()`, written once just before its COMMIT
        #: (a group of hundreds of messages bumps the same few counters hundreds of times)
        self._counts: dict[str, int] | None = None
        #: nodes that got dead letters since the pruner last looked at their budgets
        self.dead_letter_nodes: set[str | None] = set()
        self.keys: Keys
        if readonly:
            if not self.path.exists():
                raise StoreError(f"{self.path}: no store there (has the gateway run yet?)")
            uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            if not self.path.parent.is_dir():
                raise StoreError(f"{self.path}: the folder {self.path.parent} does not exist")
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA busy_timeout = 5000")
            self.db.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                # Only possible before the first table (and before WAL mode writes the header): a
                # new store can give the pages that pruning frees back to the file system.
                self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self.db.execute("PRAGMA journal_mode = WAL")
                # A commit is on disk when it returns: the gateway may acknowledge what it committed.
                self.db.execute("PRAGMA synchronous = FULL")
            schema.migrate(self.db, self.path, readonly)
            if not readonly and self._meta("db_id") is None:  # only if someone deleted it
                self.db.execute("INSERT INTO meta (key, value) VALUES ('db_id', lower(hex(randomblob(8))))")
            self.db_id: str = self._meta("db_id") or ""
            self.keys = Keys(self.db)
        except BaseException:
            self.db.close()  # a corrupt file is moved aside next: let go of it
            raise

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def incremental(self) -> bool:
        """Freed pages can be given back to the file system (auto_vacuum = INCREMENTAL)."""
        return schema.incremental(self.db)

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    @property
    def created_at(self) -> float | None:
        value = self._meta("created_at")
        return None if value is None else float(value)

    # -- transactions ----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: committed (and fsynced) at the end, rolled back on an exception, also
        when the COMMIT itself fails (disk full, I/O error): then nothing of it is in the file."""
        self.db.execute("BEGIN IMMEDIATE")
        self._counts = {}
        try:
            yield
            self._write_counts()
            self._counts = None
            self.db.execute("COMMIT")
        except BaseException:
            self._counts = None  # the increments go with the rest
            self.keys.forget()  # so do the ids it made
            if self.db.in_transaction:  # SQLite may have rolled back by itself already
                self.db.execute("ROLLBACK")
            raise

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: undo only this block's writes if it raises."""
        counts = None if self._counts is None else dict(self._counts)
        self.db.execute("SAVEPOINT one")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK TO one")
            self.db.execute("RELEASE one")
            self.keys.forget()
            self._counts = counts  # its counter increments too (also any written meanwhile: rolled back)
            raise
        self.db.execute("RELEASE one")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: what is read inside sees the store as it was at its first read,
        whatever the gateway commits meanwhile (WAL). Not inside `transaction()`."""
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def _write_counts(self) -> None:
        if self._counts:
            self.db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                self._counts.items(),
            )
            self._counts.clear()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        if self.db.in_transaction:
            yield
        else:
            with self.transaction():
                yield

    # -- counters --------------------------------------------------------------------------------

    def bump(self, name: str, by: int = 1) -> None:
        if not by:
            return
        if self._counts is not None:  # inside transaction(): written at its commit
            self._counts[name] = self._counts.get(name, 0) + by
            return
        with self._writing():
            self.db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def counters(self) -> dict[str, int]:
        if self._counts:  # inside a transaction: what it has counted so far, too
            self._write_counts()
        return dict(self.db.execute("SELECT name, value FROM counters ORDER BY name"))
