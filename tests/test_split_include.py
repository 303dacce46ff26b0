"""nordwgctl include under real systemd: a command in the tunnel's namespace, the tunnel or nothing.

The host stays off the VPN (namespace mode, the shipped unit with its namespace-mode drop-in);
``nordwgctl include -- COMMAND`` runs COMMAND through systemd-run in /run/netns/<name>.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.testing.nspawn import Container
from nordwgd.testing.systemworld import (
    BUS,
    DAEMON,
    PYTHON,
    SystemWorld,
    boot_world,
    busctl,
    connect_and_wait,
    state,
    wait_for,
)
from nordwgd.testing.world import TUNNEL_DNS

pytestmark = [pytest.mark.nspawn, pytest.mark.root, pytest.mark.slow]

DROPIN = Path(__file__).resolve().parents[1] / "data" / "systemd" / "namespace-mode.conf"
NAMESPACE = f"nwginc{secrets.token_hex(3)}"
SILENCE = (
    "table inet nwgt_silence {\n"
    "  chain input { type filter hook input priority -10; udp dport 51820 drop; }\n"
    "  chain output { type filter hook output priority -10; udp sport 51820 drop; }\n"
    "}\n"
)
_TO_NAMESPACE_MODE = """\
import sys, tomllib
from pathlib import Path
from nordwgd.testing.world import to_toml
path = Path("/etc/nordwgd/nordwgd.toml")
values = tomllib.loads(path.read_text())
values.setdefault("network", {}).update(mode="namespace", namespace=sys.argv[1])
values.setdefault("health", {}).update(handshake_timeout=2.0)
path.write_text(to_toml(values))
"""


@pytest.fixture(scope="module")
def world() -> Iterator[SystemWorld]:
    files = {f"/etc/systemd/system/{DAEMON}.d/60-namespace-mode.conf": DROPIN.read_text()}
    with boot_world(lockdown=False, files=files) as world:
        yield world


def server_namespaces(box: Container) -> list[str]:
    """The world's VPN server namespaces (named <prefix>-<run>-s<index>)."""
    listed = box.run(["ip", "netns", "list"]).stdout.split()
    return [name for name in listed if re.search(r"-s\d+$", name)]


def include(box: Container, *command: str) -> tuple[int, str]:
    done = box.run(["nordwgctl", "include", "--", *command], check=False)
    return done.returncode, done.stdout.strip()


def test_included_command_reaches_the_tunnel_or_nothing(world: SystemWorld) -> None:
    box = world.box
    web = f"http://{world.info['web']}/"
    curl = ("curl", "-sS", "--max-time", "5", web)
    box.run([PYTHON, "-c", _TO_NAMESPACE_MODE, NAMESPACE])
    box.run(["systemctl", "restart", DAEMON])
    wait_for("the daemon", lambda: state(box) == "disconnected")
    # Disconnected: there is no namespace to run in, and include says so.
    code, _ = include(box, *curl)
    assert code == 1

    connect_and_wait(box)
    code, seen = include(box, *curl)
    assert code == 0 and seen in world.stations, (code, seen, box.journal(DAEMON))
    # Its resolver is the tunnel's, and the host itself stays off the VPN.
    code, resolv = include(box, "cat", "/etc/resolv.conf")
    assert f"nameserver {TUNNEL_DNS}" in resolv
    assert world.web_get() == world.info["host_address"]
    # It runs as the caller, not as a service user of its own.
    code, uid = include(box, "id", "-u")
    assert (code, uid) == (0, "0")

    # The tunnel down (every server silent: reconnecting, then error): nothing at all.
    servers = server_namespaces(box)
    assert len(servers) == len(world.stations), servers
    for name in servers:
        box.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=SILENCE)
    try:
        busctl(box, "call", *BUS, "Reconnect")
        wait_for("the tunnel to go down", lambda: state(box) in ("reconnecting", "error"))
        code, seen = include(box, *curl)
        assert code != 0 and seen == "", seen
        wait_for("the error state", lambda: state(box) == "error", timeout=90)
        code, seen = include(box, *curl)
        assert code != 0 and seen == "", seen
        assert box.run(["test", "-e", f"/run/netns/{NAMESPACE}"], check=False).returncode == 0
    finally:
        for name in servers:
            box.run(
                ["ip", "netns", "exec", name, "nft", "delete", "table", "inet", "nwgt_silence"],
                check=False,
            )
    busctl(box, "call", *BUS, "Disconnect")
    wait_for("the disconnect", lambda: state(box) == "disconnected")
