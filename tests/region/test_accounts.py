"""`meetkit region accounts`: every gateway's Mosquitto accepts the nodes of the gateways that list
it as a neighbour, with the node's own id and password, and nothing more: proven against a real
Mosquitto per gateway running the files of that gateway's `meetkit broker init` folder, with the
neighbours' accounts added."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway.visitors import Visitors
from meetkit_gateway.visitors import parse as parse_visitors
from meetkit_tools import broker, region
from meetkit_tools.cli import main
from meetkit_tools.services import Mosquitto, free_port

from .conftest import broker_folder, write_plan
from .mqttclient import Client

P = "meetkit"


def secrets(folder: Path) -> dict:
    return json.loads((folder / broker.SECRETS).read_text())


def users(folder: Path) -> list[str]:
    return [ln.split(":", 1)[0] for ln in (folder / "mosquitto" / "passwd").read_text().splitlines() if ln]


class Region:
    """Three gateways' broker folders: ut-1 and ut-2 (utrecht) list each other; zs-1 (zeist) has
    its own lab CA and no neighbours."""

    def __init__(self, tmp: Path) -> None:
        self.ut1 = broker_folder(tmp / "ut-1", ["ut-0001", "ut-0002"])
        self.ut2 = broker_folder(tmp / "ut-2", ["ut-0101"], ca_from=self.ut1)  # the region's one CA
        self.zs1 = broker_folder(tmp / "zs-1", ["zs-0001"])
        self.tmp = tmp
        self.plan = self.write({"ut-1": ["ut-2"], "ut-2": ["ut-1"], "zs-1": []})

    def write(self, neighbours: dict[str, list[str]]) -> Path:
        folders = {"ut-1": self.ut1, "ut-2": self.ut2, "zs-1": self.zs1}
        return write_plan(self.tmp / "region.toml", {
            name: {"town": "zeist" if name == "zs-1" else "utrecht", "host": f"10.0.0.{i + 1}",
                   "neighbours": neighbours[name], "broker": str(folders[name].relative_to(self.tmp))}
            for i, name in enumerate(folders)})

    def password(self, node: str) -> str:
        for f in (self.ut1, self.ut2, self.zs1):
            if node in secrets(f)["nodes"]:
                return secrets(f)["nodes"][node]
        raise KeyError(node)


@pytest.fixture
def reg(tmp_path: Path) -> Region:
    return Region(tmp_path)


def start(folder: Path) -> tuple[Mosquitto, int]:
    """A real Mosquitto with the folder's password file and ACL, on a loopback listener and a TLS
    one with the folder's server certificate (the same accounts on both)."""
    m = folder / "mosquitto"
    tls = free_port()
    b = Mosquitto(folder.parent / "run", extra_conf=(
        f"allow_anonymous false\npassword_file {m / 'passwd'}\nacl_file {m / 'acl'}\n"
        f"listener {tls} 127.0.0.1\ncafile {m / 'ca.crt'}\ncertfile {m / 'server.crt'}\nkeyfile {m / 'server.key'}\n"
        "tls_version tlsv1.2\nuse_username_as_clientid true\n")).start()
    return b, tls


@pytest.fixture
def running(reg: Region) -> Iterator[dict[str, tuple[Mosquitto, int]]]:
    assert main(["region", "accounts", "--plan", str(reg.plan)]) == 0
    brokers: dict[str, tuple[Mosquitto, int]] = {}
    try:
        for name, folder in (("ut-1", reg.ut1), ("ut-2", reg.ut2)):
            brokers[name] = start(folder)
        yield brokers
    finally:
        for b, _ in brokers.values():
            b.stop()


def test_accounts_adds_the_neighbours_nodes_and_again_nothing(reg: Region, capsys: pytest.CaptureFixture[str]) -> None:
    before_zs = (reg.zs1 / "mosquitto" / "passwd").read_bytes()
    assert main(["region", "accounts", "--plan", str(reg.plan)]) == 0
    out = capsys.readouterr().out
    assert "gateway ut-1: added ut-0101 (of ut-2) (0 visiting account(s) as they were)" in out
    assert "gateway ut-2: added ut-0001 (of ut-1); added ut-0002 (of ut-1)" in out
    assert "gateway zs-1" not in out  # no neighbours either way: untouched
    assert users(reg.ut1) == ["gateway", "monitor", "ut-0001", "ut-0002", "ut-0101"]
    assert users(reg.ut2) == ["gateway", "monitor", "ut-0101", "ut-0001", "ut-0002"]
    assert (reg.zs1 / "mosquitto" / "passwd").read_bytes() == before_zs
    # the visitors are kept apart from the gateway's own nodes: no node key, nothing signed for them
    s1 = secrets(reg.ut1)
    assert set(s1["nodes"]) == {"ut-0001", "ut-0002"}
    assert s1["visitors"] == {"ut-0101": {"password": reg.password("ut-0101"), "home": "ut-2", "town": "utrecht"}}
    assert "ut-0101" not in json.loads((reg.ut1 / broker.NODE_KEYS).read_text())["nodes"]
    assert oct((reg.ut1 / "mosquitto" / "passwd").stat().st_mode & 0o777) == "0o640"
    assert reg.password("ut-0101") not in (reg.ut1 / "mosquitto" / "passwd").read_text()  # hashed
    # again: nothing to do, nothing rewritten
    files = {p: p.read_bytes() for f in (reg.ut1, reg.ut2) for p in (f / "mosquitto" / "passwd", f / broker.SECRETS)}
    assert main(["region", "accounts", "--plan", str(reg.plan)]) == 0
    out = capsys.readouterr().out
    assert "gateway ut-1: nothing to do (1 visiting account(s) as they were)" in out
    assert "gateway ut-2: nothing to do (2 visiting account(s) as they were)" in out
    assert files == {p: p.read_bytes() for p in files}


def test_broker_init_again_keeps_the_visitors_and_a_new_password_is_carried_over(reg: Region) -> None:
    assert main(["region", "accounts", "--plan", str(reg.plan)]) == 0
    # ut-1 gets a node more: `broker init` again rewrites its password file, visitors included
    broker.init(reg.ut1, broker.Fleet(prefix=P, hostname="meetkit-gw", ips=["127.0.0.1"]), ["ut-0003"])
    assert "ut-0101" in users(reg.ut1) and "ut-0101" in secrets(reg.ut1)["visitors"]
    # a visitor's id cannot be taken by a node of this gateway
    with pytest.raises(broker.BrokerError, match="a node of gateway 'ut-2' has an account here already"):
        broker.add_node(reg.ut1, "ut-0101")
    with pytest.raises(broker.BrokerError, match="a node of gateway 'ut-2' has an account here already"):
        broker.init(reg.ut1, broker.Fleet(prefix=P, hostname="meetkit-gw", ips=["127.0.0.1"]), ["ut-0101"])
    # ut-0002 gets a new password at home: accounts carries it to ut-2; ut-0003 is new there
    broker.add_node(reg.ut1, "ut-0002", new_password_if_known=True)
    res = {r.gateway: r for r in region.accounts(region.load_plan(reg.plan))}
    assert res["ut-2"].changed == [("ut-0002", "ut-1")] and res["ut-2"].added == [("ut-0003", "ut-1")]
    assert secrets(reg.ut2)["visitors"]["ut-0002"]["password"] == reg.password("ut-0002")


def test_a_visiting_node_works_on_its_neighbours_broker_and_nothing_more(reg: Region, running) -> None:
    b1, tls1 = running["ut-1"]
    s1 = secrets(reg.ut1)
    gw = Client(b1.port, "gateway", s1["gateway"]["password"])
    assert gw.ok, gw.rc
    gw.sub(f"{P}/+/up")
    # ut-0101 (ut-2's node) fails over to ut-1: over TLS, trusting the CA on its flash (its home's)
    node = Client(tls1, "ut-0101", reg.password("ut-0101"), cafile=reg.ut2 / "ca" / "ca.crt", client_id="ut-0101")
    assert node.ok, node.rc
    node.sub(f"{P}/ut-0101/ack", f"{P}/ut-0001/ack", f"{P}/ut-0001/config")
    # its batch reaches ut-1's gateway
    assert node.pub(f"{P}/ut-0101/up", b'{"batch":1}') == "Success"
    assert gw.next() == (f"{P}/ut-0101/up", b'{"batch":1}')
    # it reads its own ack; not another node's ack or config (the gateway publishes both)
    for topic in (f"{P}/ut-0001/ack", f"{P}/ut-0001/config", f"{P}/ut-0101/ack"):
        assert gw.pub(topic, topic.encode()) == "Success"
    assert node.until(f"{P}/ut-0101/ack") == [(f"{P}/ut-0101/ack", f"{P}/ut-0101/ack".encode())]
    # it cannot publish as another node: refused, and the gateway never gets it (the batch after it does)
    assert node.pub(f"{P}/ut-0001/up", b'{"forged":1}') == "Not authorized"
    assert node.pub(f"{P}/ut-0101/up", b'{"batch":2}') == "Success"
    assert gw.until(f"{P}/ut-0101/up") == [(f"{P}/ut-0101/up", b'{"batch":2}')]
    node.close()
    # ut-1's own node goes to ut-2 the same way
    b2, tls2 = running["ut-2"]
    gw2 = Client(b2.port, "gateway", secrets(reg.ut2)["gateway"]["password"])
    gw2.sub(f"{P}/+/up")
    home = Client(tls2, "ut-0001", reg.password("ut-0001"), cafile=reg.ut1 / "ca" / "ca.crt")
    assert home.ok, home.rc
    assert home.pub(f"{P}/ut-0001/up", b"{}") == "Success"
    assert gw2.next() == (f"{P}/ut-0001/up", b"{}")
    home.close()
    gw2.close()
    # a node of zs-1, which lists no neighbour, is refused on both; so is a wrong password
    for port in (tls1, tls2):
        stranger = Client(port, "zs-0001", reg.password("zs-0001"), cafile=reg.ut1 / "ca" / "ca.crt")
        assert not stranger.ok and stranger.rc is not None and stranger.rc.is_failure
    wrong = Client(tls1, "ut-0101", reg.password("ut-0002"), cafile=reg.ut1 / "ca" / "ca.crt")
    assert not wrong.ok
    gw.close()


def test_a_neighbour_no_longer_listed_loses_its_accounts(reg: Region, running, capsys) -> None:
    b1, tls1 = running["ut-1"]
    ca = reg.ut2 / "ca" / "ca.crt"
    node = Client(tls1, "ut-0101", reg.password("ut-0101"), cafile=ca)
    assert node.ok
    node.close()
    reg.write({"ut-1": ["ut-2"], "ut-2": [], "zs-1": []})  # ut-2's nodes no longer fail over to ut-1
    assert main(["region", "accounts", "--plan", str(reg.plan)]) == 0
    assert "gateway ut-1: removed ut-0101" in capsys.readouterr().out
    assert "ut-0101" not in users(reg.ut1) and "visitors" in secrets(reg.ut1)
    assert secrets(reg.ut1)["visitors"] == {}
    assert b1.proc is not None
    os.kill(b1.proc.pid, signal.SIGHUP)  # `systemctl reload mosquitto`: it reads the password file again
    deadline = time.monotonic() + 15
    while True:
        c = Client(tls1, "ut-0101", reg.password("ut-0101"), cafile=ca)
        if not c.ok:
            break
        c.close()
        assert time.monotonic() < deadline, "ut-1's broker still takes ut-0101 after the reload"
        time.sleep(0.1)  # waits on: Mosquitto to read the password file again
    assert Client(tls1, "ut-0001", reg.password("ut-0001"), cafile=ca).ok  # its own nodes stay


def test_what_accounts_refuses_and_writes_nothing(reg: Region, tmp_path: Path, capsys) -> None:
    snapshot = lambda: {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}  # noqa: E731
    # zs-1 becomes ut-1's neighbour, but it has its own lab CA: ut-1's nodes could not trust it
    plan = reg.write({"ut-1": ["ut-2", "zs-1"], "ut-2": ["ut-1"], "zs-1": ["ut-1"]})
    before = snapshot()
    assert main(["region", "accounts", "--plan", str(plan)]) == 1
    err = capsys.readouterr().err
    assert "gateways.ut-1.neighbours names zs-1, but their broker folders have different lab CAs" in err
    assert "gateways.zs-1.neighbours names ut-1" in err
    assert snapshot() == before
    # a node with an account at two gateways and two passwords
    reg.write({"ut-1": ["ut-2"], "ut-2": ["ut-1"], "zs-1": []})
    broker.add_node(reg.ut2, "ut-0002")
    before = snapshot()
    assert main(["region", "accounts", "--plan", str(plan)]) == 1
    assert ("node ut-0002: has an account at gateways.ut-1 and at gateways.ut-2 with different passwords"
            in capsys.readouterr().err)
    assert snapshot() == before
    # a gateway whose nodes fail over, without its broker folder
    text = plan.read_text().replace('broker = "ut-2/broker"\n', "")
    plan.write_text(text)
    assert main(["region", "accounts", "--plan", str(plan)]) == 1
    err = capsys.readouterr().err
    assert "gateways.ut-2.broker: not set, and its nodes fail over to ut-1; it takes the nodes of ut-1" in err
    # a folder without its password file: nothing written to the others either
    plan.write_text(text.replace('[gateways."ut-2"]', '[gateways."ut-2"]\nbroker = "ut-2/broker"'))
    (reg.ut2 / "mosquitto" / "passwd").rename(reg.ut2 / "passwd.away")
    before = snapshot()
    assert main(["region", "accounts", "--plan", str(plan)]) == 1
    assert f"gateways.ut-2.broker: {reg.ut2 / 'mosquitto' / 'passwd'} not found" in capsys.readouterr().err
    assert snapshot() == before
    # a folder made for another prefix
    plan.write_text(text.replace('topic_prefix = "meetkit"', 'topic_prefix = "city"'))
    assert main(["region", "accounts", "--plan", str(plan)]) == 1
    assert "made for the prefix 'meetkit', the region's is 'city'" in capsys.readouterr().err


def test_each_visitor_has_its_home_town_which_the_gateway_reads(tmp_path: Path, capsys) -> None:
    """Two towns that take each other's nodes: each visitor is written with its home gateway and
    that gateway's town, and the gateway's own reader of the file (gateway/visitors.py) gives a
    visitor its home town, its own nodes its own town, and calls any other node unknown; it keeps
    no password. A table an older `accounts` wrote without towns gets them, the password file
    untouched."""
    ut1 = broker_folder(tmp_path / "ut-1", ["ut-0001"])
    zs1 = broker_folder(tmp_path / "zs-1", ["zs-0001"], ca_from=ut1)
    plan = write_plan(tmp_path / "region.toml", {
        "ut-1": {"town": "utrecht", "host": "10.0.1.1", "neighbours": ["zs-1"], "broker": "ut-1/broker"},
        "zs-1": {"town": "zeist", "host": "10.0.2.1", "neighbours": ["ut-1"], "broker": "zs-1/broker"}})
    assert main(["region", "accounts", "--plan", str(plan)]) == 0
    capsys.readouterr()
    assert secrets(zs1)["visitors"] == {"ut-0001": {"password": secrets(ut1)["nodes"]["ut-0001"], "home": "ut-1",
                                                    "town": "utrecht"}}
    v = Visitors(zs1 / broker.SECRETS, "zeist")
    assert (v.town("ut-0001"), v.town("zs-0001"), v.town("xx-0001")) == ("utrecht", "zeist", "zeist")
    assert (v.unknown("ut-0001"), v.unknown("zs-0001"), v.unknown("xx-0001")) == (False, False, True)
    assert v.state().error is None and v.state().visitors == 1
    table = repr(parse_visitors((zs1 / broker.SECRETS).read_text()))
    assert all(pw not in table for pw in [*secrets(zs1)["nodes"].values(), secrets(ut1)["nodes"]["ut-0001"]])
    assert Visitors(ut1 / broker.SECRETS, "utrecht").town("zs-0001") == "zeist"
    # a table without towns (an older `accounts`): those visitors are unknown until accounts runs again
    doc = secrets(zs1)
    del doc["visitors"]["ut-0001"]["town"]
    broker.save_secrets(zs1, doc)
    assert v.unknown("ut-0001") and v.town("ut-0001") == "zeist"
    assert v.state().problems == ('visitors."ut-0001": no town (run `meetkit region accounts` again: it writes '
                                  "each visitor's home and town)",)
    passwd = (zs1 / "mosquitto" / "passwd").read_bytes()
    assert main(["region", "accounts", "--plan", str(plan)]) == 0
    assert "gateway zs-1: ut-0001 now of ut-1 (utrecht) (0 visiting account(s) as they were)" in capsys.readouterr().out
    assert (zs1 / "mosquitto" / "passwd").read_bytes() == passwd  # no new password: the broker needs nothing
    assert secrets(zs1)["visitors"]["ut-0001"]["town"] == "utrecht" and v.town("ut-0001") == "utrecht"
