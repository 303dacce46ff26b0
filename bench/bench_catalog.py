"""Benchmark: parse and rank a whole-fleet server list (6,000 servers by default).

Run directly (`python bench/bench_catalog.py`) or import `run()` from a bench runner.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict

from nordwgd.model import Server
from nordwgd.provider.nordvpn.parse import parse_servers
from nordwgd.provider.nordvpn.selection import select_servers
from nordwgd.testing.fakeapi import ServerIndex
from nordwgd.testing.fleet import large_fleet


def _body(n: int) -> bytes:
    index = ServerIndex(large_fleet(n))
    return b"[" + b",".join(entry.body for entry in index.entries) + b"]"


def _rank(servers: list[Server]) -> int:
    by_country: dict[str, list[Server]] = defaultdict(list)
    for server in servers:
        by_country[server.country_code].append(server)
    # The heaviest realistic request: several locations merged, pins, exclusions, random top.
    chosen = select_servers(
        list(by_country.values()),
        pinned_hostnames=[servers[-1].hostname],
        exclude={servers[0].hostname},
        random_top=5,
        seed=1,
    )
    return len(chosen)


def run(n: int = 6000, repeats: int = 7) -> dict[str, object]:
    body = _body(n)
    parse_times: list[float] = []
    rank_times: list[float] = []
    usable = 0
    for _ in range(repeats):
        start = time.perf_counter()
        servers = parse_servers(body, "bench")
        parsed = time.perf_counter()
        usable = _rank(servers)
        ranked = time.perf_counter()
        parse_times.append(parsed - start)
        rank_times.append(ranked - parsed)
    result: dict[str, object] = {
        "name": "catalog_parse_rank",
        "servers": n,
        "usable": usable,
        "body_bytes": len(body),
        "repeats": repeats,
        "parse_ms_median": round(statistics.median(parse_times) * 1000, 2),
        "rank_ms_median": round(statistics.median(rank_times) * 1000, 2),
        "total_ms_median": round(
            statistics.median(p + r for p, r in zip(parse_times, rank_times, strict=True)) * 1000, 2
        ),
    }
    print(
        f"catalog: {n} servers ({len(body) / 1e6:.1f} MB): parse {result['parse_ms_median']} ms, "
        f"rank {result['rank_ms_median']} ms, total {result['total_ms_median']} ms "
        f"(median of {repeats})"
    )
    return result


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 6000)
