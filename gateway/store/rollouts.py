"""Staged rollouts of signed releases (gateway/rollouts.py runs them): a rollout, its nodes by stage,
what the CLI writes and the rollout manager keeps up to date. The manager follows the nodes' OTA
events through `events(kind="ota", since_id=...)` (store/fleet.py) with the rollout's own cursor,
`events_seen`, so a restarted gateway takes up where it stopped."""

from __future__ import annotations

from typing import Iterable

from .base import Base
from .rows import RolloutNodeRow, RolloutRow

_ROLLOUT = ("SELECT id, release, force, canary, wave, state, stage, reason, created_at, updated_at, events_seen"
            " FROM rollouts")
_NODE = ("SELECT rollout, node, stage, state, reason, offers, offered_at, accepted_at, updated_at, first_offered_at"
         " FROM rollout_nodes")


def _rollout(r: tuple) -> RolloutRow:  # type: ignore[type-arg]
    return RolloutRow(r[0], r[1], bool(r[2]), *r[3:])


class Rollouts(Base):
    def add_rollout(self, release: str, force: bool, canary: int, wave: int,
                    nodes: Iterable[tuple[str, int, str, str | None]], at: float) -> int:
        """A new running rollout of `release` over `nodes` ((node, stage, state, reason): waiting, or
        done at once when it runs the release already); its id. Events before it do not count."""
        with self._writing():
            seen = self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
            cur = self.db.execute(
                "INSERT INTO rollouts (release, force, canary, wave, state, stage, created_at, updated_at, events_seen)"
                " VALUES (?, ?, ?, ?, 'running', 0, ?, ?, ?)", (release, int(force), canary, wave, at, at, seen))
            rid = int(cur.lastrowid or 0)
            self.db.executemany(
                "INSERT INTO rollout_nodes (rollout, node, stage, state, reason, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(rid, node, stage, state, reason, at) for node, stage, state, reason in nodes])
            return rid

    def rollouts(self, limit: int = 10) -> list[RolloutRow]:
        """The newest rollouts, newest first."""
        return [_rollout(r) for r in self.db.execute(_ROLLOUT + " ORDER BY id DESC LIMIT ?", (limit,))]

    def rollout(self, rid: int) -> RolloutRow | None:
        r = self.db.execute(_ROLLOUT + " WHERE id = ?", (rid,)).fetchone()
        return None if r is None else _rollout(r)

    def running_rollout(self) -> RolloutRow | None:
        """The rollout under way, if any (there is at most one)."""
        r = self.db.execute(_ROLLOUT + " WHERE state = 'running' ORDER BY id DESC LIMIT 1").fetchone()
        return None if r is None else _rollout(r)

    def rollout_nodes(self, rid: int) -> list[RolloutNodeRow]:
        """The nodes of rollout `rid`, by stage, then node."""
        return [RolloutNodeRow(*r) for r in self.db.execute(_NODE + " WHERE rollout = ? ORDER BY stage, node", (rid,))]

    def update_rollout(self, rid: int, at: float, *, state: str | None = None, stage: int | None = None,
                       reason: str | None = None, events_seen: int | None = None) -> None:
        """Change what is given of rollout `rid` (a reason is kept until another replaces it)."""
        with self._writing():
            self.db.execute(
                "UPDATE rollouts SET state = coalesce(?, state), stage = coalesce(?, stage),"
                " reason = coalesce(?, reason), events_seen = coalesce(?, events_seen), updated_at = ? WHERE id = ?",
                (state, stage, reason, events_seen, at, rid))

    def set_rollout_node(self, rid: int, node: str, state: str, reason: str | None, offers: int,
                         offered_at: float | None, accepted_at: float | None, at: float,
                         first_offered_at: float | None = None) -> None:
        """A node of rollout `rid` as the rollout manager now has it."""
        with self._writing():
            self.db.execute(
                "UPDATE rollout_nodes SET state = ?, reason = ?, offers = ?, offered_at = ?, accepted_at = ?,"
                " updated_at = ?, first_offered_at = coalesce(?, first_offered_at) WHERE rollout = ? AND node = ?",
                (state, reason, offers, offered_at, accepted_at, at, first_offered_at, rid, node))

    def node_boards(self) -> dict[str, str]:
        """The board of every node's newest record (what it said it is)."""
        rows = self.db.execute(
            "SELECT n.node, b.board FROM nodes AS n JOIN recs AS r"
            " ON r.id = (SELECT id FROM recs WHERE node = n.id ORDER BY boot DESC, seq DESC LIMIT 1)"
            " JOIN boots AS b ON b.id = r.env")
        return dict(rows.fetchall())
