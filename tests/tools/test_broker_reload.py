"""`meetkit provision --broker-reload CMD` runs CMD through the shell, as the technician typed it:
the compound command docs/technician.md shows (install the password file where the broker reads
it, then SIGHUP the broker) works against a real Mosquitto, and a failing step stops provision with
its message."""

from __future__ import annotations

import shutil
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from meetkit_tools import broker as broker_tool
from meetkit_tools.dev.waits import wait_for
from meetkit_tools.provision import InputError, Options, _reload_broker
from meetkit_tools.services import FleetBroker


def logs_in(broker: FleetBroker, user: str) -> bool:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{user}")
    c.username_pw_set(user, broker.password(user))
    try:
        c.connect(broker.host, broker.plain_port)
        return c.loop(timeout=2) == mqtt.MQTT_ERR_SUCCESS and c.is_connected()
    finally:
        c.disconnect()


def test_a_compound_reload_command_runs_through_the_shell(tmp_path: Path) -> None:
    b = FleetBroker(tmp_path, ["rl-01"]).start()
    try:
        assert b.proc is not None
        # the broker reads mosquitto/passwd; the new account is written to a copy first, as on a laptop
        passwd = b.out / "mosquitto" / "passwd"
        shutil.copy(passwd, tmp_path / "passwd.running")
        broker_tool.add_node(b.out, "rl-02")
        staged = tmp_path / "passwd.new"
        shutil.copy(passwd, staged)
        shutil.copy(tmp_path / "passwd.running", passwd)   # what the broker holds: without rl-02
        said: list[str] = []
        cmd = f"install -m 0600 {staged} {passwd} && kill -HUP {b.proc.pid}"
        _reload_broker(Options(port="-", board="esp32-devkitc", node_id="rl-02", broker_reload=cmd),
                       lambda item, text: said.append(f"{item}: {text}"))
        assert said == [f"broker: reloaded ({cmd})"]
        assert passwd.read_bytes() == staged.read_bytes()
        # Mosquitto reads the password file again in its own time
        wait_for(lambda: logs_in(b, "rl-02"), 30, "rl-02 logging in after the reload")
        assert b.proc.poll() is None   # the broker reloaded, not killed

        with pytest.raises(InputError) as e:
            _reload_broker(Options(port="-", board="esp32-devkitc", node_id="rl-02",
                                   broker_reload=f"install -m 0600 {tmp_path}/missing {passwd} && kill -HUP {b.proc.pid}"),
                           lambda item, text: None)
        assert "failed (1)" in str(e.value) and "missing" in str(e.value)
    finally:
        b.stop()
