"""The D-Bus adapter: argument checks, error names, authorization, property signals.

The first part exports the real ``ManagerInterface`` on a private dbus-daemon around a
recording Manager double, to pin down the adapter's own behaviour (every error path, polkit
answers, a caller leaving mid-authorization). The second part runs the real daemon process
inside a network namespace and talks to it as root and as ``nobody``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, dbus_method

from nordwgd import errors
from nordwgd.bus import BUS_NAME, INTERFACE_NAME, OBJECT_PATH
from nordwgd.bus.convert import PROPERTY_SIGNATURES, plain
from nordwgd.bus.polkit import Authorizer
from nordwgd.bus.service import ServiceBus, export_manager
from tests.fixtures_dbus import PYTHON, REPO, PrivateBus, call_as, client_argv

PREFIX = "org.nordwgd.Nordwgd1.Error."


class RecordingManager:
    """Implements the Manager facade in memory and records every call it gets."""

    def __init__(self) -> None:
        self.props: dict[str, object] = {
            "State": "disconnected",
            "ErrorCause": "",
            "Blocking": "open",
            "Lockdown": False,
            "AllowLan": True,
            "Mode": "host",
            "Server": {},
            "Interface": None,
            "TunnelAddress": "",
            "ConnectedSince": 0,
            "Version": "0.1.0",
            "LatestHandshake": 0,
            "RxBytes": 0,
            "TxBytes": 0,
            "ForwardedPort": 0,
        }
        self.calls: list[tuple[str, object]] = []
        self.failure: BaseException | None = None
        self._subscribers: list[Callable[[dict[str, object]], None]] = []

    def properties(self) -> dict[str, object]:
        return dict(self.props)

    def subscribe(self, callback: Callable[[dict[str, object]], None]) -> None:
        self._subscribers.append(callback)

    def change(self, **changed: object) -> None:
        self.props.update(changed)
        for callback in self._subscribers:
            callback(dict(changed))

    def _record(self, name: str, argument: object = None) -> None:
        self.calls.append((name, argument))
        if self.failure is not None:
            raise self.failure

    async def connect(self, options: Mapping[str, str]) -> None:
        self._record("connect", dict(options))
        self.change(State="connecting", Blocking="blocked")
        self.change(
            State="connected",
            Interface="nwg0",
            Server={"hostname": "de1001.nordvpn.com", "load": 7, "groups": ["P2P"]},
            ConnectedSince=1_700_000_000_000_000,
            RxBytes=10,
        )

    async def disconnect(self) -> None:
        self._record("disconnect")
        self.change(State="disconnected", Blocking="open", Server={}, Interface="")

    async def reconnect(self) -> None:
        self._record("reconnect")

    async def renew(self) -> None:
        self._record("renew")

    async def check_health(self) -> tuple[bool, dict[str, object]]:
        self._record("check_health")
        return True, {"handshake_age": 1.5, "probes": {"http://192.0.2.1/": "ok"}}

    async def set_lockdown(self, enabled: bool, /) -> None:
        self._record("set_lockdown", enabled)
        self.change(Lockdown=enabled)

    async def set_allow_lan(self, enabled: bool, /) -> None:
        self._record("set_allow_lan", enabled)
        self.change(AllowLan=enabled)

    async def set_token(self, token: str, /) -> None:
        self._record("set_token", len(token))

    async def logout(self) -> None:
        self._record("logout")

    async def list_countries(self) -> list[tuple[str, str, str]]:
        self._record("list_countries")
        return [("DE", "Germany", "81"), ("SE", "Sweden", "208")]

    async def list_cities(self, country: str, /) -> list[tuple[str, str]]:
        self._record("list_cities", country)
        if country != "DE":
            raise errors.UnknownLocation(f"country {country!r}", ["Germany"])
        return [("Frankfurt", "2215")]

    async def list_groups(self) -> list[tuple[str, str]]:
        self._record("list_groups")
        return [("legacy_p2p", "P2P")]

    async def list_servers(self, filter: Mapping[str, str], /) -> list[dict[str, object]]:
        self._record("list_servers", dict(filter))
        return [{"hostname": "de1001.nordvpn.com", "load": 7, "groups": ["P2P"], "x": None}]

    async def get_statistics(self) -> dict[str, object]:
        self._record("get_statistics")
        return {"rx_bytes": 10, "tx_bytes": 20, "latest_handshake": 0}

    async def diagnose(self, mode: str, /) -> dict[str, object]:
        self._record("diagnose", mode)
        return {"mode": mode, "public_ip": "198.51.100.7"}


class FakePolkit(ServiceInterface):
    """org.freedesktop.PolicyKit1.Authority answering what the test says, when it says."""

    def __init__(self) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self.answer = True
        self.release = asyncio.Event()
        self.release.set()
        self.asked: list[tuple[str, str, int]] = []
        self.asked_event = asyncio.Event()

    @dbus_method()
    async def CheckAuthorization(
        self, subject: "(sa{sv})", action_id: "s", details: "a{ss}", flags: "u", cancel: "s"
    ) -> "(bba{ss})":
        kind, fields = subject
        self.asked.append((kind, fields["name"].value, flags))
        self.asked_event.set()
        await self.release.wait()
        return [self.answer, False, {}]


async def _connect(address: str) -> MessageBus:
    return await MessageBus(bus_address=address).connect()


class Service:
    def __init__(self, bus: MessageBus, client: MessageBus, manager: RecordingManager) -> None:
        self.bus = bus
        self.client = client
        self.manager = manager

    async def call(
        self,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        interface: str = INTERFACE_NAME,
    ) -> Message:
        reply = await self.client.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        assert reply is not None
        return reply

    async def error_of(
        self, member: str, signature: str = "", body: list[Any] | None = None
    ) -> str:
        reply = await self.call(member, signature, body)
        assert reply.message_type is MessageType.ERROR, f"{member} unexpectedly succeeded"
        assert reply.error_name is not None
        return reply.error_name

    async def ok(
        self, member: str, signature: str = "", body: list[Any] | None = None
    ) -> list[Any]:
        reply = await self.call(member, signature, body)
        assert reply.message_type is MessageType.METHOD_RETURN, (reply.error_name, reply.body)
        return list(reply.body)


@pytest.fixture
async def service(private_bus: PrivateBus) -> AsyncIterator[Service]:
    bus = await ServiceBus(bus_address=private_bus.address).connect()
    manager = RecordingManager()
    export_manager(bus, manager, Authorizer(bus, timeout=30))
    assert await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE) is RequestNameReply.PRIMARY_OWNER
    client = await _connect(private_bus.address)
    try:
        yield Service(bus, client, manager)
    finally:
        client.disconnect()
        bus.disconnect()


@pytest.fixture
async def polkit(private_bus: PrivateBus) -> AsyncIterator[FakePolkit]:
    bus = await _connect(private_bus.address)
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
    assert service.manager.props["Lockdown"] is False


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
        (errors.Busy("busy"), "Busy"),
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
    assert plain(await service.ok("ListGroups")) == [[["legacy_p2p", "P2P"]]]
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
    assert service.manager.props["Lockdown"] is True


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
    watcher = await _connect(private_bus.address)
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
