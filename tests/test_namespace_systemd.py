"""Namespace mode under real systemd, with the shipped hardened unit and the documented drop-in
data/systemd/namespace-mode.conf: the daemon makes /run/netns/<name> in the system's mount
namespace, and another service joins it with NetworkNamespacePath= and reaches the web server
only through the tunnel.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

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

pytestmark = [pytest.mark.nspawn, pytest.mark.root, pytest.mark.slow]

DROPIN = Path(__file__).resolve().parents[1] / "data" / "systemd" / "namespace-mode.conf"
NAMESPACE = f"nwgvpn{secrets.token_hex(3)}"
CLIENT = "nordwgd-test-vpnclient.service"
CLIENT_OUT = "/run/nordwgd-test/vpnclient.out"

# Switches the world's config to namespace mode (the world writes it at boot).
_TO_NAMESPACE_MODE = """\
import sys, tomllib
from pathlib import Path
from nordwgd.testing.world import to_toml
path = Path("/etc/nordwgd/nordwgd.toml")
values = tomllib.loads(path.read_text())
values.setdefault("network", {}).update(mode="namespace", namespace=sys.argv[1])
path.write_text(to_toml(values))
"""


def _client_unit(web: str) -> str:
    return f"""\
[Unit]
Description=nordwgd test: a service in the VPN namespace
After={DAEMON}
BindsTo={DAEMON}

[Service]
Type=oneshot
NetworkNamespacePath=/run/netns/{NAMESPACE}
StandardOutput=file:{CLIENT_OUT}
ExecStart=curl -sS --max-time 10 http://{web}/
"""


@pytest.fixture(scope="module")
def world() -> Iterator[SystemWorld]:
    files = {f"/etc/systemd/system/{DAEMON}.d/60-namespace-mode.conf": DROPIN.read_text()}
    with boot_world(lockdown=False, files=files) as world:
        yield world


def test_a_service_joins_the_namespace_made_by_the_hardened_daemon(world: SystemWorld) -> None:
    box = world.box
    box.run([PYTHON, "-c", _TO_NAMESPACE_MODE, NAMESPACE])
    box.run(
        ["sh", "-c", f"cat > /etc/systemd/system/{CLIENT}"], input=_client_unit(world.info["web"])
    )
    box.run(["systemctl", "daemon-reload"])
    box.run(["systemctl", "restart", DAEMON])
    wait_for("the daemon", lambda: state(box) == "disconnected")
    assert '"namespace"' in busctl(box, "get-property", *BUS, "Mode")

    connect_and_wait(box)
    assert box.run(["test", "-e", f"/run/netns/{NAMESPACE}"], check=False).returncode == 0, (
        box.journal(DAEMON)
    )
    main_pid = box.run(["systemctl", "show", "-P", "MainPID", DAEMON]).stdout.strip()
    mounts = box.run(["readlink", "/proc/1/ns/mnt", f"/proc/{main_pid}/ns/mnt"]).stdout.split()
    assert mounts[0] == mounts[1], "the daemon runs in a mount namespace of its own"
    started = box.run(["systemctl", "start", CLIENT], check=False)
    assert started.returncode == 0, box.journal(CLIENT)
    seen = box.run(["cat", CLIENT_OUT]).stdout.strip()
    assert seen in world.stations, (seen, box.journal(CLIENT))
    # The host itself is untouched: it still leaves by the uplink with its own address.
    assert world.web_get() == world.info["host_address"]

    busctl(box, "call", *BUS, "Disconnect")
    wait_for("the disconnect", lambda: state(box) == "disconnected")
    gone = box.run(["test", "-e", f"/run/netns/{NAMESPACE}"], check=False)
    assert gone.returncode != 0
    assert "Failed" not in box.journal(DAEMON, lines=400), box.journal(DAEMON, lines=400)

    report = box.run(["systemd-analyze", "security", "--no-pager", DAEMON], check=False).stdout
    print(report)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
    assert match is not None, report
    print(f"exposure with the namespace-mode drop-in: {match.group(1)}")
