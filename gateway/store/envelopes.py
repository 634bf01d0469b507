"""Payload v2's envelopes: what a node sends once per boot and session (docs/payload.md, "Payload
v2"), kept so that the boot's later batches, also after a gateway restart, can be read."""

from __future__ import annotations

from ..payload import Envelope
from .base import Base

#: envelopes held in memory (a node's current boot, and old boots its backlog still sends)
_CACHED_MAX = 4096


class Envelopes(Base):
    def envelope(self, node: str, boot: int) -> Envelope | None:
        """The envelope kept for `node`'s `boot`, or None."""
        cache = self._envelopes()
        env = cache.get((node, boot))
        if env is None:
            row = self.db.execute("SELECT body FROM envelopes WHERE node = ? AND boot = ?", (node, boot)).fetchone()
            if row is None:
                return None
            env = cache[(node, boot)] = Envelope.from_json(row[0])
        return env

    def add_envelope(self, node: str, boot: int, env: Envelope, at: float) -> None:
        """Keep `env` for `node`'s `boot` (in the caller's transaction); the newest wins. Written each
        time (once per boot and session): a transaction rolled back must not leave only the cache."""
        cache = self._envelopes()
        self.db.execute("INSERT OR REPLACE INTO envelopes (node, boot, body, at) VALUES (?, ?, ?, ?)",
                        (node, boot, env.to_json(), at))
        if len(cache) >= _CACHED_MAX:
            cache.clear()
        cache[(node, boot)] = env

    def forget_envelopes(self, boots: list[tuple[str, int]]) -> None:
        """Delete the envelopes of these (node, boot)s (in the caller's transaction)."""
        self.db.executemany("DELETE FROM envelopes WHERE node = ? AND boot = ?", boots)
        cache = self._envelopes()
        for key in boots:
            cache.pop(key, None)

    def _envelopes(self) -> dict[tuple[str, int], Envelope]:
        cache: dict[tuple[str, int], Envelope] | None = getattr(self, "_envelope_cache", None)
        if cache is None:
            cache = self._envelope_cache = {}
        return cache
