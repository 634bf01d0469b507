"""systemd's service credentials (`LoadCredential=`, docs/operator.md): whether a file the gateway
reads is one, and what it takes for a change of its source to reach the gateway.

systemd copies a credential into the service's `$CREDENTIALS_DIRECTORY`
(`/run/credentials/meetkit-gateway.service/`) once, when the service starts. A later change of the
source file (`meetkit broker add-node` writing node-keys.json and secrets.json, an edit of the Wi-Fi
secrets) does not reach the copy, and neither does `systemctl reload`: systemd 252 of Raspberry Pi
OS bookworm (and 257 of trixie) has no way to renew a running service's credentials (systemd issue
21099; `RefreshOnReload=` came upstream only in 2026). Only `systemctl restart` does, and the
gateway loses nothing in a restart (its broker session keeps what arrives meanwhile). So a file
read from there is still read again when it changes, but what is missing from it is said with that
restart, not with a step the operator took already.

    if is_credential(path):                 # under $CREDENTIALS_DIRECTORY or /run/credentials/
        why = copied_at_start(path, "`meetkit broker add-node ams-003`")   # ...restart the gateway (`sudo ...`)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

#: where systemd puts every service's credentials (its `$CREDENTIALS_DIRECTORY` is a folder in it)
ROOT = Path("/run/credentials")
RESTART = "sudo systemctl restart meetkit-gateway"


def is_credential(path: Path | None, environ: Mapping[str, str] | None = None) -> bool:
    """`path` is in this service's credentials folder (or any service's): a copy systemd made at
    the service's start, which nothing renews until the next start."""
    if path is None:
        return False
    env = os.environ if environ is None else environ
    folders = [ROOT] + ([Path(env["CREDENTIALS_DIRECTORY"])] if env.get("CREDENTIALS_DIRECTORY") else [])
    p = Path(os.path.abspath(path))
    return any(p == f or f in p.parents for f in (Path(os.path.abspath(f)) for f in folders))


def copied_at_start(path: Path, change: str) -> str:
    """What to say when what `change` adds is not in `path`, a credential: the copy is as old as the
    gateway's start, and the restart that renews it."""
    return (f"{path} is the gateway's copy of a service credential, made when it started: after {change}, restart "
            f"the gateway (`{RESTART}`; a reload does not renew a credential)")
