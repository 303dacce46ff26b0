"""Is the tunnel alive? A monitor that runs while connected.

Every ``tick`` seconds it reads the peer statistics: a handshake older than
``handshake_max_age`` fails the check. While traffic flows (the transmitted counter grew since
the last look) or a stall is being timed, it looks every ``fast_tick`` seconds instead.

A stall begins at a look that saw data sent and no data received, and lasts until data is
received, through looks that saw nothing sent (TCP backs off when nothing comes back). WireGuard's
own housekeeping is not data: a keepalive (32 bytes), a handshake initiation (148) or its
response (92) in one look, alone or together, neither start a stall nor end one; so a
server that still answers handshakes and keepalives but forwards nothing stalls like a dead one.
When a stall has lasted ``stall_after`` seconds, the monitor asks for a real round trip through
the tunnel before it judges: a DNS query to each tunnel resolver (``dns_servers``) and the probe
URLs, all at once with a short timeout (``stall_probe_timeout``). A one-way flow through a live
tunnel (a UDP upload) gets no WireGuard answers for about ten seconds, until the passive
keepalive, but the resolver answers; when nothing answers (or there is nothing to ask) the peer
is silent and ``on_failure`` is called at once, without waiting for ``attempts`` checks: a dead
server is noticed in seconds, not minutes.

Every ``interval`` seconds (or at once after ``trigger()``, e.g. when the uplink changed or the
machine resumed) it fetches the configured URLs. A probe passes when any URL answers with any
HTTP status. ``attempts`` failed checks in a row call ``on_failure``; the machine decides what
to do (fail over, without flapping).

The probes must take the tunnel. In host and gateway modes the tunnel routes everything, so a
plain request from this process goes through it. In namespace mode only the namespace
``namespace`` reaches the tunnel: every probe then runs in a thread that entered it
(``nordwgd.netns_thread``), so it tests the tunnel, not the uplink, and lockdown on the host
does not stop it. URL host names are resolved with this process's resolver configuration, so
in that mode health URLs should name an IP address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from nordwgd import dnsprobe
from nordwgd.config import HealthConfig
from nordwgd.model import IPAddress
from nordwgd.netns_thread import run_in_namespace
from nordwgd.wireguard import PeerStats

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

# Counter steps of WireGuard's housekeeping in one look: a keepalive (32 bytes) and a handshake
# initiation (148) sent, a keepalive and a handshake response (92) received, alone or together.
# (A cookie reply, 64, comes only from a peer under load: it is left out, as 64 + 32 is also a
# lone TCP SYN or SYN-ACK; taking one for data costs a probe, never a failover.)
_KEEPALIVE, _INITIATION, _RESPONSE = 32, 148, 92
SENT_HOUSEKEEPING = frozenset({_KEEPALIVE, _INITIATION, _KEEPALIVE + _INITIATION})
RECEIVED_HOUSEKEEPING = frozenset({0, _KEEPALIVE, _RESPONSE, _KEEPALIVE + _RESPONSE})

Prober = Callable[[str, float], Awaitable[str | None]]
"""``prober(url, timeout)`` -> None when the URL answered, else why it did not."""

DnsProber = Callable[[IPAddress, float], Awaitable[str | None]]
"""``dns_prober(server, timeout)`` -> None when the resolver responded, else why it did not."""


async def http_probe(url: str, timeout: float) -> str | None:  # noqa: ASYNC109 (per request)
    """Fetch ``url``; any HTTP answer means the path works."""
    import httpx  # on first use (the API client has usually loaded it): idle daemons skip it

    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            response = await client.get(url)
    except httpx.HTTPError as error:
        return _http_reason(error)
    log.debug("probe %s: HTTP %d", url, response.status_code)
    return None


async def dns_probe(server: IPAddress, timeout: float) -> str | None:  # noqa: ASYNC109
    """One DNS round trip to ``server`` (``nordwgd.dnsprobe``), off the event loop."""
    return await asyncio.to_thread(dnsprobe.query, server, timeout)


def namespace_probers(namespace: str) -> tuple[Prober, DnsProber]:
    """The HTTP and DNS probes, run inside the network namespace ``/run/netns/<namespace>``."""

    async def http(url: str, timeout: float) -> str | None:  # noqa: ASYNC109
        try:
            return await run_in_namespace(namespace, functools.partial(_http_get, url, timeout))
        except OSError as error:
            return str(error)

    async def dns(server: IPAddress, timeout: float) -> str | None:  # noqa: ASYNC109
        try:
            return await run_in_namespace(
                namespace, functools.partial(dnsprobe.query, server, timeout)
            )
        except OSError as error:
            return str(error)

    return http, dns


def _http_get(url: str, timeout: float) -> str | None:
    """The blocking twin of ``http_probe``, for a thread in another namespace."""
    import httpx

    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            response = client.get(url)
    except httpx.HTTPError as error:
        return _http_reason(error)
    log.debug("probe %s: HTTP %d", url, response.status_code)
    return None


def _http_reason(error: httpx.HTTPError) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class HealthMonitor:
    """Periodic checks of one connection; create per connection, ``start()``, ``stop()``."""

    def __init__(
        self,
        config: HealthConfig,
        stats: Callable[[], Awaitable[PeerStats]],
        on_failure: Callable[[str], None],
        *,
        tick: float = 5.0,
        fast_tick: float = 1.0,
        stall_after: float | None = None,
        stall_probe_timeout: float = 1.0,
        dns_servers: Sequence[IPAddress] = (),
        namespace: str | None = None,
        prober: Prober = http_probe,
        dns_prober: DnsProber = dns_probe,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._stats = stats
        self._on_failure = on_failure
        self._tick = min(tick, config.interval) if config.interval > 0 else tick
        self._fast_tick = min(fast_tick, self._tick)
        # Two looks after the first one that saw sending without receiving.
        self._stall_after = 2 * self._fast_tick if stall_after is None else stall_after
        self._stall_probe_timeout = min(stall_probe_timeout, config.timeout)
        self._dns_servers = tuple(dns_servers)
        self._prober = prober
        self._dns_prober = dns_prober
        if namespace is not None:
            # The default probes would test this namespace's uplink: move them to the tunnel.
            in_namespace = namespace_probers(namespace)
            if prober is http_probe:
                self._prober = in_namespace[0]
            if dns_prober is dns_probe:
                self._dns_prober = in_namespace[1]
        self._wall_clock = wall_clock
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._last: PeerStats | None = None
        self._next_probe = 0.0
        self._sending = False  # the last look saw the transmitted counter grow
        # The look before the first one that saw data sent and none received: the silence began
        # after it, so a stall is timed from there.
        self._stall_since: float | None = None
        self._looked_at: float | None = None

    @property
    def failures(self) -> int:
        """Failed checks in a row so far."""
        return self._failures

    def start(self) -> None:
        self._next_probe = self._clock() + self._config.interval
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nordwgd-health")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        """The monitor task exists and has not ended (the watchdog depends on it)."""
        return self._task is not None and not self._task.done()

    def trigger(self) -> None:
        """Probe at the next opportunity (uplink change, resume from sleep)."""
        self._wake.set()

    async def check_now(self) -> tuple[bool, dict[str, object]]:
        """Run a full check (handshake and probes) now; it counts toward ``attempts``."""
        return await self._check(probe=True)

    async def _run(self) -> None:
        # A first look at the counters, so that the next one can already tell traffic.
        try:
            self._last = await self._stats()
        except Exception:
            log.debug("first statistics read failed", exc_info=True)
        while True:
            with contextlib.suppress(TimeoutError):
                fast = self._sending or self._stall_since is not None
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self._fast_tick if fast else self._tick
                )
            triggered = self._wake.is_set()
            self._wake.clear()
            probe = triggered or self._clock() >= self._next_probe
            try:
                await self._check(probe=probe)
            except Exception:
                log.exception("health check failed unexpectedly")

    async def _check(self, *, probe: bool) -> tuple[bool, dict[str, object]]:
        async with self._lock:
            stats = await self._stats()
            details: dict[str, object] = {
                "rx_bytes": stats.rx_bytes,
                "tx_bytes": stats.tx_bytes,
            }
            problems: list[str] = []
            age = self._handshake_age(stats)
            details["handshake_age"] = age
            if age < 0 or age > self._config.handshake_max_age:
                problems.append("no handshake" if age < 0 else f"last handshake {age:.0f}s ago")
            stalled_for = self._track_stall(stats)
            self._last = stats
            silent = False
            if stalled_for is not None and stalled_for >= self._stall_after:
                silent = await self._confirm_silence(details)
                probe = False  # just probed
                if silent:
                    problems.append(f"nothing received for {stalled_for:.1f}s of sending")
            if probe and self._config.urls:
                self._next_probe = self._clock() + self._config.interval
                results = await asyncio.gather(
                    *(self._prober(url, self._config.timeout) for url in self._config.urls)
                )
                details["probes"] = {
                    url: "ok" if result is None else result
                    for url, result in zip(self._config.urls, results, strict=True)
                }
                if all(result is not None for result in results):
                    problems.append("no probe URL answered")
            healthy = not problems
            if healthy:
                self._failures = 0
            else:
                self._failures += 1
            details["failures"] = self._failures
            details["reason"] = "; ".join(problems)
            if not healthy:
                log.warning(
                    "health check %d/%d failed: %s",
                    self._failures,
                    self._config.attempts,
                    details["reason"],
                )
            if self._failures >= max(1, self._config.attempts) or silent:
                self._failures = 0
                self._on_failure(str(details["reason"]))
            return healthy, details

    def _handshake_age(self, stats: PeerStats) -> float:
        if stats.latest_handshake <= 0:
            return -1.0
        return max(0.0, self._wall_clock() - stats.latest_handshake)

    def _track_stall(self, stats: PeerStats) -> float | None:
        """Seconds since data was sent and no data came back, else None."""
        last = self._last
        if last is None:
            return None
        sent = stats.tx_bytes - last.tx_bytes
        received = stats.rx_bytes - last.rx_bytes
        self._sending = sent > 0
        now = self._clock()
        previous, self._looked_at = self._looked_at, now
        if received < 0 or received not in RECEIVED_HOUSEKEEPING:
            self._stall_since = None  # data came back (or the counters started over)
            return None
        if self._stall_since is None:
            if sent <= 0 or sent in SENT_HOUSEKEEPING:
                return None  # an idle link, or only WireGuard's own packets
            self._stall_since = now if previous is None else previous
        return now - self._stall_since

    async def _confirm_silence(self, details: dict[str, object]) -> bool:
        """After a stall: True unless a tunnel resolver or a probe URL answers within a short
        timeout (a one-way flow, such as an upload over UDP, gets no WireGuard answers from a
        live peer until its passive keepalive, about ten seconds later)."""
        self._stall_since = None  # the next verdict needs a new stall
        timeout = self._stall_probe_timeout
        names = [f"dns {server}" for server in self._dns_servers] + list(self._config.urls)
        if not names:
            return True
        results = await asyncio.gather(
            *(self._dns_prober(server, timeout) for server in self._dns_servers),
            *(self._prober(url, timeout) for url in self._config.urls),
        )
        details["probes"] = {
            name: "ok" if result is None else result
            for name, result in zip(names, results, strict=True)
        }
        return all(result is not None for result in results)
