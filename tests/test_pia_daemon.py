"""The real daemon with provider = "pia" on a private bus: login, Provider, ForwardedPort.

The CLI and a PropertiesChanged watcher (``nordwgctl monitor --json``) talk to the daemon as a
desktop would; the password reaches it only through SetLogin, never argv or the log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd.testing.piaworld import PiaWorld
from nordwgd.testing.privatebus import PrivateBus
from tests.fixtures_dbus import running_daemon

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PiaWorld]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nftables, wireguard-go)")
    built = PiaWorld.build(tmp_path_factory.mktemp("piaworld"))
    try:
        yield built
    finally:
        built.close()


def ctl(bus: PrivateBus, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nordwgd.cli", "--bus", bus.address, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_login_connect_and_the_forwarded_port_on_the_bus(
    world: PiaWorld, private_bus: PrivateBus, tmp_path: Path
) -> None:
    config = world.write_config(
        tmp_path / "nordwgd.toml",
        paths={"state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
        port_forward={"enabled": True},
    )
    log = tmp_path / "daemon.log"
    with running_daemon(private_bus, world.host_ns, config, log, keep_sys=True) as daemon:
        monitor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nordwgd.cli",
                "--bus",
                private_bus.address,
                "monitor",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        try:
            status = json.loads(ctl(private_bus, "status", "--json").stdout)
            assert status["Provider"] == "pia"
            result = ctl(private_bus, "connect", "uk", "--timeout", "30")
            assert result.returncode == 5, result.stderr  # not logged in yet
            assert "nordwgctl login" in result.stderr

            result = ctl(private_bus, "login", "--stdin", stdin=world.login_text())
            assert result.returncode == 0, result.stderr
            result = ctl(private_bus, "connect", "uk", "--timeout", "60")
            assert result.returncode == 0, result.stderr + daemon.log_text()

            port = 0
            deadline = time.monotonic() + 30
            while not port and time.monotonic() < deadline:
                port = json.loads(ctl(private_bus, "status", "--json").stdout)["ForwardedPort"]
                time.sleep(0.2)
            assert port, daemon.log_text()
            human = ctl(private_bus, "status").stdout
            assert f"Forwarded:  port {port}" in human and "Provider:   pia" in human
            report = json.loads(ctl(private_bus, "diagnose", "--json").stdout)
            assert report["provider"] == "pia" and report["forwarded_port"] == port
            assert ctl(private_bus, "disconnect").returncode == 0
        finally:
            monitor.terminate()
            out, _ = monitor.communicate(timeout=10)
        changes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        # The port came with a PropertiesChanged, and went with one.
        ports = [change["ForwardedPort"] for change in changes if "ForwardedPort" in change]
        assert port in ports and ports[-1] == 0, changes
    text = log.read_text()
    assert world.password not in text
    assert "PIA login for p1234567 stored" in text
