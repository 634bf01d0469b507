"""`meetkit region central`: the central Mosquitto's files, run by a real Mosquitto over TLS. A
gateway publishes only under its own town; the reader reads every town and publishes nothing."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway import config
from meetkit_tools import region
from meetkit_tools.cli import main
from meetkit_tools.services import free_port, mosquitto_bin, stop_process, wait_listening

from .conftest import write_plan
from .mqttclient import Client

GATEWAYS = {"ut-1": {"town": "utrecht", "host": "10.0.1.1", "neighbours": ["ut-2"]},
            "ut-2": {"town": "utrecht", "host": "10.0.1.2", "neighbours": ["ut-1"]},
            "zs-1": {"town": "zeist", "host": "10.0.2.1"}}


class Central:
    def __init__(self, out: Path, port: int, proc: subprocess.Popen) -> None:
        self.out, self.port, self.proc = out, port, proc
        self.ca = out / "ca" / "ca.crt"
        self.accounts = json.loads((out / region.CENTRAL_SECRETS).read_text())["accounts"]

    def client(self, user: str, password: str | None = None) -> Client:
        return Client(self.port, user, self.accounts[user] if password is None else password, cafile=self.ca)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    port = free_port()
    plan = region.load_plan(write_plan(tmp_path / "region.toml", GATEWAYS, central=f"mqtts://127.0.0.1:{port}"))
    # As on the central broker's machine, except what a test must have of its own
    opts = region.CentralOptions(persistence_location=f"{tmp_path}/", pid_file=None,
                                 log_dest=f"file {tmp_path / 'central.log'}", user=pwd.getpwuid(os.geteuid()).pw_name)
    res = region.central(plan, tmp_path / "central", opts)
    with (tmp_path / "central.out").open("ab") as log:
        proc = subprocess.Popen([mosquitto_bin(), "-c", str(res.out / "mosquitto" / "mosquitto.conf")],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening("127.0.0.1", port, proc, "central mosquitto")
        yield Central(res.out, port, proc)
    finally:
        stop_process(proc)


def test_a_gateway_publishes_under_its_town_only_and_the_reader_reads_only(central: Central) -> None:
    reader = central.client("reader")
    assert reader.ok, reader.rc
    reader.sub("meetkit/#")
    ut1 = central.client("gw-ut-1")
    assert ut1.ok, ut1.rc
    # under its town: the reader gets it
    assert ut1.pub("meetkit/utrecht/ut-0001/records", b'{"seq":1}') == "Success"
    assert reader.next() == ("meetkit/utrecht/ut-0001/records", b'{"seq":1}')
    # under another town's topics, or outside any town: refused, and never arrives (the next one does)
    for topic in ("meetkit/zeist/zs-0001/records", "meetkit/zeist", "meetkit/ut-0001/records", "other/utrecht/x"):
        assert ut1.pub(topic, b"forged") == "Not authorized", topic
    assert ut1.pub("meetkit/utrecht/ut-0001/records", b'{"seq":2}') == "Success"
    assert reader.until("meetkit/utrecht/ut-0001/records") == [("meetkit/utrecht/ut-0001/records", b'{"seq":2}')]
    # the town's other gateway too; zeist's gateway under zeist only
    ut2, zs1 = central.client("gw-ut-2"), central.client("gw-zs-1")
    assert ut2.pub("meetkit/utrecht/ut-0101/records", b"2") == "Success"
    assert zs1.pub("meetkit/utrecht/zs-0001/records", b"x") == "Not authorized"
    assert zs1.pub("meetkit/zeist/zs-0001/records", b"3") == "Success"
    assert reader.until("meetkit/zeist/zs-0001/records") == [("meetkit/utrecht/ut-0101/records", b"2"),
                                                             ("meetkit/zeist/zs-0001/records", b"3")]
    # the reader publishes nothing, not even under a town
    assert reader.pub("meetkit/utrecht/ut-0001/records", b"forged") == "Not authorized"
    assert ut1.pub("meetkit/utrecht/ut-0001/records", b'{"seq":3}') == "Success"
    assert reader.until("meetkit/utrecht/ut-0001/records") == [("meetkit/utrecht/ut-0001/records", b'{"seq":3}')]
    # a gateway reads nothing of the feed
    spy = central.client("gw-zs-1")  # takes over zs1's session (the username is the client id)
    spy.sub("meetkit/#")
    assert ut1.pub("meetkit/utrecht/ut-0001/records", b'{"seq":4}') == "Success"
    assert reader.until("meetkit/utrecht/ut-0001/records")[-1][1] == b'{"seq":4}'
    assert spy.got.empty()
    # no account, a wrong password: refused
    assert not central.client("gw-ut-1", "wrong").ok
    assert not Client(central.port, "gw-xx-1", "whatever", cafile=central.ca).ok
    for c in (reader, ut1, ut2, spy):
        c.close()


def test_the_files_and_again_keeps_the_passwords(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = write_plan(tmp_path / "region.toml", GATEWAYS)
    out = tmp_path / "central"
    assert main(["region", "central", "--plan", str(plan), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    acl = (out / "mosquitto" / "acl").read_text()
    assert "user gw-ut-1\ntopic write meetkit/utrecht/#\n" in acl and "user gw-zs-1\ntopic write meetkit/zeist/#\n" in acl
    assert "user reader\ntopic read meetkit/#\n" in acl and "pattern" not in acl.replace("`pattern`", "")
    conf = (out / "mosquitto" / "mosquitto.conf").read_text()
    assert "listener 8883\n" in conf and "allow_anonymous false" in conf and "use_username_as_clientid true" in conf
    assert "password_file /etc/mosquitto/meetkit/passwd" in conf  # --install-dir's default
    secrets = json.loads((out / region.CENTRAL_SECRETS).read_text())["accounts"]
    assert sorted(secrets) == ["gw-ut-1", "gw-ut-2", "gw-zs-1", "reader"]
    for name, pw in secrets.items():
        assert (out / f"{name}.password").read_text() == pw + "\n"
        assert (out / f"{name}.password").stat().st_mode & 0o777 == 0o600
        assert pw not in (out / "mosquitto" / "passwd").read_text()
    # what each gateway's gateway.toml takes, printed: the gateway's own configuration reads it
    assert 'topic = "meetkit/{town}/{node}/records"   # {town}: zeist' in printed and 'username = "gw-zs-1"' in printed
    block = printed.split("# zs-1\n", 1)[1]
    conf = config.parse(tomllib.loads('[mqtt]\nhost = "127.0.0.1"\n[store]\npath = "g.db"\n[region]\ntown = "zeist"\n'
                                      'gateway = "zs-1"\nsafe_targets = ["central"]\n' + block))
    (target,) = conf.forward
    assert (target.type, target.url, target.username, target.topic) == (
        "mqtt", "mqtts://central.example.org:8883", "gw-zs-1", "meetkit/{town}/{node}/records")
    # where that gateway publishes: under its town once (a literal town in the template was doubled,
    # meetkit/zeist/zeist/..., which the ACL let through)
    assert config.region_topic(target.topic, "zeist") == "meetkit/zeist/{node}/records"
    # again, with zs-1 gone: the passwords kept, its account gone
    write_plan(plan, {k: v for k, v in GATEWAYS.items() if k != "zs-1"})
    assert main(["region", "central", "--plan", str(plan), "--out", str(out)]) == 0
    again = json.loads((out / region.CENTRAL_SECRETS).read_text())["accounts"]
    assert again == {k: v for k, v in secrets.items() if k != "gw-zs-1"}
    assert not (out / "gw-zs-1.password").exists() and "gw-zs-1" not in (out / "mosquitto" / "acl").read_text()



def test_without_tls_no_certificates(tmp_path: Path) -> None:
    plan = region.load_plan(write_plan(tmp_path / "region.toml", GATEWAYS, central="mqtt://central.lan"))
    res = region.central(plan, tmp_path / "central")
    conf = (res.out / "mosquitto" / "mosquitto.conf").read_text()
    assert "listener 1883\n" in conf and "cafile" not in conf and "certfile" not in conf
    assert not (res.out / "ca").exists()
    assert 'ca_file' not in region.central_forward_toml(plan, "ut-1", res.out)
