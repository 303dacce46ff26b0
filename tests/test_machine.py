"""The state machine's logic, against an engine double that records every call.

The double stands in only for the system (firewall, tunnel); the machine, its queue, the health
monitor and the timings are the real ones, shortened through ``Tuning``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import fields, replace
from ipaddress import IPv4Address, IPv4Interface, ip_network

import pytest

from nordwgd import errors
from nordwgd.config import Config, HealthConfig
from nordwgd.health import HealthMonitor
from nordwgd.machine import Companion, CompanionFactory, Machine, Tuning
from nordwgd.model import Endpoint, Secret, Server, TunnelParams
from nordwgd.states import State
from nordwgd.status import RECENT_LIMIT, Location, Status, remember
from nordwgd.target import Place, Target
from nordwgd.wireguard import PeerStats

WAIT = 5.0  # upper bound for waits on state; never an assertion about speed
TARGET = Target(places=(Place(81, None, "Germany"),), options=(("country", "DE"),))


def on_server(hostname: str, state: str | None = None) -> Callable[[Status], bool]:
    def predicate(status: Status) -> bool:
        server = status.server
        return server is not None and server.hostname == hostname and state in (None, status.state)

    return predicate


def make_server(number: int, *, load: int = 10) -> Server:
    return Server(
        id=number,
        name=f"Germany #{number}",
        hostname=f"de{number}.nordvpn.com",
        station=IPv4Address(f"203.0.113.{number}"),
        ipv6_station=None,
        load=load,
        status="online",
        country="Germany",
        country_code="DE",
        country_id=81,
        city="Frankfurt",
        city_id=2215709,
        groups=("legacy_standard", "europe"),
        group_titles=("Standard VPN servers", "Europe"),
        public_key=f"key{number}",
    )


def params_for(server: Server) -> TunnelParams:
    return TunnelParams(
        private_key=Secret("private"),
        address=IPv4Interface("10.5.0.2/32"),
        peer_public_key=server.public_key or "",
        endpoint=server.endpoint,
        allowed_ips=(ip_network("0.0.0.0/0"),),
        dns=(IPv4Address("198.18.0.53"),),
        server=server,
    )


class FakePlanner:
    """Hands out the servers in order, skipping excluded ones; or fails as told."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.error: errors.NordwgdError | None = None
        self.failed: list[str] = []
        self.calls: list[tuple[int, frozenset[str]]] = []
        self.hang = False

    async def plan(self, target: Target, attempt: int, exclude: frozenset[str]) -> TunnelParams:
        self.calls.append((attempt, exclude))
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        allowed = [s for s in self.servers if s.hostname not in exclude]
        # Like the real planner: recently failed servers only when nothing else is left.
        fresh = [s for s in allowed if s.hostname not in self.failed]
        for server in fresh or allowed:
            return params_for(server)
        raise errors.NoServer("no server left")

    def mark_failed(self, hostname: str) -> None:
        self.failed.append(hostname)

    async def refresh(self) -> None:
        self.calls.append((-1, frozenset({"refresh"})))

    async def forget_credentials(self) -> None:
        self.calls.append((-1, frozenset({"forget"})))


class FakeEngine:
    """Records calls; handshakes succeed except for the hostnames in ``dead``."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.dead: set[str] = set()
        self.fail_policy: set[State] = set()
        self.fail_block_all = False
        self.online = True
        self.up: TunnelParams | None = None
        self.handshake_at = time.time()
        self.hang_handshake = False
        self.handshake_gate: asyncio.Event | None = None  # the handshake waits for it when set
        self.hang_policy: set[State] = set()

    @property
    def interface(self) -> str | None:
        return "nordlynx" if self.up else None

    @property
    def tunnel_is_up(self) -> bool:
        return self.up is not None

    @property
    def probe_namespace(self) -> str | None:
        return None

    async def apply_policy(
        self, state: State, endpoint: Endpoint | None, *, lockdown: bool, allow_lan: bool
    ) -> str:
        self.calls.append(("policy", state, endpoint, lockdown, allow_lan))
        if state in self.hang_policy:  # a firewall call that never returns
            await asyncio.Event().wait()
        if state in self.fail_policy:
            raise errors.FirewallFailed(f"cannot apply {state}")
        from nordwgd.states import Blocking

        return Blocking.OPEN if state == State.DISCONNECTED and not lockdown else Blocking.BLOCKED

    async def block_all(self) -> str:
        self.calls.append(("block_all",))
        if self.fail_block_all:
            raise errors.FirewallFailed("cannot block")
        return "blocked"

    async def remove_policy(self) -> None:
        self.calls.append(("remove_policy",))

    async def tunnel_up(self, params: TunnelParams) -> None:
        assert params.server is not None
        self.calls.append(("up", params.server.hostname))
        self.up = params

    async def tunnel_down(self) -> None:
        self.calls.append(("down",))
        self.up = None

    async def wait_handshake(self, timeout: float) -> bool:  # noqa: ASYNC109
        assert self.up is not None and self.up.server is not None
        self.calls.append(("wait_handshake", self.up.server.hostname))
        if self.hang_handshake:
            await asyncio.Event().wait()
        if self.handshake_gate is not None:
            await self.handshake_gate.wait()
        return self.up.server.hostname not in self.dead

    async def statistics(self) -> PeerStats:
        if self.up is None:
            return PeerStats(0.0, 0, 0)
        return PeerStats(self.handshake_at, 1000, 1000)

    async def recover(self) -> None:
        self.calls.append(("recover",))

    async def is_online(self) -> bool:
        return self.online

    def kinds(self) -> list[object]:
        return [call[0] for call in self.calls]

    def policies(self) -> list[tuple[State, Endpoint | None]]:
        return [(c[1], c[2]) for c in self.calls if c[0] == "policy"]  # type: ignore[misc]


class Harness:
    def __init__(self, machine: Machine, engine: FakeEngine, planner: FakePlanner) -> None:
        self.machine = machine
        self.engine = engine
        self.planner = planner
        # What each published status changed, by field (the counters are never published).
        self.notifications: list[dict[str, object]] = []
        self._last = machine.status
        self.targets: list[Target | None] = []
        self.settings: list[tuple[bool, bool]] = []
        self.recents: list[tuple[Location, ...]] = []
        machine.subscribe(self._published)

    def _published(self, status: Status) -> None:
        changed = {
            field.name: getattr(status, field.name)
            for field in fields(Status)
            if getattr(status, field.name) != getattr(self._last, field.name)
            and field.name not in ("rx_bytes", "tx_bytes", "latest_handshake")
        }
        self._last = status
        self.notifications.append(changed)

    def states(self) -> list[object]:
        return [n["state"] for n in self.notifications if "state" in n]

    async def wait_state(self, state: State) -> Status:
        return await self.machine.wait_for(lambda status: status.state == state, WAIT)


def build(
    *,
    servers: int = 3,
    lockdown: bool = False,
    health: HealthConfig | None = None,
    tuning: Tuning | None = None,
    prober: object = None,
    recent: tuple[Location, ...] = (),
    health_factory: Callable[..., HealthMonitor] | None = None,
    companion_factory: CompanionFactory | None = None,
) -> Harness:
    config = Config()
    config = replace(config, health=health or replace(config.health, handshake_timeout=0.2))
    engine = FakeEngine()
    planner = FakePlanner([make_server(n) for n in range(1, servers + 1)])
    factory = health_factory or HealthMonitor
    if prober is not None:
        factory = functools.partial(HealthMonitor, prober=prober)  # type: ignore[assignment]
    harness_box: list[Harness] = []

    async def on_target(target: Target | None) -> None:
        harness_box[0].targets.append(target)

    async def on_settings(lockdown: bool, allow_lan: bool) -> None:
        harness_box[0].settings.append((lockdown, allow_lan))

    async def on_recent(locations: tuple[Location, ...]) -> None:
        harness_box[0].recents.append(locations)

    machine = Machine(
        config,
        engine,  # type: ignore[arg-type]
        planner,
        version="0.1.0",
        lockdown=lockdown,
        allow_lan=False,
        tuning=tuning or Tuning(retry_base=0.05, retry_max=0.2, health_tick=0.05),
        on_target=on_target,
        on_settings=on_settings,
        recent_locations=recent,
        on_recent=on_recent,
        health_factory=factory,
        companion_factory=companion_factory,
    )
    harness = Harness(machine, engine, planner)
    harness_box.append(harness)
    return harness


@pytest.fixture
async def started() -> object:
    harness = build()
    await harness.machine.start()
    yield harness
    await harness.machine.stop(keep_blocking=False)


async def test_start_applies_the_disconnected_policy_first() -> None:
    harness = build()
    await harness.machine.start()
    try:
        assert harness.engine.policies() == [(State.DISCONNECTED, None)]
        props = harness.machine.status
        assert props.state == "disconnected"
        assert props.blocking == "open"
        assert props.version == "0.1.0"
        assert props.mode == "host"
    finally:
        await harness.machine.stop(keep_blocking=False)
    assert harness.engine.kinds()[-1] == "remove_policy"


async def test_start_with_lockdown_blocks() -> None:
    harness = build(lockdown=True)
    await harness.machine.start()
    try:
        assert harness.machine.status.blocking == "blocked"
        assert harness.engine.calls[0] == ("policy", State.DISCONNECTED, None, True, False)
    finally:
        await harness.machine.stop(keep_blocking=True)
    assert "remove_policy" not in harness.engine.kinds()


async def test_connect_applies_policy_before_tunnel(started: Harness) -> None:
    started.machine.connect(TARGET)
    props = await started.wait_state(State.CONNECTED)
    server = make_server(1)
    assert started.engine.calls[1:] == [
        ("policy", State.CONNECTING, None, False, False),  # API pinhole only
        ("policy", State.CONNECTING, server.endpoint, False, False),  # + this server
        ("up", server.hostname),
        ("wait_handshake", server.hostname),
        ("policy", State.CONNECTED, server.endpoint, False, False),
    ]
    assert props.server.hostname == server.hostname  # type: ignore[index]
    assert str(props.server.endpoint) == "203.0.113.1:51820"  # type: ignore[index]
    assert props.interface == "nordlynx"
    assert props.tunnel_address == "10.5.0.2/32"
    assert props.connected_since > 0
    assert props.blocking == "blocked"
    assert started.states() == ["connecting", "connected"]
    assert started.targets == [TARGET]


async def test_one_notification_per_transition(started: Harness) -> None:
    started.machine.connect(TARGET)
    await started.wait_state(State.CONNECTED)
    started.machine.disconnect()
    await started.wait_state(State.DISCONNECTED)
    with_state = [n for n in started.notifications if "state" in n]
    assert [n["state"] for n in with_state] == [
        "connecting",
        "connected",
        "disconnecting",
        "disconnected",
    ]
    # The server choice is its own property change, not a second transition.
    others = [n for n in started.notifications if "state" not in n]
    assert [sorted(n) for n in others] == [["server"]]


async def test_disconnect_tears_down_after_blocking(started: Harness) -> None:
    started.machine.connect(TARGET)
    await started.wait_state(State.CONNECTED)
    started.engine.calls.clear()
    started.machine.disconnect()
    props = await started.wait_state(State.DISCONNECTED)
    assert started.engine.calls == [
        ("policy", State.DISCONNECTING, None, False, False),
        ("down",),
        ("policy", State.DISCONNECTED, None, False, False),
    ]
    assert props.blocking == "open"
    assert props.server is None
    assert props.interface == ""
    assert props.connected_since == 0
    assert started.targets[-1] is None


async def test_disconnect_with_lockdown_stays_blocked() -> None:
    harness = build(lockdown=True)
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        await harness.wait_state(State.CONNECTED)
        harness.machine.disconnect()
        props = await harness.wait_state(State.DISCONNECTED)
        assert props.blocking == "blocked"
    finally:
        await harness.machine.stop(keep_blocking=True)


async def test_falls_back_to_the_next_server_without_handshake(started: Harness) -> None:
    started.engine.dead = {"de1.nordvpn.com"}
    started.machine.connect(TARGET)
    props = await started.wait_state(State.CONNECTED)
    assert props.server.hostname == "de2.nordvpn.com"  # type: ignore[index]
    assert started.planner.failed == ["de1.nordvpn.com"]
    assert started.planner.calls == [(0, frozenset()), (1, frozenset({"de1.nordvpn.com"}))]
    # The dead server's tunnel came down, and the pinhole moved to the next server.
    kinds = started.engine.kinds()
    assert kinds.count("up") == 2
    assert ("down",) in started.engine.calls
    assert (State.CONNECTING, make_server(2).endpoint) in started.engine.policies()
    assert started.states() == ["connecting", "connected"]


async def test_no_handshake_from_any_server_is_tunnel_failed_and_retried() -> None:
    harness = build(servers=3)
    harness.engine.dead = {"de1.nordvpn.com", "de2.nordvpn.com", "de3.nordvpn.com"}
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        props = await harness.wait_state(State.ERROR)
        assert props.error_cause == "tunnel-failed"
        assert props.blocking == "blocked"
        assert harness.engine.up is None
        assert len(harness.planner.failed) == 3
        # Transient: the machine retries by itself, and succeeds once a server answers.
        harness.engine.dead.clear()
        props = await harness.wait_state(State.CONNECTED)
        assert props.error_cause == ""
        assert harness.states()[:3] == ["connecting", "error", "connecting"]
    finally:
        await harness.machine.stop(keep_blocking=False)


async def test_fewer_servers_than_attempts_ends_in_tunnel_failed() -> None:
    harness = build(servers=1)
    harness.engine.dead = {"de1.nordvpn.com"}
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        props = await harness.wait_state(State.ERROR)
        assert props.error_cause == "tunnel-failed"
    finally:
        await harness.machine.stop(keep_blocking=False)


@pytest.mark.parametrize(
    ("error", "cause", "retried"),
    [
        (errors.AuthFailed("401"), "auth-failed", False),
        (errors.NotLoggedIn("no token"), "not-logged-in", False),
        (errors.NoServer("nothing"), "no-server", False),
        (errors.UnknownLocation("Atlantis"), "unknown-location", False),
        (errors.ApiUnavailable("500"), "api-unavailable", True),
    ],
)
async def test_api_errors_set_their_cause(
    error: errors.NordwgdError, cause: str, retried: bool
) -> None:
    harness = build()
    harness.planner.error = error
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        props = await harness.wait_state(State.ERROR)
        assert props.error_cause == cause
        assert props.blocking == "blocked"  # the error policy, never open
        assert harness.engine.policies()[-1] == (State.ERROR, None)
        assert "up" not in harness.engine.kinds()
        calls_before = len(harness.planner.calls)
        await asyncio.sleep(0.5)  # several backoff periods of the shortened tuning
        assert (len(harness.planner.calls) > calls_before) is retried
    finally:
        await harness.machine.stop(keep_blocking=False)


async def test_api_unavailable_without_a_route_is_offline() -> None:
    harness = build()
    harness.planner.error = errors.ApiUnavailable("connect: network unreachable")
    harness.engine.online = False
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        props = await harness.wait_state(State.ERROR)
        assert props.error_cause == "offline"
        harness.planner.error = None
        harness.engine.online = True
        await harness.wait_state(State.CONNECTED)  # offline is transient: retried
    finally:
        await harness.machine.stop(keep_blocking=False)


async def test_routing_failure_is_not_blamed_on_the_server(started: Harness) -> None:
    async def failing_up(params: TunnelParams) -> None:
        raise errors.RoutingFailed("no table")

    started.engine.tunnel_up = failing_up  # type: ignore[method-assign]
    started.machine.connect(TARGET)
    props = await started.wait_state(State.ERROR)
    assert props.error_cause == "routing-failed"
    assert started.planner.failed == []


async def test_tunnel_failure_moves_to_the_next_server(started: Harness) -> None:
    original = started.engine.tunnel_up

    async def flaky_up(params: TunnelParams) -> None:
        assert params.server is not None
        if params.server.hostname == "de1.nordvpn.com":
            raise errors.TunnelFailed("wireguard-go died")
        await original(params)

    started.engine.tunnel_up = flaky_up  # type: ignore[method-assign]
    started.machine.connect(TARGET)
    props = await started.wait_state(State.CONNECTED)
    assert props.server.hostname == "de2.nordvpn.com"  # type: ignore[index]
    assert started.planner.failed == ["de1.nordvpn.com"]


async def test_reconnect_picks_another_server(started: Harness) -> None:
    started.machine.connect(TARGET)
    await started.wait_state(State.CONNECTED)
    started.machine.reconnect(TARGET)
    await started.machine.wait_for(on_server("de2.nordvpn.com", "connected"), WAIT)
    assert started.states() == ["connecting", "connected", "reconnecting", "connected"]
    assert started.planner.calls[-1] == (0, frozenset({"de1.nordvpn.com"}))
    # The old tunnel went down after the reconnecting policy blocked it.
    policies = started.engine.policies()
    assert (State.RECONNECTING, None) in policies
    tail = started.engine.kinds()[-6:]
    assert tail == ["policy", "down", "policy", "up", "wait_handshake", "policy"]


async def test_a_connection_puts_its_location_first_in_the_recent_ones() -> None:
    older = (Location("Sweden", "SE", "Stockholm"), Location("Germany", "DE", "Frankfurt"))
    harness = build(recent=older)
    await harness.machine.start()
    try:
        assert harness.machine.status.recent_locations == older
        harness.machine.connect(TARGET)
        status = await harness.wait_state(State.CONNECTED)
        frankfurt = Location("Germany", "DE", "Frankfurt")
        assert status.recent_locations == (frankfurt, older[0])
        for _ in range(200):  # saved by the machine's task right after publishing
            if harness.recents:
                break
            await asyncio.sleep(0.01)
        assert harness.recents == [(frankfurt, older[0])]
        # Published with the connection itself, in the same transition.
        assert "recent_locations" in harness.notifications[-1]
        assert harness.notifications[-1]["state"] == State.CONNECTED
        # A reconnect to the same place changes nothing and saves nothing.
        harness.machine.reconnect(TARGET)
        await harness.machine.wait_for(on_server("de2.nordvpn.com", "connected"), WAIT)
        assert harness.recents == [(frankfurt, older[0])]
    finally:
        await harness.machine.stop(keep_blocking=False)


def test_remember_keeps_the_latest_few_without_repeats() -> None:
    places = [Location(f"Country {n}", f"C{n}", "City") for n in range(RECENT_LIMIT + 2)]
    recent: tuple[Location, ...] = ()
    for place in places:
        recent = remember(recent, place)
    assert recent == tuple(reversed(places))[:RECENT_LIMIT]
    assert remember(recent, places[-3]) == (places[-3], places[-1], places[-2], *recent[3:])


async def test_reconnect_when_disconnected_connects_to_the_given_target(started: Harness) -> None:
    started.machine.reconnect(TARGET)
    await started.wait_state(State.CONNECTED)
    assert started.targets == [TARGET]


async def test_disconnect_interrupts_a_pending_handshake(started: Harness) -> None:
    started.engine.hang_handshake = True
    started.machine.connect(TARGET)
    await started.machine.wait_for(lambda p: p.server is not None, WAIT)
    await asyncio.sleep(0.05)
    started.machine.disconnect()
    props = await started.wait_state(State.DISCONNECTED)
    assert props.blocking == "open"
    assert started.engine.up is None


async def test_disconnect_interrupts_a_hanging_api(started: Harness) -> None:
    started.planner.hang = True
    started.machine.connect(TARGET)
    await started.wait_state(State.CONNECTING)
    started.machine.disconnect()
    await started.wait_state(State.DISCONNECTED)
    assert "up" not in started.engine.kinds()


async def test_disconnect_cancels_the_retry() -> None:
    harness = build()
    harness.planner.error = errors.ApiUnavailable("down")
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        await harness.wait_state(State.ERROR)
        harness.machine.disconnect()
        await harness.wait_state(State.DISCONNECTED)
        calls = len(harness.planner.calls)
        await asyncio.sleep(0.4)
        assert len(harness.planner.calls) == calls
    finally:
        await harness.machine.stop(keep_blocking=False)


async def test_firewall_failure_on_entering_a_state_blocks_everything(started: Harness) -> None:
    started.engine.fail_policy = {State.CONNECTED}
    started.machine.connect(TARGET)
    props = await started.wait_state(State.ERROR)
    assert props.blocking == "block-failed"
    assert props.error_cause == "firewall-failed"
    assert props.server is None
    assert "block_all" in started.engine.kinds()
    assert started.engine.up is None  # the tunnel does not outlive a failed policy
    assert started.states() == ["connecting", "error"]


async def test_firewall_failure_at_start_is_visible() -> None:
    harness = build()
    harness.engine.fail_policy = {State.DISCONNECTED}
    harness.engine.fail_block_all = True
    await harness.machine.start()
    try:
        props = harness.machine.status
        assert props.state == "error"
        assert props.blocking == "block-failed"
        assert props.error_cause == "firewall-failed"
    finally:
        await harness.machine.stop(keep_blocking=True)


async def test_set_lockdown_reapplies_the_current_policy(started: Harness) -> None:
    started.engine.calls.clear()
    await started.machine.set_lockdown(True)
    assert started.engine.calls == [("policy", State.DISCONNECTED, None, True, False)]
    props = started.machine.status
    assert props.lockdown is True
    assert props.blocking == "blocked"
    assert started.notifications[-1] == {"lockdown": True, "blocking": "blocked"}
    assert started.settings == [(True, False)]
    await started.machine.set_lockdown(False)
    assert started.machine.status.blocking == "open"
    assert started.settings == [(True, False), (False, False)]


async def test_set_allow_lan_reapplies_the_connected_policy(started: Harness) -> None:
    started.machine.connect(TARGET)
    await started.wait_state(State.CONNECTED)
    started.engine.calls.clear()
    await started.machine.set_allow_lan(True)
    endpoint = make_server(1).endpoint
    assert started.engine.calls == [("policy", State.CONNECTED, endpoint, False, True)]
    assert started.notifications[-1] == {"allow_lan": True}
    assert started.machine.state == State.CONNECTED


async def test_setting_that_cannot_be_applied_ends_in_error(started: Harness) -> None:
    started.engine.fail_policy = {State.DISCONNECTED}
    with pytest.raises(errors.FirewallFailed):
        await started.machine.set_lockdown(True)
    props = await started.wait_state(State.ERROR)
    assert props.blocking == "block-failed"
    assert props.error_cause == "firewall-failed"


async def test_resume_blocks_then_connects() -> None:
    harness = build()
    await harness.machine.start(resume=TARGET)
    try:
        assert harness.engine.calls[0] == ("policy", State.CONNECTING, None, False, False)
        await harness.wait_state(State.CONNECTED)
        assert harness.engine.policies()[0] != (State.DISCONNECTED, None)
    finally:
        await harness.machine.stop(keep_blocking=True)


async def test_stop_keep_blocking_leaves_tunnel_and_table(started: Harness) -> None:
    started.machine.connect(TARGET)
    await started.wait_state(State.CONNECTED)
    started.engine.calls.clear()
    await started.machine.stop(keep_blocking=True)
    assert started.engine.calls == []


async def test_stale_handshake_fails_over_once_without_flapping() -> None:
    health = replace(
        Config().health, handshake_timeout=0.2, handshake_max_age=60.0, attempts=2, interval=3600
    )
    tuning = Tuning(
        retry_base=0.05,
        retry_max=0.2,
        health_tick=0.02,
        failover_min_interval=0.8,
        failover_max_interval=5.0,
    )
    harness = build(health=health, tuning=tuning)
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        await harness.wait_state(State.CONNECTED)
        harness.engine.handshake_at = time.time() - 3600  # every server looks dead from now on
        await harness.machine.wait_for(on_server("de2.nordvpn.com", "connected"), WAIT)
        failover_at = time.monotonic()
        # The next failure comes within a few ticks, but the switch waits out the interval.
        await harness.machine.wait_for(on_server("de3.nordvpn.com"), WAIT)
        # Ordering, not speed: the second switch did not come before the minimum interval.
        assert time.monotonic() - failover_at >= 0.8 - 0.05
        assert harness.states()[:4] == ["connecting", "connected", "reconnecting", "connected"]
    finally:
        await harness.machine.stop(keep_blocking=False)


async def test_failed_probes_fail_over() -> None:
    probed: list[str] = []

    async def prober(url: str, seconds: float) -> str | None:
        probed.append(url)
        return "ConnectTimeout"

    health = replace(
        Config().health,
        urls=("http://198.51.100.80/",),
        attempts=2,
        interval=0.05,
        handshake_timeout=0.2,
    )
    harness = build(health=health, prober=prober)
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        await harness.wait_state(State.CONNECTED)
        await harness.wait_state(State.RECONNECTING)
        assert len(probed) >= 2
    finally:
        await harness.machine.stop(keep_blocking=False)


async def test_check_health_reports_details(started: Harness) -> None:
    healthy, details = await started.machine.check_health()
    assert not healthy
    assert details["state"] == "disconnected"
    started.machine.connect(TARGET)
    await started.wait_state(State.CONNECTED)
    healthy, details = await started.machine.check_health()
    assert healthy
    assert details["rx_bytes"] == 1000
    assert 0 <= details["handshake_age"] < 60  # type: ignore[operator]
    assert started.machine.status.rx_bytes == 1000


async def test_alive_follows_the_loop_and_the_tunnel_monitor() -> None:
    harness = build()
    assert not harness.machine.alive()  # not started
    await harness.machine.start()
    try:
        assert harness.machine.alive()
        harness.machine.connect(Target())
        await harness.wait_state(State.CONNECTED)
        assert harness.machine.alive()
        health = harness.machine._health
        assert health is not None and health.running
        await health.stop()  # a dead tunnel monitor must stop the watchdog pings
        assert not harness.machine.alive()
    finally:
        await harness.machine.stop(keep_blocking=False)
    assert not harness.machine.alive()


async def test_counters_belong_to_the_tunnel(started: Harness) -> None:
    started.engine.handshake_at = time.time()
    started.machine.connect(Target())
    await started.wait_state(State.CONNECTED)
    await started.machine.statistics()
    await asyncio.sleep(0.2)  # the tunnel monitor records the counters
    assert started.machine.status.rx_bytes == 1000
    started.machine.disconnect()
    properties = await started.wait_state(State.DISCONNECTED)
    counters = [properties.latest_handshake, properties.rx_bytes, properties.tx_bytes]
    assert counters == [0, 0, 0]


# -- one queue: every command in arrival order, each state deciding what it means ----------


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def build_keeping_verdicts() -> tuple[Harness, list[Callable[[str], None]]]:
    """A harness whose health monitors' verdict callbacks are kept, oldest first, so a test
    can deliver a verdict from any of them."""
    verdicts: list[Callable[[str], None]] = []

    def monitor(*args: object, **kwargs: object) -> HealthMonitor:
        verdicts.append(args[2])  # type: ignore[arg-type]
        return HealthMonitor(*args, **kwargs)  # type: ignore[arg-type]

    return build(health_factory=monitor), verdicts


async def test_a_stale_health_verdict_does_not_interrupt_a_reconnect() -> None:
    """A verdict about the connection that is being replaced must not end the new one's
    attempt (which left the machine in reconnecting with nothing under way)."""
    harness, verdicts = build_keeping_verdicts()
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        await harness.wait_state(State.CONNECTED)
        stale = verdicts[-1]
        harness.engine.handshake_gate = asyncio.Event()
        harness.machine.reconnect(TARGET)
        await harness.wait_state(State.RECONNECTING)
        await eventually(lambda: harness.engine.kinds().count("wait_handshake") >= 2)
        stale("nothing received")  # the old tunnel's monitor judged late
        await asyncio.sleep(0.05)
        harness.engine.handshake_gate.set()
        status = await harness.wait_state(State.CONNECTED)
        assert status.server is not None and status.server.hostname == "de2.nordvpn.com"
    finally:
        await harness.machine.stop(keep_blocking=False)


async def test_a_verdict_about_the_current_connection_still_fails_over() -> None:
    harness, verdicts = build_keeping_verdicts()
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        await harness.wait_state(State.CONNECTED)
        verdicts[-1]("nothing received")
        await harness.machine.wait_for(on_server("de2.nordvpn.com", "connected"), WAIT)
        verdicts[0]("late")  # the first connection's monitor, long gone: dropped
        await asyncio.sleep(0.1)
        assert harness.machine.state == State.CONNECTED
        assert harness.states()[-2:] == ["reconnecting", "connected"]
    finally:
        await harness.machine.stop(keep_blocking=False)


class PortCompanion:
    """Stands in for the port forwarder: the test decides when it publishes a port."""

    def __init__(self, publish: Callable[[int], None]) -> None:
        self.publish = publish
        self.stopped = False

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True
        self.publish(0)  # as the port forwarder does when its tunnel goes


def port_companions() -> tuple[list[PortCompanion], CompanionFactory]:
    made: list[PortCompanion] = []

    def factory(
        params: TunnelParams, interface: str, publish: Callable[[int], None]
    ) -> Companion | None:
        made.append(PortCompanion(publish))
        return made[-1]

    return made, factory


async def test_a_port_about_the_previous_connection_is_never_published() -> None:
    """A port update goes through the queue with its connection: one that arrives after a
    reconnect (the old forwarder's bind answered late) is dropped, not shown as the new
    connection's port, and the new connection's own port is published."""
    companions, factory = port_companions()
    harness = build(companion_factory=factory)
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        await harness.wait_state(State.CONNECTED)
        companions[0].publish(47047)
        await harness.machine.wait_for(lambda status: status.forwarded_port == 47047, WAIT)
        harness.machine.reconnect(TARGET)
        await harness.machine.wait_for(on_server("de2.nordvpn.com", "connected"), WAIT)
        assert companions[0].stopped and len(companions) == 2
        assert harness.machine.status.forwarded_port == 0
        companions[0].publish(51000)  # late, about the connection that is gone
        await harness.machine.set_lockdown(False)  # answered after the port update was taken
        assert harness.machine.status.forwarded_port == 0
        companions[1].publish(52000)
        await harness.machine.wait_for(lambda status: status.forwarded_port == 52000, WAIT)
        harness.machine.disconnect()
        await harness.wait_state(State.DISCONNECTED)
        companions[1].publish(53000)  # after the disconnect: dropped as well
        await harness.machine.set_lockdown(False)
        assert harness.machine.status.forwarded_port == 0
        ports = [n["forwarded_port"] for n in harness.notifications if "forwarded_port" in n]
        assert ports == [47047, 0, 52000, 0]
    finally:
        await harness.machine.stop(keep_blocking=False)


async def test_a_failover_that_reaches_no_server_does_not_go_back_to_the_dead_one() -> None:
    """The servers after the dead one miss their handshakes (under load), so the failover
    ends in error; its retry must not reconnect to the server the verdict condemned (which
    answers handshakes but forwards nothing: its next verdict would then wait out the
    failover spacing on a dead tunnel), but to a server that may work now."""
    verdicts: list[Callable[[str], None]] = []

    def monitor(*args: object, **kwargs: object) -> HealthMonitor:
        verdicts.append(args[2])  # type: ignore[arg-type]
        return HealthMonitor(*args, **kwargs)  # type: ignore[arg-type]

    tuning = Tuning(retry_base=0.3, retry_max=0.3, health_tick=0.05)
    harness = build(health_factory=monitor, tuning=tuning)
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        await harness.machine.wait_for(on_server("de1.nordvpn.com", "connected"), WAIT)
        harness.engine.dead = {"de2.nordvpn.com", "de3.nordvpn.com"}
        verdicts[-1]("nothing received")
        status = await harness.wait_state(State.ERROR)
        assert status.error_cause == "tunnel-failed"
        harness.engine.dead = set()  # the load is gone; de1 still forwards nothing
        status = await harness.wait_state(State.CONNECTED)
        assert status.server is not None and status.server.hostname == "de2.nordvpn.com"
        assert harness.engine.calls.count(("up", "de1.nordvpn.com")) == 1
    finally:
        await harness.machine.stop(keep_blocking=False)


async def test_a_retry_takes_the_condemned_server_when_no_other_is_left() -> None:
    verdicts: list[Callable[[str], None]] = []

    def monitor(*args: object, **kwargs: object) -> HealthMonitor:
        verdicts.append(args[2])  # type: ignore[arg-type]
        return HealthMonitor(*args, **kwargs)  # type: ignore[arg-type]

    tuning = Tuning(retry_base=0.05, retry_max=0.05, health_tick=0.05, max_servers=2)
    harness = build(servers=2, health_factory=monitor, tuning=tuning)
    await harness.machine.start()
    try:
        harness.machine.connect(TARGET)
        await harness.machine.wait_for(on_server("de1.nordvpn.com", "connected"), WAIT)
        harness.engine.dead = {"de2.nordvpn.com"}  # for good: only de1 is left
        verdicts[-1]("nothing received")
        await harness.wait_state(State.ERROR)
        status = await harness.wait_state(State.CONNECTED)
        assert status.server is not None and status.server.hostname == "de1.nordvpn.com"
    finally:
        await harness.machine.stop(keep_blocking=False)


async def test_a_connect_accepted_before_stop_is_kept_blocking() -> None:
    """Stop decides whether the kill switch stays after the commands before it: a Connect
    accepted just before is a wanted tunnel, so the firewall stays and the target with it."""
    harness = build()
    await harness.machine.start()
    assert harness.machine.state == State.DISCONNECTED
    harness.machine.connect(TARGET)
    kept = await harness.machine.stop()
    assert kept is True
    assert harness.targets == [TARGET]
    assert ("remove_policy",) not in harness.engine.calls
    assert harness.engine.policies()[-1][0] in (State.CONNECTING, State.CONNECTED)


async def test_stop_after_disconnect_opens() -> None:
    harness = build()
    await harness.machine.start()
    harness.machine.connect(TARGET)
    await harness.wait_state(State.CONNECTED)
    harness.machine.disconnect()
    assert await harness.machine.stop() is False
    assert harness.engine.calls[-1] == ("remove_policy",)


async def test_commands_after_stop_are_refused() -> None:
    harness = build()
    await harness.machine.start()
    await harness.machine.stop(keep_blocking=False)
    with pytest.raises(errors.NordwgdError, match="stopping"):
        await harness.machine.connect(TARGET)


async def test_a_setting_during_a_connect_applies_without_ending_it(started: Harness) -> None:
    started.engine.handshake_gate = asyncio.Event()
    started.machine.connect(TARGET)
    await eventually(lambda: "wait_handshake" in started.engine.kinds())
    await started.machine.set_lockdown(True)
    assert started.engine.calls[-1][0] == "policy"
    assert started.engine.calls[-1][1] == State.CONNECTING
    started.engine.handshake_gate.set()
    status = await started.wait_state(State.CONNECTED)
    assert status.lockdown is True
    assert started.engine.kinds().count("up") == 1  # the same attempt went on


async def test_settings_are_saved_in_the_order_they_came(started: Harness) -> None:
    answers = [started.machine.set_lockdown(value) for value in (True, False, True, False)]
    await asyncio.gather(*answers)
    assert started.settings == [(True, False), (False, False), (True, False), (False, False)]


async def test_a_connect_whose_look_up_fails_changes_nothing(started: Harness) -> None:
    async def unknown() -> None:
        raise errors.UnknownLocation("unknown server 'xx1'")

    with pytest.raises(errors.UnknownLocation):
        await started.machine.connect(TARGET, unknown)
    assert started.machine.state == State.DISCONNECTED
    assert started.targets == []


async def test_disconnect_during_the_look_up_of_a_connect_wins(started: Harness) -> None:
    release = asyncio.Event()

    async def slow_look_up() -> None:
        await release.wait()

    accepted = started.machine.connect(TARGET, slow_look_up)
    await asyncio.sleep(0.05)
    started.machine.disconnect()
    await accepted
    release.set()
    await asyncio.sleep(0.1)
    assert started.machine.state == State.DISCONNECTED
    assert "up" not in started.engine.kinds()


# -- a wanted tunnel that cannot be resumed -------------------------------------------------


async def test_an_unresumable_target_starts_in_error_blocking() -> None:
    harness = build()
    await harness.machine.start(resume=errors.UnknownLocation("unknown country 'Germny'"))
    try:
        status = harness.machine.status
        assert status.state == State.ERROR
        assert status.error_cause == "unknown-location"
        assert status.blocking == "blocked"
        assert harness.engine.policies() == [(State.ERROR, None)]
        harness.machine.disconnect()  # the way out the user has
        status = await harness.wait_state(State.DISCONNECTED)
        assert harness.targets == [None]
    finally:
        assert await harness.machine.stop() is False


# -- liveness: progress, not only a running task ---------------------------------------------


async def test_a_stuck_firewall_step_stops_the_watchdog() -> None:
    from nordwgd.systemd import Watchdog

    harness = build(tuning=Tuning(retry_base=0.05, health_tick=0.05, step_deadline=0.3))
    await harness.machine.start()
    pings: list[float] = []
    watchdog = Watchdog(harness.machine.alive, interval=0.1, send=lambda: pings.append(1) or True)
    watchdog.start()
    try:
        await asyncio.sleep(0.15)
        assert pings, "the watchdog pings while the machine makes progress"
        harness.engine.hang_policy = {State.CONNECTING}
        harness.machine.connect(TARGET)
        await asyncio.sleep(0.5)  # past the step's deadline
        assert not harness.machine.alive()
        before = len(pings)
        await asyncio.sleep(0.3)
        assert len(pings) == before, "no pings while a transition is stuck"
    finally:
        await watchdog.stop()
        task = harness.machine._task  # stuck for good: what systemd's restart ends
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
