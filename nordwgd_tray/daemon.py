"""The tray's view of nordwgd on the system bus: properties followed by signals, and calls.

``DaemonClient`` watches the bus name (NameOwnerChanged) and the object's PropertiesChanged;
when the daemon appears it reads all properties once (GetAll). Nothing is polled. Calls that
fail raise ``CallFailed`` with the D-Bus error name and the daemon's message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

logger = logging.getLogger(__name__)

BUS_NAME = "org.nordwgd.Nordwgd1"
OBJECT_PATH = "/org/nordwgd/Nordwgd1"
INTERFACE = "org.nordwgd.Nordwgd1.Manager"
ERROR_PREFIX = "org.nordwgd.Nordwgd1.Error."
NOT_AUTHORIZED = ERROR_PREFIX + "NotAuthorized"
_DBUS = "org.freedesktop.DBus"
_PROPERTIES = "org.freedesktop.DBus.Properties"


class CallFailed(Exception):
    """A method call was answered with an error (or not at all)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message

    @property
    def not_authorized(self) -> bool:
        return self.name in (NOT_AUTHORIZED, "org.freedesktop.DBus.Error.AccessDenied")


def plain(value: Any) -> Any:
    """Variants unwrapped, recursively."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


Listener = Callable[[dict[str, Any] | None], None]


class DaemonClient:
    """Calls ``listener`` with all properties when nordwgd appears, with the changed ones on
    every PropertiesChanged, and with None when it leaves the bus."""

    def __init__(self, bus: MessageBus, listener: Listener) -> None:
        self._bus = bus
        self._listener = listener
        self._owner = ""
        self._generation = 0

    @property
    def present(self) -> bool:
        return bool(self._owner)

    async def start(self) -> None:
        for rule in (
            f"type='signal',sender='{_DBUS}',interface='{_DBUS}',member='NameOwnerChanged',"
            f"arg0='{BUS_NAME}'",
            f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}',interface='{_PROPERTIES}',"
            f"member='PropertiesChanged',arg0='{INTERFACE}'",
        ):
            await self._call(_DBUS, "/org/freedesktop/DBus", _DBUS, "AddMatch", "s", [rule])
        self._bus.add_message_handler(self._on_message)
        try:
            (owner,) = await self._call(
                _DBUS, "/org/freedesktop/DBus", _DBUS, "GetNameOwner", "s", [BUS_NAME]
            )
        except CallFailed:
            owner = ""
        if owner:
            await self._appeared(owner)

    def _on_message(self, message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL:
            return
        if message.member == "NameOwnerChanged" and message.interface == _DBUS:
            name, _old, new = message.body
            if name != BUS_NAME:
                return
            if new:
                asyncio.get_running_loop().create_task(self._appeared(new))
            elif self._owner:
                self._owner = ""
                self._generation += 1
                logger.info("nordwgd left the bus")
                self._listener(None)
        elif (
            message.member == "PropertiesChanged"
            and message.interface == _PROPERTIES
            and message.path == OBJECT_PATH
            and message.sender == self._owner
            and message.body[0] == INTERFACE
        ):
            changed = plain(message.body[1])
            if changed:
                self._listener(changed)

    async def _appeared(self, owner: str) -> None:
        self._owner = owner
        self._generation += 1
        generation = self._generation
        try:
            (values,) = await self._call(
                BUS_NAME, OBJECT_PATH, _PROPERTIES, "GetAll", "s", [INTERFACE]
            )
        except CallFailed as error:
            logger.warning("cannot read nordwgd's properties: %s", error)
            return
        if generation == self._generation:
            logger.info("nordwgd is on the bus (%s)", owner)
            self._listener(plain(values))

    async def _call(
        self, destination: str, path: str, interface: str, member: str, sig: str, body: list[Any]
    ) -> list[Any]:
        reply = await self._bus.call(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=sig,
                body=body,
            )
        )
        if reply is None:
            raise CallFailed("org.freedesktop.DBus.Error.NoReply", "no reply")
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise CallFailed(reply.error_name or "", text)
        return list(reply.body)

    async def call(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        """Call a Manager method; its plain reply (None when it has none)."""
        values = await self._call(BUS_NAME, OBJECT_PATH, INTERFACE, member, signature, body or [])
        return plain(values[0]) if len(values) == 1 else plain(values) or None

    async def connect(self, options: Mapping[str, str]) -> None:
        await self.call("Connect", "a{sv}", [{k: Variant("s", v) for k, v in options.items()}])

    async def statistics(self) -> dict[str, Any]:
        result = await self.call("GetStatistics")
        return dict(result) if isinstance(result, dict) else {}

    async def countries(self) -> list[tuple[str, str, str]]:
        result = await self.call("ListCountries")
        return [(str(c), str(n), str(i)) for c, n, i in result or []]

    def close(self) -> None:
        self._bus.remove_message_handler(self._on_message)
