"""The D-Bus adapter: argument checks, error names, authorization, property signals.

The first part exports the real ``ManagerInterface`` on a private dbus-daemon around a
recording Manager double, to pin down the adapter's own behaviour (every error path, polkit
answers, a caller leaving mid-authorization). The second part runs the real daemon process
inside a network namespace and talks to it as root and as ``nobody``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from nordwgd import errors
from nordwgd.bus import BUS_NAME, INTERFACE_NAME
from nordwgd.bus.convert import PROPERTY_SIGNATURES, plain
from nordwgd.testing.netns import create_netns, delete_netns, unique_name
from nordwgd.testing.world import to_toml
from tests.fixtures_dbus import (
    PYTHON,
    REPO,
    DaemonProcess,
    PrivateBus,
    RecordingManager,
    Service,
    call_as,
    client_argv,
    connect_client,
)

PREFIX = "org.nordwgd.Nordwgd1.Error."


class FakePolkit(ServiceInterface):
    """org.freedesktop.PolicyKit1.Authority answering what the test says, when it says."""

    def __init__(self) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self.answer = True
        self.release = asyncio.Event()
        self.release.set()
        self.asked: list[tuple[str, str, int]] = []
        self.actions: list[str] = []
        self.asked_event = asyncio.Event()

    @dbus_method()
    async def CheckAuthorization(
        self,
        subject: Annotated[list[Any], DBusSignature("(sa{sv})")],
        action_id: DBusStr,
        details: Annotated[dict[str, str], DBusSignature("a{ss}")],
        flags: DBusUInt32,
        cancel: DBusStr,
    ) -> Annotated[list[Any], DBusSignature("(bba{ss})")]:
        kind, fields = subject
        self.asked.append((kind, fields["name"].value, flags))
        self.actions.append(action_id)
        self.asked_event.set()
        await self.release.wait()
        return [self.answer, False, {}]


@pytest.fixture
async def polkit(private_bus: PrivateBus) -> AsyncIterator[FakePolkit]:
    bus = await connect_client(private_bus.address)
    authority = FakePolkit()
    bus.export("/org/freedesktop/PolicyKit1/Authority", authority)
    await bus.request_name("org.freedesktop.PolicyKit1")
    try:
        yield authority
    finally:
        authority.release.set()
        bus.disconnect()


async def test_getall_has_every_property_with_its_signature(service: Service) -> None:
    reply = await service.call(
        "GetAll", "s", [INTERFACE_NAME], interface="org.freedesktop.DBus.Properties"
    )
    (values,) = reply.body
    assert {name: v.signature for name, v in values.items()} == PROPERTY_SIGNATURES
    assert values["Interface"].value == ""  # None becomes the empty string
    assert values["AllowLan"].value is True


async def test_properties_are_read_only(service: Service) -> None:
    reply = await service.call(
        "Set",
        "ssv",
        [INTERFACE_NAME, "Lockdown", Variant("b", True)],
        interface="org.freedesktop.DBus.Properties",
    )
    assert reply.message_type is MessageType.ERROR
    assert service.manager.current.lockdown is False


async def test_connect_passes_string_options(service: Service) -> None:
    options = {"country": Variant("s", "Germany"), "group": Variant("s", "P2P")}
    await service.ok("Connect", "a{sv}", [options])
    assert service.manager.calls == [("connect", {"country": "Germany", "group": "P2P"})]


@pytest.mark.parametrize(
    ("signature", "body"),
    [
        ("a{sv}", [{"planet": Variant("s", "Mars")}]),
        ("a{sv}", [{"country": Variant("i", 49)}]),
        ("a{sv}", [{"server": Variant("s", "x" * 257)}]),
        ("a{sv}", [{"city": Variant("as", ["Berlin"])}]),
        ("s", ["Germany"]),
        ("", []),
    ],
    ids=["unknown-key", "int-value", "huge-string", "array-value", "wrong-signature", "no-args"],
)
async def test_connect_refuses_bad_arguments(
    service: Service, signature: str, body: list[Any]
) -> None:
    assert await service.error_of("Connect", signature, body) == PREFIX + "InvalidArgument"
    assert service.manager.calls == []


@pytest.mark.parametrize(
    ("failure", "nick"),
    [
        (errors.UnknownLocation("country 'Atlantis'", ["Austria"]), "UnknownLocation"),
        (errors.NotLoggedIn("no token"), "NotLoggedIn"),
        (errors.NoServer("none"), "NoServer"),
        (errors.AuthFailed("401"), "AuthFailed"),
        (errors.ApiUnavailable("down"), "ApiUnavailable"),
        (errors.TunnelFailed("no handshake"), "TunnelFailed"),
        (errors.FirewallFailed("nft"), "FirewallFailed"),
        (errors.DnsFailed("dns"), "DnsFailed"),
    ],
)
async def test_manager_errors_keep_their_names(
    service: Service, failure: errors.NordwgdError, nick: str
) -> None:
    service.manager.failure = failure
    reply = await service.call("Connect", "a{sv}", [{}])
    assert reply.error_name == PREFIX + nick
    assert reply.body == [failure.message]


async def test_unexpected_failure_is_generic_and_replied(service: Service) -> None:
    service.manager.failure = RuntimeError("/secret/path line 12")
    reply = await service.call("Disconnect")
    assert reply.error_name == PREFIX + "Failed"
    assert "secret" not in reply.body[0]


async def test_every_method_happy_path(service: Service) -> None:
    countries = plain(await service.ok("ListCountries"))
    assert countries == [[["DE", "Germany", "81"], ["SE", "Sweden", "208"]]]
    assert plain(await service.ok("ListCities", "s", ["DE"])) == [[["Frankfurt", "2215"]]]
    assert plain(await service.ok("ListGroups")) == [
        [["legacy_double_vpn", "Double VPN"], ["legacy_p2p", "P2P"]]
    ]
    (servers,) = await service.ok("ListServers", "a{sv}", [{"country": Variant("s", "DE")}])
    assert plain(servers) == [{"hostname": "de1001.nordvpn.com", "load": 7, "groups": ["P2P"]}]
    assert plain(await service.ok("GetStatistics")) == [
        {"rx_bytes": 10, "tx_bytes": 20, "latest_handshake": 0}
    ]
    assert plain(await service.ok("Diagnose", "s", ["full"])) == [
        {"mode": "full", "public_ip": "198.51.100.7"}
    ]
    healthy, details = await service.ok("CheckHealth")
    assert healthy is True and plain(details)["probes"] == {"http://192.0.2.1/": "ok"}
    for member in ("Disconnect", "Reconnect", "Renew", "Logout"):
        assert await service.ok(member) == []
    await service.ok("SetLockdown", "b", [True])
    await service.ok("SetAllowLan", "b", [False])
    await service.ok("SetToken", "s", ["e9f2ab" * 10])
    names = [name for name, _ in service.manager.calls]
    assert names[-7:] == [
        "disconnect",
        "reconnect",
        "renew",
        "logout",
        "set_lockdown",
        "set_allow_lan",
        "set_token",
    ]
    assert service.manager.current.lockdown is True


@pytest.mark.parametrize(
    ("member", "signature", "body", "nick"),
    [
        ("ListCities", "s", ["Atlantis"], "UnknownLocation"),
        ("ListCities", "s", [""], "InvalidArgument"),
        ("ListCities", "s", ["y" * 300], "InvalidArgument"),
        ("ListServers", "a{sv}", [{"load": Variant("s", "5")}], "InvalidArgument"),
        ("Diagnose", "s", ["everything"], "InvalidArgument"),
        ("SetToken", "s", [""], "InvalidArgument"),
        ("SetToken", "s", ["t" * 257], "InvalidArgument"),
        ("SetLockdown", "s", ["on"], "InvalidArgument"),
    ],
)
async def test_method_errors(
    service: Service, member: str, signature: str, body: list[Any], nick: str
) -> None:
    assert await service.error_of(member, signature, body) == PREFIX + nick


async def test_unknown_location_message_has_suggestions(service: Service) -> None:
    reply = await service.call("ListCities", "s", ["Atlantis"])
    assert "Germany" in reply.body[0]


async def test_properties_changed_follow_the_manager(
    service: Service, private_bus: PrivateBus
) -> None:
    watcher = await connect_client(private_bus.address)
    seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_message(msg: Message) -> None:
        if msg.member == "PropertiesChanged" and msg.body[0] == INTERFACE_NAME:
            seen.put_nowait(msg.body[1])

    watcher.add_message_handler(on_message)
    await watcher.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[f"type='signal',sender='{BUS_NAME}',member='PropertiesChanged'"],
        )
    )
    try:
        await service.ok("Connect", "a{sv}", [{}])
        first = await asyncio.wait_for(seen.get(), 10)
        second = await asyncio.wait_for(seen.get(), 10)
        assert first["State"].value == "connecting" and first["Blocking"].value == "blocked"
        assert second["State"].value == "connected"
        assert second["Server"].signature == "a{sv}"
        assert second["ConnectedSince"].signature == "t"
        assert "RxBytes" not in second  # counters never signal
        await service.ok("Disconnect")
        third = await asyncio.wait_for(seen.get(), 10)
        assert third["State"].value == "disconnected"
    finally:
        watcher.disconnect()


# Authorization: clients that are not root, decided by (a stand-in for) polkit ------------


def _nobody_call(
    bus: PrivateBus, member: str, signature: str = "", body: list[Any] | None = None
) -> dict[str, object]:
    return call_as(bus, "nobody", member, signature, body or [])


@pytest.mark.root
async def test_unprivileged_refused_without_polkit(
    service: Service, private_bus: PrivateBus
) -> None:
    for member, signature, body in [
        ("Connect", "a{sv}", [{}]),
        ("SetToken", "s", ["abc"]),
        ("SetLockdown", "b", [True]),
        ("Logout", "", []),
    ]:
        reply = await asyncio.to_thread(_nobody_call, private_bus, member, signature, body)
        assert reply.get("error") == PREFIX + "NotAuthorized", (member, reply)
    assert service.manager.calls == []
    reply = await asyncio.to_thread(_nobody_call, private_bus, "ListCountries")
    assert "body" in reply
    reply = await asyncio.to_thread(
        call_as,
        private_bus,
        "nobody",
        "GetAll",
        "s",
        [INTERFACE_NAME],
        interface="org.freedesktop.DBus.Properties",
    )
    assert set(reply["body"][0]) == set(PROPERTY_SIGNATURES)  # type: ignore[index]


@pytest.mark.root
async def test_diagnose_full_needs_its_polkit_action(
    service: Service, polkit: FakePolkit, private_bus: PrivateBus
) -> None:
    reply = await asyncio.to_thread(_nobody_call, private_bus, "Diagnose", "s", ["basic"])
    assert reply["body"][0]["mode"] == "basic"  # type: ignore[index]
    assert polkit.actions == []  # the basic report is open to everyone
    polkit.answer = False
    reply = await asyncio.to_thread(_nobody_call, private_bus, "Diagnose", "s", ["full"])
    assert reply.get("error") == PREFIX + "NotAuthorized", reply
    assert polkit.actions == ["org.nordwgd.nordwgd1.diagnose"]
    assert ("diagnose", "full") not in service.manager.calls
    polkit.answer = True
    reply = await asyncio.to_thread(_nobody_call, private_bus, "Diagnose", "s", ["full"])
    assert reply["body"][0]["mode"] == "full"  # type: ignore[index]
    assert service.manager.calls[-1] == ("diagnose", "full")


@pytest.mark.root
async def test_polkit_decides_for_unprivileged(
    service: Service, polkit: FakePolkit, private_bus: PrivateBus
) -> None:
    polkit.answer = False
    reply = await asyncio.to_thread(_nobody_call, private_bus, "Connect", "a{sv}", [{}])
    assert reply.get("error") == PREFIX + "NotAuthorized"
    kind, _name, flags = polkit.asked[-1]
    assert kind == "system-bus-name" and flags == 1
    assert service.manager.calls == []
    polkit.answer = True
    reply = await asyncio.to_thread(_nobody_call, private_bus, "SetAllowLan", "b", [False])
    assert reply == {"body": []}
    assert service.manager.calls == [("set_allow_lan", False)]


_FIRE_AND_LEAVE = r"""
import asyncio, sys
from dbus_fast import Message
from dbus_fast.aio import MessageBus
async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    bus.send(Message(destination="org.nordwgd.Nordwgd1", path="/org/nordwgd/Nordwgd1",
        interface="org.nordwgd.Nordwgd1.Manager", member="Connect", signature="a{sv}", body=[{}]))
    await asyncio.sleep(0.5)
    bus.disconnect()
asyncio.run(main())
"""


@pytest.mark.root
async def test_caller_leaving_during_authorization_gets_nothing_done(
    service: Service, polkit: FakePolkit, private_bus: PrivateBus
) -> None:
    polkit.release.clear()
    process = await asyncio.create_subprocess_exec(
        *client_argv("nobody"),
        PYTHON,
        "-c",
        _FIRE_AND_LEAVE,
        private_bus.address,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    await asyncio.wait_for(polkit.asked_event.wait(), 30)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    polkit.release.set()  # polkit now says yes, but the caller is gone
    await asyncio.sleep(0.5)
    await service.ok("ListGroups")  # the service is still answering
    assert [name for name, _ in service.manager.calls] == ["list_groups"]


# The real daemon ---------------------------------------------------------------------------


def test_daemon_config_error_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "nordwgd.toml"
    config.write_text("[network]\nlockdown = true\nkill_switch = 1\n")
    result = subprocess.run(
        [PYTHON, "-m", "nordwgd", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nordwgd: ")
    assert "kill_switch" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.root
def test_daemon_refuses_a_taken_name(private_bus: PrivateBus, tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [PYTHON, "-c", _OWN_NAME, private_bus.address],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
    )
    netns = unique_name("nwgtb")
    create_netns(netns)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "owned"
        result = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                netns,
                PYTHON,
                "-m",
                "nordwgd",
                "--config",
                str(tmp_path / "absent.toml"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO,
            env={
                "PATH": os.environ["PATH"],
                "PYTHONPATH": str(REPO),
                "DBUS_SYSTEM_BUS_ADDRESS": private_bus.address,
            },
        )
        assert result.returncode == 1
        assert "already owned" in result.stderr and "Traceback" not in result.stderr
    finally:
        owner.kill()
        owner.wait()
        delete_netns(netns)


_OWN_NAME = r"""
import asyncio, sys
from dbus_fast.aio import MessageBus
async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    await bus.request_name("org.nordwgd.Nordwgd1")
    print("owned", flush=True)
    await asyncio.sleep(120)
asyncio.run(main())
"""


async def _daemon_call(
    bus: PrivateBus,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    user: str | None = None,
) -> dict[str, object]:
    return await asyncio.to_thread(call_as, bus, user, member, signature, body or [])


@pytest.mark.root
async def test_daemon_properties(world_daemon: DaemonProcess) -> None:
    client = await connect_client(world_daemon.bus.address)
    try:
        reply = await client.call(
            Message(
                destination=BUS_NAME,
                path="/org/nordwgd/Nordwgd1",
                interface="org.freedesktop.DBus.Properties",
                member="GetAll",
                signature="s",
                body=[INTERFACE_NAME],
            )
        )
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
        (values,) = reply.body
        assert {name: v.signature for name, v in values.items()} == PROPERTY_SIGNATURES
        assert values["State"].value == "disconnected"
        assert values["Version"].value
    finally:
        client.disconnect()


async def _log_line(daemon: DaemonProcess, text: str, after: int) -> str:
    """The first line of the daemon's log past byte ``after`` that holds ``text``."""
    for _ in range(200):
        tail = daemon.log.read_bytes()[after:].decode(errors="replace")
        found = [line for line in tail.splitlines() if text in line]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {text!r} in the log:\n{daemon.log_text()}")


@pytest.mark.root
async def test_daemon_sighup_checks_the_config_and_keeps_serving(
    world_daemon: DaemonProcess,
) -> None:
    assert world_daemon.process is not None
    original = world_daemon.config.read_text()

    async def hangup() -> str:
        start = world_daemon.log.stat().st_size
        assert world_daemon.process is not None
        os.kill(world_daemon.process.pid, signal.SIGHUP)
        line = await _log_line(world_daemon, "SIGHUP", start)
        assert world_daemon.process.poll() is None, world_daemon.log_text()
        reply = await _daemon_call(world_daemon.bus, "ListGroups")
        assert "body" in reply, reply
        return line

    try:
        assert "unchanged" in await hangup()
        values = tomllib.loads(original)
        level = "warning" if values.get("log_level") != "warning" else "error"
        world_daemon.config.write_text(to_toml({**values, "log_level": level}))
        assert "restart nordwgd to apply it" in await hangup()
        world_daemon.config.write_text(to_toml({**values, "log_level": "loud"}))
        line = await hangup()
        assert "the config file has an error" in line and "log_level" in line
    finally:
        world_daemon.config.write_text(original)


@pytest.mark.root
async def test_daemon_introspection_matches_xml(world_daemon: DaemonProcess) -> None:
    from tests.test_introspection import _canonical, _shape, live_interface

    client = await connect_client(world_daemon.bus.address)
    try:
        live = await live_interface(Service(client, client, RecordingManager()))
        assert _shape(live) == _shape(_canonical())
    finally:
        client.disconnect()


@pytest.mark.root
@pytest.mark.parametrize(
    ("member", "signature", "body", "nick"),
    [
        ("Connect", "a{sv}", [{"planet": "Mars"}], "InvalidArgument"),
        ("Connect", "a{sv}", [{"server": "x" * 300}], "InvalidArgument"),
        ("Connect", "s", ["Germany"], "InvalidArgument"),
        ("Connect", "a{sv}", [{"country": "Atlantis"}], "UnknownLocation"),
        ("ListCities", "s", ["Atlantis"], "UnknownLocation"),
        ("Diagnose", "s", ["everything"], "InvalidArgument"),
    ],
)
async def test_daemon_errors(
    world_daemon: DaemonProcess, member: str, signature: str, body: list[Any], nick: str
) -> None:
    reply = await _daemon_call(world_daemon.bus, member, signature, body)
    assert reply.get("error") == PREFIX + nick, reply


@pytest.mark.root
async def test_daemon_unprivileged_caller(world_daemon: DaemonProcess) -> None:
    bus = world_daemon.bus
    for member, signature, body in [
        ("Connect", "a{sv}", [{}]),
        ("SetToken", "s", ["abc" * 8]),
        ("SetLockdown", "b", [True]),
        ("Disconnect", "", []),
    ]:
        reply = await _daemon_call(bus, member, signature, body, user="nobody")
        assert reply.get("error") == PREFIX + "NotAuthorized", (member, reply)
    countries = await _daemon_call(bus, "ListCountries", user="nobody")
    assert countries.get("body"), countries
    props = await asyncio.to_thread(
        call_as,
        bus,
        "nobody",
        "GetAll",
        "s",
        [INTERFACE_NAME],
        interface="org.freedesktop.DBus.Properties",
    )
    assert props["body"][0]["State"] == "disconnected"  # type: ignore[index]
    assert props["body"][0]["Lockdown"] is False  # type: ignore[index]


async def _state_watcher(address: str) -> tuple[MessageBus, asyncio.Queue[str]]:
    watcher = await connect_client(address)
    states: asyncio.Queue[str] = asyncio.Queue()

    def on_message(msg: Message) -> None:
        if (
            msg.member == "PropertiesChanged"
            and msg.body[0] == INTERFACE_NAME
            and "State" in msg.body[1]
        ):
            states.put_nowait(msg.body[1]["State"].value)

    watcher.add_message_handler(on_message)
    await watcher.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[f"type='signal',sender='{BUS_NAME}',member='PropertiesChanged'"],
        )
    )
    return watcher, states


async def _until(states: asyncio.Queue[str], wanted: str, log: Callable[[], str]) -> list[str]:
    seen: list[str] = []
    try:
        while wanted not in seen:
            seen.append(await asyncio.wait_for(states.get(), 60))
    except TimeoutError:
        raise AssertionError(f"never saw {wanted}; saw {seen}\n{log()}") from None
    return seen


@pytest.mark.root
async def test_daemon_connect_disconnect_signals(world_daemon: DaemonProcess) -> None:
    watcher, states = await _state_watcher(world_daemon.bus.address)
    try:
        reply = await _daemon_call(world_daemon.bus, "Connect", "a{sv}", [{}])
        assert reply == {"body": []}, reply
        seen = await _until(states, "connected", world_daemon.log_text)
        assert "connecting" in seen and "error" not in seen
        props = await asyncio.to_thread(
            call_as,
            world_daemon.bus,
            None,
            "GetAll",
            "s",
            [INTERFACE_NAME],
            interface="org.freedesktop.DBus.Properties",
        )
        values = props["body"][0]  # type: ignore[index]
        assert values["Server"]["hostname"] and values["Blocking"] == "blocked"
        reply = await _daemon_call(world_daemon.bus, "Disconnect")
        assert reply == {"body": []}, reply
        await _until(states, "disconnected", world_daemon.log_text)
    finally:
        watcher.disconnect()


@pytest.mark.root
async def test_daemon_logout_then_not_logged_in(
    world_daemon: DaemonProcess, shared_world: Any
) -> None:
    assert await _daemon_call(world_daemon.bus, "Logout") == {"body": []}
    try:
        reply = await _daemon_call(world_daemon.bus, "Connect", "a{sv}", [{}])
        # The configured token_file still holds a token; only a stored login was forgotten.
        if "error" in reply:
            assert reply["error"] == PREFIX + "NotLoggedIn", reply
    finally:
        reply = await _daemon_call(world_daemon.bus, "SetToken", "s", [shared_world.token.reveal()])
        assert reply == {"body": []}, reply
        await _daemon_call(world_daemon.bus, "Disconnect")
