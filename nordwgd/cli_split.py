"""``nordwgctl exclude`` and ``nordwgctl include``: which programs bypass or must use the tunnel.

exclude -- COMMAND...   the daemon asks systemd to put this process into a new scope in the
                        excluded slice, then it becomes COMMAND (its children stay in the scope)
exclude --unit NAME     the running unit's processes move into the slice (until it restarts)
exclude --remove UNIT   a unit of the slice goes back into the tunnel
exclude --list          the units in the slice
include -- COMMAND...   runs COMMAND in the tunnel's network namespace (namespace mode), as the
                        calling user, through systemd-run: the tunnel or nothing
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

from nordwgd import errors
from nordwgd.bus.convert import plain
from nordwgd.cli_format import terminal_safe

SPLIT_INTERFACE = "org.nordwgd.Nordwgd1.SplitTunnel"
PROPERTIES = "org.freedesktop.DBus.Properties"
_UNKNOWN_INTERFACE = ("UnknownInterface", "UnknownProperty", "InvalidArgs")
_PASSED_ENVIRONMENT = ("HOME", "LANG", "TERM", "USER", "LOGNAME", "PATH")


class SplitClient(Protocol):
    async def call(
        self, member: str, signature: str = "", body: Sequence[Any] = (), *, interface: str = ...
    ) -> list[Any]: ...


Adder = Callable[[str, Any, str], argparse.ArgumentParser]


def add_commands(add: Adder) -> None:
    exclude = add("exclude", cmd_exclude, "run a command (or move a unit) outside the tunnel")
    what = exclude.add_mutually_exclusive_group()
    what.add_argument("--unit", metavar="NAME", help="a running unit, e.g. steam.service")
    what.add_argument("--remove", metavar="UNIT", help="put a unit of the slice back")
    what.add_argument("--list", action="store_true", help="list what is excluded")
    exclude.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    include = add("include", cmd_include, "run a command that may only use the tunnel")
    include.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND")


def _print(text: str) -> None:
    # Unit names and scopes come from the daemon: escaped like all of nordwgctl's output.
    print(terminal_safe(text), flush=True)


def _command(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return command


async def split_properties(client: SplitClient, *, quiet: bool = False) -> dict[str, object]:
    """The SplitTunnel properties, {} from a daemon without the interface.

    ``quiet``: {} for any failure too (``status`` shows the rest rather than nothing).
    """
    try:
        (values,) = await client.call("GetAll", "s", [SPLIT_INTERFACE], interface=PROPERTIES)
    except Exception as error:
        if quiet or any(name in str(error) for name in _UNKNOWN_INTERFACE):
            return {}
        raise
    result = plain(values)
    return dict(result) if isinstance(result, Mapping) else {}


def format_split(properties: Mapping[str, object]) -> str:
    """Lines for ``nordwgctl status`` (empty when there is nothing to say)."""
    lines = []
    units = properties.get("ExcludedUnits")
    if isinstance(units, list) and units:
        lines.append(f"Excluded:   {', '.join(map(str, units))}")
    bridges = properties.get("LocalBridges")
    if isinstance(bridges, list) and bridges:
        lines.append(f"Bridges:    {', '.join(map(str, bridges))} (through the tunnel)")
    return "".join(f"\n{line}" for line in lines)


async def cmd_exclude(client: SplitClient, args: argparse.Namespace) -> int:
    command = _command(args)
    if args.unit or args.remove or args.list:
        if command:
            raise errors.InvalidArgument("exclude: give a command or an option, not both")
        if args.unit:
            (scope,) = await client.call("ExcludeUnit", "s", [args.unit], interface=SPLIT_INTERFACE)
            _print(
                f"{args.unit} excluded as {scope} until it restarts (for good: give it "
                "Slice= of the excluded slice in a drop-in)"
            )
        elif args.remove:
            await client.call("RemoveExcluded", "s", [args.remove], interface=SPLIT_INTERFACE)
            _print(f"{args.remove} goes through the tunnel again")
        else:
            units = (await split_properties(client)).get("ExcludedUnits") or []
            assert isinstance(units, list)
            _print("\n".join(map(str, units)) if units else "nothing is excluded")
        return 0
    if not command:
        raise errors.InvalidArgument("exclude: give a command after --, or --unit/--remove/--list")
    program = shutil.which(command[0])
    if program is None:
        raise errors.InvalidArgument(f"exclude: {command[0]}: command not found")
    await client.call("ExcludeCaller", "s", [" ".join(command)[:200]], interface=SPLIT_INTERFACE)
    _exec(program, command)


async def cmd_include(client: SplitClient, args: argparse.Namespace) -> int:
    command = _command(args)
    if not command:
        raise errors.InvalidArgument("include: give a command after --")
    namespace = (await split_properties(client)).get("TunnelNamespace") or ""
    if not namespace:
        raise errors.InvalidArgument(
            'include needs namespace mode ([network] mode = "namespace" in nordwgd.toml)'
        )
    if not Path(f"/run/netns/{namespace}").exists():  # noqa: ASYNC240 (one stat, nothing else runs)
        raise errors.NordwgdError(
            f"the tunnel's namespace {namespace} does not exist: connect first"
        )
    argv = include_argv(
        str(namespace), command, uid=os.getuid(), gid=os.getgid(), tty=sys.stdin.isatty()
    )
    _exec(argv[0], argv)


def include_argv(
    namespace: str, command: Sequence[str], *, uid: int, gid: int, tty: bool
) -> list[str]:
    """The systemd-run command that runs ``command`` as ``uid`` inside the tunnel's namespace."""
    resolv = Path("/etc/netns") / namespace / "resolv.conf"
    argv = [
        shutil.which("systemd-run") or "systemd-run",
        "--quiet",
        "--collect",
        "--wait",
        "--same-dir",
        "--pty" if tty else "--pipe",
        f"--uid={uid}",
        f"--gid={gid}",
        "--property",
        f"NetworkNamespacePath=/run/netns/{namespace}",
        # systemd does not apply /etc/netns itself: the tunnel resolvers as resolv.conf
        "--property",
        f"BindReadOnlyPaths={resolv}:/etc/resolv.conf",
        "--property",
        "Description=Included in the VPN tunnel",
    ]
    argv += [f"--setenv={name}" for name in _PASSED_ENVIRONMENT if name in os.environ]
    return [*argv, "--", *command]


def _exec(program: str, argv: list[str]) -> NoReturn:
    sys.stdout.flush()
    try:
        os.execv(program, argv)  # noqa: S606 (the user's own command, as given, no shell)
    except OSError as error:
        raise errors.NordwgdError(f"cannot run {argv[0]}: {error.strerror}") from None
