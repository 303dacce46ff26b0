"""The ``org.nordwgd.Nordwgd1.Manager`` interface: a thin shell around the Manager.

Each method checks its arguments, authorizes the caller through polkit when the method
changes something or reads details of the system, calls the Manager, and maps a nordwgd error
to its D-Bus error name. The reply is sent exactly once by dbus-fast when the coroutine returns
or raises. Properties are read-only views of the core's ``Status`` (``Manager.status()``), named by
``nordwgd.bus.convert.STATUS_PROPERTIES``; each new status the Manager publishes is forwarded as
one ``PropertiesChanged`` of the properties that differ.
"""

# No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus signatures from the
# evaluated annotations, and a string "None" return annotation would not mean "no reply body".
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Annotated, Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

from dbus_fast import DBusError, Message, MessageFlag, MessageType, PropertyAccess, Variant
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusSignature,
    DBusStr,
    DBusUInt16,
    DBusUInt64,
)
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from nordwgd import errors
from nordwgd.bus import INTERFACE_NAME, OBJECT_PATH
from nordwgd.bus.convert import (
    CONNECT_KEYS,
    DIAGNOSE_MODES,
    FILTER_KEYS,
    PROPERTY_SIGNATURES,
    QUIET_PROPERTIES,
    check_string,
    status_values,
    string_options,
    to_vardict,
)
from nordwgd.bus.errors import error_name, internal_error, to_dbus_error
from nordwgd.bus.polkit import ACTION_CONFIGURE, ACTION_CONTROL, ACTION_DIAGNOSE, CallerGone
from nordwgd.status import Status

logger = logging.getLogger(__name__)

PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"

CountryList = Annotated[list[list[str]], DBusSignature("a(sss)")]
PairList = Annotated[list[list[str]], DBusSignature("a(ss)")]
DictList = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]
HealthReply = Annotated[tuple[bool, dict[str, Variant]], DBusSignature("ba{sv}")]


class ManagerFacade(Protocol):
    """What the D-Bus layer uses of ``nordwgd.manager.Manager``."""

    def status(self) -> Status: ...
    def subscribe(self, callback: Callable[[Status], None]) -> None: ...
    async def connect(self, options: Mapping[str, str]) -> None: ...
    async def disconnect(self) -> None: ...
    async def reconnect(self) -> None: ...
    async def renew(self) -> None: ...
    async def check_health(self) -> tuple[bool, dict[str, object]]: ...
    async def set_lockdown(self, enabled: bool, /) -> None: ...
    async def set_allow_lan(self, enabled: bool, /) -> None: ...
    async def set_token(self, token: str, /) -> None: ...
    async def set_login(self, username: str, password: str, /) -> None: ...
    async def logout(self) -> None: ...
    async def list_countries(self) -> list[tuple[str, str, str]]: ...
    async def list_cities(self, country: str, /) -> list[tuple[str, str]]: ...
    async def list_groups(self) -> list[tuple[str, str]]: ...
    async def list_servers(self, filter: Mapping[str, str], /) -> list[dict[str, object]]: ...
    async def get_statistics(self) -> dict[str, object]: ...
    async def diagnose(self, mode: str, /) -> dict[str, object]: ...


class AuthorizerLike(Protocol):
    async def authorize(self, sender: str, action: str) -> None: ...


_sender: ContextVar[str | None] = ContextVar("nordwgd_dbus_sender", default=None)


class ServiceBus(MessageBus):
    """A MessageBus whose method handlers can see who called them (for polkit).

    dbus-fast has no public way to hand a method its message. Its public message handlers run
    for every incoming message before the method is dispatched, in the same call, and the
    method's coroutine is started there and copies the current context; so the first handler
    records each message's sender in a context variable that the method reads.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # First of all handlers: one that answers a message would stop the ones after it.
        self.add_message_handler(_note_sender)


def _note_sender(msg: Message) -> None:
    _sender.set(msg.sender if msg.message_type is MessageType.METHOD_CALL else None)


_S = TypeVar("_S", bound="ManagerInterface")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _shell(
    fn: Callable[Concatenate[_S, _P], Awaitable[_R]],
) -> Callable[Concatenate[_S, _P], Awaitable[_R]]:
    """Map every failure of a method to exactly one D-Bus error reply."""

    @functools.wraps(fn)
    async def method(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        sender = _sender.get() or "?"
        logger.debug("%s called by %s", fn.__name__, sender)
        try:
            return await fn(self, *args, **kwargs)
        except CallerGone as error:
            logger.info("%s: %s", fn.__name__, error)
            raise to_dbus_error(error) from None
        except errors.NordwgdError as error:
            logger.info("%s from %s failed: %s: %s", fn.__name__, sender, error.nick, error)
            raise to_dbus_error(error) from None
        except DBusError:
            raise
        except Exception:
            logger.exception("%s from %s failed unexpectedly", fn.__name__, sender)
            raise internal_error() from None

    return cast(Callable[Concatenate[_S, _P], Awaitable[_R]], method)


class ManagerInterface(ServiceInterface):
    """``org.nordwgd.Nordwgd1.Manager`` (documented in dbus/org.nordwgd.Nordwgd1.Manager.xml)."""

    def __init__(self, manager: ManagerFacade, authorizer: AuthorizerLike) -> None:
        super().__init__(INTERFACE_NAME)
        self._manager = manager
        self._authorizer = authorizer
        # The status last converted, and its D-Bus forms (see ``variants``).
        self._status: Status | None = None
        self._values: dict[str, Any] = {}
        self._variants: dict[str, Variant] = {}
        # The values last signalled, to name only the properties that changed.
        self._signalled = self._convert(manager.status())
        manager.subscribe(self._forward_changes)

    def _convert(self, status: Status) -> dict[str, Any]:
        try:
            return status_values(status)
        except (TypeError, ValueError):
            logger.exception("cannot convert the status to properties")
            return dict(self._values)

    def _forward_changes(self, status: Status) -> None:
        values = self._convert(status)
        changed = {
            name: value
            for name, value in values.items()
            if name not in QUIET_PROPERTIES and self._signalled.get(name) != value
        }
        self._signalled = values
        if changed:
            self.emit_properties_changed(changed)

    def variants(self) -> dict[str, Variant]:
        """Every property as a Variant: the ``GetAll`` answer.

        Converted again only for a new status (the counters change without a signal, so a new
        status may come without one).
        """
        status = self._manager.status()
        if status is not self._status and status != self._status:
            values = self._convert(status)
            self._variants = {
                name: Variant(PROPERTY_SIGNATURES[name], value) for name, value in values.items()
            }
            self._values = values
            self._status = status
        return self._variants

    def _text(self, name: str) -> str:
        value: object = self.variants()[name].value
        assert isinstance(value, str), name
        return value

    def _flag(self, name: str) -> bool:
        value: object = self.variants()[name].value
        assert isinstance(value, bool), name
        return value

    def _number(self, name: str) -> int:
        value: object = self.variants()[name].value
        assert isinstance(value, int), name
        return value

    def _dict(self, name: str) -> dict[str, Variant]:
        value: object = self.variants()[name].value
        assert isinstance(value, dict), name
        return value

    async def _authorize(self, action: str) -> None:
        sender = _sender.get()
        if sender is None:
            raise errors.NotAuthorized(f"{action}: the caller is unknown; refused")
        await self._authorizer.authorize(sender, action)

    def introspect(self) -> intr.Interface:
        description = super().introspect()
        for prop in description.properties:
            if prop.name in QUIET_PROPERTIES:
                prop.annotations["org.freedesktop.DBus.Property.EmitsChangedSignal"] = "false"
        return description

    # Properties -----------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self._text("State")

    @dbus_property(access=PropertyAccess.READ)
    def ErrorCause(self) -> DBusStr:
        return self._text("ErrorCause")

    @dbus_property(access=PropertyAccess.READ)
    def Blocking(self) -> DBusStr:
        return self._text("Blocking")

    @dbus_property(access=PropertyAccess.READ)
    def Lockdown(self) -> DBusBool:
        return self._flag("Lockdown")

    @dbus_property(access=PropertyAccess.READ)
    def AllowLan(self) -> DBusBool:
        return self._flag("AllowLan")

    @dbus_property(access=PropertyAccess.READ)
    def Mode(self) -> DBusStr:
        return self._text("Mode")

    @dbus_property(access=PropertyAccess.READ)
    def Server(self) -> DBusDict:
        return self._dict("Server")

    @dbus_property(access=PropertyAccess.READ)
    def Interface(self) -> DBusStr:
        return self._text("Interface")

    @dbus_property(access=PropertyAccess.READ)
    def TunnelAddress(self) -> DBusStr:
        return self._text("TunnelAddress")

    @dbus_property(access=PropertyAccess.READ)
    def ConnectedSince(self) -> DBusUInt64:
        return self._number("ConnectedSince")

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return self._text("Version")

    @dbus_property(access=PropertyAccess.READ)
    def LatestHandshake(self) -> DBusUInt64:
        return self._number("LatestHandshake")

    @dbus_property(access=PropertyAccess.READ)
    def RxBytes(self) -> DBusUInt64:
        return self._number("RxBytes")

    @dbus_property(access=PropertyAccess.READ)
    def TxBytes(self) -> DBusUInt64:
        return self._number("TxBytes")

    @dbus_property(access=PropertyAccess.READ)
    def ForwardedPort(self) -> DBusUInt16:
        return self._number("ForwardedPort")

    @dbus_property(access=PropertyAccess.READ)
    def RecentLocations(self) -> DictList:
        value: object = self.variants()["RecentLocations"].value
        assert isinstance(value, list)
        return value

    @dbus_property(access=PropertyAccess.READ)
    def Provider(self) -> DBusStr:
        return self._text("Provider")

    # Control (polkit action org.nordwgd.nordwgd1.control) -----------------------------

    @dbus_method()
    @_shell
    async def Connect(self, options: DBusDict) -> None:
        checked = string_options(options, CONNECT_KEYS, "Connect options")
        await self._authorize(ACTION_CONTROL)
        await self._manager.connect(checked)

    @dbus_method()
    @_shell
    async def Disconnect(self) -> None:
        await self._authorize(ACTION_CONTROL)
        await self._manager.disconnect()

    @dbus_method()
    @_shell
    async def Reconnect(self) -> None:
        await self._authorize(ACTION_CONTROL)
        await self._manager.reconnect()

    @dbus_method()
    @_shell
    async def Renew(self) -> None:
        await self._authorize(ACTION_CONTROL)
        await self._manager.renew()

    @dbus_method()
    @_shell
    async def CheckHealth(self) -> HealthReply:
        await self._authorize(ACTION_CONTROL)
        healthy, details = await self._manager.check_health()
        return bool(healthy), to_vardict(details)

    # Configuration (polkit action org.nordwgd.nordwgd1.configure) ---------------------

    @dbus_method()
    @_shell
    async def SetLockdown(self, lockdown: DBusBool) -> None:
        await self._authorize(ACTION_CONFIGURE)
        await self._manager.set_lockdown(bool(lockdown))

    @dbus_method()
    @_shell
    async def SetAllowLan(self, allow_lan: DBusBool) -> None:
        await self._authorize(ACTION_CONFIGURE)
        await self._manager.set_allow_lan(bool(allow_lan))

    @dbus_method()
    @_shell
    async def SetToken(self, token: DBusStr) -> None:
        # The token is never echoed back: the check names only the argument.
        if not token.strip():
            raise errors.InvalidArgument("SetToken: the token is empty")
        check_string(token, "SetToken: token")
        await self._authorize(ACTION_CONFIGURE)
        await self._manager.set_token(token)

    @dbus_method()
    @_shell
    async def SetLogin(self, username: DBusStr, password: DBusStr) -> None:
        # Neither value is echoed back: the checks name only the arguments.
        if not username.strip() or not password:
            raise errors.InvalidArgument("SetLogin: the username or the password is empty")
        check_string(username, "SetLogin: username")
        check_string(password, "SetLogin: password")
        await self._authorize(ACTION_CONFIGURE)
        await self._manager.set_login(username, password)

    @dbus_method()
    @_shell
    async def Logout(self) -> None:
        await self._authorize(ACTION_CONFIGURE)
        await self._manager.logout()

    # Read-only (no authorization, but Diagnose "full": org.nordwgd.nordwgd1.diagnose) ---

    @dbus_method()
    @_shell
    async def ListCountries(self) -> CountryList:
        countries = await self._manager.list_countries()
        return [[str(code), str(name), str(ident)] for code, name, ident in countries]

    @dbus_method()
    @_shell
    async def ListCities(self, country: DBusStr) -> PairList:
        check_string(country, "ListCities: country")
        if not country.strip():
            raise errors.InvalidArgument("ListCities: country is empty")
        return [[str(a), str(b)] for a, b in await self._manager.list_cities(country)]

    @dbus_method()
    @_shell
    async def ListGroups(self) -> PairList:
        return [[str(a), str(b)] for a, b in await self._manager.list_groups()]

    @dbus_method()
    @_shell
    async def ListServers(self, filter: DBusDict) -> DictList:
        checked = string_options(filter, FILTER_KEYS, "ListServers filter")
        return [to_vardict(server) for server in await self._manager.list_servers(checked)]

    @dbus_method()
    @_shell
    async def GetStatistics(self) -> DBusDict:
        return to_vardict(await self._manager.get_statistics())

    @dbus_method()
    @_shell
    async def Diagnose(self, mode: DBusStr) -> DBusDict:
        mode = mode or "basic"
        if mode not in DIAGNOSE_MODES:
            raise errors.InvalidArgument(
                f"Diagnose: mode {check_string(mode, 'mode')[:32]!r} is not one of: basic, full"
            )
        if mode == "full":
            # Interfaces, firewall, routes and DNS of the system: polkit action
            # org.nordwgd.nordwgd1.diagnose. "basic" stays open to every local user.
            await self._authorize(ACTION_DIAGNOSE)
        return to_vardict(await self._manager.diagnose(mode))


def method_signatures(interface: ServiceInterface) -> dict[str, str]:
    """Method name -> input signature, from the interface's own introspection."""
    return {
        method.name: "".join(str(arg.signature) for arg in method.in_args)
        for method in interface.introspect().methods
    }


def install_signature_guard(bus: MessageBus, interface: ServiceInterface) -> None:
    """Answer calls of a known method with wrong argument types by InvalidArgument.

    Without this, dbus-fast would answer ``UnknownMethod``, which hides the real mistake.
    """
    expected = method_signatures(interface)

    def guard(msg: Message) -> Message | None:
        if (
            msg.message_type is not MessageType.METHOD_CALL
            or msg.path != OBJECT_PATH
            or msg.interface != INTERFACE_NAME
            or msg.member not in expected
            or msg.signature == expected[msg.member]
        ):
            return None
        want = expected[msg.member] or "no arguments"
        return Message.new_error(
            msg,
            error_name(errors.InvalidArgument),
            f"{msg.member}: expected arguments of type {want!r}, got {msg.signature!r}",
        )

    bus.add_message_handler(guard)


def install_get_all(bus: MessageBus, interface: ManagerInterface) -> None:
    """Answer ``Properties.GetAll`` of the Manager interface from its converted values.

    dbus-fast's own GetAll calls every property getter and wraps each value anew; this is the
    call clients poll, so it gets the short path.
    """

    def get_all(msg: Message) -> Message | None:
        if (
            msg.member != "GetAll"
            or msg.interface != PROPERTIES_INTERFACE
            or msg.path != OBJECT_PATH
            or msg.message_type is not MessageType.METHOD_CALL
            or msg.signature != "s"
            or msg.body[0] != INTERFACE_NAME
            or msg.flags & MessageFlag.NO_REPLY_EXPECTED
        ):
            return None
        return Message.new_method_return(msg, "a{sv}", [interface.variants()])

    bus.add_message_handler(get_all)


def export_manager(
    bus: MessageBus, manager: ManagerFacade, authorizer: AuthorizerLike
) -> ManagerInterface:
    """Export the Manager interface at /org/nordwgd/Nordwgd1 (the name is requested later)."""
    interface = ManagerInterface(manager, authorizer)
    install_get_all(bus, interface)
    install_signature_guard(bus, interface)
    bus.export(OBJECT_PATH, interface)
    return interface
