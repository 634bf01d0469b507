"""docs/operator.md's alarm monitoring on the secured broker, end to end: a real Mosquitto runs
what `meetkit broker init` generates, the real `meetkit-gateway run` logs in with its generated
account and raises an alarm (its database is corrupt at start), and the command `broker init`
prints for the monitor account (the one operator.md shows) reads that retained alarm, on the
loopback listener and over TLS. The monitor's account cannot clear it; the gateway's can, with
the command operator.md shows."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from meetkit_tools import broker as broker_tool
from meetkit_tools.services import FleetBroker, GatewayProcess
from tests.broker.test_broker import follow

ALARM = re.compile(r'meetkit/gateway/alarm \{"v":1,"alarm":"corrupt_db","active":true,.*\}')


def test_the_gateways_alarm_reaches_the_monitor_command(tmp_path: Path) -> None:
    fleet = FleetBroker(tmp_path, ["ams-001"]).start()
    gw = GatewayProcess(tmp_path, fleet.host, fleet.plain_port, mqtt_toml=fleet.gateway_toml())
    gw.db.write_bytes(b"not a database: torn by a power cut " * 300)
    try:
        gw.start()
        gw.wait_log(r"ALARM corrupt_db")
        for tls in (False, True):
            assert ALARM.fullmatch(follow(fleet.monitor_command(tls=tls), ALARM)[-1])
        # a node's status follows the alarm in the same command's output (retained, on subscribing)
        status = '{"v":1,"node":"ams-001","online":false}'
        subprocess.run(["mosquitto_pub", "-h", fleet.host, "-p", str(fleet.tls_port), "--cafile",
                        str(fleet.out / "ca" / "ca.crt"), "-u", "ams-001", "-P", fleet.password("ams-001"),
                        "-q", "1", "-r", "-t", "meetkit/ams-001/status", "-m", status], check=True, timeout=10)
        clear = ["-h", "127.0.0.1", "-p", str(fleet.plain_port), "-q", "1", "-r", "-n", "-t", "meetkit/gateway/alarm"]
        # the monitor's account cannot clear the alarm (Mosquitto drops a denied publish silently)
        monitor_pw = (fleet.out / broker_tool.MONITOR_PASSWORD).read_text().strip()
        subprocess.run(["mosquitto_pub", *clear, "-u", "monitor", "-P", monitor_pw], check=True, timeout=10)
        seen = follow(fleet.monitor_command(), f"meetkit/ams-001/status {status}")
        assert ALARM.fullmatch(seen[0]), seen
        # the gateway's can, as operator.md shows it (the password read from gateway.password)
        subprocess.run(["bash", "-c", f'mosquitto_pub {" ".join(clear)} -u gateway '
                        f'-P "$(cat {fleet.out / broker_tool.GATEWAY_PASSWORD})"'], check=True, timeout=10)
        seen = follow(fleet.monitor_command(), f"meetkit/ams-001/status {status}")
        assert not any(ln.startswith("meetkit/gateway/alarm") for ln in seen), seen
    finally:
        gw.stop()
        fleet.stop()


def test_operator_md_shows_the_commands_that_were_run() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()
    fleet = broker_tool.Fleet()  # the walk-through's ports and prefix
    on_the_pi = broker_tool.monitor_command(Path("/etc/meetkit/broker"), fleet)
    from_the_lan = broker_tool.monitor_command(Path("/HOME/meetkit"), fleet, tls_host="meetkit-gw.local")
    assert f"\n    sudo {on_the_pi}\n" in doc
    assert f"\n    {from_the_lan.replace('/HOME/', '$HOME/')}\n" in doc
    assert ('\n    mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -r -n -t meetkit/gateway/alarm -u gateway '
            '-P "$(sudo cat /etc/meetkit/broker/gateway.password)"\n') in doc
