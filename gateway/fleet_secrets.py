"""The secrets a node's configuration carries and the fleet register never holds: Wi-Fi passwords
and the node's own broker account.

- `[fleet] secrets` of gateway.toml: a TOML file of Wi-Fi passwords by network name, 0600, made
  by the operator:

      [wifi]
      "lab" = "the lab's Wi-Fi password"
      "gemeente-iot" = "..."

- `[fleet] broker_secrets`: the broker folder's `secrets.json` (made by `meetkit broker init` /
  `add-node`), whose `nodes` holds each node's broker password; its user name is its node id.

Both are read again when they change, and may be missing (then a node whose configuration needs
one is held back, and the page says which file). Handed to the service as systemd credentials they
are copies made at the gateway's start: what is missing from one is said with the restart that
renews it (credentials.py). No method returns a secret in an error or a
problem: messages name the file and the key, never a value. `redact` takes every secret known out
of a text, for what a node reports (a crash's traceback, a refusal's reason) before it is shown.

    secrets = FleetSecrets(wifi_path, broker_path)
    secrets.wifi_password("lab")        # (password, None) or (None, why not)
    secrets.broker_password("ams-001")  # (password, None) or (None, why not)
    secrets.redact(text)                # every known password replaced by "***"
"""

from __future__ import annotations

import json
import threading
import tomllib
from pathlib import Path
from typing import Any, Callable

from .credentials import copied_at_start, is_credential
from .watched import WatchedFile, unreadable

MASK = "***"


class _File:
    """One secrets file, read again when it changes; `parse` turns its text into a dict or raises
    ValueError with a message that names no secret."""

    def __init__(self, path: Path | None, setting: str, parse: Callable[[str], dict[str, str]]) -> None:
        self.path = path
        self.setting = setting
        self.parse = parse
        self._file = WatchedFile(path) if path is not None else None
        self.values: dict[str, str] = {}
        self.error: str | None = None

    def refresh(self) -> None:
        if self.path is None or self._file is None:
            self.values, self.error = {}, f"no {self.setting} in gateway.toml"
            return
        try:
            text = self._file.read_if_changed()
        except (OSError, UnicodeDecodeError) as e:
            self.values, self.error = {}, f"{self.path}: cannot read it ({unreadable(e)})"
            return
        if text is None:
            return
        try:
            self.values, self.error = self.parse(text), None
        except ValueError as e:
            self.values, self.error = {}, f"{self.path}: {e}"


def _wifi(text: str) -> dict[str, str]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise ValueError("not valid TOML (its [wifi] table: \"<ssid>\" = \"<password>\")") from None
    wifi = doc.get("wifi", {})
    if not isinstance(wifi, dict):
        raise ValueError("wifi: must be a table of \"<ssid>\" = \"<password>\"")
    bad = [ssid for ssid, pw in wifi.items() if not isinstance(pw, str)]
    if bad:
        raise ValueError(f"wifi.{bad[0]}: the password must be a string")
    return dict(wifi)


def _broker(text: str) -> dict[str, str]:
    try:
        doc: Any = json.loads(text)
    except ValueError:
        raise ValueError("not JSON (the broker folder's secrets.json)") from None
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, dict):
        raise ValueError('no "nodes" in it: not the secrets.json of `meetkit broker init`')
    return {n: pw for n, pw in nodes.items() if isinstance(pw, str) and pw}


class FleetSecrets:
    """The Wi-Fi passwords and the nodes' broker passwords; safe to share between threads."""

    def __init__(self, wifi: Path | None, broker: Path | None) -> None:
        self._lock = threading.Lock()
        self._wifi = _File(wifi, "[fleet] secrets", _wifi)
        self._broker = _File(broker, "[fleet] broker_secrets", _broker)

    def wifi_password(self, ssid: str) -> tuple[str | None, str | None]:
        with self._lock:
            f = self._wifi
            f.refresh()
            if f.error is not None:
                return None, f"the Wi-Fi password of {ssid!r}: {f.error}"
            if ssid not in f.values:
                why = f"the Wi-Fi password of {ssid!r}: not in {f.path} ([wifi] \"{ssid}\" = \"...\")"
                if is_credential(f.path):
                    why += f"; {copied_at_start(f.path, 'adding it to the file it is copied from')}"
                return None, why
            return f.values[ssid], None

    def broker_password(self, node: str) -> tuple[str | None, str | None]:
        with self._lock:
            f = self._broker
            f.refresh()
            if f.error is not None:
                return None, f"the broker password of {node}: {f.error}"
            if node not in f.values:
                if is_credential(f.path):
                    return None, (f"the broker password of {node}: not in "
                                  f"{copied_at_start(f.path, f'`meetkit broker add-node {node}`')}")
                return None, f"the broker password of {node}: not in {f.path} (`meetkit broker add-node {node}`)"
            return f.values[node], None

    def known(self) -> list[str]:
        """Every secret of both files, longest first (for `redact`)."""
        with self._lock:
            for f in (self._wifi, self._broker):
                f.refresh()
            found = {v for f in (self._wifi, self._broker) for v in f.values.values() if v}
        return sorted(found, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.known():
            text = text.replace(secret, MASK)
        return text
