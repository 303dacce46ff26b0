"""The tunnel state machine: one task, one queue of commands, one notification per transition.

Entering a state applies that state's firewall policy first, then changes the tunnel; a policy
that cannot be applied ends in ``error`` with ``Blocking=block-failed`` after an attempt at the
strictest policy, so traffic is never left open by a failure.

    disconnected ──Connect──▶ connecting ──handshake──▶ connected
         ▲                      │   ▲  no handshake: next server (up to max_servers)
         │                      ▼   │  transient cause: retry with backoff
    disconnecting ◀─Disconnect── error ◀── API / tunnel / firewall failure
    connected ──Reconnect / failed health / Renew──▶ reconnecting ──▶ connected

Commands that change the target (connect, disconnect, reconnect, renew, failover, stop) go
through the queue and interrupt the waits of the command in progress (API calls, the handshake
wait, backoff), never a half-applied system change. Lockdown and AllowLan are applied at once,
outside the queue, under the same lock that serialises every firewall change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

from nordwgd import errors
from nordwgd.config import Config
from nordwgd.health import HealthMonitor
from nordwgd.model import Endpoint, TunnelParams
from nordwgd.planner import Target
from nordwgd.states import ACTIVE_STATES, Blocking, ErrorCause, State, cause_of, is_transient
from nordwgd.status import NO_TUNNEL, Location, Status, remember
from nordwgd.wireguard import PeerStats

if TYPE_CHECKING:  # the real engine pulls in netlink and nftables; the machine needs only the type
    from nordwgd.engine import Engine

log = logging.getLogger(__name__)

T = TypeVar("T")

Subscriber = Callable[[Status], None]


class PlannerLike(Protocol):
    """What the machine needs from the planner (see ``nordwgd.provider.base.Provider``)."""

    async def plan(self, target: Target, attempt: int, exclude: frozenset[str]) -> TunnelParams: ...

    def mark_failed(self, hostname: str) -> None: ...


class Companion(Protocol):
    """Something that runs beside one connected tunnel (port forwarding)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


# Makes the companion of a tunnel that just connected: its parameters, its interface, and how
# it publishes a forwarded port.
CompanionFactory = Callable[[TunnelParams, str, Callable[[int], None]], Companion | None]


@dataclass(frozen=True)
class Tuning:
    """Timings of the machine; tests shorten them, the daemon keeps the defaults."""

    max_servers: int = 3  # servers tried per attempt before giving up with tunnel-failed
    retry_base: float = 2.0  # first backoff of the error state, doubled up to retry_max
    retry_max: float = 120.0
    failover_min_interval: float = 60.0  # between two health failovers; doubles while they repeat
    failover_max_interval: float = 900.0
    health_tick: float = 5.0  # seconds between handshake / counter checks while connected


@dataclass(frozen=True)
class _Command:
    # connect | disconnect | reconnect | renew | failover | retry | firewall-failed | stop
    kind: str
    target: Target | None = None
    reason: str = ""


class _Preempted(Exception):
    """A newer command arrived while this one was waiting."""


def _now_us() -> int:
    return int(time.time() * 1_000_000)


class Machine:
    """Owns the state and every change of it. Create, ``start()``, then ``submit`` commands."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        planner: PlannerLike,
        *,
        version: str,
        lockdown: bool,
        allow_lan: bool,
        tuning: Tuning = Tuning(),
        on_target: Callable[[Target | None], Awaitable[None]] | None = None,
        on_settings: Callable[[bool, bool], Awaitable[None]] | None = None,
        recent_locations: tuple[Location, ...] = (),
        on_recent: Callable[[tuple[Location, ...]], Awaitable[None]] | None = None,
        health_factory: Callable[..., HealthMonitor] = HealthMonitor,
        companion_factory: CompanionFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._engine = engine
        self._planner = planner
        self._tuning = tuning
        self._on_target = on_target
        self._on_settings = on_settings
        self._on_recent = on_recent
        self._health_factory = health_factory
        self._companion_factory = companion_factory
        self._companion: Companion | None = None
        self._clock = clock
        self._queue: asyncio.Queue[_Command] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._firewall_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._subscribers: list[Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._health: HealthMonitor | None = None
        self._target: Target | None = None
        self._policy: tuple[State, Endpoint | None] = (State.DISCONNECTED, None)
        self._scheduled: tuple[float, _Command] | None = None
        self._retry_streak = 0
        self._last_failover: float | None = None
        self._failover_streak = 0
        self._params: TunnelParams | None = None
        self._status = Status(
            lockdown=lockdown,
            allow_lan=allow_lan,
            mode=config.network.mode,
            version=version,
            recent_locations=recent_locations,
            provider=config.provider,
        )
        self._emitted = self._status

    # -- observing -------------------------------------------------------------------------

    @property
    def status(self) -> Status:
        return self._status

    @property
    def state(self) -> State:
        return self._status.state

    @property
    def lockdown(self) -> bool:
        return self._status.lockdown

    @property
    def allow_lan(self) -> bool:
        return self._status.allow_lan

    @property
    def target(self) -> Target | None:
        return self._target

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    async def wait_for(self, predicate: Callable[[Status], bool], limit: float) -> Status:
        """Wait until the status satisfies ``predicate``; TimeoutError after ``limit`` s."""
        async with asyncio.timeout(limit), self._changed:
            await self._changed.wait_for(lambda: predicate(self._status))
            return self._status

    def _set(self, **changes: object) -> None:
        self._status = replace(self._status, **changes)  # type: ignore[arg-type]

    def _emit(self) -> None:
        """Publish the status to subscribers when more than the counters changed."""
        status = self._status
        if status.without_counters() != self._emitted.without_counters():
            self._emitted = status
            for callback in list(self._subscribers):
                try:
                    callback(status)
                except Exception:
                    log.exception("a subscriber failed on %s", status.state.value)
        asyncio.get_running_loop().create_task(self._notify_waiters())

    async def _notify_waiters(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self, resume: Target | None = None) -> None:
        """Apply the initial policy, then run the command loop.

        ``resume`` is the target of a daemon that died while connected: the machine blocks
        at once and connects to it again, so nothing leaks in between.
        """
        if resume is not None:
            self._target = resume
            await self._enter(State.CONNECTING, None)
            self.submit(_Command("connect", target=resume))
        else:
            await self._enter(State.DISCONNECTED, None)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nordwgd-machine")

    async def stop(self, *, keep_blocking: bool) -> None:
        """Stop the loop; leave the tunnel and firewall if ``keep_blocking``, else undo both."""
        self._stopping = True
        if self._task is not None and not self._task.done():
            self.submit(_Command("stop"))
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        await self._stop_health()
        if keep_blocking:
            return
        with contextlib.suppress(errors.NordwgdError):
            await self._engine.tunnel_down()
        async with self._firewall_lock:
            try:
                await self._engine.remove_policy()
            except errors.NordwgdError as error:
                log.error("could not remove the firewall table: %s", error)

    def alive(self) -> bool:
        """The command loop runs, and so does the tunnel monitor whenever a tunnel is up."""
        if self._task is None or self._task.done():
            return False
        return self._health is None or self._health.running

    def submit(self, command: _Command) -> None:
        self._queue.put_nowait(command)
        self._arrived.set()

    # -- commands (public) -----------------------------------------------------------------

    def connect(self, target: Target) -> None:
        self.submit(_Command("connect", target=target))

    def disconnect(self) -> None:
        self.submit(_Command("disconnect"))

    def reconnect(self, target: Target) -> None:
        """A different server; ``target`` is used when there is no current one."""
        self.submit(_Command("reconnect", target=target))

    def renew(self) -> None:
        """Fresh server: reconnect when a tunnel is wanted (credentials were refreshed already)."""
        self.submit(_Command("renew"))

    def health_failed(self, reason: str) -> None:
        self.submit(_Command("failover", reason=reason))

    async def set_lockdown(self, value: bool) -> None:
        await self._change_setting("lockdown", value)

    async def set_allow_lan(self, value: bool) -> None:
        await self._change_setting("allow_lan", value)

    async def check_health(self) -> tuple[bool, dict[str, object]]:
        health = self._health
        if self.state != State.CONNECTED or health is None:
            return False, {"state": self.state.value, "reason": "not connected"}
        return await health.check_now()

    def trigger_health_check(self) -> None:
        """Check the tunnel now (the uplink changed, or the machine resumed)."""
        if self._health is not None:
            self._health.trigger()

    def retry_now(self) -> bool:
        """In error with a retry scheduled (a transient cause), retry at once; False if not.

        For when the network that was missing may be back (the uplink changed, the machine
        resumed): the backoff starts over too, since the failure it grew from may be gone.
        """
        scheduled = self._scheduled
        if self.state != State.ERROR or scheduled is None or scheduled[1].kind != "retry":
            return False
        self._retry_streak = 0
        self.submit(_Command("retry"))
        return True

    async def statistics(self) -> PeerStats:
        stats = await self._engine.statistics()
        self._record_stats(stats)
        return stats

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            command = await self._next_command()
            if command.kind == "stop":
                return
            try:
                await self._handle(command)
            except _Preempted:
                log.info("%s interrupted by a newer command", command.kind)
            except Exception as error:
                log.exception("%s failed unexpectedly", command.kind)
                await self._to_error(cause_of(error), str(error))

    async def _next_command(self) -> _Command:
        if self._stopping:
            return _Command("stop")
        scheduled = self._scheduled
        if scheduled is None:
            command = await self._queue.get()
        else:
            due, pending = scheduled
            try:
                command = await asyncio.wait_for(
                    self._queue.get(), timeout=max(0.0, due - self._clock())
                )
            except TimeoutError:
                command = pending
        self._scheduled = None
        if self._queue.empty():
            self._arrived.clear()
        return command

    async def _interruptible(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless a command arrives first (then cancel it: _Preempted)."""
        work = asyncio.ensure_future(awaitable)
        arrival = asyncio.ensure_future(self._arrived.wait())
        try:
            await asyncio.wait({work, arrival}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrival.cancel()
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        raise _Preempted

    async def _handle(self, command: _Command) -> None:
        kind = command.kind
        if kind == "connect":
            assert command.target is not None
            await self._set_target(command.target)
            self._retry_streak = 0
            await self._connect(State.CONNECTING, frozenset())
        elif kind == "retry":
            if self._target is not None:
                await self._connect(State.CONNECTING, frozenset())
        elif kind == "disconnect":
            await self._set_target(None)
            await self._disconnect()
        elif kind == "reconnect":
            if self._target is None:
                await self._set_target(command.target)
            self._retry_streak = 0
            await self._connect(State.RECONNECTING, self._current_hostnames())
        elif kind == "renew":
            if self._target is not None and self.state in (*ACTIVE_STATES, State.ERROR):
                await self._connect(State.RECONNECTING, self._current_hostnames())
        elif kind == "failover":
            await self._failover(command.reason)
        elif kind == "firewall-failed":
            await self._firewall_failed(errors.FirewallFailed(command.reason))

    async def _set_target(self, target: Target | None) -> None:
        self._target = target
        if self._on_target is not None:
            try:
                await self._on_target(target)
            except OSError as error:
                log.warning("could not record the connection target: %s", error)

    def _current_hostnames(self) -> frozenset[str]:
        params = self._params
        if params is None or params.server is None:
            return frozenset()
        return frozenset({params.server.hostname})

    # -- transitions -----------------------------------------------------------------------

    async def _apply(self, state: State, endpoint: Endpoint | None) -> Blocking | None:
        """Apply ``state``'s policy; on failure go to error (block-failed) and return None."""
        async with self._firewall_lock:
            try:
                blocking = await self._engine.apply_policy(
                    state, endpoint, lockdown=self.lockdown, allow_lan=self.allow_lan
                )
            except Exception as error:
                failure = error
            else:
                self._policy = (state, endpoint)
                return blocking
        await self._firewall_failed(failure)
        return None

    async def _enter(self, state: State, endpoint: Endpoint | None, **props: object) -> bool:
        """Policy first, then one notification for the new state. False if the policy failed."""
        blocking = await self._apply(state, endpoint)
        if blocking is None:
            return False
        props.setdefault("error_cause", ErrorCause.NONE)
        self._set(state=state, blocking=blocking, **props)
        log.info("state: %s", state.value)
        self._emit()
        return True

    async def _firewall_failed(self, error: BaseException) -> None:
        log.error("firewall policy failed, blocking everything: %s", error)
        async with self._firewall_lock:
            try:
                await self._engine.block_all()
            except Exception as block_error:
                log.error("the full block policy failed too: %s", block_error)
            self._policy = (State.ERROR, None)
        self._scheduled = None
        self._set(
            state=State.ERROR,
            blocking=Blocking.BLOCK_FAILED,
            error_cause=ErrorCause.FIREWALL_FAILED,
            **self._no_tunnel(),
        )
        self._emit()
        await self._stop_health()
        await self._tunnel_down_quietly()

    def _no_tunnel(self) -> dict[str, object]:
        self._params = None
        # The counters belong to the tunnel that is gone: a new one starts from zero.
        return dict(NO_TUNNEL)

    async def _tunnel_down_quietly(self) -> None:
        try:
            await self._engine.tunnel_down()
        except Exception as error:
            log.error("tunnel down failed: %s", error)

    async def _connect(self, state: State, exclude: frozenset[str]) -> None:
        target = self._target
        assert target is not None
        await self._stop_health()
        if not await self._enter(state, None, **self._no_tunnel()):
            return
        if self._engine.tunnel_is_up:
            await self._engine.tunnel_down()
        failed = set(exclude)
        tried = 0
        for attempt in range(self._tuning.max_servers):
            try:
                params = await self._interruptible(
                    self._planner.plan(target, attempt, frozenset(failed))
                )
            except errors.NoServer as error:
                if tried:  # every server that matched has been tried already
                    break
                await self._to_error(ErrorCause.NO_SERVER, str(error))
                return
            except errors.NordwgdError as error:
                await self._to_error(await self._classify(error), str(error))
                return
            server = params.server
            hostname = server.hostname if server is not None else str(params.endpoint)
            # The pinhole for exactly this server's endpoint, before any packet goes to it.
            if await self._apply(state, params.endpoint) is None:
                return
            self._params = params
            self._set(server=server)
            self._emit()
            tried += 1
            try:
                await self._engine.tunnel_up(params)
            except errors.TunnelFailed as error:
                log.warning("%s: tunnel failed: %s", hostname, error)
                self._planner.mark_failed(hostname)
                failed.add(hostname)
                await self._tunnel_down_quietly()
                continue
            except errors.NordwgdError as error:
                await self._to_error(cause_of(error), str(error))
                return
            if await self._interruptible(
                self._engine.wait_handshake(self._config.health.handshake_timeout)
            ):
                await self._connected(params)
                return
            log.warning("%s: no handshake in %ss", hostname, self._config.health.handshake_timeout)
            self._planner.mark_failed(hostname)
            failed.add(hostname)
            await self._engine.tunnel_down()
        await self._to_error(ErrorCause.TUNNEL_FAILED, f"no handshake from {tried} server(s)")

    async def _classify(self, error: errors.NordwgdError) -> ErrorCause:
        cause = cause_of(error)
        if cause == ErrorCause.API_UNAVAILABLE:
            try:
                if not await self._engine.is_online():
                    return ErrorCause.OFFLINE
            except Exception as probe_error:
                log.debug("route check failed: %s", probe_error)
        return cause

    async def _connected(self, params: TunnelParams) -> None:
        known = self._status.recent_locations
        recent = known if params.server is None else remember(known, Location.of(params.server))
        entered = await self._enter(
            State.CONNECTED,
            params.endpoint,
            interface=self._engine.interface or self._config.network.interface,
            tunnel_address=str(params.address),
            connected_since=_now_us(),
            recent_locations=recent,
        )
        if not entered:
            return
        if self._on_recent is not None and recent != known:
            await self._on_recent(recent)
        self._retry_streak = 0
        self._health = self._health_factory(
            self._config.health,
            self.statistics,
            self.health_failed,
            tick=self._tuning.health_tick,
            dns_servers=params.dns,
            namespace=self._engine.probe_namespace,
        )
        self._health.start()
        if self._companion_factory is not None:
            interface = self._status.interface
            self._companion = self._companion_factory(params, interface, self._forwarded_port)
            if self._companion is not None:
                self._companion.start()

    def _forwarded_port(self, port: int) -> None:
        if self._status.forwarded_port != port:
            log.info("forwarded port: %s", port or "none")
            self._set(forwarded_port=port)
            self._emit()

    async def refresh_policy(self) -> None:
        """Apply the current state's policy again (the provider needs other API pinholes)."""
        async with self._firewall_lock:
            state, endpoint = self._policy
            await self._engine.apply_policy(
                state, endpoint, lockdown=self.lockdown, allow_lan=self.allow_lan
            )

    async def _to_error(self, cause: ErrorCause, message: str) -> None:
        log.error("error (%s): %s", cause.value, message)
        await self._stop_health()
        if not await self._enter(State.ERROR, None, error_cause=cause, **self._no_tunnel()):
            return
        await self._tunnel_down_quietly()
        if is_transient(cause) and self._target is not None:
            delay = min(self._tuning.retry_max, self._tuning.retry_base * 2**self._retry_streak)
            self._retry_streak += 1
            log.info("retrying in %.1fs", delay)
            self._scheduled = (self._clock() + delay, _Command("retry"))

    async def _disconnect(self) -> None:
        await self._stop_health()
        if self.state == State.DISCONNECTED and not self._engine.tunnel_is_up:
            # Nothing to tear down; re-apply in case lockdown changed the wanted policy.
            await self._enter(State.DISCONNECTED, None)
            return
        if not await self._enter(State.DISCONNECTING, None):
            return
        try:
            await self._engine.tunnel_down()
        except errors.NordwgdError as error:
            await self._to_error(cause_of(error), str(error))
            return
        await self._enter(State.DISCONNECTED, None, **self._no_tunnel())

    async def _failover(self, reason: str) -> None:
        if self.state != State.CONNECTED:
            return
        now = self._clock()
        if self._last_failover is not None:
            gap = min(
                self._tuning.failover_max_interval,
                self._tuning.failover_min_interval * 2 ** max(0, self._failover_streak - 1),
            )
            if now - self._last_failover > 2 * gap:
                self._failover_streak = 0  # it held long enough: start over
            elif now - self._last_failover < gap:
                # Too soon after the last one: wait instead of flapping between servers.
                log.info("health failed (%s); next failover in %.0fs", reason, gap)
                self._scheduled = (self._last_failover + gap, _Command("failover", reason=reason))
                return
        log.warning("health failed (%s): switching server", reason)
        self._last_failover = now
        self._failover_streak += 1
        for hostname in self._current_hostnames():
            self._planner.mark_failed(hostname)
        await self._connect(State.RECONNECTING, self._current_hostnames())

    # -- settings --------------------------------------------------------------------------

    async def _change_setting(self, name: str, value: bool) -> None:
        if getattr(self._status, name) == value:
            return
        failure: Exception | None = None
        async with self._firewall_lock:
            self._set(**{name: value})
            state, endpoint = self._policy
            try:
                blocking = await self._engine.apply_policy(
                    state, endpoint, lockdown=self.lockdown, allow_lan=self.allow_lan
                )
            except Exception as error:
                failure = error
                with contextlib.suppress(Exception):
                    await self._engine.block_all()
                self._set(blocking=Blocking.BLOCK_FAILED)
            else:
                self._set(blocking=blocking)
        self._emit()
        if self._on_settings is not None:
            try:
                await self._on_settings(self.lockdown, self.allow_lan)
            except OSError as error:
                log.warning("could not save the settings: %s", error)
        if failure is not None:
            # The state itself changes only in the loop.
            self.submit(_Command("firewall-failed", reason=str(failure)))
            raise errors.FirewallFailed(f"could not apply the new policy: {failure}")

    # -- health ----------------------------------------------------------------------------

    def _record_stats(self, stats: PeerStats) -> None:
        self._set(
            latest_handshake=int(stats.latest_handshake * 1_000_000),
            rx_bytes=stats.rx_bytes,
            tx_bytes=stats.tx_bytes,
        )

    async def _stop_health(self) -> None:
        health, self._health = self._health, None
        if health is not None:
            await health.stop()
        companion, self._companion = self._companion, None
        if companion is not None:
            await companion.stop()
