"""A small desktop for tray tests: a StatusNotifierWatcher that reads items like a tray host,
and a notification server that records what it is asked to show.

They are real D-Bus services on a real (session-type) bus, written from the freedesktop
StatusNotifierItem and Desktop Notifications specifications; they stand in for Plasma or GNOME,
never for nordwgd.
"""

# No ``from __future__ import annotations``: dbus-fast reads signatures from the annotations.
import asyncio
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from dbus_fast import Message, MessageType, PropertyAccess, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusInt32, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

WATCHER = "org.kde.StatusNotifierWatcher"
NOTIFICATIONS = "org.freedesktop.Notifications"
StringList = Annotated[list[str], DBusSignature("as")]


def unwrap(value: Any) -> Any:
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(v) for v in value]
    return value


class Watcher(ServiceInterface):
    """org.kde.StatusNotifierWatcher; ``items`` are (bus name of the item, its sender)."""

    def __init__(self) -> None:
        super().__init__(WATCHER)
        self.items: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def register(self, service: str, sender: str) -> None:
        """RegisterStatusNotifierItem from ``sender`` (dbus-fast methods do not see it)."""
        name = service if not service.startswith("/") else sender
        self.items = [item for item in self.items if item[1] != sender]
        self.items.append((name, sender))
        self.changed.set()
        self.StatusNotifierItemRegistered(name)

    @dbus_method()
    def RegisterStatusNotifierItem(self, service: DBusStr) -> None:
        raise AssertionError("handled by Desktop._on_message, which knows the sender")

    @dbus_method()
    def RegisterStatusNotifierHost(self, service: DBusStr) -> None:
        return None

    def drop(self, name: str) -> None:
        """Forget an item, as the AppIndicator extension sometimes does."""
        self.items = [item for item in self.items if item[0] != name]

    @dbus_property(access=PropertyAccess.READ)
    def RegisteredStatusNotifierItems(self) -> StringList:
        return [name for name, _sender in self.items]

    @dbus_property(access=PropertyAccess.READ)
    def IsStatusNotifierHostRegistered(self) -> DBusBool:
        return True

    @dbus_property(access=PropertyAccess.READ)
    def ProtocolVersion(self) -> DBusInt32:
        return 0

    @dbus_signal()
    def StatusNotifierItemRegistered(self, name: str) -> DBusStr:
        return name


@dataclass
class Notification:
    summary: str
    body: str
    icon: str
    hints: dict[str, Any]
    replaces: int
    at: float = field(default_factory=time.monotonic)


class NotificationServer(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(NOTIFICATIONS)
        self.received: list[Notification] = []
        self._next_id = 1

    @dbus_method()
    def Notify(
        self,
        app_name: DBusStr,
        replaces_id: DBusUInt32,
        app_icon: DBusStr,
        summary: DBusStr,
        body: DBusStr,
        actions: StringList,
        hints: Annotated[dict[str, Variant], DBusSignature("a{sv}")],
        expire_timeout: DBusInt32,
    ) -> DBusUInt32:
        self.received.append(Notification(summary, body, app_icon, unwrap(hints), replaces_id))
        self._next_id += 1
        return replaces_id or self._next_id

    @dbus_method()
    def CloseNotification(self, notification_id: DBusUInt32) -> None:
        return None

    @dbus_method()
    def GetCapabilities(self) -> StringList:
        return ["body"]

    @dbus_method()
    def GetServerInformation(self) -> Annotated[tuple[str, str, str, str], DBusSignature("ssss")]:
        return ("nordwgd-test-desktop", "nordwgd", "1", "1.2")


class Desktop:
    """The watcher and notification server on one connection, plus a host's view of items."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.watcher = Watcher()
        self.notifications = NotificationServer()

    @classmethod
    async def start(cls, address: str) -> "Desktop":
        bus = await MessageBus(bus_address=address).connect()
        desktop = cls(bus)
        bus.export("/StatusNotifierWatcher", desktop.watcher)
        bus.add_message_handler(desktop._on_message)
        bus.export("/org/freedesktop/Notifications", desktop.notifications)
        await bus.request_name(WATCHER)
        await bus.request_name(NOTIFICATIONS)
        return desktop

    def stop(self) -> None:
        self.bus.disconnect()

    def _on_message(self, message: Message) -> Message | None:
        if (
            message.message_type is MessageType.METHOD_CALL
            and message.interface == WATCHER
            and message.member == "RegisterStatusNotifierItem"
            and message.signature == "s"
        ):
            self.watcher.register(message.body[0], message.sender or "")
            return Message.new_method_return(message)
        return None

    async def call(
        self, dest: str, path: str, iface: str, member: str, sig: str = "", body: Any = ()
    ) -> list[Any]:
        reply = await self.bus.call(
            Message(
                destination=dest,
                path=path,
                interface=iface,
                member=member,
                signature=sig,
                body=list(body),
            )
        )
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name} {reply.body}")
        return list(reply.body)

    async def item(self, index: int = -1) -> dict[str, Any]:
        """All properties of a registered item, read as a tray host reads them."""
        name, _sender = self.watcher.items[index]
        (values,) = await self.call(
            name,
            "/StatusNotifierItem",
            "org.freedesktop.DBus.Properties",
            "GetAll",
            "s",
            ["org.kde.StatusNotifierItem"],
        )
        result: dict[str, Any] = unwrap(values)
        return result

    async def menu(self, index: int = -1) -> tuple[int, list[Any]]:
        """(revision, layout) of the item's menu; layout is (id, properties, children)."""
        name, _sender = self.watcher.items[index]
        path = (await self.item(index))["Menu"]
        revision, layout = await self.call(
            name, path, "com.canonical.dbusmenu", "GetLayout", "iias", [0, -1, []]
        )
        return revision, unwrap(layout)

    async def click(self, item_id: int, index: int = -1) -> None:
        name, _sender = self.watcher.items[index]
        path = (await self.item(index))["Menu"]
        await self.call(
            name,
            path,
            "com.canonical.dbusmenu",
            "Event",
            "isvu",
            [item_id, "clicked", Variant("s", ""), 0],
        )


def flatten(layout: list[Any]) -> list[tuple[int, dict[str, Any], int]]:
    """Every entry of a dbusmenu layout as (id, properties, depth), in menu order."""
    found: list[tuple[int, dict[str, Any], int]] = []

    def walk(node: list[Any], depth: int) -> None:
        item_id, properties, children = node
        found.append((item_id, properties, depth))
        for child in children:
            walk(child, depth + 1)

    walk(layout, 0)
    return found


def find(layout: list[Any], label: str) -> tuple[int, dict[str, Any]]:
    """The first entry whose label starts with ``label``."""
    for item_id, properties, _depth in flatten(layout):
        if str(properties.get("label", "")).startswith(label):
            return item_id, properties
    raise LookupError(
        f"no menu entry {label!r} in {[p.get('label') for _, p, _ in flatten(layout)]}"
    )
