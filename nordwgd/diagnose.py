"""Network diagnostics for ``Diagnose``: what the world sees of this host, and what the host has.

Nothing here changes the system, and nothing secret is read: the WireGuard part comes from the
peer statistics and the chosen server, never from the interface's configuration (which holds the
private key).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from nordwgd.errors import InvalidArgument, NordwgdError
from nordwgd.provider.nordvpn.parse import Insights

log = logging.getLogger(__name__)

MODES = ("basic", "full")
COMMAND_TIMEOUT = 5.0
MAX_TEXT = 64 * 1024  # a ruleset or routing table larger than this is cut, and says so


def check_mode(mode: str) -> str:
    mode = mode or "basic"
    if mode not in MODES:
        raise InvalidArgument(f"diagnose mode {mode!r}: expected one of {', '.join(MODES)}")
    return mode


async def public_address(insights: Callable[[], Awaitable[Insights]]) -> dict[str, object]:
    """The public address and its location as the API sees it; an error is reported, not raised."""
    try:
        seen = await insights()
    except NordwgdError as error:
        return {"public_ip": "", "api_error": f"{error.nick}: {error.message}"}
    return {
        "public_ip": str(seen.ip),
        "protected": seen.protected,
        "country": seen.country,
        "country_code": seen.country_code,
        "city": seen.city,
        "isp": seen.isp,
    }


async def system_report(*, resolv_conf: Path, wireguard: Mapping[str, object]) -> dict[str, object]:
    """Interfaces, firewall table, DNS, routes and rules, WireGuard status and kernel."""
    interfaces, firewall, routes, rules, routes6, dns = await asyncio.gather(
        asyncio.to_thread(_interfaces),
        _run("nft", "list", "table", "inet", "nordwgd"),
        _run("ip", "-4", "route", "show", "table", "all"),
        _run("ip", "rule", "show"),
        _run("ip", "-6", "route", "show", "table", "all"),
        asyncio.to_thread(_read_text, resolv_conf),
    )
    uname = os.uname()
    return {
        "interfaces": interfaces,
        "firewall": firewall,
        "routes": routes,
        "routes6": routes6,
        "rules": rules,
        "dns": dns,
        "wireguard": dict(wireguard),
        "kernel": f"{uname.sysname} {uname.release} {uname.version} {uname.machine}",
    }


def _interfaces() -> list[str]:
    """One line per link: name, state, MTU and addresses."""
    from pyroute2 import IPRoute  # on first use: an idle daemon need not carry it

    lines: list[str] = []
    try:
        with IPRoute() as ipr:
            addresses: dict[int, list[str]] = {}
            for message in ipr.get_addr():
                address = message.get_attr("IFA_ADDRESS")
                if address is not None:
                    addresses.setdefault(message["index"], []).append(
                        f"{address}/{message['prefixlen']}"
                    )
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                state = link.get_attr("IFLA_OPERSTATE") or "?"
                mtu = link.get_attr("IFLA_MTU")
                found = " ".join(addresses.get(link["index"], []))
                lines.append(f"{name} {state} mtu {mtu} {found}".rstrip())
    except OSError as error:
        lines.append(f"(netlink failed: {error})")
    return lines


def _read_text(path: Path) -> str:
    try:
        return _cut(path.read_text(errors="replace"))
    except OSError as error:
        return f"({path}: {error.strerror or error})"


async def _run(*argv: str) -> str:
    """The output of a read-only command, or why there is none."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as error:
        return f"({argv[0]}: {error.strerror or error})"
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return f"({' '.join(argv)}: no answer within {COMMAND_TIMEOUT:.0f}s)"
    if process.returncode != 0:
        text = err.decode(errors="replace").strip() or f"exit status {process.returncode}"
        return f"({' '.join(argv)}: {text})"
    return _cut(out.decode(errors="replace"))


def _cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"\n(cut: {len(text) - MAX_TEXT} more characters)"
