"""A file the gateway reads again when it changes (the fleet's secrets, the node keys, the visitors'
towns): compared by modification time, size and inode at each look, so an editor's rename, a
rewrite in place and a systemd credential copied anew are all seen, and an unchanged file costs one
stat()."""

from __future__ import annotations

from pathlib import Path


class WatchedFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None

    def read_if_changed(self) -> str | None:
        """The file's text when it changed since the last call, None when it did not. OSError when
        it cannot be read (the next call tries again), UnicodeDecodeError when it is not UTF-8 (tried
        again once it changes)."""
        try:
            st = self.path.stat()
        except OSError:
            self._stamp = None
            raise
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        return self.path.read_text(encoding="utf-8")


def unreadable(e: OSError | UnicodeDecodeError) -> str:
    """Why a file could not be read, for a message: the system's reason, or "not UTF-8"."""
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8"
    return e.strerror or str(e)
