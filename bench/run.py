"""Run every benchmark, print one table and write the figures as JSON.

    .venv/bin/python -m bench.run [--quick] [--soak-seconds 600] [--json bench/out/results.json]

Needs root (network namespaces, nftables, wireguard-go); everything runs in worlds made here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    bench_catalog,
    bench_connect,
    bench_daemon,
    bench_failover,
    bench_firewall,
    bench_lookups,
    bench_split,
)

# (figure, key in the results, unit, target, lower is better)
ROWS: tuple[tuple[str, str, str, float, bool], ...] = (
    ("connect: nordwgd / wg-quick+nft", "connect.ratio", "x", 1.0, True),
    ("connect: nordwgd", "connect.nordwgd_ms_median", "ms", float("nan"), True),
    ("connect: wg-quick + nft baseline", "connect.baseline_ms_median", "ms", float("nan"), True),
    ("failover under traffic", "failover.failover_ms_median", "ms", 5000, True),
    ("silent server found, default config", "failover.silent_found_ms_median", "ms", 5000, True),
    ("silent server: failed over", "failover.silent_failover_ms_median", "ms", float("nan"), True),
    ("server forwarding nothing found", "failover.forwards_nothing_found_ms_median", "ms", 5000,
     True),
    ("forwarding nothing: failed over", "failover.forwards_nothing_failover_ms_median", "ms",
     float("nan"), True),
    ("uplink black hole found", "failover.uplink_blackhole_found_ms_median", "ms", 5000, True),
    ("false failovers, 5 % loss, 50 ms jitter", "soak.false_failovers", "", 0, True),
    ("kill switch: 10k networks, apply+verify", "firewall.apply_verify_libnftables_ms", "ms", 50,
     True),
    ("kill switch: 10k networks, nft -f", "firewall.apply_nft_binary_ms", "ms", float("nan"), True),
    ("forwarding with table / without", "firewall.forward_ratio", "x", 0.9, False),
    ("daemon: start to READY=1", "daemon.ready_ms_median", "ms", 500, True),
    ("daemon: idle RSS", "daemon.idle_rss_mb", "MB", 40, True),
    ("daemon: idle wakeups", "daemon.idle_wakeups", "", 0, True),
    ("D-Bus GetAll p50, one call at a time", "daemon.getall_p50_ms", "ms", 0.3, True),
    ("D-Bus GetAll p99, one call at a time", "daemon.getall_p99_ms", "ms", 2.0, True),
    ("D-Bus GetAll p50, 4 calls in flight", "daemon.getall_concurrent_p50_ms", "ms", 0.3, True),
    ("D-Bus GetAll p99, 4 calls in flight", "daemon.getall_concurrent_p99_ms", "ms", 2.0, True),
    ("change reaches 100 subscribers", "daemon.fanout_call_to_last_ms", "ms", 50, True),
    ("catalog: parse+rank 6,000 servers", "catalog.total_ms_median", "ms", 200, True),
    ("ListServers by name: loop stall now / before", "lookups.stall_ratio", "x", 1.0, True),
    ("50 callers at once: shared / unshared", "lookups.callers_ratio", "x", 0.1, True),
    ("split: sender CPU per GB, sibling / no table", "split.cpu_s_per_gb_ratio_sibling", "x",
     1.05, True),
    ("split: sender CPU per GB, excluded / no table", "split.cpu_s_per_gb_ratio_excluded", "x",
     1.1, True),
    ("split: CPU per TCP connect, sibling / no table", "split.connect_cpu_us_ratio_sibling",
     "x", 1.1, True),
    ("split: CPU per TCP connect, excluded / no table", "split.connect_cpu_us_ratio_excluded",
     "x", 1.2, True),
    ("split: throughput, sibling / no table", "split.gbit_s_ratio_sibling", "x", 0.95, False),
)  # fmt: skip


def _machine() -> dict[str, str]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    wg = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True, check=False)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wireguard_go": ((wg.stdout or wg.stderr).strip().splitlines() or [""])[0],
    }


def _lookup(results: dict[str, dict[str, Any]], key: str) -> float | None:
    section, name = key.split(".", 1)
    value = results.get(section, {}).get(name)
    return float(value) if isinstance(value, int | float) else None


def _table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'figure':<42} {'value':>10} {'unit':<4} {'target':>8}  met"]
    for label, key, unit, target, lower in ROWS:
        value = _lookup(results, key)
        shown = "error" if value is None else f"{value:.3g}" if value < 10 else f"{value:.0f}"
        if target != target:  # NaN: no target, context only
            goal, met = "", ""
        else:
            goal = f"{'<=' if lower else '>='}{target:g}"
            good = value is not None and (value <= target if lower else value >= target)
            met = "" if value is None else "yes" if good else "NO"
        lines.append(f"{label:<42} {shown:>10} {unit:<4} {goal:>8}  {met}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 2 minutes)")
    parser.add_argument("--json", type=Path, default=Path("bench/out/results.json"))
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=None,
        help="length of the lossy-link soak (default 600, 60 with --quick)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.run needs root (network namespaces, nftables, wireguard-go)", file=sys.stderr)
        return 2
    quick = args.quick
    soak_seconds = args.soak_seconds if args.soak_seconds is not None else 60 if quick else 600
    plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("catalog", lambda: bench_catalog.run(repeats=3 if quick else 7)),
        ("lookups", lambda: bench_lookups.run(repeats=3 if quick else 5)),
        ("split", lambda: bench_split.run(rounds=4 if quick else 9)),
        ("firewall", _firewall),
        ("connect", lambda: bench_connect.run(runs=2 if quick else 5)),
        ("failover", lambda: bench_failover.run(runs=1 if quick else 3)),
        ("soak", lambda: bench_failover.soak(soak_seconds)),
        ("daemon", lambda: bench_daemon.run(starts=2 if quick else 5,
                                            idle_seconds=10 if quick else 60)),
    ]  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for name, bench in plan:
        begin = time.monotonic()
        try:
            results[name] = bench()
        except Exception as error:  # one broken benchmark must not hide the others
            print(f"{name}: FAILED: {type(error).__name__}: {error}", file=sys.stderr)
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        results[name]["seconds"] = round(time.monotonic() - begin, 1)
    report = {
        "machine": _machine(),
        "quick": quick,
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
    }
    print()
    print(_table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['seconds']} s; written to {args.json}")
    return 1 if any("error" in section for section in results.values()) else 0


def _firewall() -> dict[str, Any]:
    result: dict[str, Any] = dict(bench_firewall.run())
    if result.get("forward_gbit_s_no_table"):
        result["forward_ratio"] = round(
            result["forward_gbit_s_with_table"] / result["forward_gbit_s_no_table"], 3
        )
    return result


if __name__ == "__main__":
    sys.exit(main())
