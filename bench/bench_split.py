"""What matching excluded apps by cgroup costs: TCP throughput and TCP connect time.

Two network namespaces made here (client and server, one veth) and one cgroup made here under
the cgroup v2 hierarchy; all removed afterwards. The client namespace gets the real split table
(``nordwgd.split.rules.render``), loaded with ``nsenter --net`` so that nft can resolve the
cgroup path. Variants, measured alternately in every round:

    none            no table
    sibling         the table; the sender is not in the slice (pays the match on every packet)
    excluded        the table; the sender is in the slice (match, marks, re-route, masquerade)
    sibling_12      the table as written inside a cgroup namespace (the match at 12 levels)

Each round runs every variant once (one 256 MB transfer, 1000 connects; the order rotates every
round); figures are medians over the rounds and ratios of those medians to ``none``, with the
interquartile range of the same ratio taken round by round as a measure of the noise.
Wall-clock figures (Gbit/s, µs per connect) move with the machine's load; the CPU time the
sending or connecting process spends (netfilter's output hooks run in its system calls) moves
much less, so the CPU ratios are the figures to read.

Run as root: ``.venv/bin/python bench/bench_split.py``.
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from nordwgd.split import cgroups
from nordwgd.split.rules import SplitPolicy, render

PYTHON = sys.executable
SERVER = "192.168.231.1"
CLIENT = "192.168.231.2"
PORT = 5202
TRANSFER_MB = 256
CONNECTS = 1000
VARIANTS = ("none", "sibling", "excluded", "sibling_12")

RECEIVER = """
import socket, sys, time
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
server.settimeout(60)
conn, _ = server.accept()
total, start = 0, None
while True:
    chunk = conn.recv(1 << 18)
    if not chunk:
        break
    if start is None:
        start = time.perf_counter()
    total += len(chunk)
print(f"{total} {time.perf_counter() - (start or time.perf_counter())}", flush=True)
"""

SENDER = """
import resource, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
block = b"x" * (1 << 18)
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start = cpu()
for _ in range(int(sys.argv[3]) * 4):
    sock.sendall(block)
sock.close()
print(cpu() - start)
"""

ACCEPTOR = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=512)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.close()
"""

CONNECTOR = """
import resource, socket, statistics, sys, time
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
times = []
count = int(sys.argv[3])
start_cpu = cpu()
for _ in range(count):
    start = time.perf_counter()
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    times.append(time.perf_counter() - start)
    sock.close()
print(statistics.median(times) * 1e6, (cpu() - start_cpu) / count * 1e6)
"""


def _run(*argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


@contextmanager
def _setup() -> Iterator[tuple[str, str, cgroups.CgroupMatch]]:
    hierarchy = cgroups.detect()
    if hierarchy is None:
        raise RuntimeError("no cgroup v2 hierarchy under /sys/fs/cgroup")
    suffix = secrets.token_hex(3)
    client, server = f"splb-c-{suffix}", f"splb-s-{suffix}"
    slice_name = f"nwgb{suffix}-excluded.slice"
    directory = hierarchy.mount / cgroups.slice_path(slice_name)
    made: list[str] = []
    try:
        for name in (client, server):
            _run("ip", "netns", "add", name)
            made.append(name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        _run("ip", "-n", client, "link", "add", "up0", "type", "veth", "peer", "name", "dn0",
             "netns", server)  # fmt: skip
        for name, link, address in ((client, "up0", CLIENT), (server, "dn0", SERVER)):
            _run("ip", "-n", name, "addr", "add", f"{address}/24", "dev", link)
            _run("ip", "-n", name, "link", "set", link, "up")
        directory.mkdir(parents=True)
        match = cgroups.lookup(hierarchy, cgroups.slice_path(slice_name))
        assert match is not None
        yield client, server, match
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        for path in (directory, directory.parent):
            with contextlib.suppress(OSError):
                path.rmdir()


def _load(client: str, match: cgroups.CgroupMatch | None) -> None:
    policy = SplitPolicy(excluded=match, fwmark=0xCA6C, tunnel_interface="nordlynx")
    _run("nsenter", f"--net=/run/netns/{client}", "nft", "-f", "-", stdin=render(policy))


def _in_client(client: str, match: cgroups.CgroupMatch, inside: bool, argv: list[str]) -> list[str]:
    """argv run in the client namespace, in the excluded cgroup when ``inside``."""
    enter = ["nsenter", f"--net=/run/netns/{client}", *argv]
    if not inside:
        return enter
    join = f'echo $$ > "{match.directory}/cgroup.procs" && exec "$@"'
    return ["sh", "-c", join, "sh", *enter]


def _started(argv: list[str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError("server did not start")
    return process


def _throughput(
    client: str, server: str, match: cgroups.CgroupMatch, inside: bool
) -> tuple[float, float]:
    """(Gbit/s seen by the receiver, sender CPU seconds per GB)."""
    receiver = _started(["ip", "netns", "exec", server, PYTHON, "-c", RECEIVER, SERVER, str(PORT)])
    try:
        sender = [PYTHON, "-c", SENDER, SERVER, str(PORT), str(TRANSFER_MB)]
        cpu = float(_run(*_in_client(client, match, inside, sender)))
        line, _ = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    total, elapsed = line.split()
    return int(total) * 8 / float(elapsed) / 1e9, cpu / (int(total) / 1e9)


def _connect_us(client: str, match: cgroups.CgroupMatch, inside: bool) -> tuple[float, float]:
    """(median wall µs per TCP connect, CPU µs per connect and close)."""
    connector = [PYTHON, "-c", CONNECTOR, SERVER, str(PORT + 1), str(CONNECTS)]
    wall, cpu = _run(*_in_client(client, match, inside, connector)).split()
    return float(wall), float(cpu)


def run(rounds: int = 9) -> dict[str, float]:
    series: dict[str, dict[str, list[float]]] = {
        name: {v: [] for v in VARIANTS}
        for name in ("gbit_s", "cpu_s_per_gb", "connect_us", "connect_cpu_us")
    }
    with _setup() as (client, server, match):
        acceptor = _started(
            ["ip", "netns", "exec", server, PYTHON, "-c", ACCEPTOR, SERVER, str(PORT + 1)]
        )
        try:
            twelve = replace(match, levels=tuple(range(match.levels[0], match.levels[0] + 12)))
            for round_number in range(rounds):
                # rotated each round, so that no variant always runs first or last
                shift = round_number % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    table = {"none": None, "sibling_12": twelve}.get(variant, match)
                    _load(client, table)
                    inside = variant == "excluded"
                    gbit, cpu = _throughput(client, server, match, inside)
                    series["gbit_s"][variant].append(gbit)
                    series["cpu_s_per_gb"][variant].append(cpu)
                    wall, cpu = _connect_us(client, match, inside)
                    series["connect_us"][variant].append(wall)
                    series["connect_cpu_us"][variant].append(cpu)
        finally:
            acceptor.kill()
            acceptor.wait()
    result: dict[str, float] = {"rounds": rounds}
    for name, values in series.items():
        for variant in VARIANTS:
            result[f"{name}_{variant}"] = round(statistics.median(values[variant]), 3)
        for variant in VARIANTS[1:]:
            # the ratio of the medians; the spread of the same ratio taken round by round
            # shows how much the machine's other work moved it
            ratio = statistics.median(values[variant]) / statistics.median(values["none"])
            result[f"{name}_ratio_{variant}"] = round(ratio, 3)
            per_round = [a / b for a, b in zip(values[variant], values["none"], strict=True)]
            low, _, high = statistics.quantiles(per_round, n=4)
            result[f"{name}_ratio_{variant}_iqr"] = round(high - low, 3)
    return result


def main() -> None:
    for name, value in run().items():
        print(f"{name:<34} {value:>10}")


if __name__ == "__main__":
    main()
