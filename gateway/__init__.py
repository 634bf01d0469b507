"""meetkit gateway: receives the nodes' MQTT batches (docs/payload.md) and keeps them in SQLite.

Modules, one job each:

    config    read and validate gateway.toml
    payload   the node payload contract v1: parse and validate a message, or reject it with a reason
    topics    <prefix>/<node>/up, /status, /ack and <prefix>/gateway/alarm
    store     the SQLite store (`Store`), the only module with SQL; a package, a module per concern:
              schema (tables, migrations), base (connection, transactions, counters), rows
              (`Reading`, the one type of a reading, and the other rows), writes (ingest),
              dead_letters, pruning, readers (CLI, page, export), cursors (forwarding),
              sensorthings (its entity ids), integrity (quick_check)
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
