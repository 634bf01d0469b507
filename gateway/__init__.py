"""meetkit gateway: receives the nodes' MQTT batches (docs/payload.md) and keeps them in SQLite.

Modules, one job each:

    config    read and validate gateway.toml
    payload   the node payload contract v1: parse and validate a message, or reject it with a reason
    topics    <prefix>/<node>/up and /status
    store     the SQLite store: schema, migrations, writes, queries (`Store`)
    ingest    the queue and the writer thread that commits messages in groups (`Writer`)
    mqtt      the paho-mqtt client that feeds the queue (`Source`)
    service   wires them together; start and stop in the right order (`Gateway`, `run`)
    timefmt   `--since` spans and ISO times; table: terminal tables; cli: `meetkit-gateway`
"""

__version__ = "0.1.0"
