"""Property reads over the bus: ``GetAll`` answers from converted values kept between calls,
so it must still show every change, including the counters that change without a signal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType

from nordwgd.bus import BUS_NAME, INTERFACE_NAME, OBJECT_PATH
from nordwgd.bus.convert import PROPERTY_SIGNATURES
from nordwgd.bus.polkit import Authorizer
from nordwgd.bus.service import ManagerInterface, install_get_all
from tests.fixtures_dbus import RecordingManager, Service

PROPERTIES = "org.freedesktop.DBus.Properties"


async def _get_all(service: Service) -> dict[str, Any]:
    reply = await service.call("GetAll", "s", [INTERFACE_NAME], interface=PROPERTIES)
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    (values,) = reply.body
    return {name: (variant.signature, variant.value) for name, variant in values.items()}


async def _get(service: Service, name: str) -> tuple[str, Any]:
    reply = await service.call("Get", "ss", [INTERFACE_NAME, name], interface=PROPERTIES)
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    (variant,) = reply.body
    return variant.signature, variant.value


async def test_getall_equals_every_single_get(service: Service) -> None:
    service.manager.props["Server"] = {"Hostname": "de1001.nordvpn.com", "Load": 12}
    every = await _get_all(service)
    assert set(every) == set(PROPERTY_SIGNATURES)
    for name in PROPERTY_SIGNATURES:
        assert await _get(service, name) == every[name], name


async def test_getall_shows_signalled_changes(service: Service) -> None:
    assert (await _get_all(service))["State"] == ("s", "disconnected")
    service.manager.change(State="connecting", Blocking="blocked")
    after = await _get_all(service)
    assert after["State"] == ("s", "connecting")
    assert after["Blocking"] == ("s", "blocked")


async def test_getall_shows_counters_that_change_without_a_signal(service: Service) -> None:
    assert (await _get_all(service))["RxBytes"] == ("t", 0)
    service.manager.props.update(RxBytes=4096, TxBytes=512, LatestHandshake=1_700_000_000)
    after = await _get_all(service)
    assert after["RxBytes"] == ("t", 4096)
    assert after["TxBytes"] == ("t", 512)
    assert await _get(service, "LatestHandshake") == ("t", 1_700_000_000)


async def test_getall_sees_a_nested_value_changed_in_place(service: Service) -> None:
    server: dict[str, object] = {"Hostname": "de1001.nordvpn.com"}
    service.manager.props["Server"] = server
    first = await _get_all(service)
    assert first["Server"][1]["Hostname"].value == "de1001.nordvpn.com"
    server["Hostname"] = "nl2002.nordvpn.com"
    second = await _get_all(service)
    assert second["Server"][1]["Hostname"].value == "nl2002.nordvpn.com"


async def test_getall_of_another_interface_is_left_to_dbus_fast(service: Service) -> None:
    reply = await service.call("GetAll", "s", [PROPERTIES], interface=PROPERTIES)
    assert reply.message_type is MessageType.METHOD_RETURN
    assert reply.body == [{}]
    reply = await service.call("GetAll", "s", ["org.example.Nothing"], interface=PROPERTIES)
    assert reply.message_type is MessageType.ERROR


class _HandlerBus:
    """Collects the message handlers installed on it."""

    def __init__(self) -> None:
        self.handlers: list[Callable[[Message], Message | None]] = []

    def add_message_handler(self, handler: Callable[[Message], Message | None]) -> None:
        self.handlers.append(handler)


def test_getall_without_reply_expected_is_not_answered() -> None:
    bus = _HandlerBus()
    interface = ManagerInterface(RecordingManager(), Authorizer(None))  # type: ignore[arg-type]
    install_get_all(bus, interface)  # type: ignore[arg-type]
    (handler,) = bus.handlers

    def call(flags: MessageFlag) -> Message | None:
        message = Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface=PROPERTIES,
            member="GetAll",
            signature="s",
            body=[INTERFACE_NAME],
            flags=flags,
            serial=7,
        )
        return handler(message)

    answer = call(MessageFlag.NONE)
    assert answer is not None and answer.reply_serial == 7
    assert set(answer.body[0]) == set(PROPERTY_SIGNATURES)
    assert call(MessageFlag.NO_REPLY_EXPECTED) is None
