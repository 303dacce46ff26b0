"""The kill switch in a real kernel: policies applied in a fresh namespace pair, real probes.

Topology (names unique per run, removed in finalizers):

    host netns                                  peer netns
    host  192.168.77.2/24 fd00:77::2/64  <--->  peer 192.168.77.1/24 fd00:77::1/64   (uplink, LAN)
    tun0  10.5.0.2/30                    <--->  tunpeer 10.5.0.1/30   (stand-in for the tunnel)
                                                lo: 203.0.113.11 (endpoint), 198.51.100.20/21 (API),
                                                    198.51.100.99 (the Internet)

Policies are applied inside the host netns by a child Python process; probes are sent from the
host netns and counted by nft counters in the peer's prerouting hook (what actually arrived).
"""

from __future__ import annotations

import itertools
import json
import pickle
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from nordwgd.firewall.policy import FirewallPolicy, policy_for_state
from nordwgd.model import Endpoint

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MARK = 0xCA6C
ENDPOINT = ip_address("203.0.113.11")
API = (ip_address("198.51.100.20"), ip_address("198.51.100.21"))
INTERNET = "198.51.100.99"
LAN_PEER = "192.168.77.1"
TUNNEL_PEER = "10.5.0.1"

APPLY = """
import asyncio, pickle, sys
from nordwgd.errors import FirewallFailed
from nordwgd.firewall import Firewall

async def main() -> int:
    firewall = Firewall(sys.argv[1])
    command = sys.argv[2]
    try:
        if command == "apply":
            await firewall.apply(pickle.load(sys.stdin.buffer))
        elif command == "remove":
            await firewall.remove()
        print(f"applied={await firewall.applied()} kind={firewall.kind}")
    except FirewallFailed as error:
        print(error, file=sys.stderr)
        return 3
    return 0

sys.exit(asyncio.run(main()))
"""

PROBE = """
import socket, sys
kind, host, port, mark = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_DGRAM if kind != "tcp" else socket.SOCK_STREAM)
sock.settimeout(1.0)
if mark:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
payload = b"probe"
if kind == "dns":  # a real query for example.com A
    payload = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")
try:
    if kind == "tcp":
        sock.connect((host, port))
    else:
        sock.sendto(payload, (host, port))
    print("sent")
except OSError as error:
    print(f"refused: {error}")
"""

# Opens a TCP flow while traffic is open, then blocks, then tries to keep talking.
CONNTRACK_DRIVER = """
import asyncio, pickle, socket, sys, time
from nordwgd.firewall import Firewall
policy = pickle.load(sys.stdin.buffer)
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
sock.sendall(b"before;")
time.sleep(0.3)
asyncio.run(Firewall("nftables").apply(policy))
sock.setblocking(False)
for _ in range(10):
    try:
        sock.send(b"after;")
    except OSError as error:
        print(f"send failed: {error}")
    time.sleep(0.1)
print("done")
"""

LISTENER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
server.settimeout(10)
conn, _ = server.accept()
conn.settimeout(2.5)
data = b""
while True:
    try:
        chunk = conn.recv(4096)
    except TimeoutError:
        break
    if not chunk:
        break
    data += chunk
print(data.decode(), flush=True)
"""


MONITOR = b"table inet mon { chain pre { type filter hook prerouting priority -300; }; }\n"


def run(*argv: str, input: bytes | None = None, check: bool = True) -> str:
    result = subprocess.run(argv, input=input, capture_output=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed: {result.stderr.decode()}")
    return result.stdout.decode()


@dataclass
class Pair:
    host: str
    peer: str
    _keys: Iterator[int]

    def apply(self, policy: FirewallPolicy, backend: str = "nftables") -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", self.host, PYTHON, "-c", APPLY, backend, "apply"],
            input=pickle.dumps(policy),
            capture_output=True,
            cwd=REPO,
            timeout=30,
        )
        if result.returncode == 3:
            from nordwgd.errors import FirewallFailed

            raise FirewallFailed(result.stderr.decode().strip())
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    def remove(self, backend: str = "nftables") -> str:
        return run("ip", "netns", "exec", self.host, PYTHON, "-c", APPLY, backend, "remove")

    def probe(self, kind: str, host: str, port: int, *, mark: int = 0, user: str = "") -> str:
        argv = ["ip", "netns", "exec", self.host]
        if user:
            argv += ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups"]
        return run(*argv, "/usr/bin/python3", "-c", PROBE, kind, host, str(port), str(mark))

    def ping(self, address: str) -> bool:
        argv = ["ip", "netns", "exec", self.host, "ping", "-c1", "-W1", "-n", address]
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0

    def arrived(self, match: str, action: Any) -> int:
        """Packets matching ``match`` that reached the peer while ``action()`` ran."""
        key = f"w{next(self._keys)}"
        run("ip", "netns", "exec", self.peer, "nft", "add", "rule", "inet", "mon", "pre",
            *match.split(), "counter", "comment", f'"{key}"')  # fmt: skip
        action()
        time.sleep(0.05)
        listing = json.loads(
            run(
                "ip", "netns", "exec", self.peer, "nft", "-j", "list", "chain", "inet", "mon", "pre"
            )
        )
        for item in listing["nftables"]:
            rule = item.get("rule")
            if rule and rule.get("comment") == key:
                return int(next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e))
        raise AssertionError(f"monitor rule {key} vanished")

    def nft_host(self, *argv: str) -> str:
        return run("ip", "netns", "exec", self.host, "nft", *argv)


@pytest.fixture
def pair() -> Iterator[Pair]:
    suffix = secrets.token_hex(4)
    host, peer = f"fwh-{suffix}", f"fwp-{suffix}"
    created: list[str] = []
    try:
        for name in (host, peer):
            run("ip", "netns", "add", name)
            created.append(name)
        h = ("ip", "-n", host)
        p = ("ip", "-n", peer)
        run(*h, "link", "add", "host", "type", "veth", "peer", "name", "peer", "netns", peer)
        run(*h, "link", "add", "tun0", "type", "veth", "peer", "name", "tunpeer", "netns", peer)
        for side, links in ((h, ("lo", "host", "tun0")), (p, ("lo", "peer", "tunpeer"))):
            for link in links:
                run(*side, "link", "set", link, "up")
        run(*h, "addr", "add", "192.168.77.2/24", "dev", "host")
        run(*h, "addr", "add", "fd00:77::2/64", "dev", "host", "nodad")
        run(*h, "addr", "add", "10.5.0.2/30", "dev", "tun0")
        run(*h, "route", "add", "default", "via", LAN_PEER)
        run(*h, "-6", "route", "add", "default", "via", "fd00:77::1")
        run(*p, "addr", "add", "192.168.77.1/24", "dev", "peer")
        run(*p, "addr", "add", "fd00:77::1/64", "dev", "peer", "nodad")
        run(*p, "addr", "add", "10.5.0.1/30", "dev", "tunpeer")
        for address in (ENDPOINT, *API, ip_address(INTERNET)):
            run(*p, "addr", "add", f"{address}/32", "dev", "lo")
        run("ip", "netns", "exec", peer, "nft", "-f", "-", input=MONITOR)
        yield Pair(host, peer, itertools.count())
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def policy(state: str, **overrides: Any) -> FirewallPolicy:
    arguments: dict[str, Any] = {
        "lockdown": False,
        "allow_lan": False,
        "lan": (ip_network("192.168.77.0/24"),),
        "endpoint": Endpoint(ENDPOINT),
        "api_addresses": API,
        "api_port": 443,
        "fwmark": MARK,
        "tunnel_interface": "tun0",
        "tunnel_dns": (ip_address(TUNNEL_PEER),),
        "ipv6_tunnel": False,
    }
    arguments.update(overrides)
    return policy_for_state(state, **arguments)


BLOCKING = {
    "connecting": policy("connecting"),
    "reconnecting": policy("reconnecting"),
    "disconnecting": policy("disconnecting"),
    "error": policy("error"),
    "lockdown": policy("disconnected", lockdown=True),
}


def test_open_baseline_then_remove(pair: Pair) -> None:
    """Without our table everything flows, so the blocked results below mean something."""
    assert "applied=False" in pair.apply(policy("disconnected"))
    assert pair.ping(INTERNET) and pair.ping(LAN_PEER)
    assert pair.arrived(
        f"ip daddr {LAN_PEER} udp dport 53", lambda: pair.probe("dns", LAN_PEER, 53)
    )
    assert "applied=True kind=nftables" in pair.apply(BLOCKING["error"])
    assert "applied=False" in pair.remove()
    assert "applied=False" in pair.remove()  # idempotent
    assert pair.ping(INTERNET)


@pytest.mark.parametrize("state", sorted(BLOCKING))
def test_blocking_states_drop(pair: Pair, state: str) -> None:
    pair.apply(BLOCKING[state])
    assert not pair.ping(INTERNET)
    assert not pair.ping(LAN_PEER)
    for match, probe in (
        (f"ip daddr {INTERNET} icmp type echo-request", lambda: pair.ping(INTERNET)),
        (f"ip daddr {INTERNET} udp dport 9999", lambda: pair.probe("udp", INTERNET, 9999)),
        (f"ip daddr {LAN_PEER} udp dport 53", lambda: pair.probe("dns", LAN_PEER, 53)),
        (f"ip daddr {INTERNET} tcp dport 80", lambda: pair.probe("tcp", INTERNET, 80)),
        # even the daemon's mark opens nothing but the pinholes
        (f"ip daddr {INTERNET} udp dport 51820", lambda: pair.probe("udp", INTERNET, 51820, mark=MARK)),  # noqa: E501
    ):  # fmt: skip
        assert pair.arrived(match, probe) == 0, match
    counters = json.loads(
        pair.nft_host("-j", "list", "counter", "inet", "nordwgd", "dropped_output")
    )
    dropped = next(o["counter"]["packets"] for o in counters["nftables"] if "counter" in o)
    assert dropped > 0


def test_endpoint_pinhole_admits_only_marked_packets(pair: Pair) -> None:
    pair.apply(BLOCKING["connecting"])
    wg = f"ip daddr {ENDPOINT} udp dport 51820"
    assert pair.arrived(wg, lambda: pair.probe("udp", str(ENDPOINT), 51820, mark=MARK)) == 1
    assert pair.arrived(wg, lambda: pair.probe("udp", str(ENDPOINT), 51820)) == 0
    assert pair.arrived(wg, lambda: pair.probe("udp", str(ENDPOINT), 51820, user="nobody")) == 0
    assert pair.arrived(wg, lambda: pair.probe("udp", str(ENDPOINT), 51820, mark=MARK + 1)) == 0
    other_port = f"ip daddr {ENDPOINT} udp dport 51821"
    assert pair.arrived(other_port, lambda: pair.probe("udp", str(ENDPOINT), 51821, mark=MARK)) == 0


def test_api_pinhole_admits_tcp_443_to_pinned_addresses_only(pair: Pair) -> None:
    pair.apply(BLOCKING["connecting"])
    for address in API:
        syn = f"ip daddr {address} tcp dport 443"
        assert pair.arrived(syn, lambda a=address: pair.probe("tcp", str(a), 443, mark=MARK)) >= 1
        assert pair.arrived(syn, lambda a=address: pair.probe("tcp", str(a), 443)) == 0
    other = f"ip daddr {INTERNET} tcp dport 443"
    assert pair.arrived(other, lambda: pair.probe("tcp", INTERNET, 443, mark=MARK)) == 0
    port80 = f"ip daddr {API[0]} tcp dport 80"
    assert pair.arrived(port80, lambda: pair.probe("tcp", str(API[0]), 80, mark=MARK)) == 0
    # disconnecting closes the API too; error keeps it so that the daemon can recover
    pair.apply(BLOCKING["disconnecting"])
    syn = f"ip daddr {API[0]} tcp dport 443"
    assert pair.arrived(syn, lambda: pair.probe("tcp", str(API[0]), 443, mark=MARK)) == 0
    pair.apply(BLOCKING["error"])
    assert pair.arrived(syn, lambda: pair.probe("tcp", str(API[0]), 443, mark=MARK)) >= 1


def _route_internet_via_tunnel(pair: Pair) -> None:
    run("ip", "-n", pair.host, "route", "add", f"{INTERNET}/32", "via", TUNNEL_PEER, "dev", "tun0")


def test_connected_allows_the_tunnel_and_only_tunnel_dns(pair: Pair) -> None:
    _route_internet_via_tunnel(pair)
    pair.apply(policy("connected"))
    assert pair.ping(INTERNET)  # through the tunnel interface, replies let in by conntrack
    via_tunnel = f"iifname tunpeer ip daddr {INTERNET} udp dport 9999"
    assert pair.arrived(via_tunnel, lambda: pair.probe("udp", INTERNET, 9999)) == 1
    assert (
        pair.arrived(
            f"ip daddr {TUNNEL_PEER} udp dport 53", lambda: pair.probe("dns", TUNNEL_PEER, 53)
        )
        == 1
    )
    assert (
        pair.arrived(
            f"ip daddr {TUNNEL_PEER} tcp dport 853", lambda: pair.probe("tcp", TUNNEL_PEER, 853)
        )
        >= 1
    )
    for target in (LAN_PEER, INTERNET):  # a LAN resolver, and a resolver through the tunnel
        match = f"ip daddr {target} udp dport 53"
        assert pair.arrived(match, lambda t=target: pair.probe("dns", t, 53)) == 0, target
    # the uplink stays closed except for the endpoint
    assert not pair.ping(str(API[0]))
    wg = f"ip daddr {ENDPOINT} udp dport 51820"
    assert pair.arrived(wg, lambda: pair.probe("udp", str(ENDPOINT), 51820, mark=MARK)) == 1
    assert pair.arrived(wg, lambda: pair.probe("udp", str(ENDPOINT), 51820)) == 0


def test_allow_lan_admits_private_lan_but_not_its_dns(pair: Pair) -> None:
    pair.apply(policy("connected"))
    assert not pair.ping(LAN_PEER)
    pair.apply(policy("connected", allow_lan=True))
    assert pair.ping(LAN_PEER)
    lan_udp = f"ip daddr {LAN_PEER} udp dport 5353"
    assert pair.arrived(lan_udp, lambda: pair.probe("udp", LAN_PEER, 5353)) == 1
    lan_dns = f"ip daddr {LAN_PEER} udp dport 53"
    assert pair.arrived(lan_dns, lambda: pair.probe("dns", LAN_PEER, 53)) == 0
    lan_dot = f"ip daddr {LAN_PEER} tcp dport 853"
    assert pair.arrived(lan_dot, lambda: pair.probe("tcp", LAN_PEER, 853)) == 0
    assert not pair.ping(str(ENDPOINT))  # public addresses behind the uplink stay closed


def test_ipv6_blocked_but_neighbour_discovery_works(pair: Pair) -> None:
    assert pair.ping("fd00:77::1")  # baseline: IPv6 works without our table
    run("ip", "-n", pair.peer, "-6", "neigh", "flush", "dev", "peer")
    pair.apply(policy("connected", ipv6_tunnel=False))
    assert not pair.ping("fd00:77::1")
    v6 = "ip6 daddr fd00:77::1 udp dport 9999"
    assert pair.arrived(v6, lambda: pair.probe("udp", "fd00:77::1", 9999)) == 0
    # the peer can still resolve the host's link-local address (solicitation in,
    # advertisement out to a link-local address) ...
    host_link_local = _link_local(pair.host, "host")
    _link_local(pair.peer, "peer")
    subprocess.run(["ip", "netns", "exec", pair.peer, "ping", "-c1", "-W1",
                    f"{host_link_local}%peer"], capture_output=True)  # fmt: skip
    neighbours = _resolved(pair.peer, host_link_local)
    assert "lladdr" in neighbours, neighbours
    # ... but no advertisement goes to a routable address (the peer asked from its ULA)
    subprocess.run(["ip", "netns", "exec", pair.peer, "ping", "-c1", "-W1", "fd00:77::2"],
                   capture_output=True)  # fmt: skip
    neighbours = _resolved(pair.peer, "fd00:77::2")
    assert "lladdr" not in neighbours, neighbours


def _link_local(netns: str, device: str) -> str:
    """The device's link-local address once duplicate address detection is done with it."""
    deadline = time.monotonic() + 5
    while True:
        shown = run("ip", "-n", netns, "-6", "-o", "addr", "show", "dev", device, "scope", "link")
        if shown and "tentative" not in shown:
            return shown.split()[3].split("/")[0]
        assert time.monotonic() < deadline, f"{device} in {netns} keeps a tentative address"
        time.sleep(0.05)


def _resolved(netns: str, address: str) -> str:
    """The neighbour entry for ``address`` once resolution has ended (or after 4 s)."""
    deadline = time.monotonic() + 4
    while True:
        entry = run("ip", "-n", netns, "-6", "neigh", "show", address)
        if "INCOMPLETE" not in entry or time.monotonic() > deadline:
            return entry
        time.sleep(0.1)


LINK_PROBE = REPO / "tests" / "security" / "linkprobe.py"


# (what the peer counts, what the host sends, how many may arrive)
LINK_SHAPES: list[tuple[str, dict[str, Any], int]] = [
    ("ip daddr 192.168.77.1 udp dport 67", {"kind": "udp", "sport": 68, "host": LAN_PEER,
                                            "port": 67}, 0),
    ("ip daddr 255.255.255.255 udp dport 67", {"kind": "udp", "sport": 68,
                                               "host": "255.255.255.255", "port": 67}, 1),
    ("ip6 daddr fd00:77::1 udp dport 547", {"kind": "udp", "sport": 546, "host": "fd00:77::1",
                                            "port": 547}, 0),
    ("ip6 daddr ff02::1:2 udp dport 547", {"kind": "udp", "sport": 546, "host": "ff02::1:2",
                                           "port": 547, "link_local_source": True}, 1),
    ("ip6 daddr fd00:77::1 icmpv6 type nd-neighbor-solicit", {"kind": "ns",
                                                              "host": "fd00:77::1"}, 0),
    ("ip6 daddr ff02::1:ff00:99 icmpv6 type nd-neighbor-solicit",
     {"kind": "ns", "host": "ff02::1:ff00:99", "target": "fd00:77::99"}, 1),
]  # fmt: skip


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_dhcp_and_neighbour_discovery_leave_only_for_the_link(pair: Pair, backend: str) -> None:
    pair.apply(BLOCKING["error"], backend=backend)

    def send(spec: dict[str, Any]) -> None:
        specs = json.dumps([{"device": "host", **spec}])
        answer = run("ip", "netns", "exec", pair.host, PYTHON, str(LINK_PROBE), specs)
        assert json.loads(answer) == ["sent"] or "not permitted" in answer, answer

    arrived = [pair.arrived(match, lambda spec=spec: send(spec)) for match, spec, _ in LINK_SHAPES]
    assert arrived == [expected for _, _, expected in LINK_SHAPES]


def test_bad_transaction_fails_whole_and_keeps_previous_table(pair: Pair) -> None:
    from nordwgd.errors import FirewallFailed

    good = BLOCKING["error"]
    pair.apply(good)
    # stateless listing: a stray packet moving a counter is not a change of rules
    before = pair.nft_host("-s", "list", "table", "inet", "nordwgd")
    # overlapping elements in an interval set: the kernel refuses the whole batch
    bad = replace(
        policy("connected", allow_lan=True),
        lan=(ip_network("192.168.0.0/16"), ip_network("192.168.77.0/24")),
    )
    with pytest.raises(FirewallFailed, match="conflicting intervals"):
        pair.apply(bad)
    assert pair.nft_host("-s", "list", "table", "inet", "nordwgd") == before
    assert good.digest in before
    assert not pair.ping(LAN_PEER)


# Sends UDP to argv[1] as fast as it can until stdin closes; prints how many sends went out.
BLASTER = """
import socket, sys, threading
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = tried = 0
print("ready", flush=True)
while not done.is_set():
    tried += 1
    try:
        sock.sendto(b"x", (sys.argv[1], 9))
        sent += 1
    except OSError:
        pass  # EPERM: the output chain dropped it
print(tried, sent, flush=True)
"""

# Replaces the table with the same rendered policy argv[1] times, as the daemon does.
REAPPLY = """
import pickle, sys
import nftables
from nordwgd.firewall.render import render
script = render(pickle.load(sys.stdin.buffer))
nft = nftables.Nftables()
for _ in range(int(sys.argv[1])):
    rc, _, err = nft.cmd(script)
    assert rc == 0, err
"""


@pytest.mark.slow
def test_replacing_the_table_never_lets_a_packet_through(pair: Pair) -> None:
    """Each apply deletes and recreates the table in one transaction; the kernel defers the new
    chains' drop policy to the end of that commit, so only their last rule closes the moment
    between the old chains' removal and the new policy. A sender that never stops gets nothing
    out while the table is replaced a thousand times."""
    pair.apply(BLOCKING["error"])

    def replace_under_traffic() -> None:
        blaster = subprocess.Popen(
            ["ip", "netns", "exec", pair.host, "/usr/bin/python3", "-c", BLASTER, INTERNET],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert blaster.stdout is not None and blaster.stdout.readline() == "ready\n"
            subprocess.run(
                ["ip", "netns", "exec", pair.host, PYTHON, "-c", REAPPLY, "1000"],
                input=pickle.dumps(BLOCKING["error"]),
                cwd=REPO,
                check=True,
                timeout=300,
            )
            tried, sent = map(int, blaster.communicate("", timeout=30)[0].split())
        finally:
            if blaster.poll() is None:
                blaster.kill()
                blaster.wait()
        assert tried > 1000, tried  # the sender ran while the table was replaced
        assert sent == 0

    assert pair.arrived(f"ip daddr {INTERNET} udp dport 9", replace_under_traffic) == 0


def test_flow_opened_before_blocking_gets_no_more_packets_out(pair: Pair) -> None:
    listener = subprocess.Popen(
        ["ip", "netns", "exec", pair.peer, "/usr/bin/python3", "-c", LISTENER, INTERNET, "7000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        driver = subprocess.run(
            ["ip", "netns", "exec", pair.host, PYTHON, "-c", CONNTRACK_DRIVER, INTERNET, "7000"],
            input=pickle.dumps(BLOCKING["error"]),
            capture_output=True,
            cwd=REPO,
            timeout=30,
        )
        assert driver.returncode == 0, driver.stderr.decode()
        received, _ = listener.communicate(timeout=15)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert "before;" in received
    assert "after;" not in received


def test_iptables_backend_basics(pair: Pair) -> None:
    out = pair.apply(BLOCKING["connecting"], backend="iptables")
    assert "applied=True kind=iptables" in out
    assert not pair.ping(INTERNET)
    wg = f"ip daddr {ENDPOINT} udp dport 51820"
    assert pair.arrived(wg, lambda: pair.probe("udp", str(ENDPOINT), 51820, mark=MARK)) == 1
    assert pair.arrived(wg, lambda: pair.probe("udp", str(ENDPOINT), 51820)) == 0
    syn = f"ip daddr {API[0]} tcp dport 443"
    assert pair.arrived(syn, lambda: pair.probe("tcp", str(API[0]), 443, mark=MARK)) >= 1
    assert not pair.ping("fd00:77::1")
    # re-applying replaces the chains instead of stacking jumps
    _route_internet_via_tunnel(pair)
    pair.apply(policy("connected", allow_lan=True), backend="iptables")
    assert pair.ping(INTERNET) and pair.ping(LAN_PEER)
    lan_dns = f"ip daddr {LAN_PEER} udp dport 53"
    assert pair.arrived(lan_dns, lambda: pair.probe("dns", LAN_PEER, 53)) == 0
    saved = run("ip", "netns", "exec", pair.host, "iptables-legacy-save", "-t", "filter")
    assert saved.count("-A OUTPUT -j NORDWGD-OUTPUT") == 1
    assert "applied=False" in pair.remove(backend="iptables")
    assert pair.ping(INTERNET) and pair.ping("fd00:77::1")


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_the_forwarded_port_is_sent_on_to_one_lan_host(pair: Pair, backend: str) -> None:
    """Gateway mode: a datagram in through the tunnel to the port is DNATed to the LAN host."""
    run("ip", "netns", "exec", pair.host, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def from_tunnel(port: int) -> None:
        # The tunnel's far end sends to the host's tunnel address, as the VPN server would.
        run("ip", "netns", "exec", pair.peer, "/usr/bin/python3", "-c", PROBE,
            "udp", "10.5.0.2", str(port), "0")  # fmt: skip

    on_to_lan = f"iifname peer ip daddr {LAN_PEER} udp dport 8080"
    pair.apply(policy("connected", forwarded_port=47047), backend=backend)
    assert pair.arrived(on_to_lan, lambda: from_tunnel(47047)) == 0
    pair.apply(
        policy("connected", forwarded_port=47047, forward_port_to=(ip_address(LAN_PEER), 8080)),
        backend=backend,
    )
    assert pair.arrived(on_to_lan, lambda: from_tunnel(47047)) == 1
    assert pair.arrived(on_to_lan, lambda: from_tunnel(47048)) == 0
    assert "applied=False" in pair.remove(backend=backend)
