"""Property reads over the bus: ``GetAll`` answers from converted values kept between calls,
so it must still show every change, including the counters that change without a signal."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageFlag, MessageType

from nordwgd.bus import BUS_NAME, INTERFACE_NAME, OBJECT_PATH
from nordwgd.bus.convert import PROPERTY_SIGNATURES, STATUS_PROPERTIES, status_values
from nordwgd.bus.polkit import Authorizer
from nordwgd.bus.service import ManagerInterface, install_get_all
from nordwgd.states import Blocking, ErrorCause, State
from nordwgd.status import Location, Status
from tests.fixtures_dbus import RecordingManager, Service, sample_server

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
    service.manager.set(server=sample_server(load=12))
    every = await _get_all(service)
    assert set(every) == set(PROPERTY_SIGNATURES)
    for name in PROPERTY_SIGNATURES:
        assert await _get(service, name) == every[name], name


async def test_getall_shows_signalled_changes(service: Service) -> None:
    assert (await _get_all(service))["State"] == ("s", "disconnected")
    service.manager.change(state=State.CONNECTING, blocking=Blocking.BLOCKED)
    after = await _get_all(service)
    assert after["State"] == ("s", "connecting")
    assert after["Blocking"] == ("s", "blocked")


async def test_getall_shows_counters_that_change_without_a_signal(service: Service) -> None:
    assert (await _get_all(service))["RxBytes"] == ("t", 0)
    service.manager.set(rx_bytes=4096, tx_bytes=512, latest_handshake=1_700_000_000)
    after = await _get_all(service)
    assert after["RxBytes"] == ("t", 4096)
    assert after["TxBytes"] == ("t", 512)
    assert await _get(service, "LatestHandshake") == ("t", 1_700_000_000)


async def test_getall_sees_a_new_server(service: Service) -> None:
    service.manager.set(server=sample_server())
    first = await _get_all(service)
    assert first["Server"][1]["hostname"].value == "de1001.nordvpn.com"
    service.manager.set(server=sample_server("nl2002.nordvpn.com"))
    second = await _get_all(service)
    assert second["Server"][1]["hostname"].value == "nl2002.nordvpn.com"


# The core publishes one frozen, typed value; the adapter alone names the properties ----------


def test_status_is_frozen() -> None:
    status = Status()
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.state = State.CONNECTED  # type: ignore[misc]


def test_every_status_field_is_a_property_and_every_property_a_field() -> None:
    """A field added to Status without its mapping (or the reverse) is caught here."""
    status = Status(
        state=State.ERROR,
        error_cause=ErrorCause.AUTH_FAILED,
        blocking=Blocking.BLOCKED,
        lockdown=True,
        allow_lan=True,
        mode="namespace",
        server=sample_server(),
        interface="nordlynx",
        tunnel_address="10.5.0.2/32",
        connected_since=1,
        version="9",
        latest_handshake=2,
        rx_bytes=3,
        tx_bytes=4,
        forwarded_port=5,
        recent_locations=(Location("Germany", "DE", "Berlin"),),
        provider="pia",
    )
    values = status_values(status)
    mapped: dict[str, str] = {}
    for field in dataclasses.fields(Status):
        assert getattr(status, field.name) != field.default, f"give {field.name} a value above"
        default = dataclasses.replace(status, **{field.name: field.default})
        changed = [name for name, value in status_values(default).items() if values[name] != value]
        assert len(changed) == 1, (field.name, changed)
        mapped[field.name] = changed[0]
    assert sorted(mapped.values()) == sorted(STATUS_PROPERTIES)


def test_the_core_never_names_properties() -> None:
    """Property names live in the adapter only; the adapter needs no type escapes for them."""
    root = Path(__file__).resolve().parent.parent / "nordwgd"
    for module in ("machine.py", "manager.py", "status.py"):
        text = (root / module).read_text()
        for name in ('"State"', '"Blocking"', '"Server"', '"RxBytes"'):
            assert name not in text, (module, name)
    assert "type: ignore" not in (root / "bus" / "service.py").read_text()


async def test_one_signal_per_published_status(service: Service) -> None:
    """A transition publishes one status; the adapter names only the properties it changed."""
    signals: list[dict[str, Any]] = []
    assert service.interface is not None
    service.interface.emit_properties_changed = signals.append  # type: ignore[method-assign]
    service.manager.set(rx_bytes=999)  # a counter: never signalled
    service.manager.change(state=State.CONNECTING, blocking=Blocking.BLOCKED)
    assert signals == [{"State": "connecting", "Blocking": "blocked"}]


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
