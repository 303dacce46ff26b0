"""``nordwgctl``: control nordwgd over D-Bus.

Exit codes:
  0  success
  1  the request failed (the daemon reported an error, or the connection ended in "error")
  2  usage error: a bad command line, or an argument the daemon refused (InvalidArgument,
     UnknownLocation)
  3  the daemon is not running, or the bus cannot be reached
  4  not authorized (polkit refused)
  5  not logged in (no access token; run "nordwgctl login")
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from nordwgd import __version__, cli_split, errors
from nordwgd.bus import BUS_NAME, INTERFACE_NAME, OBJECT_PATH
from nordwgd.bus.convert import plain
from nordwgd.bus.errors import from_error_name
from nordwgd.cli_format import (
    format_mapping,
    format_status,
    format_table,
    on_off,
    printable,
    state_label,
    terminal_safe,
    to_json,
)
from nordwgd.provider.nordvpn.catalog import group_names, normalize

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_NOT_AUTHORIZED = 4
EXIT_NOT_LOGGED_IN = 5

PROG = "nordwgctl"
_NO_DAEMON_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
    }
)
_HOSTNAME = re.compile(r"^[a-z]{2}(-[a-z]{2})?\d+(\.nordvpn\.com)?$", re.IGNORECASE)
_WAITING_STATES = frozenset({"connecting", "reconnecting", "disconnecting"})


class CliError(Exception):
    """Ends nordwgctl with a one-line message on stderr and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _exit_code_for(error: errors.NordwgdError) -> int:
    if isinstance(error, errors.NotAuthorized):
        return EXIT_NOT_AUTHORIZED
    if isinstance(error, errors.InvalidArgument):
        return EXIT_USAGE
    if isinstance(error, errors.NotLoggedIn):
        return EXIT_NOT_LOGGED_IN
    return EXIT_FAILURE


def _describe(error: errors.NordwgdError) -> str:
    words = {
        errors.NotAuthorized: "not authorized",
        errors.UnknownLocation: "unknown location",
        errors.InvalidArgument: "invalid argument",
        errors.NotLoggedIn: "not logged in",
    }
    label = words.get(type(error), re.sub(r"(?<!^)([A-Z])", r" \1", error.nick).lower())
    hint = ' (run "nordwgctl login")' if isinstance(error, errors.NotLoggedIn) else ""
    return f"{label}: {error}{hint}"


class Client:
    """Calls the Manager interface with plain messages (no introspection round trip)."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    @classmethod
    async def open(cls, address: str | None) -> Client:
        where = address or "the system bus"
        try:
            if address:
                bus = await MessageBus(bus_address=address).connect()
            else:
                bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except (OSError, EOFError, ValueError) as error:
            raise CliError(f"cannot reach {where}: {error}", EXIT_NO_DAEMON) from None
        except Exception as error:  # dbus-fast raises AuthError and friends on a bad bus
            raise CliError(f"cannot reach {where}: {error}", EXIT_NO_DAEMON) from None
        return cls(bus)

    def close(self) -> None:
        self.bus.disconnect()

    async def call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        interface: str = INTERFACE_NAME,
    ) -> list[Any]:
        message = Message(
            destination=BUS_NAME,
            path=OBJECT_PATH,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
            flags=0x4,  # ALLOW_INTERACTIVE_AUTHORIZATION: polkit may ask for a password
        )
        try:
            reply = await self.bus.call(message)
        except (OSError, EOFError) as error:
            raise CliError(f"lost the connection to the bus: {error}", EXIT_NO_DAEMON) from None
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            name = reply.error_name or ""
            text = str(reply.body[0]) if reply.body else name
            if name in _NO_DAEMON_ERRORS:
                raise CliError(
                    f"nordwgd is not running ({BUS_NAME} is not on the bus)", EXIT_NO_DAEMON
                )
            if name == "org.freedesktop.DBus.Error.AccessDenied":
                raise CliError(f"not authorized: {text}", EXIT_NOT_AUTHORIZED)
            ours = from_error_name(name, text)
            if ours is not None:
                raise ours
            raise CliError(f"{member} failed: {name}: {text}", EXIT_FAILURE)
        return list(reply.body)

    async def properties(self) -> dict[str, object]:
        (values,) = await self.call(
            "GetAll", "s", [INTERFACE_NAME], interface="org.freedesktop.DBus.Properties"
        )
        result = plain(values)
        assert isinstance(result, dict)
        return result

    async def get(self, name: str) -> object:
        (value,) = await self.call(
            "Get", "ss", [INTERFACE_NAME, name], interface="org.freedesktop.DBus.Properties"
        )
        return plain(value)

    async def watch(self, on_change: Callable[[dict[str, object]], None]) -> None:
        """Call ``on_change`` with the changed properties of every PropertiesChanged."""

        def handler(msg: Message) -> None:
            if (
                msg.message_type is MessageType.SIGNAL
                and msg.member == "PropertiesChanged"
                and msg.path == OBJECT_PATH
                and msg.body
                and msg.body[0] == INTERFACE_NAME
            ):
                changed = plain(msg.body[1])
                assert isinstance(changed, dict)
                on_change(changed)

        self.bus.add_message_handler(handler)
        await self._add_match(
            f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}',"
            "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'"
        )

    async def watch_owner(self, on_gone: Callable[[], None]) -> None:
        def handler(msg: Message) -> None:
            if (
                msg.message_type is MessageType.SIGNAL
                and msg.member == "NameOwnerChanged"
                and msg.body[:1] == [BUS_NAME]
                and msg.body[2] == ""
            ):
                on_gone()

        self.bus.add_message_handler(handler)
        await self._add_match(
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
            f"arg0='{BUS_NAME}'"
        )

    async def _add_match(self, rule: str) -> None:
        reply = await self.bus.call(
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
            raise CliError("the bus refused to deliver signals", EXIT_FAILURE)


# Commands -------------------------------------------------------------------------------


def _print(text: str) -> None:
    # Fields are escaped where they are formatted; this catches whatever was not.
    print(terminal_safe(text), flush=True)


async def cmd_status(client: Client, args: argparse.Namespace) -> int:
    properties = await client.properties()
    split = await cli_split.split_properties(client, quiet=True)
    properties.update(split)
    text = format_status(properties) + cli_split.format_split(split)
    _print(to_json(properties) if args.json else text)
    return EXIT_OK


async def _location_options(client: Client, args: argparse.Namespace) -> dict[str, Variant]:
    """Connect options from LOCATION, --group and --server.

    LOCATION is, in this order: COUNTRY/CITY, a server host name, a country, a server group
    as the official client accepts it ("p2p", "double vpn", "Double_VPN"), else a city.
    """
    options: dict[str, str] = {}
    location: str | None = args.location
    group: str | None = args.group
    server: str | None = args.server
    if location is not None:
        if "/" in location:
            country, _, city = location.partition("/")
            if not country.strip() or not city.strip():
                raise CliError(f'"{location}": expected COUNTRY/CITY', EXIT_USAGE)
            options["country"], options["city"] = country.strip(), city.strip()
        elif _HOSTNAME.match(location):
            options["server"] = location
        elif await _is_country(client, location):
            options["country"] = location
        elif await _is_group(client, location):
            if group is not None:
                raise CliError(
                    f'"{location}" is a server group; give one group, not --group too', EXIT_USAGE
                )
            group = location
        else:
            options["city"] = location
    if group is not None:
        options["group"] = group
    if server is not None:
        if "server" in options:
            raise CliError("give the server either as LOCATION or with --server", EXIT_USAGE)
        options["server"] = server
    return {key: Variant("s", value) for key, value in options.items()}


async def _is_country(client: Client, text: str) -> bool:
    wanted = text.strip().casefold()
    (countries,) = await client.call("ListCountries")
    return any(wanted in (str(field).casefold() for field in row) for row in countries)


async def _is_group(client: Client, text: str) -> bool:
    (groups,) = await client.call("ListGroups")
    known: set[str] = set()
    for identifier, title in groups:
        known |= group_names(str(identifier), str(title))
    return normalize(text) in known


# Queued by _StateFollower when the daemon leaves the bus; never a State value.
_DAEMON_LEFT = ""


class _StateFollower:
    """Collects State changes so a command can wait for a final state."""

    def __init__(self) -> None:
        self.states: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._cause = ""

    def __call__(self, changed: dict[str, object]) -> None:
        if "ErrorCause" in changed:
            self._cause = str(changed["ErrorCause"])
        if "State" in changed:
            self.states.put_nowait((str(changed["State"]), self._cause))

    def daemon_left(self) -> None:
        self.states.put_nowait((_DAEMON_LEFT, ""))

    async def start(self, client: Client) -> None:
        await client.watch(self)
        # Without this a wait would outlast a daemon that stopped or crashed.
        await client.watch_owner(self.daemon_left)


async def _wait_for(
    client: Client,
    follower: _StateFollower,
    goal: str,
    *,
    before: str,
    limit: float,
    quiet: bool,
) -> int:
    """Follow State until ``goal`` or "error" (after the request took effect), print progress."""
    seen_progress = False
    current = str(await client.get("State"))
    pending: list[tuple[str, str]] = [(current, str(await client.get("ErrorCause")))]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last_printed = ""
    while True:
        for state, cause in pending:
            if state in _WAITING_STATES:
                seen_progress = True
            if state != last_printed and state in _WAITING_STATES and not quiet:
                _print(f"{state}...")
            last_printed = state
            if state == goal and (seen_progress or before != goal):
                return EXIT_OK
            if state == "error" and (seen_progress or before != "error"):
                cause = cause or str(await client.get("ErrorCause"))
                verb = "connect" if goal == "connected" else "disconnect"
                raise CliError(f"{verb} failed: {cause or 'unknown cause'}", EXIT_FAILURE)
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise CliError(
                f"still {state_label(current)} after {limit:g}s "
                f'(the daemon keeps trying; see "{PROG} status")',
                EXIT_FAILURE,
            )
        try:
            async with asyncio.timeout(remaining):
                item = await follower.states.get()
        except TimeoutError:
            continue
        if item[0] == _DAEMON_LEFT:
            raise CliError(f"nordwgd left the bus while {state_label(current)}", EXIT_NO_DAEMON)
        current = item[0]
        pending = [item]


async def cmd_connect(client: Client, args: argparse.Namespace) -> int:
    options = await _location_options(client, args)
    return await _request_connection(client, args, "Connect", "a{sv}", [options])


async def cmd_reconnect(client: Client, args: argparse.Namespace) -> int:
    return await _request_connection(client, args, "Reconnect")


async def _request_connection(
    client: Client,
    args: argparse.Namespace,
    member: str,
    signature: str = "",
    body: Sequence[Any] = (),
) -> int:
    """Call ``member``, then (unless --no-wait) follow State until connected."""
    follower = _StateFollower()
    if not args.no_wait:
        await follower.start(client)
    before = str(await client.get("State"))
    await client.call(member, signature, body)
    if args.no_wait:
        _print(f"{member.lower()} requested")
        return EXIT_OK
    await _wait_for(client, follower, "connected", before=before, limit=args.timeout, quiet=False)
    properties = await client.properties()
    server = properties.get("Server")
    name = printable(server.get("hostname", "")) if isinstance(server, dict) else ""
    _print(f"connected to {name}" if name else "connected")
    return EXIT_OK


async def cmd_disconnect(client: Client, args: argparse.Namespace) -> int:
    follower = _StateFollower()
    await follower.start(client)
    before = str(await client.get("State"))
    await client.call("Disconnect")
    if before != "disconnected":  # already there: no transition to wait for
        await _wait_for(
            client, follower, "disconnected", before=before, limit=args.timeout, quiet=True
        )
    lockdown = await client.get("Lockdown")
    _print("disconnected" + (" (lockdown on: traffic stays blocked)" if lockdown else ""))
    return EXIT_OK


def _simple(member: str, done: str) -> Callable[[Client, argparse.Namespace], Any]:
    async def command(client: Client, args: argparse.Namespace) -> int:
        await client.call(member)
        _print(done)
        return EXIT_OK

    return command


async def cmd_check(client: Client, args: argparse.Namespace) -> int:
    healthy, details = await client.call("CheckHealth")
    result = {"healthy": bool(healthy), "details": plain(details)}
    if args.json:
        _print(to_json(result))
    else:
        _print("healthy" if healthy else "unhealthy")
        text = format_mapping(plain(details))  # type: ignore[arg-type]
        if text:
            _print(text)
    return EXIT_OK if healthy else EXIT_FAILURE


async def cmd_countries(client: Client, args: argparse.Namespace) -> int:
    (rows,) = await client.call("ListCountries")
    if args.json:
        _print(to_json([{"code": c, "name": n, "id": i} for c, n, i in rows]))
    else:
        _print(format_table(("CODE", "COUNTRY", "ID"), rows))
    return EXIT_OK


async def cmd_cities(client: Client, args: argparse.Namespace) -> int:
    (rows,) = await client.call("ListCities", "s", [args.country])
    if args.json:
        _print(to_json([{"name": n, "id": i} for n, i in rows]))
    else:
        _print(format_table(("CITY", "ID"), rows))
    return EXIT_OK


async def cmd_groups(client: Client, args: argparse.Namespace) -> int:
    (rows,) = await client.call("ListGroups")
    if args.json:
        _print(to_json([{"identifier": g, "title": t} for g, t in rows]))
    else:
        # The names people know and type ("P2P", "Double VPN"); the API identifier works too.
        _print(format_table(("GROUP", "IDENTIFIER"), [(t, g) for g, t in rows]))
    return EXIT_OK


async def cmd_servers(client: Client, args: argparse.Namespace) -> int:
    filters = {
        key: Variant("s", value)
        for key, value in (("country", args.country), ("city", args.city), ("group", args.group))
        if value
    }
    (servers,) = await client.call("ListServers", "a{sv}", [filters])
    rows = plain(servers)
    assert isinstance(rows, list)
    if args.limit:
        rows = rows[: args.limit]
    if args.json:
        _print(to_json(rows))
        return EXIT_OK
    table = [
        (s.get("hostname", ""), s.get("country", ""), s.get("city", ""), f"{s.get('load', '')}%")
        for s in rows
    ]
    _print(format_table(("SERVER", "COUNTRY", "CITY", "LOAD"), table))
    return EXIT_OK


def _read_token(from_stdin: bool) -> str:
    if from_stdin:
        token = sys.stdin.readline().strip()
    else:
        if not sys.stdin.isatty():
            raise CliError("no terminal to ask for the token; use --stdin", EXIT_USAGE)
        token = getpass.getpass("NordVPN access token: ").strip()
    if not token:
        raise CliError("the token is empty", EXIT_USAGE)
    return token


def _read_login(from_stdin: bool) -> tuple[str, str]:
    """A PIA username and password: two lines on stdin, or asked for (the password unseen)."""
    if from_stdin:
        username = sys.stdin.readline().strip()
        password = sys.stdin.readline().rstrip("\n")
    else:
        if not sys.stdin.isatty():
            raise CliError("no terminal to ask for the login; use --stdin", EXIT_USAGE)
        username = input("PIA username: ").strip()
        password = getpass.getpass("PIA password: ")
    if not username or not password:
        raise CliError("the username or the password is empty", EXIT_USAGE)
    return username, password


async def _provider(client: Client) -> str:
    try:
        return str(await client.get("Provider"))
    except CliError:
        return "nordvpn"  # a daemon from before the property knew only NordVPN


async def cmd_login(client: Client, args: argparse.Namespace) -> int:
    if await _provider(client) == "pia":
        username, password = _read_login(args.stdin)
        await client.call("SetLogin", "ss", [username, password])
    else:
        await client.call("SetToken", "s", [_read_token(args.stdin)])
    _print("logged in")
    return EXIT_OK


async def cmd_set(client: Client, args: argparse.Namespace) -> int:
    member = {"lockdown": "SetLockdown", "allow-lan": "SetAllowLan"}[args.setting]
    value = args.value == "on"
    await client.call(member, "b", [value])
    _print(f"{args.setting}: {on_off(value)}")
    return EXIT_OK


async def cmd_diagnose(client: Client, args: argparse.Namespace) -> int:
    (report,) = await client.call("Diagnose", "s", ["full" if args.full else "basic"])
    values = plain(report)
    assert isinstance(values, dict)
    _print(to_json(values) if args.json else format_mapping(values))
    return EXIT_OK


async def cmd_monitor(client: Client, args: argparse.Namespace) -> int:
    gone = asyncio.Event()

    def show(changed: dict[str, object]) -> None:
        if args.json:
            print(to_json(changed).replace("\n", " "), flush=True)
            return
        for name in sorted(changed):
            value = changed[name]
            shown = state_label(value) if name == "State" else printable(value)
            _print(f"{printable(name)}: {shown}")

    await client.watch(show)
    await client.watch_owner(gone.set)
    state = await client.get("State")
    if not args.json:
        _print(f"State: {state_label(state)} (watching; Ctrl-C to stop)")
    await gone.wait()
    raise CliError("nordwgd left the bus", EXIT_NO_DAEMON)


async def cmd_version(client: Client | None, args: argparse.Namespace) -> int:
    _print(f"nordwgctl {__version__}")
    if client is not None:
        with contextlib.suppress(CliError):
            _print(f"nordwgd {await client.get('Version')}")
            return EXIT_OK
    _print("nordwgd not running")
    return EXIT_OK


# Command line ---------------------------------------------------------------------------


def _name(text: str) -> str:
    """A name given on the command line, stripped; an empty one is a usage error."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty (leave it out for the default)")
    return text.strip()


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return value


def _count(text: str) -> int:
    """A whole number, 0 or more (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 or more")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: usage error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Control nordwgd, the NordVPN NordLynx daemon, over D-Bus.",
        epilog=__doc__.split("\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bus", metavar="ADDRESS", help="D-Bus address (default: system bus)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        return command

    status = add("status", cmd_status, "show the connection state")
    status.add_argument("--json", action="store_true", help="all properties as JSON")

    connect = add(
        "connect", cmd_connect, "connect (to a country, city, COUNTRY/CITY, server or group)"
    )
    connect.add_argument("location", nargs="?", type=_name, metavar="LOCATION")
    connect.add_argument(
        "--group", type=_name, metavar="GROUP", help='server group, e.g. "P2P", "Double VPN"'
    )
    connect.add_argument("--server", type=_name, metavar="HOST", help="server hostname")
    connect.add_argument("--no-wait", action="store_true", help="return once accepted")
    connect.add_argument("--timeout", type=_seconds, default=60.0, help="seconds (default 60)")

    disconnect = add("disconnect", cmd_disconnect, "disconnect")
    disconnect.add_argument("--timeout", type=_seconds, default=30.0, help="seconds (default 30)")
    reconnect = add("reconnect", cmd_reconnect, "move to another server")
    reconnect.add_argument("--no-wait", action="store_true", help="return once accepted")
    reconnect.add_argument("--timeout", type=_seconds, default=60.0, help="seconds (default 60)")
    add("renew", _simple("Renew", "renewed"), "refresh credentials and server data")
    check = add("check", cmd_check, "check the tunnel's health now")
    check.add_argument("--json", action="store_true")

    countries = add("countries", cmd_countries, "list countries")
    countries.add_argument("--json", action="store_true")
    cities = add("cities", cmd_cities, "list the cities of a country")
    cities.add_argument("country", metavar="COUNTRY")
    cities.add_argument("--json", action="store_true")
    groups = add("groups", cmd_groups, "list server groups")
    groups.add_argument("--json", action="store_true")
    servers = add("servers", cmd_servers, "list servers, least loaded first")
    servers.add_argument("--country", metavar="COUNTRY")
    servers.add_argument("--city", metavar="CITY")
    servers.add_argument("--group", metavar="GROUP")
    servers.add_argument("--limit", type=_count, default=0, metavar="N", help="0: all")
    servers.add_argument("--json", action="store_true")

    login = add(
        "login",
        cmd_login,
        "store a NordVPN access token, or a PIA username and password (asked for, never arguments)",
    )
    login.add_argument(
        "--stdin", action="store_true", help="read the token (PIA: username, password) from stdin"
    )
    add("logout", _simple("Logout", "logged out"), "forget the stored token or login")

    setting = add("set", cmd_set, "change a setting")
    setting.add_argument("setting", choices=("lockdown", "allow-lan"))
    setting.add_argument("value", choices=("on", "off"))

    diagnose = add("diagnose", cmd_diagnose, "network diagnostics")
    diagnose.add_argument("--full", action="store_true", help="interfaces, firewall, routes...")
    diagnose.add_argument("--json", action="store_true")

    monitor = add("monitor", cmd_monitor, "print state changes as they happen")
    monitor.add_argument("--json", action="store_true", help="one JSON object per change")
    add("version", cmd_version, "show client and daemon versions")
    cli_split.add_commands(add)
    return parser


async def _run(args: argparse.Namespace) -> int:
    if args.command == "version":
        try:
            client: Client | None = await Client.open(args.bus)
        except CliError:
            client = None
        try:
            return await cmd_version(client, args)
        finally:
            if client is not None:
                client.close()
    client = await Client.open(args.bus)
    try:
        result: int = await args.handler(client, args)
        return result
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except CliError as error:
        print(terminal_safe(f"{PROG}: {error}"), file=sys.stderr)
        return error.code
    except errors.NordwgdError as error:
        # The message may quote what the API or the user gave: escaped like all output.
        print(terminal_safe(f"{PROG}: {_describe(error)}"), file=sys.stderr)
        return _exit_code_for(error)
    except KeyboardInterrupt:
        return 130
    except (EOFError, BrokenPipeError):
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
