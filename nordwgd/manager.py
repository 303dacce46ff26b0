"""The core facade: everything the D-Bus layer (and the CLI through it) can ask of nordwgd.

The Manager wires the parts together (config, the provider that ``config.provider`` names,
engine, state machine), checks requests before they are accepted, and keeps two small files:

- ``state_dir/settings.json``: the Lockdown and AllowLan choices (no secrets), which override
  the config's defaults across restarts;
- ``runtime_dir/target.json``: the Connect options while a tunnel is wanted. A daemon that died
  (or was restarted with the kill switch kept) finds it at ``start()`` and connects again,
  blocking in between. It is removed by Disconnect and by a stop that opens the firewall.

Both fail closed: a file that exists but cannot be read means Lockdown (settings) or a wanted
tunnel to the default location (target), never an open firewall.

Logout deletes the stored token but, like NetworkManager removing a connection's secrets, leaves
an established tunnel up until Disconnect; the next connect or renew then needs a token again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nordwgd import __version__, diagnose
from nordwgd.config import Config
from nordwgd.engine import Engine, SystemEngine
from nordwgd.errors import InvalidArgument, NordwgdError
from nordwgd.files import remove, write_atomic
from nordwgd.machine import Companion, Machine, Tuning
from nordwgd.model import Pinholes, TunnelParams
from nordwgd.provider.base import Provider
from nordwgd.provider.factory import ProviderFactory, open_provider
from nordwgd.sharedcall import SharedResults
from nordwgd.split.excluded import ExcludedApps
from nordwgd.states import Blocking, State
from nordwgd.status import (
    RECENT_LIMIT,
    Location,
    Status,
    location_properties,
    server_properties,
)
from nordwgd.target import Target
from nordwgd.token import store_token, validate_token

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
RECENT_FILE = "recent.json"
TARGET_FILE = "target.json"
LIST_SERVERS_DEFAULT = 20
# ListServers and Diagnose are open to every local user: answers are shared and kept briefly
# (see sharedcall.py), so asking in a loop costs the daemon and the API next to nothing.
LIST_SERVERS_TTL = 30.0
PUBLIC_ADDRESS_TTL = 10.0


@dataclass(frozen=True)
class Settings:
    lockdown: bool
    allow_lan: bool


UNKNOWN_SETTINGS = Settings(lockdown=True, allow_lan=False)


def load_settings(config: Config) -> Settings:
    """The saved choices, else the config's defaults.

    A file that exists but cannot be read fails closed: the choice it held is unknown, and it
    may have been Lockdown, so this start blocks (Lockdown on, AllowLan off) until the user
    sets them again, which rewrites the file.
    """
    default = Settings(config.network.lockdown, config.network.allow_lan)
    path = config.paths.state_dir / SETTINGS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable (%s); blocking until the settings are set again", path, error)
        return UNKNOWN_SETTINGS
    if not isinstance(data, dict):
        log.warning("%s: not a JSON object; blocking until the settings are set again", path)
        return UNKNOWN_SETTINGS
    lockdown = data.get("lockdown", default.lockdown)
    allow_lan = data.get("allow_lan", default.allow_lan)
    return Settings(
        lockdown if isinstance(lockdown, bool) else UNKNOWN_SETTINGS.lockdown,
        allow_lan if isinstance(allow_lan, bool) else UNKNOWN_SETTINGS.allow_lan,
    )


def _write_json(path: Path, data: object, mode: int) -> None:
    """Replace ``path`` atomically with ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(data, sort_keys=True) + "\n").encode(), mode=mode)


def save_settings(config: Config, settings: Settings) -> None:
    data = {"lockdown": settings.lockdown, "allow_lan": settings.allow_lan}
    _write_json(config.paths.state_dir / SETTINGS_FILE, data, 0o644)


def load_recent(config: Config) -> tuple[Location, ...]:
    """The recently used locations saved by an earlier process; none when unreadable."""
    path = config.paths.state_dir / RECENT_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable (%s); starting without recent locations", path, error)
        return ()
    entries = data.get("locations") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        log.warning("%s: no locations list; starting without recent locations", path)
        return ()
    keys = ("country", "country_code", "city")
    return tuple(
        Location(*(entry[key] for key in keys))
        for entry in entries[:RECENT_LIMIT]
        if isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in keys)
    )


def save_recent(config: Config, recent: tuple[Location, ...]) -> None:
    data = {"locations": [location_properties(location) for location in recent]}
    _write_json(config.paths.state_dir / RECENT_FILE, data, 0o644)


def read_target(config: Config) -> dict[str, str] | None:
    """The Connect options recorded by a process that wanted a tunnel, or None.

    An unreadable record gives the empty options (the configured default location).
    """
    path = config.paths.runtime_dir / TARGET_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        # The record exists only while a tunnel is wanted: keep blocking and connect to the
        # configured default rather than open the firewall.
        log.warning("%s: unreadable (%s); connecting to the default location", path, error)
        return {}
    options = data.get("options") if isinstance(data, dict) else None
    if not isinstance(options, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in options.items()
    ):
        log.warning("%s: no options object; connecting to the default location", path)
        return {}
    return dict(options)


def write_target(config: Config, target: Target | None) -> None:
    path = config.paths.runtime_dir / TARGET_FILE
    if target is None:
        remove(path)
    else:
        _write_json(path, {"options": dict(target.options)}, 0o644)


class Manager:
    """Create, ``await start()``, serve, ``await stop(keep_blocking=...)``."""

    def __init__(
        self,
        config: Config,
        *,
        engine_factory: Callable[[Config], Engine] | None = None,
        tuning: Tuning | None = None,
        provider_factory: ProviderFactory = open_provider,
    ) -> None:
        self._config = config
        self._engine_factory = engine_factory
        self._tuning = tuning or Tuning()
        self._provider_factory = provider_factory
        self._planner: Provider | None = None
        self._machine: Machine | None = None
        self._engine: Engine | None = None
        self._subscribers: list[Callable[[Status], None]] = []
        self._triggered_check: asyncio.Task[None] | None = None
        self._triggered_checks = 0
        self._policy_refreshes: set[asyncio.Task[None]] = set()
        self._server_listings: SharedResults[str, list[dict[str, object]]] = SharedResults(
            ttl=LIST_SERVERS_TTL, limit=2, max_entries=16
        )
        self._public_addresses: SharedResults[tuple[str, str, int], dict[str, object]] = (
            SharedResults(ttl=PUBLIC_ADDRESS_TTL, limit=1, max_entries=4)
        )
        settings = Settings(config.network.lockdown, config.network.allow_lan)
        self._initial = Status(
            blocking=Blocking.BLOCKED if settings.lockdown else Blocking.OPEN,
            lockdown=settings.lockdown,
            allow_lan=settings.allow_lan,
            mode=config.network.mode,
            version=__version__,
            provider=config.provider,
        )

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Undo a killed process's leftovers, apply the initial policy, resume a wanted tunnel."""
        config = self._config
        self._planner = await self._provider_factory(config, self._open_pinholes)
        settings = await asyncio.to_thread(load_settings, config)
        recent = await asyncio.to_thread(load_recent, config)
        engine = self._make_engine()
        self._engine = engine
        try:
            await engine.recover()
        except NordwgdError as error:
            # The firewall below still goes up; leftovers are reported, not fatal.
            log.error("could not undo what an earlier process left: %s", error)
        resume = await self._resume_target()
        self._machine = Machine(
            config,
            engine,
            self._planner,
            version=__version__,
            lockdown=settings.lockdown,
            allow_lan=settings.allow_lan,
            tuning=self._tuning,
            on_target=self._record_target,
            on_settings=self._save_settings,
            recent_locations=recent,
            on_recent=self._save_recent,
            companion_factory=self._companion_factory(),
        )
        for callback in self._subscribers:
            self._machine.subscribe(callback)
        await self._machine.start(resume=resume)

    def _make_engine(self) -> Engine:
        if self._engine_factory is not None:
            return self._engine_factory(self._config)
        provider = self._planner
        if provider is None or provider.name == "nordvpn":
            return SystemEngine(self._config)
        # The provider's own servers, not [api] addresses, are what connecting must reach.
        return SystemEngine(
            self._config,
            pinholes=lambda: provider.pinholes,
            forwarded_port=lambda: self.status().forwarded_port,
        )

    async def _open_pinholes(self, pinholes: Pinholes) -> None:
        """The provider is about to reach other servers of its own: let them through."""
        if self._machine is not None:
            await self._machine.refresh_policy()

    def _companion_factory(
        self,
    ) -> Callable[[TunnelParams, str, Callable[[int], None]], Companion | None] | None:
        config = self._config
        if config.provider != "pia" or not config.port_forward.enabled:
            return None
        from nordwgd.provider.pia.portforward import PortForwarder
        from nordwgd.provider.pia.provider import PiaPlanner

        pia = self._planner
        assert isinstance(pia, PiaPlanner)
        namespace = config.network.namespace if config.network.mode == "namespace" else None

        def forwarder(
            params: TunnelParams, interface: str, publish: Callable[[int], None]
        ) -> Companion | None:
            host = pia.forwarding
            if host is None:
                return None

            def on_port(port: int) -> None:
                publish(port)
                if port and self._machine is not None:
                    # Let the new port in from the tunnel (the policy reads the status).
                    task = asyncio.get_running_loop().create_task(self._machine.refresh_policy())
                    self._policy_refreshes.add(task)
                    task.add_done_callback(self._policy_refreshes.discard)

            return PortForwarder(
                pia.api,
                host.gateway,
                host.cn,
                pia.token,
                config.port_forward,
                interface=interface,
                tunnel_address=str(params.address.ip),
                namespace=namespace,
                state_dir=config.paths.state_dir,
                runtime_dir=config.paths.runtime_dir,
                on_port=on_port,
            )

        return forwarder

    async def _resume_target(self) -> Target | NordwgdError | None:
        """The target a tunnel was wanted for, or the error that makes it unknown now.

        A wanted tunnel whose target cannot be resolved any more (a location mistyped in the
        config, a catalog without it) stays wanted: its record is kept and the machine starts
        in ``error``, blocking, rather than open.
        """
        assert self._planner is not None
        options = await asyncio.to_thread(read_target, self._config)
        if options is None:
            return None
        try:
            target = self._planner.resolve(options)
        except NordwgdError as error:
            log.error("cannot resume the earlier connection (%s): %s", options, error)
            return error
        log.info("resuming the connection of an earlier process: %s", target.describe())
        return target

    async def stop(self, *, keep_blocking: bool | None = None) -> bool:
        """Stop after the commands already accepted; True if the kill switch stays.

        With ``keep_blocking`` None the state after those commands decides
        (``nordwgd.machine.keep_blocking_on_stop``); the tunnel and table then stay for the
        next process, or both go and the record of a wanted tunnel with them.
        """
        if self._triggered_check is not None:
            self._triggered_check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._triggered_check
        kept = keep_blocking if keep_blocking is not None else True
        if self._machine is not None:
            kept = await self._machine.stop(keep_blocking=keep_blocking)
        if not kept:
            await asyncio.to_thread(write_target, self._config, None)
        if self._planner is not None:
            await self._planner.aclose()
        return kept

    async def _record_target(self, target: Target | None) -> None:
        await asyncio.to_thread(write_target, self._config, target)

    async def _save_settings(self, lockdown: bool, allow_lan: bool) -> None:
        await asyncio.to_thread(save_settings, self._config, Settings(lockdown, allow_lan))

    async def _save_recent(self, recent: tuple[Location, ...]) -> None:
        try:
            await asyncio.to_thread(save_recent, self._config, recent)
        except OSError as error:
            # A list for menus: losing it is no reason to fail a connection.
            log.warning("cannot save the recent locations: %s", error)

    def _running(self) -> tuple[Machine, Provider]:
        if self._machine is None or self._planner is None:
            raise NordwgdError("the manager is not started")
        return self._machine, self._planner

    # -- properties ------------------------------------------------------------------------

    def alive(self) -> bool:
        """For the watchdog: the state machine's loop and its tunnel monitor are running."""
        return self._machine is not None and self._machine.alive()

    def excluded_apps(self) -> ExcludedApps | None:
        """The excluded slice of the system engine (None for other engines or before start)."""
        return getattr(self._engine, "excluded", None)

    def status(self) -> Status:
        if self._machine is None:
            return self._initial
        return self._machine.status

    def subscribe(self, callback: Callable[[Status], None]) -> None:
        self._subscribers.append(callback)
        if self._machine is not None:
            self._machine.subscribe(callback)

    async def wait_for(self, predicate: Callable[[Status], bool], limit: float) -> Status:
        """Wait until the status satisfies ``predicate`` (tests, the demo)."""
        machine, _ = self._running()
        return await machine.wait_for(predicate, limit)

    # -- connection ------------------------------------------------------------------------

    async def connect(self, options: Mapping[str, object]) -> None:
        """Accept a Connect request (checked now); clients follow ``State``."""
        machine, planner = self._running()
        target = planner.resolve(options)
        await planner.require_login()
        log.info("connect requested: %s", target.describe())
        # The provider's look-up (a named server) runs in the machine's queue, in order.
        await machine.connect(target, functools.partial(planner.check, target))

    async def disconnect(self) -> None:
        machine, _ = self._running()
        await machine.disconnect()

    async def reconnect(self) -> None:
        """Another server of the current target (the configured default when there is none)."""
        machine, planner = self._running()
        await machine.reconnect(lambda: planner.resolve({}), planner.require_login)

    async def renew(self) -> None:
        """Fresh credentials and server data; a wanted tunnel moves to a fresh server."""
        machine, planner = self._running()
        await machine.renew(planner.refresh)

    async def check_health(self) -> tuple[bool, dict[str, object]]:
        machine, _ = self._running()
        return await machine.check_health()

    def trigger_health_check(self, reason: str = "requested") -> None:
        """React to an uplink change or a resume from sleep (``reason`` says which).

        Connected: check the tunnel now (it counts toward the failover like any check). In
        error with a transient cause: retry now rather than at the end of the backoff.
        Disconnected, or while a connect is under way (it has its own timeouts): nothing.
        """
        machine = self._machine
        if machine is None:
            return
        state = machine.state
        if state == State.CONNECTED:
            if self._triggered_check is None or self._triggered_check.done():
                self._triggered_check = asyncio.get_running_loop().create_task(
                    self._check_after(reason), name="nordwgd-triggered-check"
                )
        elif state == State.ERROR and machine.retry_now():
            log.info("%s: retrying now", reason)
        else:
            log.debug("%s: nothing to check (%s)", reason, state.value)

    async def _check_after(self, reason: str) -> None:
        log.info("%s: checking the tunnel", reason)
        try:
            healthy, details = await self.check_health()
        except NordwgdError as error:
            log.warning("health check after %s failed: %s", reason, error)
            return
        self._triggered_checks += 1
        if healthy:
            log.info("health check after %s: healthy", reason)
        else:
            log.warning("health check after %s: unhealthy (%s)", reason, details.get("reason"))

    # -- settings and credentials ----------------------------------------------------------

    async def set_lockdown(self, enabled: bool, /) -> None:
        machine, _ = self._running()
        await machine.set_lockdown(_boolean(enabled, "lockdown"))

    async def set_allow_lan(self, enabled: bool, /) -> None:
        machine, _ = self._running()
        await machine.set_allow_lan(_boolean(enabled, "allow_lan"))

    async def set_token(self, token: str, /) -> None:
        """Check the token's form and store it (0600); it is used from the next attempt on."""
        if not isinstance(token, str):
            raise InvalidArgument("token must be a string")
        if self._config.provider != "nordvpn":
            raise InvalidArgument(
                f"provider {self._config.provider} logs in with a username and password "
                "(nordwgctl login), not an access token"
            )
        secret = validate_token(token)
        machine, _ = self._running()

        async def store() -> None:
            path = await asyncio.to_thread(store_token, self._config.paths.state_dir, secret)
            if self._config.token_file is not None:
                log.warning(
                    "token stored in %s, but token_file in the config takes precedence", path
                )
            else:
                log.info("token stored in %s", path)

        # In the machine's queue: two changes reach the disk in the order they came.
        await machine.credentials_changed(store)

    async def set_login(self, username: str, password: str, /) -> None:
        """Store a username and password (0600), for providers that log in with them (PIA)."""
        if self._config.provider != "pia":
            raise InvalidArgument(
                f"provider {self._config.provider} logs in with an access token, not a password"
            )
        from nordwgd.provider.pia import login

        if not isinstance(username, str) or not isinstance(password, str):
            raise InvalidArgument("username and password must be strings")
        account = login.validate_login(username, password)
        machine, _ = self._running()

        async def store() -> None:
            path = await asyncio.to_thread(login.store_login, self._config.paths.state_dir, account)
            log.info("PIA login for %s stored in %s", account.username, path)

        await machine.credentials_changed(store)

    async def logout(self) -> None:
        """Forget the stored login; an established tunnel stays up until Disconnect."""
        machine, planner = self._running()
        await machine.credentials_changed(planner.logout)

    # -- catalog and API -------------------------------------------------------------------

    async def list_countries(self) -> list[tuple[str, str, str]]:
        """(code, name, id) of each place to connect to: NordVPN's countries, PIA's regions."""
        _, provider = self._running()
        return await provider.countries()

    async def list_cities(self, country: str, /) -> list[tuple[str, str]]:
        if not isinstance(country, str):
            raise InvalidArgument("country must be a string")
        _, provider = self._running()
        return await provider.cities(country)

    async def list_groups(self) -> list[tuple[str, str]]:
        _, provider = self._running()
        return await provider.groups()

    async def list_servers(self, filter: Mapping[str, object], /) -> list[dict[str, object]]:
        _, planner = self._running()
        options = dict(filter)

        async def listing() -> list[dict[str, object]]:
            servers = await planner.servers(options, LIST_SERVERS_DEFAULT)
            return [server_properties(server) for server in servers]

        return await self._server_listings.get(repr(sorted(options.items())), listing)

    async def get_statistics(self) -> dict[str, object]:
        machine, _ = self._running()
        if machine.state == State.CONNECTED:
            try:
                await machine.statistics()
            except NordwgdError as error:
                log.warning("statistics: %s", error)
        status = machine.status
        return {
            "latest_handshake": status.latest_handshake,
            "rx_bytes": status.rx_bytes,
            "tx_bytes": status.tx_bytes,
            "connected_since": status.connected_since,
            # Checks run because the uplink changed or the machine resumed.
            "triggered_checks": self._triggered_checks,
        }

    async def _public_address(self, *, through_tunnel: bool) -> dict[str, object]:
        _, provider = self._running()
        return await provider.public_address(through_tunnel=through_tunnel)

    async def diagnose(self, mode: str, /) -> dict[str, object]:
        if not isinstance(mode, str):
            raise InvalidArgument("mode must be a string")
        mode = diagnose.check_mode(mode)
        status = self.status()
        report: dict[str, object] = {
            "mode": mode,
            "state": status.state.value,
            "provider": self._config.provider,
        }
        if status.forwarded_port:
            report["forwarded_port"] = status.forwarded_port
        if self._planner is not None:
            connected = status.state == State.CONNECTED
            hostname = status.server.hostname if status.server is not None else ""
            report.update(
                await self._public_addresses.get(
                    (status.state.value, hostname, status.connected_since),
                    lambda: self._public_address(through_tunnel=connected),
                )
            )
        if mode == "full":
            statistics = await self.get_statistics() if self._machine is not None else {}
            status = self.status()
            wireguard: dict[str, object] = {
                "interface": status.interface,
                "address": status.tunnel_address,
                "server": server_properties(status.server),
                **statistics,
            }
            report.update(
                await diagnose.system_report(
                    resolv_conf=self._config.dns.resolv_conf, wireguard=wireguard
                )
            )
        return report


def _boolean(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be a boolean, not {type(value).__name__}")
    return value
