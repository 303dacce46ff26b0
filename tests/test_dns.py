"""DNS: resolv.conf written and restored byte for byte; resolved called over a private bus."""

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import BusType, DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, method

from nordwgd import dns
from nordwgd.dns import resolvconf
from nordwgd.errors import DnsFailed
from nordwgd.runstate import Journal

SERVERS = (IPv4Address("10.5.0.1"), IPv4Address("10.5.0.53"))
ORIGINAL = b"# made by dhcp\nnameserver 192.0.2.53\r\nsearch example.  \n\x00odd bytes\xff\n"


def managed(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


async def up_then_down_in_a_new_process(runtime: Path, path: Path) -> None:
    journal = Journal(runtime)
    await dns.apply(
        journal, mode="resolvconf", ifindex=7, ifname="nordlynx", servers=SERVERS, resolv_conf=path
    )
    assert managed(path) == ["nameserver 10.5.0.1", "nameserver 10.5.0.53"]
    # A new process only has the record on disk.
    (step,) = Journal.load(runtime).steps
    await dns.undo(step)


async def test_a_regular_file_is_restored_byte_for_byte_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(ORIGINAL)
    path.chmod(0o640)
    runtime = tmp_path / "run"
    journal = Journal(runtime)
    await dns.apply(
        journal, mode="resolvconf", ifindex=7, ifname="nordlynx", servers=SERVERS, resolv_conf=path
    )
    assert path.read_text().startswith(resolvconf.HEADER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    backup = runtime / resolvconf.BACKUP_NAME
    assert backup.read_bytes() == ORIGINAL
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    (step,) = Journal.load(runtime).steps
    await dns.undo(step)
    assert path.read_bytes() == ORIGINAL
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not backup.exists()
    assert not (runtime / resolvconf.META_NAME).exists()


async def test_a_symlink_comes_back_as_the_same_symlink(tmp_path: Path) -> None:
    target = tmp_path / "stub-resolv.conf"
    target.write_bytes(ORIGINAL)
    path = tmp_path / "resolv.conf"
    path.symlink_to("stub-resolv.conf")
    journal = Journal(tmp_path / "run")
    await dns.apply(
        journal, mode="resolvconf", ifindex=7, ifname="nordlynx", servers=SERVERS, resolv_conf=path
    )
    assert not path.is_symlink(), "the link is replaced, its target left alone"
    assert target.read_bytes() == ORIGINAL
    await dns.undo(journal.steps[0])
    assert path.is_symlink() and os.readlink(path) == "stub-resolv.conf"
    assert target.read_bytes() == ORIGINAL


async def test_a_missing_file_is_missing_again_after_restore(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    await up_then_down_in_a_new_process(tmp_path / "run", path)
    assert not path.exists()


async def test_restore_works_from_the_record_alone(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(ORIGINAL)
    await up_then_down_in_a_new_process(tmp_path / "run", path)
    assert path.read_bytes() == ORIGINAL


async def test_a_leftover_backup_is_restored_without_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(ORIGINAL)
    runtime = tmp_path / "run"
    await dns.apply(
        Journal(runtime),
        mode="resolvconf",
        ifindex=7,
        ifname="nordlynx",
        servers=SERVERS,
        resolv_conf=path,
    )
    (runtime / "connection.json").unlink()
    await dns.cleanup_by_name(runtime)
    assert path.read_bytes() == ORIGINAL
    await dns.cleanup_by_name(runtime)  # nothing left: does nothing
    assert path.read_bytes() == ORIGINAL


async def test_an_unwritable_path_is_a_dns_failure_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "resolv.conf"
    journal = Journal(tmp_path / "run")
    with pytest.raises(DnsFailed, match="no-such-dir"):
        await dns.apply(
            journal,
            mode="resolvconf",
            ifindex=7,
            ifname="nordlynx",
            servers=SERVERS,
            resolv_conf=path,
        )
    # The step is recorded, and undoing it leaves nothing behind.
    await dns.undo(journal.steps[0])
    assert not path.exists()


def test_the_managed_file_names_only_the_tunnel_resolvers() -> None:
    text = resolvconf.render((IPv4Address("10.5.0.1"), IPv6Address("fd00::53"))).decode()
    assert text == resolvconf.HEADER + "nameserver 10.5.0.1\nnameserver fd00::53\n"


# -- systemd-resolved, faked on a private bus ------------------------------------------------


class FakeResolve1(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.freedesktop.resolve1.Manager")
        self.calls: list[tuple[str, Any]] = []
        self.links = {7}

    def _check(self, ifindex: int) -> None:
        if ifindex not in self.links:
            raise DBusError("org.freedesktop.resolve1.NoSuchLink", f"Link {ifindex} not known")

    @method()
    def SetLinkDNS(self, ifindex: "i", addresses: "a(iay)") -> None:  # noqa: F821
        self._check(ifindex)
        self.calls.append(("SetLinkDNS", (ifindex, [(f, bytes(a)) for f, a in addresses])))

    @method()
    def SetLinkDomains(self, ifindex: "i", domains: "a(sb)") -> None:  # noqa: F821
        self._check(ifindex)
        self.calls.append(("SetLinkDomains", (ifindex, [tuple(d) for d in domains])))

    @method()
    def SetLinkDefaultRoute(self, ifindex: "i", enable: "b") -> None:  # noqa: F821
        self._check(ifindex)
        self.calls.append(("SetLinkDefaultRoute", (ifindex, enable)))

    @method()
    def RevertLink(self, ifindex: "i") -> None:  # noqa: F821
        self._check(ifindex)
        self.calls.append(("RevertLink", ifindex))


@pytest.fixture
async def private_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    socket_path = tmp_path / "bus"
    config = tmp_path / "bus.conf"
    allow = "".join(
        f'<allow send_type="{kind}"/>'
        for kind in ("method_call", "method_return", "error", "signal")
    )
    config.write_text(
        "<!DOCTYPE busconfig PUBLIC '-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN'\n"
        " 'http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd'>\n"
        f"<busconfig><type>system</type><listen>unix:path={socket_path}</listen>"
        f'<policy context="default"><allow user="*"/><allow own="*"/>{allow}'
        '<allow receive_type="*"/></policy></busconfig>\n'
    )
    daemon = await asyncio.create_subprocess_exec(
        "dbus-daemon",
        "--nofork",
        "--print-address",
        f"--config-file={config}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert daemon.stdout is not None
        address = (await daemon.stdout.readline()).decode().strip()
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address
    finally:
        daemon.terminate()
        await daemon.wait()


@pytest.fixture
async def fake_resolved(private_bus: str) -> AsyncIterator[FakeResolve1]:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    service = FakeResolve1()
    bus.export("/org/freedesktop/resolve1", service)
    await bus.request_name("org.freedesktop.resolve1")
    try:
        yield service
    finally:
        bus.disconnect()


async def test_without_a_system_bus_resolv_conf_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    assert await dns.detect_mode() == "resolvconf"


async def test_a_bus_without_resolved_means_resolv_conf(private_bus: str) -> None:
    assert await dns.detect_mode() == "resolvconf"


async def test_resolved_gets_link_dns_routing_domain_and_default_route(
    fake_resolved: FakeResolve1, tmp_path: Path
) -> None:
    assert await dns.detect_mode() == "resolved"
    journal = Journal(tmp_path / "run")
    await dns.apply(
        journal,
        mode="resolved",
        ifindex=7,
        ifname="nordlynx",
        servers=SERVERS,
        resolv_conf=tmp_path / "untouched",
    )
    assert fake_resolved.calls == [
        ("SetLinkDNS", (7, [(2, bytes([10, 5, 0, 1])), (2, bytes([10, 5, 0, 53]))])),
        ("SetLinkDomains", (7, [(".", True)])),
        ("SetLinkDefaultRoute", (7, True)),
    ]
    assert not (tmp_path / "untouched").exists()
    (step,) = Journal.load(tmp_path / "run").steps
    await dns.undo(step)
    assert fake_resolved.calls[-1] == ("RevertLink", 7)


async def test_resolved_errors_are_dns_failures_and_a_gone_link_reverts_quietly(
    fake_resolved: FakeResolve1, tmp_path: Path
) -> None:
    with pytest.raises(DnsFailed, match="NoSuchLink"):
        await dns.apply(
            Journal(tmp_path),
            mode="resolved",
            ifindex=99,
            ifname="gone",
            servers=SERVERS,
            resolv_conf=tmp_path / "x",
        )
    await dns.undo({"step": "dns", "mode": "resolved", "ifindex": 99, "ifname": "gone"})
    assert fake_resolved.calls == []
