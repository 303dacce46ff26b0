"""com.canonical.dbusmenu: the menu of a StatusNotifierItem, served from a tree of items.

The tray builds a whole new tree whenever something it shows changes; ``DBusMenu.show``
compares it with the current one and, only when they differ, raises the layout revision and
emits ``LayoutUpdated`` so the host fetches the new layout. Item ids are chosen by the tray and
stay the same for the same entry, so a click on an entry of an older layout still means it.
"""

# No ``from __future__ import annotations``: dbus-fast reads signatures from the annotations.
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from dbus_fast import PropertyAccess, Variant
from dbus_fast.annotations import (
    DBusBool,
    DBusInt32,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusVariant,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

logger = logging.getLogger(__name__)

INTERFACE = "com.canonical.dbusmenu"
ROOT_ID = 0

Layout = Annotated[list[Any], DBusSignature("(ia{sv}av)")]
GroupProperties = Annotated[list[list[Any]], DBusSignature("a(ia{sv})")]
RemovedProperties = Annotated[list[list[Any]], DBusSignature("a(ias)")]
StringList = Annotated[list[str], DBusSignature("as")]
UpdatedProperties = Annotated[tuple[list[Any], list[Any]], DBusSignature("a(ia{sv})a(ias)")]
IdList = Annotated[list[int], DBusSignature("ai")]


@dataclass(frozen=True)
class MenuItem:
    """One entry. ``action`` runs on a click; ``checked`` makes it a check item."""

    id: int
    label: str = ""
    enabled: bool = True
    separator: bool = False
    checked: bool | None = None
    icon: str = ""
    children: tuple["MenuItem", ...] = ()
    action: Callable[[], None] | None = field(default=None, compare=False)

    def properties(self) -> dict[str, Variant]:
        if self.separator:
            return {"type": Variant("s", "separator")}
        props = {"label": Variant("s", self.label), "enabled": Variant("b", self.enabled)}
        if self.checked is not None:
            props["toggle-type"] = Variant("s", "checkmark")
            props["toggle-state"] = Variant("i", 1 if self.checked else 0)
        if self.icon:
            props["icon-name"] = Variant("s", self.icon)
        if self.children:
            props["children-display"] = Variant("s", "submenu")
        return props


def separator(item_id: int) -> MenuItem:
    return MenuItem(item_id, separator=True)


def _index(item: MenuItem, into: dict[int, MenuItem]) -> None:
    into[item.id] = item
    for child in item.children:
        _index(child, into)


class DBusMenu(ServiceInterface):
    """The menu object; ``show`` replaces its tree."""

    def __init__(self, on_open: Callable[[], None] | None = None) -> None:
        super().__init__(INTERFACE)
        self._root = MenuItem(ROOT_ID)
        self._items: dict[int, MenuItem] = {ROOT_ID: self._root}
        self._revision = 1
        self._on_open = on_open

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def root(self) -> MenuItem:
        return self._root

    def show(self, entries: Sequence[MenuItem]) -> bool:
        """Replace the menu with ``entries``; True (and LayoutUpdated) when it changed."""
        root = MenuItem(ROOT_ID, children=tuple(entries))
        if root == self._root:
            # Same look; keep the new actions (they may close over newer values).
            items: dict[int, MenuItem] = {}
            _index(root, items)
            self._root, self._items = root, items
            return False
        items = {}
        _index(root, items)
        self._root, self._items = root, items
        self._revision += 1
        self.LayoutUpdated(self._revision, ROOT_ID)
        return True

    def _layout(self, item: MenuItem, depth: int) -> list[Any]:
        children: list[Variant] = []
        if depth != 0:
            children = [
                Variant("(ia{sv}av)", self._layout(child, depth - 1)) for child in item.children
            ]
        return [item.id, item.properties(), children]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusUInt32:
        return 3

    @dbus_property(access=PropertyAccess.READ)
    def TextDirection(self) -> DBusStr:
        return "ltr"

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> DBusStr:
        return "normal"

    @dbus_property(access=PropertyAccess.READ)
    def IconThemePath(self) -> StringList:
        return []

    @dbus_method()
    def GetLayout(
        self, parent_id: DBusInt32, recursion_depth: DBusInt32, property_names: StringList
    ) -> Annotated[tuple[int, list[Any]], DBusSignature("u(ia{sv}av)")]:
        item = self._items.get(parent_id, self._root)
        return (self._revision, self._layout(item, recursion_depth))

    @dbus_method()
    def GetGroupProperties(self, ids: IdList, property_names: StringList) -> GroupProperties:
        wanted = ids or list(self._items)
        return [[i, self._items[i].properties()] for i in wanted if i in self._items]

    @dbus_method()
    def GetProperty(self, item_id: DBusInt32, name: DBusStr) -> DBusVariant:
        item = self._items.get(item_id)
        properties = item.properties() if item else {}
        return properties.get(name, Variant("s", ""))

    @dbus_method()
    def Event(
        self, item_id: DBusInt32, event_id: DBusStr, data: DBusVariant, timestamp: DBusUInt32
    ) -> None:
        self._event(item_id, event_id)

    @dbus_method()
    def EventGroup(self, events: Annotated[list[list[Any]], DBusSignature("a(isvu)")]) -> IdList:
        unknown = []
        for item_id, event_id, _data, _timestamp in events:
            if item_id not in self._items:
                unknown.append(item_id)
            self._event(item_id, event_id)
        return unknown

    @dbus_method()
    def AboutToShow(self, item_id: DBusInt32) -> DBusBool:
        if item_id == ROOT_ID and self._on_open is not None:
            self._on_open()
        return False

    @dbus_method()
    def AboutToShowGroup(
        self, ids: IdList
    ) -> Annotated[tuple[list[int], list[int]], DBusSignature("aiai")]:
        if ROOT_ID in ids and self._on_open is not None:
            self._on_open()
        return ([], [i for i in ids if i not in self._items])

    @dbus_signal()
    def ItemsPropertiesUpdated(
        self,
    ) -> Annotated[tuple[list[Any], list[Any]], DBusSignature("a(ia{sv})a(ias)")]:
        return ([], [])

    @dbus_signal()
    def LayoutUpdated(
        self, revision: int, parent: int
    ) -> Annotated[tuple[int, int], DBusSignature("ui")]:
        return (revision, parent)

    def _event(self, item_id: int, event_id: str) -> None:
        if event_id != "clicked":
            return
        item = self._items.get(item_id)
        if item is None or item.action is None or not item.enabled:
            logger.debug("click on menu item %s without an action", item_id)
            return
        logger.info("menu: %s", item.label)
        item.action()
