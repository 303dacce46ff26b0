"""org.kde.StatusNotifierItem: the tray icon itself, and its registration with the watcher.

The tray host (Plasma's system tray, GNOME's AppIndicator extension) may come and go: the
registrar registers the item whenever a StatusNotifierWatcher appears on the session bus. The
AppIndicator extension sometimes drops an item it was just given ("Argument two may not be
null"), so after registering the registrar checks a few times, seconds apart, that the watcher
still lists the item and registers it again if not. Those checks stop after the last one: an
idle tray has no timer.
"""

# No ``from __future__ import annotations``: dbus-fast reads signatures from the annotations.
import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Annotated, Any

from dbus_fast import Message, MessageType, PropertyAccess, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusInt32, DBusObjectPath, DBusSignature, DBusStr
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

logger = logging.getLogger(__name__)

INTERFACE = "org.kde.StatusNotifierItem"
ITEM_PATH = "/StatusNotifierItem"
MENU_PATH = "/MenuBar"
WATCHER_NAME = "org.kde.StatusNotifierWatcher"
WATCHER_PATH = "/StatusNotifierWatcher"
# Seconds after a registration at which the watcher's list is checked for the item.
REGISTRATION_CHECKS = (2.0, 6.0)

Pixmaps = Annotated[list[Any], DBusSignature("a(iiay)")]
ToolTip = Annotated[list[Any], DBusSignature("(sa(iiay)ss)")]


class StatusNotifierItem(ServiceInterface):
    """The item's properties; ``update`` changes them and emits the matching New* signals."""

    def __init__(
        self, item_id: str, title: str, on_activate: Callable[[], None] | None = None
    ) -> None:
        super().__init__(INTERFACE)
        self._id = item_id
        self._title = title
        self._icon = ""
        self._theme_path = ""
        self._status = "Active"
        self._tooltip: tuple[str, str] = (title, "")
        self._on_activate = on_activate

    @property
    def icon(self) -> str:
        return self._icon

    @property
    def tooltip(self) -> tuple[str, str]:
        return self._tooltip

    def update(
        self, *, icon: str, theme_path: str, tooltip: tuple[str, str], attention: bool
    ) -> None:
        if (icon, theme_path) != (self._icon, self._theme_path):
            self._icon, self._theme_path = icon, theme_path
            self.NewIcon()
            self.NewAttentionIcon()
        if tooltip != self._tooltip:
            self._tooltip = tooltip
            self.NewToolTip()
        status = "NeedsAttention" if attention else "Active"
        if status != self._status:
            self._status = status
            self.NewStatus(status)

    @dbus_property(access=PropertyAccess.READ)
    def Category(self) -> DBusStr:
        return "SystemServices"

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> DBusStr:
        return self._id

    @dbus_property(access=PropertyAccess.READ)
    def Title(self) -> DBusStr:
        return self._title

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> DBusStr:
        return self._status

    @dbus_property(access=PropertyAccess.READ)
    def WindowId(self) -> DBusInt32:
        return 0

    @dbus_property(access=PropertyAccess.READ)
    def IconName(self) -> DBusStr:
        return self._icon

    @dbus_property(access=PropertyAccess.READ)
    def IconThemePath(self) -> DBusStr:
        return self._theme_path

    @dbus_property(access=PropertyAccess.READ)
    def IconPixmap(self) -> Pixmaps:
        return []

    @dbus_property(access=PropertyAccess.READ)
    def OverlayIconName(self) -> DBusStr:
        return ""

    @dbus_property(access=PropertyAccess.READ)
    def AttentionIconName(self) -> DBusStr:
        return self._icon

    @dbus_property(access=PropertyAccess.READ)
    def AttentionIconPixmap(self) -> Pixmaps:
        return []

    @dbus_property(access=PropertyAccess.READ)
    def ToolTip(self) -> ToolTip:
        title, body = self._tooltip
        return [self._icon, [], title, body]

    @dbus_property(access=PropertyAccess.READ)
    def ItemIsMenu(self) -> DBusBool:
        return True

    @dbus_property(access=PropertyAccess.READ)
    def Menu(self) -> DBusObjectPath:
        return MENU_PATH

    @dbus_method()
    def ContextMenu(self, x: DBusInt32, y: DBusInt32) -> None:
        return None

    @dbus_method()
    def Activate(self, x: DBusInt32, y: DBusInt32) -> None:
        if self._on_activate is not None:
            self._on_activate()

    @dbus_method()
    def SecondaryActivate(self, x: DBusInt32, y: DBusInt32) -> None:
        return None

    @dbus_method()
    def Scroll(self, delta: DBusInt32, orientation: DBusStr) -> None:
        return None

    @dbus_signal()
    def NewIcon(self) -> None:
        return None

    @dbus_signal()
    def NewAttentionIcon(self) -> None:
        return None

    @dbus_signal()
    def NewToolTip(self) -> None:
        return None

    @dbus_signal()
    def NewTitle(self) -> None:
        return None

    @dbus_signal()
    def NewStatus(self, status: str) -> DBusStr:
        return status


def item_bus_name() -> str:
    return f"org.kde.StatusNotifierItem-{os.getpid()}-1"


class Registrar:
    """Keeps the item registered with whichever StatusNotifierWatcher is on the session bus."""

    def __init__(self, bus: MessageBus, service_name: str) -> None:
        self._bus = bus
        self._service = service_name
        self._checks: asyncio.Task[None] | None = None
        self.registrations = 0

    async def start(self) -> None:
        await _add_match(
            self._bus,
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0='{WATCHER_NAME}'",
        )
        self._bus.add_message_handler(self._on_message)
        await self.register()

    def _on_message(self, message: Message) -> None:
        if (
            message.message_type is MessageType.SIGNAL
            and message.member == "NameOwnerChanged"
            and message.interface == "org.freedesktop.DBus"
            and message.body
            and message.body[0] == WATCHER_NAME
            and message.body[2]
        ):
            logger.info("a StatusNotifierWatcher appeared; registering")
            asyncio.get_running_loop().create_task(self.register())

    async def register(self) -> None:
        if not await self._register_once():
            return
        if self._checks is not None:
            self._checks.cancel()
        self._checks = asyncio.get_running_loop().create_task(self._check_listed())

    async def _register_once(self) -> bool:
        reply = await self._bus.call(
            Message(
                destination=WATCHER_NAME,
                path=WATCHER_PATH,
                interface=WATCHER_NAME,
                member="RegisterStatusNotifierItem",
                signature="s",
                body=[self._service],
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            error = reply.error_name if reply else "no reply"
            logger.info("no StatusNotifierWatcher to register with yet (%s)", error)
            return False
        self.registrations += 1
        logger.info("registered with the StatusNotifierWatcher")
        return True

    async def _listed(self) -> bool | None:
        reply = await self._bus.call(
            Message(
                destination=WATCHER_NAME,
                path=WATCHER_PATH,
                interface="org.freedesktop.DBus.Properties",
                member="Get",
                signature="ss",
                body=[WATCHER_NAME, "RegisteredStatusNotifierItems"],
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            return None
        value = reply.body[0]
        items = value.value if isinstance(value, Variant) else value
        unique = self._bus.unique_name or ""
        return any(self._service in item or unique in item for item in items)

    async def _check_listed(self) -> None:
        waited = 0.0
        for at in REGISTRATION_CHECKS:
            await asyncio.sleep(at - waited)
            waited = at
            listed = await self._listed()
            if listed is False:
                logger.warning("the watcher dropped the item; registering again")
                await self._register_once()

    def close(self) -> None:
        if self._checks is not None:
            self._checks.cancel()
        with contextlib.suppress(Exception):
            self._bus.remove_message_handler(self._on_message)


async def _add_match(bus: MessageBus, rule: str) -> None:
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[rule],
        )
    )
    if reply is None or reply.message_type is MessageType.ERROR:
        raise RuntimeError(f"AddMatch refused: {reply.error_name if reply else 'no reply'}")
