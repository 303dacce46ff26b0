"""The ``org.nordwgd.Nordwgd1.SplitTunnel`` interface (dbus/org.nordwgd.Nordwgd1.SplitTunnel.xml).

On the Manager's object. Excluding and removing need the polkit action
``org.nordwgd.nordwgd1.configure``: an excluded process escapes the kill switch.
"""

# No ``from __future__ import annotations``: dbus-fast reads signatures from the annotations.
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol, TypeVar, cast

from dbus_fast import DBusError, Message, MessageType, PropertyAccess
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from nordwgd import errors
from nordwgd.bus import OBJECT_PATH
from nordwgd.bus.convert import check_string
from nordwgd.bus.errors import internal_error, to_dbus_error
from nordwgd.bus.polkit import ACTION_CONFIGURE
from nordwgd.bus.service import AuthorizerLike, _sender

logger = logging.getLogger(__name__)

SPLIT_INTERFACE = "org.nordwgd.Nordwgd1.SplitTunnel"
# Scopes end with their last process, which systemd does not tell nordwgd: read, do not watch.
_UNSIGNALLED = ("ExcludedUnits", "LocalBridges")
StringList = Annotated[list[str], DBusSignature("as")]


class SplitFacade(Protocol):
    @property
    def slice_name(self) -> str: ...
    def units(self) -> list[str]: ...
    async def exclude_process(self, pid: int, what: str) -> str: ...
    async def exclude_unit(self, unit: str) -> str: ...
    async def remove(self, unit: str) -> None: ...


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def _shell(fn: _F) -> _F:
    """Every failure becomes exactly one D-Bus error reply."""

    @functools.wraps(fn)
    async def method(*args: Any, **kwargs: Any) -> Any:
        sender = _sender.get() or "?"
        try:
            return await fn(*args, **kwargs)
        except errors.NordwgdError as error:
            logger.info("%s from %s failed: %s", fn.__name__, sender, error)
            raise to_dbus_error(error) from None
        except DBusError:
            raise
        except Exception:
            logger.exception("%s from %s failed unexpectedly", fn.__name__, sender)
            raise internal_error() from None

    return cast(_F, method)


class SplitInterface(ServiceInterface):
    def __init__(
        self,
        bus: MessageBus,
        split: SplitFacade,
        authorizer: AuthorizerLike,
        bridges: Callable[[], list[str]],
        namespace: str,
    ) -> None:
        super().__init__(SPLIT_INTERFACE)
        self._bus = bus
        self._split = split
        self._authorizer = authorizer
        self._bridges = bridges
        self._namespace = namespace

    def introspect(self) -> intr.Interface:
        description = super().introspect()
        for prop in description.properties:
            if prop.name in _UNSIGNALLED:
                prop.annotations["org.freedesktop.DBus.Property.EmitsChangedSignal"] = "false"
        return description

    async def _authorized_sender(self) -> str:
        sender = _sender.get()
        if sender is None:
            raise errors.NotAuthorized("the caller is unknown; refused")
        await self._authorizer.authorize(sender, ACTION_CONFIGURE)
        return sender

    async def _caller_pid(self, sender: str) -> int:
        reply = await self._bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetConnectionUnixProcessID",
                signature="s",
                body=[sender],
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            raise errors.NotAuthorized(f"cannot tell which process {sender} is")
        pid = reply.body[0]
        assert isinstance(pid, int)
        return pid

    @dbus_property(access=PropertyAccess.READ)
    def ExcludedSlice(self) -> DBusStr:
        return self._split.slice_name

    @dbus_property(access=PropertyAccess.READ)
    def ExcludedUnits(self) -> StringList:
        return self._split.units()

    @dbus_property(access=PropertyAccess.READ)
    def LocalBridges(self) -> StringList:
        return self._bridges()

    @dbus_property(access=PropertyAccess.READ)
    def TunnelNamespace(self) -> DBusStr:
        return self._namespace

    @dbus_method()
    @_shell
    async def ExcludeCaller(self, what: DBusStr) -> DBusStr:
        check_string(what, "ExcludeCaller: what")
        sender = await self._authorized_sender()
        pid = await self._caller_pid(sender)
        scope = await self._split.exclude_process(pid, what or f"process {pid}")
        return scope

    @dbus_method()
    @_shell
    async def ExcludeUnit(self, unit: DBusStr) -> DBusStr:
        check_string(unit, "ExcludeUnit: unit")
        await self._authorized_sender()
        scope = await self._split.exclude_unit(unit)
        return scope

    @dbus_method()
    @_shell
    async def RemoveExcluded(self, unit: DBusStr) -> None:
        check_string(unit, "RemoveExcluded: unit")
        await self._authorized_sender()
        await self._split.remove(unit)


def export_split(
    bus: MessageBus,
    split: SplitFacade,
    authorizer: AuthorizerLike,
    bridges: Callable[[], list[str]],
    namespace: str = "",
) -> SplitInterface:
    """Export the interface; ``namespace`` is the tunnel's network namespace in namespace mode."""
    interface = SplitInterface(bus, split, authorizer, bridges, namespace)
    bus.export(OBJECT_PATH, interface)
    return interface
