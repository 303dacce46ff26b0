"""dbus/org.nordwgd.Nordwgd1.Manager.xml is the canonical API: the live object must match it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from dbus_fast import Message, MessageType
from dbus_fast import introspection as intr

from nordwgd.bus import BUS_NAME, INTERFACE_NAME, OBJECT_PATH
from nordwgd.bus.convert import PROPERTY_SIGNATURES, QUIET_PROPERTIES
from tests.fixtures_dbus import REPO, Service

XML_PATH = REPO / "dbus" / "org.nordwgd.Nordwgd1.Manager.xml"
EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"


def _shape(interface: intr.Interface) -> dict[str, object]:
    """Everything clients depend on: names, argument types, directions, names of inputs."""
    return {
        "methods": {
            method.name: (
                [(arg.name, arg.signature) for arg in method.in_args],
                [arg.signature for arg in method.out_args],
            )
            for method in interface.methods
        },
        "properties": {
            prop.name: (prop.signature, prop.access.value, prop.annotations.get(EMITS, "true"))
            for prop in interface.properties
        },
        "signals": {s.name: [a.signature for a in s.args] for s in interface.signals},
    }


def _canonical() -> intr.Interface:
    node = intr.Node.parse(XML_PATH.read_text())
    (interface,) = [i for i in node.interfaces if i.name == INTERFACE_NAME]
    return interface


async def live_interface(service: Service) -> intr.Interface:
    reply = await service.client.call(
        Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface="org.freedesktop.DBus.Introspectable",
            member="Introspect",
        )
    )
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
    node = intr.Node.parse(reply.body[0])
    (interface,) = [i for i in node.interfaces if i.name == INTERFACE_NAME]
    return interface


async def test_live_object_matches_the_xml(service: Service) -> None:
    assert _shape(await live_interface(service)) == _shape(_canonical())


def test_xml_documents_every_member() -> None:
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    root = ET.fromstring(Path(XML_PATH).read_text(), parser=parser)
    interface = root.find("interface")
    assert interface is not None
    previous: ET.Element | None = None
    undocumented = []
    for element in interface:
        if element.tag in ("method", "property", "signal"):
            documented = (
                previous is not None
                and previous.tag is ET.Comment
                and element.get("name", "") in (previous.text or "")
            )
            if not documented:
                undocumented.append(element.get("name"))
        previous = element
    assert undocumented == []


def test_xml_covers_the_design() -> None:
    canonical = _shape(_canonical())
    properties = canonical["properties"]
    assert isinstance(properties, dict)
    assert {name: value[0] for name, value in properties.items()} == PROPERTY_SIGNATURES
    quiet = {name for name, value in properties.items() if value[2] == "false"}
    assert quiet == QUIET_PROPERTIES
    assert all(value[1] == "read" for value in properties.values())
    # What clients do with states they do not know is part of the contract.
    assert 'treat a value they do not know as\n      "unknown"' in XML_PATH.read_text()
