"""End to end on a secured broker: `meetkit broker init` and `add-node` make the accounts, the ACL
and the lab CA; a real Mosquitto runs exactly that configuration; the gateway process logs in with
its own generated account (the [mqtt] lines `broker init` prints, password from a file); simulated
nodes run the unmodified firmware over TLS (mbedtls in the MicroPython unix port, checking the
broker's certificate against ca.der on their flash) with their generated passwords.

- sec-01 and sec-02 (the second added with `add-node` while the broker runs) deliver every record,
  exactly once, and are acknowledged;
- sec-03 has a wrong password: it keeps measuring, says why on its console, keeps everything in its
  spool, and once a technician puts the right password on its flash and powers it on, it delivers
  all of it;
- sec-09 trusts another CA: it never talks to the broker, says so, and backs off.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from meetkit_gateway.store import Store
from meetkit_tools import broker as broker_tool
from meetkit_tools.services import FleetBroker, GatewayProcess
from meetkit_tools.dev import fleetsim
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario
from tests.e2e.test_three_nodes import ledger

MINUTES = 20
WRONG = "not-the-password-of-sec-03"


def other_ca_der(tmp: Path) -> bytes:
    """A CA that did not sign the broker's certificate."""
    key, crt, der = tmp / "other.key", tmp / "other.crt", tmp / "other.der"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-subj", "/O=elsewhere/CN=another CA", "-days", "30"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-in", str(crt), "-outform", "DER", "-out", str(der)], check=True,
                   capture_output=True)
    return der.read_bytes()


def stored(db_path: Path, node: str) -> list[tuple[int, int]]:
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT boot, seq FROM records WHERE node = ? ORDER BY boot, seq", (node,)).fetchall()


def wait_stored(db_path: Path, want: dict[str, int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the last batches may still be in flight
        if db_path.exists() and all(len(stored(db_path, n)) >= k for n, k in want.items()):
            return
        time.sleep(0.2)


def wait_login(broker: FleetBroker, user: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user)
        c.username_pw_set(user, broker.password(user))
        try:
            c.connect(broker.host, broker.plain_port)
            if c.loop(timeout=2) == mqtt.MQTT_ERR_SUCCESS and c.is_connected():
                return
        finally:
            c.disconnect()
        if time.monotonic() > deadline:
            raise AssertionError(f"{user} cannot log in to the broker")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("secure-fleet")
    mpy = fleetsim.mpy_firmware(work / "firmware")
    broker = FleetBroker(work, ["sec-01", "sec-03"]).start()
    gateway = GatewayProcess(work, broker.host, broker.plain_port, client_id="meetkit-secure",
                             mqtt_toml=broker.gateway_toml()).start()
    nodes: dict[str, SimNode] = {}
    try:
        gateway.wait_log(r"connected to mqtt://gateway@127\.0\.0\.1:\d+")
        # A node added later, the broker running: the password file is read again on SIGHUP.
        broker_tool.add_node(broker.out, "sec-02")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)
        wait_login(broker, "sec-02")  # Mosquitto reads the password file again in its own time
        ca = broker.ca_der
        setups = {"sec-01": (broker.node_broker("sec-01"), ca), "sec-02": (broker.node_broker("sec-02"), ca),
                  "sec-03": (broker.node_broker("sec-03", password=WRONG), ca),
                  "sec-09": (broker.node_broker("sec-01"), other_ca_der(work)),
                  # the right CA, but a name the broker's certificate does not carry
                  "sec-08": (dict(broker.node_broker("sec-01"), host="localhost"), ca)}
        for i, (node_id, (b, ca_file)) in enumerate(setups.items()):
            # the firmware as .mpy, as provision puts it on a board: TLS and compiling from source do
            # not fit one 112 KB heap (bench/start_heap.py measures from source)
            spec = NodeSpec(node_id=node_id, scenario=load_scenario("quiet-street"), workdir=work / node_id,
                            until_s=MINUTES * 60, seed=i + 1, extra_config={"broker": b}, files={"ca.der": ca_file},
                            firmware=mpy)
            nodes[node_id] = SimNode(spec).start()
        for n in nodes.values():
            n.wait(300)
        first = {k: ledger(n.console_text()) for k, n in nodes.items()}
        wait_stored(gateway.db, {"sec-01": len(first["sec-01"]), "sec-02": len(first["sec-02"])})
        before_fix = {k: stored(gateway.db, k) for k in nodes}
        consoles = {k: n.console_text() for k, n in nodes.items()}
        states = {k: n.last_state for k, n in nodes.items()}

        # The technician puts the right password on sec-03 and powers it on for 10 more minutes.
        n3 = nodes["sec-03"]
        cfg = json.loads(n3.read_flash("config.json") or b"{}")
        cfg["broker"]["password"] = broker.password("sec-03")
        n3.write_flash("config.json", json.dumps(cfg).encode())
        n3.power_on(until_s=(MINUTES + 10) * 60).wait(300)
        after = ledger(n3.console_text())
        wait_stored(gateway.db, {"sec-03": len(after)})
        spools = {k: json.loads(nodes[k].read_flash("sp/state") or b"{}") for k in ("sec-01", "sec-02", "sec-03")}
        with Store(gateway.db, readonly=True) as store:
            db_id = store.db_id
        yield {"broker": broker, "gateway": gateway, "nodes": nodes, "first": first, "before_fix": before_fix,
               "consoles": consoles, "states": states, "sec03": after, "spools": spools, "db_id": db_id}
    finally:
        for n in nodes.values():
            n.stop()
        gateway.stop()
        broker.stop()


def test_the_gateway_logs_in_with_its_generated_account(fleet: dict) -> None:
    log = fleet["gateway"].log_text()
    assert re.search(rf"connected to mqtt://gateway@127\.0\.0\.1:{fleet['broker'].plain_port} ", log), log[-2000:]
    assert "refused" not in log
    secret = (fleet["broker"].out / broker_tool.GATEWAY_PASSWORD).read_text().strip()
    assert secret not in log


@pytest.mark.parametrize("node_id", ["sec-01", "sec-02"])
def test_nodes_deliver_over_tls_with_their_accounts(fleet: dict, node_id: str) -> None:
    text = fleet["consoles"][node_id]
    port = fleet["broker"].tls_port
    assert f"mqtt: connected to 127.0.0.1:{port} (tls)" in text, text[-3000:]
    assert "Traceback" not in text and "MemoryError" not in text and " E " not in text, text[-3000:]
    assert "payload v1: no memory" not in text, "payload v2 (the default) loaded beside TLS, from source"
    recs = fleet["first"][node_id]
    assert len(recs) >= MINUTES - 2
    # every record the node closed is in the gateway's database, once
    assert fleet["before_fix"][node_id] == sorted((r["boot"], r["seq"]) for r in recs)
    # and acknowledged: the spool holds the gateway's database id, from its acknowledgements, and
    # its cursor moved past the records
    spool = fleet["spools"][node_id]
    assert spool["db"] == fleet["db_id"] and spool["cur"] > 0, spool
    assert fleet["broker"].password(node_id) not in text


def test_a_wrong_password_is_reported_and_nothing_is_lost(fleet: dict) -> None:
    text = fleet["consoles"]["sec-03"]
    port = fleet["broker"].tls_port
    refusals = re.findall(rf" E mqtt: connect 127\.0\.0\.1:{port} \(tls\) failed \(broker refused the login, code 5: "
                          r"not authorised: check broker.user and broker.password\); next try in (\d+) s", text)
    assert len(refusals) >= 5, text[-3000:]
    assert max(int(s) for s in refusals) >= 30, "the retries back off"
    assert "mqtt: connected" not in text and "Traceback" not in text
    assert WRONG not in text, "the password is never printed"
    assert fleet["states"]["sec-03"]["cause"] == "until" and fleet["nodes"]["sec-03"].boots >= 1
    first = fleet["first"]["sec-03"]
    assert len(first) >= MINUTES - 2 and fleet["before_fix"]["sec-03"] == []
    # fixed and powered on: every record of both boots arrives, the first boot's from the spool
    recs = fleet["sec03"]
    assert {r["boot"] for r in recs} == {first[0]["boot"], first[0]["boot"] + 1}
    with sqlite3.connect(fleet["gateway"].db) as db:
        got = db.execute("SELECT boot, seq FROM records WHERE node = 'sec-03' ORDER BY boot, seq").fetchall()
    assert got == sorted((r["boot"], r["seq"]) for r in recs)
    assert fleet["spools"]["sec-03"]["db"] == fleet["db_id"]


def test_a_node_that_trusts_another_ca_never_sends(fleet: dict) -> None:
    text = fleet["consoles"]["sec-09"]
    waits = [int(s) for s in re.findall(
        r" E mqtt: connect 127\.0\.0\.1:\d+ \(tls\) failed \(tls: certificate rejected: The certificate is not "
        r"correctly signed by the trusted CA\); next try in (\d+) s", text)]
    assert len(waits) >= 5, text[-3000:]
    assert waits[-1] >= 30 and waits[0] <= 1, f"backoff: {waits}"
    assert "mqtt: connected" not in text and "Traceback" not in text
    assert fleet["before_fix"]["sec-09"] == [] and len(fleet["first"]["sec-09"]) >= MINUTES - 2


def test_a_broker_whose_certificate_does_not_name_the_host_is_refused(fleet: dict) -> None:
    """The node checks the broker's name, not only its CA: `localhost` reaches the same broker,
    whose certificate names meetkit-gw and 127.0.0.1 only."""
    text = fleet["consoles"]["sec-08"]
    assert re.search(r" E mqtt: connect localhost:\d+ \(tls\) failed \(tls: certificate rejected: The certificate "
                     r"Common Name \(CN\) does not match with the expected CN\)", text), text[-3000:]
    assert "mqtt: connected" not in text and fleet["before_fix"]["sec-08"] == []
