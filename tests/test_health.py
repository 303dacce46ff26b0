"""The health monitor: handshake age, probes, attempts, triggers, stalls confirmed by the tunnel
resolver; the real HTTP and DNS probes; and a one-way upload through the real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from nordwgd import dnsprobe
from nordwgd.config import HealthConfig
from nordwgd.dnsprobe import TYPE_NS
from nordwgd.health import HealthMonitor, http_probe
from nordwgd.model import IPAddress
from nordwgd.testing import netns as ns
from nordwgd.testing.world import World
from nordwgd.wireguard import PeerStats
from tests.fixtures_dbus import DaemonProcess, PrivateBus, call_as, running_daemon

NOW = 1_700_000_000.0
URL = "http://198.51.100.80/health"


class Peer:
    def __init__(self) -> None:
        self.stats = PeerStats(NOW - 10, 1000, 1000)

    async def __call__(self) -> PeerStats:
        return self.stats


class Prober:
    def __init__(self) -> None:
        self.answer: str | None = None
        self.calls: list[str] = []
        self.timeouts: list[float] = []

    async def __call__(self, url: str, seconds: float) -> str | None:
        self.calls.append(url)
        self.timeouts.append(seconds)
        return self.answer


def monitor(
    config: HealthConfig, peer: Peer, prober: Prober, failures: list[str], tick: float = 3600
) -> HealthMonitor:
    return HealthMonitor(
        config, peer, failures.append, tick=tick, prober=prober, wall_clock=lambda: NOW
    )


BASE = HealthConfig(urls=(URL,), attempts=2, interval=3600, handshake_max_age=180)


async def test_healthy_tunnel() -> None:
    failures: list[str] = []
    prober = Prober()
    healthy, details = await monitor(BASE, Peer(), prober, failures).check_now()
    assert healthy
    assert details["handshake_age"] == 10
    assert details["probes"] == {URL: "ok"}
    assert details["failures"] == 0
    assert prober.calls == [URL]
    assert failures == []


async def test_old_handshake_fails_after_attempts() -> None:
    failures: list[str] = []
    peer = Peer()
    peer.stats = PeerStats(NOW - 600, 1000, 1000)
    health = monitor(BASE, peer, Prober(), failures)
    healthy, details = await health.check_now()
    assert not healthy
    assert details["reason"] == "last handshake 600s ago"
    assert failures == []  # one failure is not enough with attempts=2
    await health.check_now()
    assert failures == ["last handshake 600s ago"]
    assert health.failures == 0  # counted again from zero after reporting


async def test_never_a_handshake_is_unhealthy() -> None:
    peer = Peer()
    peer.stats = PeerStats(0.0, 0, 0)
    healthy, details = await monitor(BASE, peer, Prober(), []).check_now()
    assert not healthy
    assert details["handshake_age"] == -1
    assert "no handshake" in str(details["reason"])


async def test_failed_probes_count_and_a_success_resets() -> None:
    failures: list[str] = []
    prober = Prober()
    health = monitor(BASE, Peer(), prober, failures)
    prober.answer = "ConnectTimeout"
    healthy, details = await health.check_now()
    assert not healthy
    assert details["probes"] == {URL: "ConnectTimeout"}
    prober.answer = None
    assert (await health.check_now())[0]
    prober.answer = "ConnectTimeout"
    await health.check_now()
    assert failures == []  # never two failures in a row
    await health.check_now()
    assert failures == ["no probe URL answered"]


async def test_one_answering_url_is_enough() -> None:
    class Mixed(Prober):
        async def __call__(self, url: str, seconds: float) -> str | None:
            return None if url.endswith("/b") else "ConnectError"

    config = replace(BASE, urls=("http://198.51.100.80/a", "http://198.51.100.80/b"))
    healthy, _ = await monitor(config, Peer(), Mixed(), []).check_now()
    assert healthy


async def test_without_urls_only_the_handshake_counts() -> None:
    prober = Prober()
    healthy, details = await monitor(replace(BASE, urls=()), Peer(), prober, []).check_now()
    assert healthy
    assert "probes" not in details
    assert prober.calls == []


async def test_trigger_probes_at_once() -> None:
    prober = Prober()
    health = monitor(BASE, Peer(), prober, [], tick=3600)
    health.start()
    try:
        await asyncio.sleep(0.05)
        assert prober.calls == []  # the interval (an hour) has not passed
        health.trigger()
        for _ in range(100):
            if prober.calls:
                break
            await asyncio.sleep(0.01)
        assert prober.calls == [URL]
    finally:
        await health.stop()


class SendingPeer(Peer):
    """Every look shows more bytes sent and none received: a silent peer under traffic."""

    async def __call__(self) -> PeerStats:
        self.stats = replace(self.stats, tx_bytes=self.stats.tx_bytes + 160)
        return self.stats


async def _wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_sending_without_answers_asks_the_probe_urls_briefly() -> None:
    prober = Prober()  # the URL answers: a one-way flow through a live tunnel
    failures: list[str] = []
    health = monitor(BASE, SendingPeer(), prober, failures, tick=0.01)
    health.start()
    try:
        await _wait_for(lambda: bool(prober.calls))
        assert prober.calls
        assert prober.timeouts[0] <= 1.0  # a short chance, not the full probe timeout
        assert failures == []
    finally:
        await health.stop()


async def test_silent_peer_under_traffic_fails_at_once() -> None:
    prober = Prober()
    prober.answer = "ConnectTimeout"
    failures: list[str] = []
    config = replace(BASE, attempts=100)  # not waiting for many failed checks
    health = monitor(config, SendingPeer(), prober, failures, tick=0.01)
    health.start()
    try:
        await _wait_for(lambda: bool(failures))
        assert failures and "nothing received" in failures[0]
        assert len(prober.calls) == 1
    finally:
        await health.stop()


async def test_silent_peer_with_nothing_to_ask_fails_on_the_counters_alone() -> None:
    failures: list[str] = []
    config = replace(BASE, urls=(), attempts=100)
    health = monitor(config, SendingPeer(), Prober(), failures, tick=0.01)
    health.start()
    try:
        await _wait_for(lambda: bool(failures))
        assert failures and "nothing received" in failures[0]
    finally:
        await health.stop()


class Resolver:
    """A tunnel resolver double: answers (None) or not (a reason), and records the questions."""

    def __init__(self, answer: str | None = None) -> None:
        self.answer = answer
        self.asked: list[tuple[IPAddress, float]] = []

    async def __call__(self, server: IPAddress, seconds: float) -> str | None:
        self.asked.append((server, seconds))
        return self.answer


TUNNEL_DNS = (ip_address("198.51.100.53"), ip_address("198.51.100.54"))


def dns_monitor(
    config: HealthConfig, peer: Peer, prober: Prober, resolver: Resolver, failures: list[str]
) -> HealthMonitor:
    return HealthMonitor(
        config,
        peer,
        failures.append,
        tick=0.01,
        dns_servers=TUNNEL_DNS,
        prober=prober,
        dns_prober=resolver,
        wall_clock=lambda: NOW,
    )


async def test_one_way_traffic_without_urls_is_confirmed_by_the_tunnel_resolver() -> None:
    # A UDP upload through a live tunnel: nothing comes back, but the resolver answers.
    failures: list[str] = []
    resolver = Resolver()
    config = replace(BASE, urls=(), attempts=1)
    health = dns_monitor(config, SendingPeer(), Prober(), resolver, failures)
    health.start()
    try:
        await _wait_for(lambda: len(resolver.asked) >= 2 * len(TUNNEL_DNS))
        assert {server for server, _ in resolver.asked} == set(TUNNEL_DNS)
        assert all(seconds <= 1.0 for _, seconds in resolver.asked)
        assert failures == []
    finally:
        await health.stop()


async def test_one_answering_resolver_is_enough() -> None:
    class OneDown(Resolver):
        async def __call__(self, server: IPAddress, seconds: float) -> str | None:
            self.asked.append((server, seconds))
            return None if server == TUNNEL_DNS[1] else "no DNS response"

    failures: list[str] = []
    resolver = OneDown()
    prober = Prober()
    prober.answer = "ConnectTimeout"
    health = dns_monitor(replace(BASE, attempts=1), SendingPeer(), prober, resolver, failures)
    health.start()
    try:
        await _wait_for(lambda: len(resolver.asked) >= 2 * len(TUNNEL_DNS))
        assert len(resolver.asked) >= 2 * len(TUNNEL_DNS)
        assert failures == []
    finally:
        await health.stop()


async def test_silence_from_resolvers_and_urls_fails_over_at_once() -> None:
    failures: list[str] = []
    resolver = Resolver("no DNS response")
    prober = Prober()
    prober.answer = "ConnectTimeout"
    config = replace(BASE, attempts=100)
    health = dns_monitor(config, SendingPeer(), prober, resolver, failures)
    health.start()
    try:
        await _wait_for(lambda: bool(failures))
        assert failures and "nothing received" in failures[0]
        assert sorted(server for server, _ in resolver.asked) == sorted(TUNNEL_DNS)
        assert prober.calls == [URL]
    finally:
        await health.stop()


async def test_silent_resolvers_without_urls_fail_over() -> None:
    failures: list[str] = []
    resolver = Resolver("no DNS response")
    config = replace(BASE, urls=(), attempts=100)
    health = dns_monitor(config, SendingPeer(), Prober(), resolver, failures)
    health.start()
    try:
        await _wait_for(lambda: bool(failures))
        assert failures and "nothing received" in failures[0]
    finally:
        await health.stop()


async def test_the_real_dns_probe_confirms_a_one_way_flow() -> None:
    # The monitor with the real DNS probe, asking a resolver on loopback.
    loop = asyncio.get_running_loop()
    asked: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as resolver:
        resolver.bind(("127.0.0.1", 0))
        resolver.setblocking(False)
        port = resolver.getsockname()[1]

        async def answer_forever() -> None:
            while True:
                message, peer = await loop.sock_recvfrom(resolver, 512)
                asked.append(message)
                reply = message[:2] + b"\x81\x83" + message[4:]  # a response: NXDOMAIN
                await loop.sock_sendto(resolver, reply, peer)

        async def probe_port(server: IPAddress, seconds: float) -> str | None:
            return await asyncio.to_thread(dnsprobe.query, server, seconds, port=port)

        answering = loop.create_task(answer_forever())
        failures: list[str] = []
        health = HealthMonitor(
            replace(BASE, urls=(), attempts=1),
            SendingPeer(),
            failures.append,
            tick=0.01,
            dns_servers=(ip_address("127.0.0.1"),),
            dns_prober=probe_port,
            wall_clock=lambda: NOW,
        )
        health.start()
        try:
            await _wait_for(lambda: len(asked) >= 3)
            assert len(asked) >= 3  # several stalls, each confirmed by a response
            assert failures == []
        finally:
            await health.stop()
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answering


class HousekeepingPeer(Peer):
    """Data goes out, and only WireGuard's own packets come back: a keepalive now and then, a
    handshake response: a server that answers handshakes but forwards nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    async def __call__(self) -> PeerStats:
        self.looks += 1
        back = (32, 92, 0, 124)[self.looks % 4]
        self.stats = replace(
            self.stats,
            tx_bytes=self.stats.tx_bytes + 160,
            rx_bytes=self.stats.rx_bytes + back,
        )
        return self.stats


class BackingOffPeer(Peer):
    """TCP retransmitting into a dead path: sends at exponentially spaced looks only."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    async def __call__(self) -> PeerStats:
        self.looks += 1
        if self.looks & (self.looks - 1) == 0:  # looks 1, 2, 4, 8, 16, ...
            # A SYN: 60 bytes padded to 64, plus WireGuard's 32.
            self.stats = replace(self.stats, tx_bytes=self.stats.tx_bytes + 96)
        return self.stats


@pytest.mark.parametrize("peer", [HousekeepingPeer, BackingOffPeer])
async def test_a_path_that_forwards_nothing_is_dead(peer: type[Peer]) -> None:
    failures: list[str] = []
    resolver = Resolver("no DNS response")
    config = replace(BASE, urls=(), attempts=100)  # the default: no probe URLs
    health = dns_monitor(config, peer(), Prober(), resolver, failures)
    health.start()
    try:
        await _wait_for(lambda: bool(failures))
        assert failures and "nothing received" in failures[0]
        assert resolver.asked
    finally:
        await health.stop()


async def test_data_coming_back_is_no_stall() -> None:
    class Answered(Peer):
        async def __call__(self) -> PeerStats:
            self.stats = replace(
                self.stats, tx_bytes=self.stats.tx_bytes + 160, rx_bytes=self.stats.rx_bytes + 128
            )
            return self.stats

    failures: list[str] = []
    resolver = Resolver("no DNS response")
    health = dns_monitor(
        replace(BASE, urls=(), attempts=100), Answered(), Prober(), resolver, failures
    )
    health.start()
    try:
        await asyncio.sleep(0.3)
        assert resolver.asked == [] and failures == []
    finally:
        await health.stop()


async def test_a_lone_keepalive_is_not_a_stall() -> None:
    peer = Peer()
    prober = Prober()
    failures: list[str] = []
    health = monitor(replace(BASE, attempts=1), peer, prober, failures, tick=0.01)
    health.start()
    try:
        await asyncio.sleep(0.05)
        peer.stats = replace(peer.stats, tx_bytes=peer.stats.tx_bytes + 32)  # one keepalive
        await asyncio.sleep(0.2)
        assert prober.calls == []
        assert failures == []
    finally:
        await health.stop()


# -- the real probe against a local HTTP server -------------------------------------------


@pytest.fixture
async def web() -> AsyncIterator[str]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/health"
    finally:
        server.close()
        await server.wait_closed()


async def test_http_probe_any_status_is_an_answer(web: str) -> None:
    assert await http_probe(web, 2.0) is None


async def test_http_probe_refused_is_a_reason() -> None:
    async def closed_port() -> int:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port: int = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        return port

    reason = await http_probe(f"http://127.0.0.1:{await closed_port()}/", 2.0)
    assert reason is not None and reason.startswith("ConnectError")


# -- the real daemon in the world: a one-way flow through a live tunnel ------------------------

# Receives UDP and never answers (one port of the world's web address, in the router).
_SINK = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    sock.recv(65535)
"""

# Sends a datagram every 50 ms for the given seconds: an upload nobody answers.
_UPLOAD = r"""
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        sock.sendto(b"x" * 200, (sys.argv[1], int(sys.argv[2])))
    except OSError:
        pass  # the firewall blocks while the daemon switches servers; the test says why
    time.sleep(0.05)
"""

UPLOAD_SECONDS = 12.0  # longer than the server's passive keepalive (about 10 s)
SINK_PORT = "9999"


@pytest.mark.root
def test_one_way_upload_without_urls_keeps_the_server(
    world: World, private_bus: PrivateBus, tmp_path: Path
) -> None:
    config = world.write_config(tmp_path / "nordwgd.toml", health={"urls": []})
    sink = subprocess.Popen(
        ns.exec_argv(world.router_ns, ns.python_argv(_SINK, world.web_address, SINK_PORT)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env=ns.python_env(),
    )
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        with running_daemon(private_bus, world.host_ns, config, tmp_path / "daemon.log") as daemon:
            assert "error" not in call_as(private_bus, None, "Connect", "a{sv}", [{}])
            before = _wait_connected(private_bus, daemon)
            ns.run(
                ns.exec_argv(
                    world.host_ns,
                    ns.python_argv(_UPLOAD, world.web_address, SINK_PORT, str(UPLOAD_SECONDS)),
                ),
                timeout=UPLOAD_SECONDS + 30,
            )
            after = _wait_connected(private_bus, daemon)
            assert (after["Server"], after["ConnectedSince"]) == (
                before["Server"],
                before["ConnectedSince"],
            ), daemon.log_text()
            station = world.server(str(before["Server"]["hostname"])).station  # type: ignore[index]
            # The stall was looked into: the tunnel resolver got the root NS query and answered.
            probes = [q for q in world.dns_queries() if q.name == "" and q.type == TYPE_NS]
            assert probes and all(q.client == station for q in probes), daemon.log_text()
            assert "health failed" not in daemon.log.read_text(errors="replace")
    finally:
        sink.kill()
        sink.wait(10)


def _wait_connected(bus: PrivateBus, daemon: DaemonProcess) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        reply = call_as(
            bus,
            None,
            "GetAll",
            "s",
            ["org.nordwgd.Nordwgd1.Manager"],
            interface="org.freedesktop.DBus.Properties",
        )
        body = reply.get("body")
        assert isinstance(body, list), reply
        props: dict[str, Any] = body[0]
        if props["State"] == "connected":
            return props
        assert time.monotonic() < deadline, f"state {props['State']}:\n{daemon.log_text()}"
        time.sleep(0.2)
