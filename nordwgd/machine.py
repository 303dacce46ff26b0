"""The tunnel state machine: one task, one queue of commands, one status per transition.

Entering a state applies that state's firewall policy first, then changes the tunnel; a policy
that cannot be applied ends in ``error`` with ``Blocking=block-failed`` after an attempt at the
strictest policy, so traffic is never left open by a failure.

    disconnected ──Connect──▶ connecting ──handshake──▶ connected
         ▲                      │   ▲  no handshake: next server (up to max_servers)
         │                      ▼   │  transient cause: retry with backoff
    disconnecting ◀─Disconnect── error ◀── API / tunnel / firewall failure
    connected ──Reconnect / failed health / Renew──▶ reconnecting ──▶ connected

Every command goes through one queue and is taken in arrival order: Connect (with the look-up
of a named server), Disconnect, Reconnect, Renew, the Lockdown and AllowLan settings, token
changes, health verdicts, forwarded-port updates and stop. The state decides what a command
means. While a command
waits (an API call, the handshake wait, a backoff), a newer command that changes what the
machine does interrupts the wait, never a half-applied system change; a setting is applied
in between and the wait goes on; a health verdict or a forwarded port about a connection that
is gone is dropped, so it never changes what is published about the next one.
A transition interrupted by a command that wants no other target (a token change) is started
again, so a wanted tunnel is never left in ``connecting`` with nothing under way.

Each step of a transition has a deadline (``Tuning.step_deadline``): one stuck past it makes
``alive()`` false, which stops the systemd watchdog pings; systemd then restarts the daemon,
whose start blocks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

from nordwgd import errors
from nordwgd.config import Config
from nordwgd.health import HealthMonitor
from nordwgd.model import Endpoint, TunnelParams
from nordwgd.states import ACTIVE_STATES, Blocking, ErrorCause, State, cause_of, is_transient
from nordwgd.status import NO_TUNNEL, Location, Status, remember
from nordwgd.target import Target
from nordwgd.wireguard import PeerStats

if TYPE_CHECKING:  # the real engine pulls in netlink and nftables; the machine needs only the type
    from nordwgd.engine import Engine

log = logging.getLogger(__name__)

T = TypeVar("T")

Subscriber = Callable[[Status], None]
Action = Callable[[], Awaitable[None]]


class PlannerLike(Protocol):
    """What the machine needs from the planner (see ``nordwgd.provider.base.Provider``)."""

    async def plan(self, target: Target, attempt: int, exclude: frozenset[str]) -> TunnelParams: ...

    def mark_failed(self, hostname: str) -> None: ...

    async def refresh(self) -> None: ...

    async def forget_credentials(self) -> None: ...


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
    # Longest a single step of a transition may take (a firewall transaction, bringing a link
    # up, an API call with its retries, the handshake wait) before the machine counts as stuck.
    step_deadline: float = 120.0


# Commands that end what the machine is doing: they interrupt the wait of the one in progress.
_PREEMPTING = frozenset({"connect", "disconnect", "reconnect", "renew", "retry", "stop"})


@dataclass
class _Command:
    # connect | disconnect | reconnect | renew | retry | verdict | port | lockdown |
    # allow_lan | policy | credentials | stop
    kind: str
    target: Target | None = None
    reason: str = ""
    value: bool = False
    port: int = 0  # the forwarded port of a port update
    connection: int = 0  # the connection a health verdict or a port update is about
    # connect: the look-up that must pass first; reconnect: what gives the default target;
    # renew: the refresh; credentials: the change itself.
    action: Action | None = None
    default: Callable[[], Target] | None = None
    reply: asyncio.Future[None] = field(default_factory=lambda: _future())

    def answer(self, error: BaseException | None = None) -> None:
        if self.reply.done():
            return
        if error is None:
            self.reply.set_result(None)
        else:
            self.reply.set_exception(error)


def _future() -> asyncio.Future[None]:
    reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    # Callers that do not wait for the answer must not make asyncio log it as lost.
    reply.add_done_callback(lambda done: done.cancelled() or done.exception())
    return reply


class _Preempted(Exception):
    """A newer command arrived while this one was waiting."""


class _Stuck:
    """The step in progress and when it began, for the liveness check."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.step: str | None = None
        self.since = 0.0

    def begin(self, step: str) -> None:
        self.step, self.since = step, self._clock()

    def end(self) -> None:
        self.step = None

    def overdue(self, deadline: float) -> bool:
        return self.step is not None and self._clock() - self.since > deadline


def keep_blocking_on_stop(status: Status) -> bool:
    """Whether stopping must leave the kill switch in place.

    Only a user who disconnected (with Lockdown off) asked for open traffic; in every other
    state stopping (a restart, an upgrade, a crash loop) must not open a leak.
    """
    return status.lockdown or status.state != State.DISCONNECTED


def _now_us() -> int:
    return int(time.time() * 1_000_000)


class Machine:
    """Owns the state and every change of it. Create, ``start()``, then send commands."""

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
        self._queue: deque[_Command] = deque()
        self._arrived = asyncio.Event()  # set by every new command, cleared by the loop
        self._changed = asyncio.Condition()
        self._subscribers: list[Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stuck = _Stuck(clock)
        self._health: HealthMonitor | None = None
        self._connection = 0  # counts connections: a health verdict names the one it is about
        self._target: Target | None = None
        self._policy: tuple[State, Endpoint | None] = (State.DISCONNECTED, None)
        self._scheduled: tuple[float, _Command] | None = None
        self._retry_streak = 0
        self._last_failover: float | None = None
        self._failover_streak = 0
        # Servers a health verdict left in this run of failovers: a retry tries them after
        # every other one (the planner's memory ranks them with those that merely missed a
        # handshake, so the dead one came first again, and its next verdict waited out the
        # failover spacing on a dead tunnel).
        self._condemned: frozenset[str] = frozenset()
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

    async def start(self, resume: Target | errors.NordwgdError | None = None) -> None:
        """Apply the initial policy, then run the command loop.

        ``resume`` is the target of a daemon that died or stopped while a tunnel was wanted:
        the machine blocks at once and connects to it again, so nothing leaks in between. An
        error in its place says that a tunnel is wanted but its target is unknown now (the
        location in the config or the catalog changed): the machine stays in ``error``,
        blocking, with that error's cause, until the user connects or disconnects.
        """
        if isinstance(resume, errors.NordwgdError):
            cause = cause_of(resume)
            log.error("error (%s): cannot resume the wanted connection: %s", cause.value, resume)
            await self._enter(State.ERROR, None, error_cause=cause)
        elif resume is not None:
            self._target = resume
            await self._enter(State.CONNECTING, None)
            self._submit(_Command("connect", target=resume))
        else:
            await self._enter(State.DISCONNECTED, None)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nordwgd-machine")

    async def stop(self, *, keep_blocking: bool | None = None) -> bool:
        """Stop after the commands that came before; True if the kill switch stays.

        The commands already queued are taken first, in order, so a Connect accepted just
        before the stop is not lost. Then, unless ``keep_blocking`` decides, the state decides
        (``keep_blocking_on_stop``): the tunnel and firewall stay, or both are undone.
        """
        stop = _Command("stop")
        if self._task is not None and not self._task.done():
            self._submit(stop)
        self._stopping = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self._scheduled = None
        self._refuse_queued()
        await self._stop_health()
        self._emit()  # the forwarded port went with the companion
        keep = keep_blocking_on_stop(self._status) if keep_blocking is None else keep_blocking
        if keep:
            return True
        with contextlib.suppress(errors.NordwgdError):
            await self._engine.tunnel_down()
        try:
            await self._engine.remove_policy()
        except errors.NordwgdError as error:
            log.error("could not remove the firewall table: %s", error)
        return False

    def _refuse_queued(self) -> None:
        while self._queue:
            self._queue.popleft().answer(errors.NordwgdError("nordwgd is stopping"))

    def alive(self) -> bool:
        """The command loop runs and makes progress, and the tunnel monitor runs when up."""
        if self._task is None or self._task.done():
            return False
        if self._stuck.overdue(self._tuning.step_deadline):
            log.error(
                "%s has not finished in %.0fs: not alive",
                self._stuck.step,
                self._clock() - self._stuck.since,
            )
            return False
        return self._health is None or self._health.running

    def _submit(self, command: _Command) -> asyncio.Future[None]:
        if self._stopping:
            command.answer(errors.NordwgdError("nordwgd is stopping"))
        else:
            self._queue.append(command)
            self._arrived.set()
        return command.reply

    # -- commands (public) -----------------------------------------------------------------
    # Each returns the command's answer: awaiting it gives the error that refused the command
    # (or None once it is accepted); callers may leave it.

    def connect(self, target: Target, check: Action | None = None) -> asyncio.Future[None]:
        """Connect to ``target``; ``check`` (a server look-up) runs first, in the queue."""
        return self._submit(_Command("connect", target=target, action=check))

    def disconnect(self) -> asyncio.Future[None]:
        return self._submit(_Command("disconnect"))

    def reconnect(
        self, default: Target | Callable[[], Target], check: Action | None = None
    ) -> asyncio.Future[None]:
        """A different server. Without a current target, ``default`` gives one and ``check``
        (that a login exists) must pass first."""
        make = default if callable(default) else (lambda: default)
        return self._submit(_Command("reconnect", default=make, action=check))

    def renew(self, refresh: Action | None = None) -> asyncio.Future[None]:
        """Fresh server data and credentials (``refresh``, the planner's by default), then a
        fresh server when a tunnel is wanted."""
        return self._submit(_Command("renew", action=refresh or self._planner.refresh))

    def credentials_changed(self, change: Action | None = None) -> asyncio.Future[None]:
        """Run ``change`` (storing or deleting the token) in order, then forget credentials."""
        return self._submit(_Command("credentials", action=change))

    def health_failed(self, reason: str, connection: int | None = None) -> None:
        """A failed health verdict about ``connection`` (the current one when None)."""
        about = self._connection if connection is None else connection
        self._submit(_Command("verdict", reason=reason, connection=about))

    def set_lockdown(self, value: bool) -> asyncio.Future[None]:
        return self._submit(_Command("lockdown", value=value))

    def set_allow_lan(self, value: bool) -> asyncio.Future[None]:
        return self._submit(_Command("allow_lan", value=value))

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
        self._submit(_Command("retry"))
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
                command.answer()
                return
            try:
                await self._handle(command)
            except _Preempted:
                log.info("%s interrupted by a newer command", command.kind)
            except Exception as error:
                log.exception("%s failed unexpectedly", command.kind)
                command.answer(error)
                await self._to_error(cause_of(error), str(error))
            finally:
                self._stuck.end()
                command.answer()
            self._resume_if_abandoned()

    def _resume_if_abandoned(self) -> None:
        """A transition interrupted by a command that did not replace it starts again."""
        if (
            self.state in (State.CONNECTING, State.RECONNECTING)
            and self._target is not None
            and self._scheduled is None
            and not self._queue
        ):
            log.info("%s was interrupted: starting it again", self.state.value)
            self._scheduled = (self._clock(), _Command("retry"))

    async def _next_command(self) -> _Command:
        while not self._queue:
            scheduled = self._scheduled
            self._arrived.clear()
            if scheduled is None:
                await self._arrived.wait()
                continue
            due, pending = scheduled
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=max(0.0, due - self._clock()))
            except TimeoutError:
                self._scheduled = None
                return pending
        command = self._queue.popleft()
        if command.kind in _PREEMPTING:
            self._scheduled = None  # a newer command replaces a pending retry or failover
        return command

    async def _step(self, name: str, awaitable: Awaitable[T]) -> T:
        """One step of a transition, watched by the liveness check."""
        self._stuck.begin(name)
        try:
            return await awaitable
        finally:
            self._stuck.end()

    async def _interruptible(self, name: str, awaitable: Awaitable[T], *, planner: bool) -> T:
        """Await ``awaitable`` while taking the commands that may come in between.

        Settings are applied and stale health verdicts dropped as they arrive, and the wait
        goes on. Any other command ends the wait (cancelled: _Preempted); so does a token
        change while ``planner`` is working, which must not change under it.
        """
        work = asyncio.ensure_future(awaitable)
        self._stuck.begin(name)
        try:
            while True:
                if await self._take_between(planner_busy=planner):
                    raise _Preempted
                self._stuck.begin(name)
                self._arrived.clear()
                arrival = asyncio.ensure_future(self._arrived.wait())
                try:
                    await asyncio.wait({work, arrival}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    arrival.cancel()
                if work.done():
                    return work.result()
        finally:
            self._stuck.end()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work

    async def _take_between(self, *, planner_busy: bool) -> bool:
        """Handle the queued commands that may run in the middle of a transition; True when
        the one at the head must end the transition instead."""
        while self._queue:
            head = self._queue[0]
            if head.kind in ("lockdown", "allow_lan"):
                self._queue.popleft()
                await self._setting(head)
            elif head.kind == "policy":
                self._queue.popleft()
                await self._reapply(head)
            elif head.kind in ("verdict", "port"):
                # No connection is current in the middle of a transition.
                self._queue.popleft()
                self._dropped(head)
            elif head.kind == "credentials" and not planner_busy:
                self._queue.popleft()
                await self._credentials(head)
            else:
                return True
        return False

    def _is_current(self, command: _Command) -> bool:
        return command.connection == self._connection and self.state == State.CONNECTED

    def _dropped(self, command: _Command) -> None:
        what = "a health verdict" if command.kind == "verdict" else "a forwarded port"
        log.info(
            "dropping %s about connection %d (now %d, %s): %s",
            what,
            command.connection,
            self._connection,
            self.state.value,
            command.reason or command.port,
        )
        command.answer()

    async def _handle(self, command: _Command) -> None:
        kind = command.kind
        if kind in ("connect", "reconnect", "renew"):
            try:
                accepted = await self._accept(command)
            except errors.NordwgdError as error:
                command.answer(error)  # refused: nothing changes
                return
            command.answer()
            self._retry_streak = 0
            self._condemned = frozenset()
            if kind == "connect":
                await self._connect(State.CONNECTING, frozenset())
            elif accepted:
                await self._connect(State.RECONNECTING, self._current_hostnames())
        elif kind == "retry":
            if self._target is not None and self.state in (*ACTIVE_STATES, State.ERROR):
                again = State.RECONNECTING if self.state == State.RECONNECTING else State.CONNECTING
                await self._connect(again, frozenset(), avoid=self._condemned)
        elif kind == "disconnect":
            self._condemned = frozenset()
            await self._set_target(None)
            await self._disconnect()
        elif kind == "verdict":
            if self._is_current(command):
                await self._failover(command)
            else:
                self._dropped(command)
        elif kind == "port":
            if self._is_current(command):
                self._forwarded_port(command.port)
            else:
                self._dropped(command)
        elif kind in ("lockdown", "allow_lan"):
            await self._setting(command)
        elif kind == "policy":
            await self._reapply(command)
        elif kind == "credentials":
            await self._credentials(command)

    async def _accept(self, command: _Command) -> bool:
        """The part of Connect, Reconnect and Renew that may still refuse them; whether a
        tunnel is wanted afterwards."""
        if command.kind == "connect":
            assert command.target is not None
            if command.action is not None:
                await self._interruptible("the server look-up", command.action(), planner=False)
            await self._set_target(command.target)
        elif command.kind == "reconnect":
            if self._target is None:
                assert command.default is not None
                target = command.default()
                if command.action is not None:
                    await self._interruptible("the login check", command.action(), planner=False)
                await self._set_target(target)
        else:  # renew: the planner changes here, between plans, never under one
            assert command.action is not None
            await self._interruptible("refreshing server data", command.action(), planner=True)
            return self._target is not None and self.state in (*ACTIVE_STATES, State.ERROR)
        return True

    async def _set_target(self, target: Target | None) -> None:
        self._target = target
        if self._on_target is not None:
            try:
                await self._step("recording the target", self._on_target(target))
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
        try:
            blocking = await self._step(
                f"the {state.value} firewall policy",
                self._engine.apply_policy(
                    state, endpoint, lockdown=self.lockdown, allow_lan=self.allow_lan
                ),
            )
        except Exception as error:
            await self._firewall_failed(error)
            return None
        self._policy = (state, endpoint)
        return blocking

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
        try:
            await self._step("the full block policy", self._engine.block_all())
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
            await self._step("taking the tunnel down", self._engine.tunnel_down())
        except Exception as error:
            log.error("tunnel down failed: %s", error)

    async def _connect(
        self, state: State, exclude: frozenset[str], avoid: frozenset[str] = frozenset()
    ) -> None:
        """Try up to ``max_servers`` servers of the target, none in ``exclude``, and those in
        ``avoid`` only after every other one."""
        target = self._target
        assert target is not None
        await self._stop_health()
        if not await self._enter(state, None, **self._no_tunnel()):
            return
        if self._engine.tunnel_is_up:
            await self._step("taking the tunnel down", self._engine.tunnel_down())
        failed = set(exclude) | avoid
        tried = 0
        for attempt in range(self._tuning.max_servers):
            try:
                params = await self._plan(target, attempt, failed, avoid)
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
                await self._step("bringing the tunnel up", self._engine.tunnel_up(params))
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
                "the handshake wait",
                self._engine.wait_handshake(self._config.health.handshake_timeout),
                planner=False,
            ):
                await self._connected(params)
                return
            log.warning("%s: no handshake in %ss", hostname, self._config.health.handshake_timeout)
            self._planner.mark_failed(hostname)
            failed.add(hostname)
            await self._step("taking the tunnel down", self._engine.tunnel_down())
        await self._to_error(ErrorCause.TUNNEL_FAILED, f"no handshake from {tried} server(s)")

    async def _plan(
        self, target: Target, attempt: int, failed: set[str], avoid: frozenset[str]
    ) -> TunnelParams:
        """The next server, not one in ``failed`` unless only those in ``avoid`` are left
        (they are taken out of ``failed`` then)."""
        try:
            return await self._interruptible(
                "planning", self._planner.plan(target, attempt, frozenset(failed)), planner=True
            )
        except errors.NoServer:
            if not avoid & failed:
                raise
        failed -= avoid  # only avoided servers are left: they come last
        return await self._interruptible(
            "planning", self._planner.plan(target, attempt, frozenset(failed)), planner=True
        )

    async def _classify(self, error: errors.NordwgdError) -> ErrorCause:
        cause = cause_of(error)
        if cause == ErrorCause.API_UNAVAILABLE:
            try:
                if not await self._step("the route check", self._engine.is_online()):
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
        self._connection += 1
        connection = self._connection

        def verdict(reason: str) -> None:
            self.health_failed(reason, connection)

        self._health = self._health_factory(
            self._config.health,
            self.statistics,
            verdict,
            tick=self._tuning.health_tick,
            dns_servers=params.dns,
            namespace=self._engine.probe_namespace,
        )
        self._health.start()
        if self._companion_factory is not None:

            def publish(port: int) -> None:
                self._submit(_Command("port", port=port, connection=connection))

            interface = self._status.interface
            self._companion = self._companion_factory(params, interface, publish)
            if self._companion is not None:
                self._companion.start()

    def _forwarded_port(self, port: int) -> None:
        if self._status.forwarded_port != port:
            log.info("forwarded port: %s", port or "none")
            self._set(forwarded_port=port)
            self._emit()

    async def refresh_policy(self) -> None:
        """Apply the current state's policy again (the provider needs other API pinholes, a
        port was forwarded); in the queue, and between the steps of a transition too."""
        await self._submit(_Command("policy"))

    async def _reapply(self, command: _Command) -> None:
        state, endpoint = self._policy
        try:
            await self._step(
                f"the {state.value} firewall policy",
                self._engine.apply_policy(
                    state, endpoint, lockdown=self.lockdown, allow_lan=self.allow_lan
                ),
            )
        except Exception as error:
            # The previous rules stay in force (a rejected transaction changes nothing).
            command.answer(error)
        else:
            command.answer()

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
            await self._step("taking the tunnel down", self._engine.tunnel_down())
        except errors.NordwgdError as error:
            await self._to_error(cause_of(error), str(error))
            return
        await self._enter(State.DISCONNECTED, None, **self._no_tunnel())

    async def _failover(self, verdict: _Command) -> None:
        reason = verdict.reason
        now = self._clock()
        if self._last_failover is not None:
            gap = min(
                self._tuning.failover_max_interval,
                self._tuning.failover_min_interval * 2 ** max(0, self._failover_streak - 1),
            )
            if now - self._last_failover > 2 * gap:
                self._failover_streak = 0  # it held long enough: start over
                self._condemned = frozenset()
            elif now - self._last_failover < gap:
                # Too soon after the last one: wait instead of flapping between servers.
                log.info("health failed (%s); next failover in %.0fs", reason, gap)
                self._scheduled = (self._last_failover + gap, verdict)
                return
        log.warning("health failed (%s): switching server", reason)
        self._last_failover = now
        self._failover_streak += 1
        self._condemned |= self._current_hostnames()
        for hostname in self._current_hostnames():
            self._planner.mark_failed(hostname)
        await self._connect(State.RECONNECTING, self._current_hostnames())

    # -- settings and credentials ----------------------------------------------------------

    async def _setting(self, command: _Command) -> None:
        """Lockdown or AllowLan: the current state's policy again, then the choice saved."""
        name = command.kind
        if getattr(self._status, name) == command.value:
            command.answer()
            return
        self._set(**{name: command.value})
        state, endpoint = self._policy
        failure: Exception | None = None
        try:
            blocking = await self._step(
                f"the {state.value} firewall policy",
                self._engine.apply_policy(
                    state, endpoint, lockdown=self.lockdown, allow_lan=self.allow_lan
                ),
            )
        except Exception as error:
            failure = error
        else:
            self._set(blocking=blocking)
            self._emit()
        if self._on_settings is not None:
            # Here, in the queue's order: the last choice is the one on disk.
            try:
                await self._step(
                    "saving the settings", self._on_settings(self.lockdown, self.allow_lan)
                )
            except OSError as error:
                log.warning("could not save the settings: %s", error)
        if failure is not None:
            command.answer(errors.FirewallFailed(f"could not apply the new policy: {failure}"))
            await self._firewall_failed(failure)
        else:
            command.answer()

    async def _credentials(self, command: _Command) -> None:
        try:
            if command.action is not None:
                await self._step("changing the token", command.action())
        except (OSError, errors.NordwgdError) as error:
            command.answer(error)
            return
        await self._planner.forget_credentials()
        command.answer()

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
            # The port went with its tunnel; the port 0 the companion sends on stopping comes
            # through the queue too late and is dropped. The next state publishes this.
            self._set(forwarded_port=0)
