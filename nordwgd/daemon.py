"""The ``nordwgd`` entry point: config, logging, the Manager, and the D-Bus service.

Start-up order matters for a kill switch: the Manager applies its initial firewall policy in
``start()`` before the service announces itself (READY=1), so nothing leaks while booting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from dbus_fast import BusType, DBusError, Message, MessageType, NameFlag, RequestNameReply

from nordwgd import __version__, systemd
from nordwgd.bus import BUS_NAME
from nordwgd.bus.polkit import Authorizer
from nordwgd.bus.service import ManagerFacade, ServiceBus, export_manager
from nordwgd.bus.sleep import SleepWatcher
from nordwgd.bus.split import export_split
from nordwgd.config import DEFAULT_CONFIG_PATH, Config, load_config
from nordwgd.errors import ConfigError, NordwgdError
from nordwgd.netwatch import UplinkWatcher
from nordwgd.split import bridges
from nordwgd.split.control import SplitControl
from nordwgd.split.excluded import ExcludedApps
from nordwgd.states import Blocking, State
from nordwgd.status import Status

logger = logging.getLogger("nordwgd.daemon")

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_CONFIG = 78  # sysexits.h EX_CONFIG: systemd shows it as "CONFIG" and does not loop on it
LOG_LEVELS = ("debug", "info", "warning", "error")
# A local root-only command, not a daemon method: its output holds the private key.
EXPORT_COMMAND = "export-config"


class StartupError(Exception):
    """The daemon cannot start (bus unreachable, name taken); the message says why."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nordwgd",
        description="NordVPN NordLynx (WireGuard) daemon with a kill-switch firewall.",
        epilog=f"'nordwgd {EXPORT_COMMAND} --help': write a wg-quick file for a server (root).",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"config file (default: {DEFAULT_CONFIG_PATH}; missing = built-in defaults)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        metavar="LEVEL",
        help="one of: " + ", ".join(LOG_LEVELS) + " (default: log_level from the config)",
    )
    parser.add_argument("--version", action="version", version=f"nordwgd {__version__}")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def status_line(status: Status) -> str:
    """One line for `systemctl status`: the state, the server, and what the firewall does."""
    state = status.state.value
    server = status.server
    hostname = server.hostname if server is not None else ""
    place = f" ({server.city}, {server.country})" if server is not None and server.city else ""
    traffic = {
        Blocking.OPEN: "traffic open",
        Blocking.BLOCKED: "traffic outside the tunnel blocked",
        Blocking.BLOCK_FAILED: "FIREWALL FAILED, check the journal",
    }[status.blocking]
    if status.state == State.CONNECTED:
        return f"connected to {hostname}{place}; {traffic}"
    if status.state in (State.CONNECTING, State.RECONNECTING) and hostname:
        return f"{state} to {hostname}{place}; {traffic}"
    if status.state == State.ERROR:
        return f"error: {status.error_cause.value or 'unknown'}; {traffic}"
    return f"{state}; {traffic}"


class DaemonManager(ManagerFacade, Protocol):
    def excluded_apps(self) -> ExcludedApps | None: ...
    async def start(self) -> None: ...
    async def stop(self, *, keep_blocking: bool | None = None) -> bool: ...
    def trigger_health_check(self, reason: str = ...) -> None: ...
    def alive(self) -> bool: ...


def create_manager(config: Config) -> DaemonManager:
    from nordwgd.manager import Manager

    manager: DaemonManager = Manager(config)
    return manager


async def _name_is_taken(bus: ServiceBus) -> bool:
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="NameHasOwner",
            signature="s",
            body=[BUS_NAME],
        )
    )
    if reply is None or reply.message_type is MessageType.ERROR:
        raise StartupError(f"the bus daemon did not answer NameHasOwner({BUS_NAME})")
    return bool(reply.body[0])


async def _connect_bus() -> ServiceBus:
    try:
        bus = await ServiceBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, EOFError, DBusError, ValueError) as error:
        raise StartupError(f"cannot connect to the system bus: {error}") from None
    assert isinstance(bus, ServiceBus)
    return bus


async def watch_network(
    bus: ServiceBus, manager: DaemonManager, config: Config
) -> list[Callable[[], Awaitable[None]]]:
    """Check the tunnel when the uplink changes or the machine resumes; returns the stoppers.

    Neither watch is essential: one that cannot start is logged, and the periodic health
    check still runs.
    """
    stoppers: list[Callable[[], Awaitable[None]]] = []
    uplink = UplinkWatcher(
        lambda reason: manager.trigger_health_check(f"uplink changed ({reason})"),
        ignore={config.network.interface},
    )
    try:
        await uplink.start()
    except OSError as error:
        logger.warning("not watching the uplink: %s", error)
    else:
        stoppers.append(uplink.stop)
    sleep = SleepWatcher(bus, lambda: manager.trigger_health_check("resumed from sleep"))
    try:
        if await sleep.start():
            stoppers.append(sleep.stop)
    except (DBusError, OSError, EOFError) as error:
        logger.warning("not watching for resume from sleep: %s", error)
    return stoppers


async def serve_split_tunnel(
    bus: ServiceBus, manager: DaemonManager, config: Config
) -> SplitControl | None:
    """Export the SplitTunnel interface (when the engine has an excluded slice).

    The slice is not made here: the first exclusion makes it (systemd starts a scope's slice),
    so a host that excludes nothing carries no split rules at all.
    """
    excluded = manager.excluded_apps()
    if excluded is None:
        return None
    split = SplitControl(excluded)
    network = config.network
    export_split(
        bus,
        split,
        Authorizer(bus),
        lambda: list(bridges.present(config.split.bridges)),
        network.namespace if network.mode == "namespace" else "",
    )
    return split


async def check_config_on_hangup(path: Path, running: Config) -> None:
    """SIGHUP: the config is not reloaded; say whether the file differs and whether it is valid.

    Applying a new config means a new firewall policy, interface and routes: a restart does
    that in the one order that cannot leak (docs in README.md, "Signals").
    """
    try:
        found = await asyncio.to_thread(load_config, path)
    except ConfigError as error:
        logger.warning("SIGHUP: not reloading; the config file has an error: %s", error)
        return
    if found == replace(running, source=found.source):
        logger.info("SIGHUP: not reloading; %s is unchanged", path)
    else:
        logger.warning(
            "SIGHUP: not reloading; %s changed: restart nordwgd to apply it "
            "(systemctl restart nordwgd)",
            path,
        )


async def run(config: Config, config_path: Path | None = None) -> int:
    """Serve until SIGTERM/SIGINT (exit 0) or until the bus goes away (exit 1).

    SIGHUP does not stop the daemon: it checks ``config_path`` and logs what it found.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    hangups: set[asyncio.Task[None]] = set()

    def hangup() -> None:
        task = loop.create_task(
            check_config_on_hangup(config_path or config.source or DEFAULT_CONFIG_PATH, config)
        )
        hangups.add(task)
        task.add_done_callback(hangups.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)

    bus = await _connect_bus()
    try:
        # Checked before touching the system: another nordwgd owns the firewall table.
        if await _name_is_taken(bus):
            raise StartupError(f"the bus name {BUS_NAME} is already owned (is nordwgd running?)")
        manager = create_manager(config)
        await manager.start()
        export_manager(bus, manager, Authorizer(bus))
        split = await serve_split_tunnel(bus, manager, config)
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            await manager.stop(keep_blocking=True)
            raise StartupError(f"cannot own the bus name {BUS_NAME} ({reply.name})")
        # Pinged from the event loop, so a stalled loop stops the pings by itself.
        watchdog = systemd.Watchdog(lambda: bus.connected and manager.alive())
        watchdog.start()
        stop_watching = await watch_network(bus, manager, config)
        systemd.ready(f"{status_line(manager.status())}; serving {BUS_NAME}")

        def show_status(status: Status) -> None:
            systemd.status(status_line(status))

        manager.subscribe(show_status)
        logger.info("nordwgd %s ready on %s", __version__, BUS_NAME)

        stop_wait = asyncio.ensure_future(stop_requested.wait())
        bus_gone = asyncio.ensure_future(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        await asyncio.wait({stop_wait, bus_gone}, return_when=asyncio.FIRST_COMPLETED)
        exit_code = EX_OK if stop_requested.is_set() else EX_FAILURE
        if exit_code != EX_OK:
            logger.error("lost the connection to the system bus; stopping")
        stop_wait.cancel()

        systemd.stopping("stopping")
        logger.info("stopping")
        await watchdog.stop()
        for stop in stop_watching:
            with contextlib.suppress(DBusError, OSError, EOFError):
                await stop()
        # Decided after the commands accepted before the stop: a Connect among them is kept.
        kept = await manager.stop()
        logger.info("stopped (keep_blocking=%s)", kept)
        if split is not None:
            split.close()
        if bus.connected:
            with contextlib.suppress(DBusError, OSError, EOFError):
                await bus.release_name(BUS_NAME)
        bus_gone.cancel()
        return exit_code
    finally:
        bus.disconnect()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == [EXPORT_COMMAND]:
        from nordwgd.provider.nordvpn import export

        return export.main(arguments[1:])
    args = parse_args(arguments)
    # Until the event loop handles it, a SIGHUP (the default action ends the process) is ignored.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"nordwgd: {error}", file=sys.stderr)
        return EX_CONFIG
    systemd.setup_logging(args.log_level or config.log_level)
    try:
        return asyncio.run(run(config, args.config))
    except StartupError as error:
        print(f"nordwgd: {error}", file=sys.stderr)
        logger.error("%s", error)
        return EX_FAILURE
    except NordwgdError as error:
        print(f"nordwgd: cannot start: {error.nick}: {error}", file=sys.stderr)
        logger.error("cannot start: %s: %s", error.nick, error)
        return EX_FAILURE
    except KeyboardInterrupt:
        return EX_OK
