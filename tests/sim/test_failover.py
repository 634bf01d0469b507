"""A node fails over between the brokers of its `broker` list and comes back (firmware/lib/uplink.py,
firmware/lib/failover.py; docs/operator.md "A region of gateways"): a simulated node running the
firmware with two brokers in its list, two real Mosquittos, each with its own real gateway
(`meetkit-gateway run`, its own database). Times are the node's simulated seconds, from its
console (each line starts with its uptime); the node runs at 20 times real time so that a broker
stopped or started between two of its lines is placed within about a second of its time."""

from __future__ import annotations

import json
import shutil
import re
import threading
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest

from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.faultrig import AIR, db_rows, read_ledger, virtual_s
from meetkit_tools.services import GatewayProcess, Mosquitto
from meetkit_tools.dev.waits import wait_for
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

NODE = "fo-01"
FAILOVER_S = 30   # the shortest failover_after_s and failback_every_s the firmware takes
FAILBACK_S = 60
INTERVAL_S = 10   # a record (a console line) every 10 simulated s: the console's clock is never older
SPEED = 20
RETRY_S = 60      # the uplink's longest pause between two connects (uplink.py _BACKOFF_MAX_MS)


class Site:
    """A gateway's Mosquitto and the gateway on it."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.broker = Mosquitto(tmp / f"{name}-broker").start()
        self.gateway = GatewayProcess(tmp / f"{name}-gw", self.broker.host, self.broker.port,
                                      client_id=f"meetkit-gateway-{name}").start()
        self.gateway.wait_log("subscribed to ", timeout=30)

    @property
    def where(self) -> str:
        return f"{self.broker.host}:{self.broker.port}"

    def stored(self) -> set[tuple[int, int]]:
        try:
            return {(b, s) for n, b, s, _, _ in db_rows(self.gateway.db) if n == NODE}
        except Exception:   # the database is made at the gateway's first commit
            return set()

    def retained_status(self) -> dict[str, Any]:
        """The node's retained status on this broker, as a new subscriber gets it."""
        got: list[bytes] = []
        done = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-status-reader")
        c.on_connect = lambda cl, *a: cl.subscribe(f"meetkit/{NODE}/status", qos=1)
        c.on_message = lambda cl, u, m: (got.append(m.payload), done.set())
        c.connect(self.broker.host, self.broker.port)
        c.loop_start()
        try:
            assert done.wait(10), "no retained status"
        finally:
            c.loop_stop()
            c.disconnect()
        return json.loads(got[0])

    def close(self) -> None:
        self.gateway.stop()
        self.broker.stop()


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[tuple[Site, Site]]:
    home = Site(tmp_path, "home")
    try:
        other = Site(tmp_path, "other")
    except BaseException:
        home.close()
        raise
    try:
        yield home, other
    finally:
        home.close()
        other.close()


@pytest.fixture(scope="module")
def mpy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The firmware as `meetkit provision` puts it on a board (lib/ as .mpy): a node loads the
    failover module when a step is due, as the board does, without compiling it in its heap."""
    return fleetsim.mpy_firmware(tmp_path_factory.mktemp("fw") / "firmware")


def node(tmp: Path, brokers: list[Site], firmware: Path, faults: list[dict[str, Any]] | None = None,
         **config: Any) -> SimNode:
    extra = {"broker": [{"host": s.broker.host, "port": s.broker.port} for s in brokers],
             "failover_after_s": FAILOVER_S, "failback_every_s": FAILBACK_S, **config}
    sc = load_scenario("quiet-street")
    sc["faults"] = faults or []
    n = SimNode(NodeSpec(node_id=NODE, scenario=sc, workdir=tmp / NODE, board=AIR,
                         interval_s=INTERVAL_S, until_s=None, speed=SPEED, extra_config=extra, firmware=firmware))
    n.prepare()
    n.start()
    return n


def lines(n: SimNode, pattern: str) -> list[tuple[int, re.Match[str]]]:
    """(uptime s, match) of every console line matching `pattern`, in order."""
    out = []
    for line in n.console_text().splitlines():
        head = line[:8].strip()
        m = re.search(pattern, line)
        if m and head.isdigit():
            out.append((int(head), m))
    return out


def first_after(n: SimNode, pattern: str, t: float) -> int | None:
    return next((u for u, _ in lines(n, pattern) if u >= t), None)


def made(n: SimNode) -> set[tuple[int, int]]:
    return set(read_ledger(n.console_text()).records)


def test_home_broker_down_the_node_fails_over_and_comes_back(tmp_path: Path, sites: tuple[Site, Site], mpy: Path) -> None:
    home, other = sites
    n = node(tmp_path, [home, other], mpy)
    try:
        wait_for(lambda: lines(n, r" I check: gateway: pass: first batch stored"), 60, "the first batch acknowledged at home")
        assert home.retained_status()["via"] == 0
        assert not other.stored()

        # Home's broker stopped: the node notices at its next poll, fails over after FAILOVER_S,
        # and its records are acknowledged by the other gateway (a new database id).
        t_stop = virtual_s(n.console)
        home.broker.stop()
        over = wait_for(lambda: lines(n, r" W mqtt: (\S+) unreachable for (\d+) s: failing over to (\S+) \(2 of 2\)"),
                        60, "the failover")
        t_lost = first_after(n, r" W mqtt: .* failed ", t_stop)
        assert t_lost is not None
        t_over, m = over[0]
        assert m[1] == home.where and m[3] == other.where
        assert FAILOVER_S - 1 <= t_over - t_lost <= FAILOVER_S + RETRY_S, (t_lost, t_over)
        t_acked = wait_for(lambda: first_after(n, r" W gateway database changed ", t_over), 60,
                           "the other gateway's acknowledgement")
        assert t_acked - t_lost <= FAILOVER_S + RETRY_S, "its batches acknowledged within failover_after_s + a retry"
        wait_for(lambda: other.stored(), 30, "records at the other gateway")
        status = other.retained_status()
        assert status["online"] is True and status["via"] == 1

        # Some records made while away, then home's broker back: the node tries home every
        # FAILBACK_S and goes back when it answers.
        n_away = len(made(n))
        wait_for(lambda: len(made(n)) >= n_away + 6, 60, "records made while away")
        t_start = virtual_s(n.console)
        home.broker.start()
        t_home = wait_for(lambda: first_after(n, r" W mqtt: back to the home broker " + re.escape(home.where), 0),
                          60, "the node back home")
        assert t_start < t_home <= t_start + FAILBACK_S + INTERVAL_S + 5, (t_start, t_home)
        wait_for(lambda: first_after(n, r" I mqtt: connected to " + re.escape(home.where), t_home) is not None, 60,
                 "connected home")
        after = {k for k in made(n) if k not in home.stored()}
        wait_for(lambda: after <= home.stored(), 60, "the records made meanwhile acknowledged at home again")

        # Nothing lost: every record the node made is in one of the two gateways (made before
        # `everything` was read: later ones may be on their way)
        everything = made(n)
        wait_for(lambda: everything <= home.stored() | other.stored(), 60, "every record in a gateway")
        assert len(everything) >= 12
        st = home.retained_status()
        assert st["online"] is True and st["via"] == 0
        assert other.retained_status() == {"v": 1, "node": NODE, "online": False}, \
            "left the other broker saying so (no last will needed)"
        text = n.console_text()
        assert text.count("failing over to") == 1 and text.count("back to the home broker") == 1
        assert " E unexpected error" not in text
    finally:
        n.stop()


def test_home_down_from_the_start_and_the_list_wraps(tmp_path: Path, sites: tuple[Site, Site], mpy: Path) -> None:
    """Home's broker never up: the node goes to the second after failover_after_s of failing
    connects from its start. The second's broker stopped too: after failover_after_s the node wraps
    round to home (1 of 2), which still does not answer, and after failover_after_s more to the
    second again, whose broker is back by then: its records there, nothing lost."""
    home, other = sites
    home.broker.stop()
    n = node(tmp_path, [home, other], mpy)
    try:
        over = r" W mqtt: (\S+) unreachable for (\d+) s: failing over to (\S+) \((\d) of 2\)"
        wait_for(lambda: lines(n, over), 60, "the first failover")
        t_first_fail = lines(n, r" W mqtt: connect .* failed ")[0][0]
        t1, m = lines(n, over)[0]
        assert (m[1], m[3], m[4]) == (home.where, other.where, "2")
        assert FAILOVER_S - 1 <= t1 - t_first_fail <= FAILOVER_S + 1
        wait_for(lambda: lines(n, r" I check: gateway: pass: first batch stored"), 60, "the first batch acknowledged")
        assert other.stored() and not home.stored()

        other.broker.stop()
        wait_for(lambda: len(lines(n, over)) >= 2, 60, "the wrap round to home")
        t2, m = lines(n, over)[1]
        assert (m[1], m[3], m[4]) == (other.where, home.where, "1")
        other.broker.start()
        wait_for(lambda: len(lines(n, over)) >= 3, 60, "the second again")
        t3, m = lines(n, over)[2]
        assert (m[1], m[3], m[4]) == (home.where, other.where, "2")
        assert FAILOVER_S - 1 <= t3 - t2 <= FAILOVER_S + 1
        # connected at its next try (the broker back by then): the line follows the failover's
        wait_for(lambda: first_after(n, r" I mqtt: connected to " + re.escape(other.where), t3) is not None, 60,
                 "connected to the second again")
        everything = made(n)
        wait_for(lambda: everything <= other.stored(), 60, "every record at the second gateway")
        assert other.retained_status()["via"] == 1
        assert " E unexpected error" not in n.console_text()
    finally:
        n.stop()


class TlsSite:
    """A gateway's Mosquitto as `meetkit broker init` makes it (accounts, ACL, a TLS listener with
    the lab CA) and the gateway on its loopback listener. `like`: a site whose CA and accounts
    this one takes (one lab CA for the region; the node's one password, as `meetkit region
    accounts` gives it)."""

    def __init__(self, tmp: Path, name: str, like: "TlsSite | None" = None) -> None:
        from meetkit_tools.services import FleetBroker

        self.broker = FleetBroker(tmp / name, [NODE], ca_from=like.broker.out if like else None)
        if like is not None:
            self.broker.out.mkdir(parents=True, exist_ok=True)
            shutil.copy(like.broker.out / "secrets.json", self.broker.out / "secrets.json")
        self.broker.start()
        self.gateway = GatewayProcess(tmp / f"{name}-gw", self.broker.host, self.broker.plain_port,
                                      client_id=f"meetkit-gateway-{name}", mqtt_toml=self.broker.gateway_toml()).start()
        self.gateway.wait_log("subscribed to ", timeout=30)
        self.where = f"{self.broker.host}:{self.broker.tls_port}"

    def entry(self) -> dict[str, Any]:
        return {"host": self.broker.host, "port": self.broker.tls_port, "tls": True, "user": NODE,
                "password": self.broker.password(NODE)}

    stored = Site.stored

    def close(self) -> None:
        self.gateway.stop()
        self.broker.stop()


def test_over_tls_with_one_lab_ca(tmp_path: Path, mpy: Path) -> None:
    """Two brokers with TLS listeners and the region's one lab CA, the node's own account on both:
    the node fails over with TLS (never in clear) and comes back home."""
    home = TlsSite(tmp_path, "home")
    other = None
    n = None
    try:
        other = TlsSite(tmp_path, "other", like=home)
        n = SimNode(NodeSpec(node_id=NODE, scenario=load_scenario("quiet-street"), workdir=tmp_path / NODE, board=AIR,
                             interval_s=INTERVAL_S, until_s=None, speed=SPEED, files={"ca.der": home.broker.ca_der},
                             firmware=mpy,
                             extra_config={"broker": [home.entry(), other.entry()], "failover_after_s": FAILOVER_S,
                                           "failback_every_s": FAILBACK_S}))
        n.prepare()
        n.start()
        wait_for(lambda: lines(n, r" I check: gateway: pass: first batch stored"), 60, "the first batch acknowledged at home")
        home.broker.stop()
        wait_for(lambda: lines(n, r" W gateway database changed "), 60, "the other gateway's acknowledgement")
        assert lines(n, r" I mqtt: connected to " + re.escape(other.where) + r" \(tls\)")
        home.broker.start()
        wait_for(lambda: lines(n, r" W mqtt: back to the home broker " + re.escape(home.where)), 60, "back home")
        wait_for(lambda: len(lines(n, r" W gateway database changed ")) >= 2, 60, "home's acknowledgement again")
        everything = made(n)
        wait_for(lambda: everything <= home.stored() | other.stored(), 60, "every record in a gateway")
        assert all("(tls)" in m.string for _, m in lines(n, r" I mqtt: connected to "))
        assert " E unexpected error" not in n.console_text()
    finally:
        if n is not None:
            n.stop()
        home.close()
        if other is not None:
            other.close()


def test_a_wifi_outage_is_not_a_broker_outage(tmp_path: Path, sites: tuple[Site, Site], mpy: Path) -> None:
    """The node's Wi-Fi away for 140 simulated s (longer than failover_after_s), both brokers up:
    the failover clock runs only while the network is up, so the node stays with its home broker."""
    home, other = sites
    n = node(tmp_path, [home, other], mpy, faults=[{"kind": "wifi_down", "from": 60, "to": 200}])
    try:
        wait_for(lambda: virtual_s(n.console) >= 300, 120, "the node past the outage")
        everything = made(n)
        wait_for(lambda: everything <= home.stored(), 60, "every record at home")
        text = n.console_text()
        assert lines(n, r" W wifi: link lost") and lines(n, r" I mqtt: connected to ")[-1][0] >= 200, "the outage was felt"
        assert "failing over" not in text and not other.stored()
    finally:
        n.stop()


def test_no_room_to_load_the_failover_module_puts_it_off_never_a_reset(tmp_path: Path, sites: tuple[Site, Site],
                                                                        mpy: Path) -> None:
    """The failover module is loaded when a step is due; a heap with no room for it just then (the
    firmware from source at 100 KB did that now and then: compiling it needs a few KB in one piece)
    must not cost a reset. Here its import always fails as the heap would (MemoryError): the node
    says so, tries again 10 s later, stays on its home broker's retries and keeps measuring."""
    home, other = sites
    fw = tmp_path / "firmware"
    shutil.copytree(mpy, fw)
    (fw / "lib" / "failover.mpy").unlink()
    (fw / "lib" / "failover.py").write_text('raise MemoryError("memory allocation failed, allocating 4096 bytes")\n')
    n = node(tmp_path, [home, other], fw)
    try:
        wait_for(lambda: lines(n, r" I check: gateway: pass: first batch stored"), 60, "the first batch acknowledged at home")
        home.broker.stop()
        put_off = wait_for(lambda: lines(n, r" W mqtt: failover put off 10 s: no memory to load it$"), 60,
                           "the failover put off")
        t0 = put_off[0][0]
        wait_for(lambda: virtual_s(n.console) >= t0 + 60, 60, "a simulated minute more")
        later = [t for t, _ in lines(n, r" W mqtt: failover put off ")]
        assert len(later) >= 5 and all(b - a >= 10 for a, b in zip(later, later[1:])), later   # 10 s apart
        assert len([t for t, _ in lines(n, r" I record \d+: ") if t > t0]) >= 5, "it kept measuring"
        text = n.console_text()
        assert " E unexpected error" not in text and "--- reset" not in text and "failing over to" not in text
        home.broker.start()
        wait_for(lambda: first_after(n, r" I mqtt: connected to " + re.escape(home.where), t0), 60,
                 "home again without the failover")
    finally:
        n.stop()
