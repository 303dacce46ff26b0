"""The SplitTunnel D-Bus interface: its XML, authorization (configure), the caller's own PID."""

from __future__ import annotations

import asyncio
import os
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from dbus_fast import Message, MessageType, NameFlag, RequestNameReply
from dbus_fast import introspection as intr
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

from nordwgd import errors
from nordwgd.bus import BUS_NAME, OBJECT_PATH
from nordwgd.bus.polkit import ACTION_CONFIGURE, Authorizer
from nordwgd.bus.service import ServiceBus
from nordwgd.bus.split import SPLIT_INTERFACE, export_split
from tests.fixtures_dbus import REPO, PrivateBus, call_as, connect_client
from tests.test_introspection import _shape

XML_PATH = REPO / "dbus" / "org.nordwgd.Nordwgd1.SplitTunnel.xml"
PREFIX = "org.nordwgd.Nordwgd1.Error."


class RecordingSplit:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.excluded = ["nordwgd-excluded-7-abc.scope"]

    @property
    def slice_name(self) -> str:
        return "nordwgd-excluded.slice"

    def units(self) -> list[str]:
        return list(self.excluded)

    async def exclude_process(self, pid: int, what: str) -> str:
        self.calls.append(("exclude_process", (pid, what)))
        return f"nordwgd-excluded-{pid}-x.scope"

    async def exclude_unit(self, unit: str) -> str:
        self.calls.append(("exclude_unit", unit))
        if unit == "missing.service":
            raise errors.InvalidArgument("missing.service: no such unit is running")
        return "nordwgd-excluded-a-x.scope"

    async def remove(self, unit: str) -> None:
        self.calls.append(("remove", unit))


class SplitService:
    def __init__(self, client: Any, split: RecordingSplit) -> None:
        self.client = client
        self.split = split

    async def call(
        self, member: str, signature: str = "", body: list[Any] | None = None
    ) -> Message:
        reply = await self.client.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=SPLIT_INTERFACE,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        assert reply is not None
        return reply


@pytest.fixture
async def split_service(private_bus: PrivateBus) -> AsyncIterator[SplitService]:
    bus = await ServiceBus(bus_address=private_bus.address).connect()
    split = RecordingSplit()
    export_split(bus, split, Authorizer(bus, timeout=30), lambda: ["docker0"], "")
    assert await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE) is RequestNameReply.PRIMARY_OWNER
    client = await connect_client(private_bus.address)
    try:
        yield SplitService(client, split)
    finally:
        client.disconnect()
        bus.disconnect()


async def test_live_interface_matches_the_xml(split_service: SplitService) -> None:
    reply = await split_service.client.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface="org.freedesktop.DBus.Introspectable",
            member="Introspect",
        )
    )
    live = [i for i in intr.Node.parse(reply.body[0]).interfaces if i.name == SPLIT_INTERFACE]
    canonical = [
        i for i in intr.Node.parse(XML_PATH.read_text()).interfaces if i.name == SPLIT_INTERFACE
    ]
    assert len(live) == 1 and len(canonical) == 1
    assert _shape(live[0]) == _shape(canonical[0])


def test_xml_documents_every_member() -> None:
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    interface = ET.fromstring(XML_PATH.read_text(), parser=parser).find("interface")
    assert interface is not None
    previous: ET.Element | None = None
    undocumented = []
    for element in interface:
        if element.tag in ("method", "property"):
            text = previous.text or "" if previous is not None else ""
            if (
                previous is None
                or previous.tag is not ET.Comment
                or element.get("name", "") not in text
            ):
                undocumented.append(element.get("name"))
        previous = element
    assert undocumented == []


async def test_properties(split_service: SplitService) -> None:
    reply = await split_service.client.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface="org.freedesktop.DBus.Properties",
            member="GetAll",
            signature="s",
            body=[SPLIT_INTERFACE],
        )
    )
    values = {name: variant.value for name, variant in reply.body[0].items()}
    assert values == {
        "ExcludedSlice": "nordwgd-excluded.slice",
        "ExcludedUnits": ["nordwgd-excluded-7-abc.scope"],
        "LocalBridges": ["docker0"],
        "TunnelNamespace": "",
    }


@pytest.mark.root
async def test_root_excludes_its_own_process(split_service: SplitService) -> None:
    reply = await split_service.call("ExcludeCaller", "s", ["curl example"])
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    # The PID comes from the bus (this process owns the client connection), not an argument.
    assert split_service.split.calls == [("exclude_process", (os.getpid(), "curl example"))]
    reply = await split_service.call("ExcludeUnit", "s", ["missing.service"])
    assert reply.error_name == PREFIX + "InvalidArgument"


class ActionPolkit(ServiceInterface):
    """A polkit authority that records the action asked for and answers ``answer``."""

    def __init__(self) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self.answer = False
        self.actions: list[str] = []

    @dbus_method()
    async def CheckAuthorization(
        self,
        subject: Annotated[list[Any], DBusSignature("(sa{sv})")],
        action_id: DBusStr,
        details: Annotated[dict[str, str], DBusSignature("a{ss}")],
        flags: DBusUInt32,
        cancel: DBusStr,
    ) -> Annotated[list[Any], DBusSignature("(bba{ss})")]:
        self.actions.append(action_id)
        return [self.answer, False, {}]


@pytest.fixture
async def action_polkit(private_bus: PrivateBus) -> AsyncIterator[ActionPolkit]:
    bus = await connect_client(private_bus.address)
    authority = ActionPolkit()
    bus.export("/org/freedesktop/PolicyKit1/Authority", authority)
    await bus.request_name("org.freedesktop.PolicyKit1")
    try:
        yield authority
    finally:
        bus.disconnect()


@pytest.mark.root
async def test_excluding_needs_configure(
    split_service: SplitService, action_polkit: ActionPolkit, private_bus: PrivateBus
) -> None:
    calls = (
        ("ExcludeCaller", ["sh"]),
        ("ExcludeUnit", ["a.service"]),
        ("RemoveExcluded", ["nordwgd-excluded-7-abc.scope"]),
    )
    for member, body in calls:
        reply = await asyncio.to_thread(
            call_as, private_bus, "nobody", member, "s", body, interface=SPLIT_INTERFACE
        )
        assert reply.get("error") == PREFIX + "NotAuthorized", (member, reply)
    assert split_service.split.calls == []
    assert action_polkit.actions == [ACTION_CONFIGURE] * len(calls)
    action_polkit.answer = True
    reply = await asyncio.to_thread(
        call_as,
        private_bus,
        "nobody",
        "ExcludeUnit",
        "s",
        ["a.service"],
        interface=SPLIT_INTERFACE,
    )
    assert reply == {"body": ["nordwgd-excluded-a-x.scope"]}
    assert split_service.split.calls == [("exclude_unit", "a.service")]
    # Reading needs nothing.
    reply = await asyncio.to_thread(
        call_as,
        private_bus,
        "nobody",
        "Get",
        "ss",
        [SPLIT_INTERFACE, "ExcludedUnits"],
        interface="org.freedesktop.DBus.Properties",
    )
    assert reply == {"body": [["nordwgd-excluded-7-abc.scope"]]}
