"""meetkit gateway: receives the nodes' MQTT batches (docs/payload.md) and keeps them in SQLite.

Modules, one job each, in the order a batch meets them (docs/developer.md has the same map and a
picture of the data path; tests/gateway/test_docs.py fails when either misses a module):

    mqtt         the paho-mqtt client in a persistent session, acknowledging by hand (`Source`)
    topics       <prefix>/<node>/up, /status, /event, /ack, /config, /cmd and <prefix>/gateway/alarm
    memory       give the heap back after a burst of large messages (glibc's mmap threshold)
    inbox        the FIFO between the MQTT network thread and the writer, bounded in items and in bytes
    ingest       the writer thread: commits messages in groups, or refuses them when the disk is
                 full (`Writer`)
    payload      the node payload contract v1: parse and validate a message, or reject it with a
                 reason (docs/payload.schema.json is its oracle)
    packed       payload v2's packed records: the spool's bits read back into integers
    acks         the acknowledgement a node gets for each batch once it is committed (`Ack`)
    safe_acks    a region: the safe pair in every acknowledgement, standalone safe acknowledgements
    visitors     a region: the home town of each node forwarded (a visiting node's from the broker
                 folder's secrets.json), unknown visitors
    store/       the SQLite store (`Store`), the only package with SQL, a module per concern:
      store.schema        the tables, their migrations, auto-vacuum
      store.compact       migration 11: the records moved to the compact layout, in power-cut-safe slices
      store.values        a record's readings in one BLOB: exact fixed point, a fallback for the rest
      store.keys          the node ids, boots (envelopes) and shapes a record row refers to, cached
      store.base          the connection: open, transactions, read snapshots, counters
      store.rows          `Reading`, the one type of a reading (CLI, page, export, forwarders); other rows
      store.writes        ingest's writes: batches, status, alarms, retained messages, replayed values
      store.envelopes     payload v2: each node boot's envelope, sent once per session
      store.dead_letters  what was refused, kept for replay, and its budgets
      store.pruning       dropping the oldest records; the file's pages
      store.readers       queries for the CLI, the status page and /metrics, export
      store.public        the public page's reads: a node's intervals of a few quantities
      store.cursors       forwarding: the cursors, the next readings, refused batches, a target's state
      store.safe          a region: each node's safe pair, its records not yet safe
      store.sensorthings  the SensorThings targets' entity ids
      store.integrity     quick_check, for recovery
      store.fleet         the nodes' events, the configuration each node is sent, commands
      store.rollouts      staged rollouts of signed releases: a rollout, its nodes by stage
    recovery     open the store at start; move a corrupt one aside (`open_store`)
    retention    keep the store within `max_bytes` and `max_age_days`, oldest records first
    plausible    which stored records a reader can pass on as they are (an older store's)
    deadletters  `meetkit-gateway dead-letters list|show|replay`: what the gateway refused
    replay       dead letters back through the checks after a fix
    alarms       log line, counter, retained MQTT message and table row for what needs an operator
    forward/     forwarding upstream, each target from its own cursor in the store: core (the
                 loop, the set of targets), influx, mqtt_upstream, sensor_community, sensorthings
                 (with sensorthings_client and sensorthings_model), http_target (the connection)
    http         the status page, /healthz and /metrics
    http_server  the HTTP/1.1 server under it: one asyncio loop, a connection cap, timeouts, a CPU share
    fleet        the fleet register: names, positions, serials of the nodes (fleet.toml)
    fleet_view   the register beside the nodes the store knows, for the page and /metrics
    fleet_secrets  the Wi-Fi passwords and the nodes' broker passwords a configuration carries
    wanted       a node's wanted configuration, from the register and the secrets
    configpub    the thread that sends the nodes their configuration (versions, retained) and commands
    signed       the signed envelope (HMAC-SHA256, the node's key) of what the gateway sends a node;
                 the node keys file
    watched      a file read again when it changes (the secrets, node keys and visitors files)
    credentials  systemd's service credentials: is a file one (a copy made at start), and the
                 restart that renews it
    public/      the public page for residents, a static site (`meetkit-gateway publish`): indicators
                 (daily PM means, LAeq, Lden and Lnight in local time, coverage), gather (each
                 location of the fleet register with its values), site (the pages in English and
                 Dutch, downloads), texts (the words of both)
    export       open-data export: CSV or JSON Lines, one row per reading
    pm_humidity  humidity correction of optical PM (kappa-Koehler), next to the raw values
    releases     signed app releases: verify the Ed25519 signature and every file, keep them
    ota          releases over MQTT on a connection of their own, beside the writer: the offers,
                 and the pieces a node asks for, from verified releases only (`OtaLink`)
    rollouts     staged rollouts: canaries, then waves, halting by themselves, skipping a node
                 that answers no offer in time (`RolloutManager`)
    rolloutcli   `meetkit-gateway release add|list`, `fleet update|stop|status`
    config       read and validate gateway.toml
    systemd      systemd's notify protocol: ready, watchdog, stopping
    service      wires them together; start and stop in the right order (`Gateway`, `run`)
    cli          `meetkit-gateway`: run, check, and look at what is stored
    fleetcli     `meetkit-gateway fleet status|selftest`: the fleet over the air
    fleet_status  each node's state over the air (mode, configuration, crashes, self-test), as shown
    timefmt      `--since` spans and ISO times
    table        plain-text tables for the terminal
"""

# The one version number of meetkit (pyproject.toml reads it; `meetkit --version` and `meetkit-gateway
# --version` print it); the node's app says the same (firmware/lib/config.py FW_VERSION, a test checks).
__version__ = "0.2.0"
