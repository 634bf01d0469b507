"""The ids a SensorThings target's service gave its entities (gateway/forward/sensorthings.py says
what each holds and why), kept in the store's file beside the cursors:

    sensorthings_entities   what this target's service holds for us
      service     TEXT     the service root URL (ids are per service)
      kind        TEXT     Thing, Sensor, ObservedProperty or Datastream
      key         TEXT     node id, sensor model, quantity, or the Datastream's name
      iot_id      TEXT     JSON of the service's @iot.id (a number or a string)
      sent_until  INTEGER  Datastreams: the latest resultTime (Unix s) ever sent to it; NULL: none
      located     INTEGER  Things: 1 when it has a Location
      sent        TEXT     Things: JSON of what the service has of it (description, properties,
                           its Location's place, name and id), to compare the register with
      PRIMARY KEY (service, kind, key)

The schema's version is not touched: the table is made with CREATE TABLE IF NOT EXISTS when such a
target first runs. `sent` came with the fleet register: a table without it gets it by ALTER TABLE."""

from __future__ import annotations

from .base import Base

TABLE = """
    CREATE TABLE IF NOT EXISTS sensorthings_entities (
        service TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        iot_id TEXT NOT NULL,
        sent_until INTEGER,
        located INTEGER,
        sent TEXT,
        PRIMARY KEY (service, kind, key)
    ) WITHOUT ROWID
"""

#: iot_id (JSON), sent_until, located, sent (JSON or None) of one entity
EntityRow = tuple[str, int | None, int | None, str | None]


class SensorThingsIds(Base):
    def prepare_sensorthings(self) -> None:
        """Make the table, or add `sent` to one made before the fleet register."""
        self.db.execute(TABLE)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(sensorthings_entities)")}
        if "sent" not in columns:
            self.db.execute("ALTER TABLE sensorthings_entities ADD COLUMN sent TEXT")

    def sensorthings_entity(self, service: str, kind: str, key: str) -> EntityRow | None:
        return self.db.execute(
            "SELECT iot_id, sent_until, located, sent FROM sensorthings_entities"
            " WHERE service = ? AND kind = ? AND key = ?", (service, kind, key)).fetchone()

    def save_sensorthings_entity(self, service: str, kind: str, key: str, iot_id: str, sent_until: int | None,
                                 located: bool, sent: str | None) -> None:
        with self._writing():
            self.db.execute(
                "INSERT OR REPLACE INTO sensorthings_entities (service, kind, key, iot_id, sent_until, located, sent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", (service, kind, key, iot_id, sent_until, int(located), sent))

    def forget_sensorthings_entity(self, service: str, kind: str, key: str) -> None:
        with self._writing():
            self.db.execute("DELETE FROM sensorthings_entities WHERE service = ? AND kind = ? AND key = ?",
                            (service, kind, key))

    def set_sent_until(self, service: str, kind: str, key: str, until: int | None) -> None:
        """A Datastream's mark: the latest resultTime sent to it (written before the POST)."""
        with self._writing():
            self.db.execute(
                "UPDATE sensorthings_entities SET sent_until = ? WHERE service = ? AND kind = ? AND key = ?",
                (until, service, kind, key))
