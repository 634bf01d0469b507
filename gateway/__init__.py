"""meetkit gateway: receives the nodes' MQTT batches (docs/payload.md) and keeps them in SQLite.

Modules, one job each:

    config    read and validate gateway.toml
    payload   the node payload contract v1: parse and validate a message, or reject it with a reason
    topics    <prefix>/<node>/up, /status, /ack and <prefix>/gateway/alarm
    store     the SQLite store (`Store`), the only package with SQL, a module per concern:
      store.schema        the tables, their migrations, auto-vacuum
      store.base          the connection: open, transactions, read snapshots, counters
      store.rows          `Reading`, the one type of a reading (CLI, page, export, forwarders); other rows
      store.writes        ingest's writes: batches, status, alarms, retained messages, replayed values
      store.dead_letters  what was refused, kept for replay, and its budgets
      store.pruning       dropping the oldest records; the file's pages
      store.readers       queries for the CLI, the status page and /metrics, export
      store.cursors       forwarding: the cursors, the next readings, refused batches, a target's state
      store.sensorthings  the SensorThings targets' entity ids
      store.integrity     quick_check, for recovery
    recovery  open the store at start; move a corrupt one aside (`open_store`)
    ingest    the queue and the writer thread that commits messages in groups, or refuses them
              when the disk is full (`Writer`)
    acks      the acknowledgement a node gets for each batch once it is committed (`Ack`)
    alarms    log line, counter, retained MQTT message and table row for what needs an operator
    mqtt      the paho-mqtt client in a persistent session, acknowledging by hand (`Source`)
    service   wires them together; start and stop in the right order (`Gateway`, `run`)
    timefmt   `--since` spans and ISO times; table: terminal tables; cli: `meetkit-gateway`
"""

__version__ = "0.1.0"
