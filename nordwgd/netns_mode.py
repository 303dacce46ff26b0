"""Namespace mode: a network namespace whose only way out is the tunnel ("leak-proof by topology").

The WireGuard interface is created in the daemon's own namespace, so its encrypted UDP socket
stays there and leaves by the uplink; the link is then moved into the namespace
``network.namespace`` (``/run/netns/<name>``), where it gets the tunnel address and the default
route, and nothing else but loopback exists. A process in that namespace reaches only what the
tunnel reaches; with the tunnel gone it has no route at all, whatever the firewall does. The
host's own routes, rules and DNS are not touched. The namespace's resolvers are written to
``/etc/netns/<name>/resolv.conf``, which ``ip netns exec`` shows as /etc/resolv.conf.

Steps, recorded in the connection journal before each change (undo tolerates what is gone)::

    {"step": "netns", "name": "nordwgd"}                           ip netns add / delete
    {"step": "netns-link", "name": "nordwgd", "ifname": "nordlynx"}  link moved in / deleted there
    {"step": "netns-dns", "path": "/etc/netns/nordwgd/resolv.conf", "made_dir": true, "old": null}

Deleting the namespace only removes its name: processes that joined it keep it alive, with
loopback alone once the tunnel link is deleted, which is the fail-closed outcome wanted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from pathlib import Path

from nordwgd.errors import DnsFailed, TunnelFailed
from nordwgd.files import write_atomic
from nordwgd.model import IPAddress, TunnelParams
from nordwgd.runstate import Journal, Step

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
ETC_NETNS_DIR = Path("/etc/netns")
NAMESPACE_STEP = "netns"
LINK_STEP = "netns-link"
DNS_STEP = "netns-dns"
NETNS_STEPS = frozenset({NAMESPACE_STEP, LINK_STEP, DNS_STEP})
RESOLV_CONF_HEADER = "# nordwgd namespace mode: the tunnel resolvers (removed on disconnect)\n"
_IP_TIMEOUT = 10.0


def exists(name: str) -> bool:
    """Whether a namespace of this name is registered under /run/netns."""
    return (NETNS_DIR / name).exists()


async def create(journal: Journal, name: str) -> None:
    """Make the namespace ``name`` with loopback up; refuse one that exists (not ours)."""
    if await asyncio.to_thread(exists, name):
        raise TunnelFailed(
            f"a network namespace named {name} exists already; refusing to take it over "
            "(remove it or choose another [network] namespace)"
        )
    step = {"step": NAMESPACE_STEP, "name": name}
    await asyncio.to_thread(journal.record, step)
    log.info("[#] ip netns add %s", name)
    await _unrecorded_on_failure(journal, step, _ip("netns", "add", name))
    await _ip("-n", name, "link", "set", "lo", "up")


async def adopt_link(
    journal: Journal, name: str, ifname: str, params: TunnelParams, *, mtu: int
) -> None:
    """Move ``ifname`` into the namespace and make it the namespace's only way out."""
    step = {"step": LINK_STEP, "name": name, "ifname": ifname}
    await asyncio.to_thread(journal.record, step)
    log.info("[#] ip link set %s netns %s", ifname, name)
    # Refused when the namespace has a link of that name already: that one is not ours.
    await _unrecorded_on_failure(journal, step, _ip("link", "set", ifname, "netns", name))
    address = params.address
    family = "-6" if address.version == 6 else "-4"
    log.info(
        "[#] ip -n %s address add %s dev %s; ip -n %s link set %s mtu %d up",
        name,
        address,
        ifname,
        name,
        ifname,
        mtu,
    )
    await _ip("-n", name, "address", "add", str(address), "dev", ifname)
    await _ip("-n", name, "link", "set", ifname, "mtu", str(mtu), "up")
    log.info("[#] ip -n %s %s route add default dev %s", name, family, ifname)
    await _ip("-n", name, family, "route", "add", "default", "dev", ifname)


async def _unrecorded_on_failure(journal: Journal, step: Step, change: Awaitable[None]) -> None:
    """Make ``change``, recorded before it (a killed process leaves the record); when ``ip``
    refuses it, it did not happen, and the record goes so that no undo touches what others
    made. (A cancelled wait keeps the record: ``ip`` may have done it.)"""
    try:
        await change
    except TunnelFailed:
        await asyncio.to_thread(journal.forget, step)
        raise


async def write_dns(journal: Journal, name: str, servers: Sequence[IPAddress]) -> None:
    """Point the namespace's resolv.conf at ``servers``; the old file (if any) is recorded."""
    path = resolv_conf_path(name)
    text = _resolv_conf_text(servers)
    try:
        made_dir, old = await asyncio.to_thread(_current_resolv_conf, path)
        await asyncio.to_thread(
            journal.record, {"step": DNS_STEP, "path": str(path), "made_dir": made_dir, "old": old}
        )
        log.info("[#] write %s (nameserver %s)", path, ", ".join(map(str, servers)))
        await asyncio.to_thread(_write, path, text)
    except OSError as error:
        raise DnsFailed(f"cannot write {path}: {error.strerror or error}") from None


def _current_resolv_conf(path: Path) -> tuple[bool, str | None]:
    """(whether its directory is missing, its text if it exists)."""
    made_dir = not path.parent.is_dir()
    return made_dir, None if made_dir or not path.exists() else path.read_text()


async def rewrite_dns(name: str, servers: Sequence[IPAddress]) -> None:
    """Replace our resolv.conf of the namespace, whose original is recorded already."""
    path = resolv_conf_path(name)
    log.info("[#] write %s (nameserver %s)", path, ", ".join(map(str, servers)))
    try:
        await asyncio.to_thread(_write, path, _resolv_conf_text(servers))
    except OSError as error:
        raise DnsFailed(f"cannot write {path}: {error.strerror or error}") from None


def resolv_conf_path(name: str) -> Path:
    """Where ``ip netns exec`` finds the namespace's resolv.conf."""
    return ETC_NETNS_DIR / name / "resolv.conf"


def _resolv_conf_text(servers: Sequence[IPAddress]) -> str:
    return RESOLV_CONF_HEADER + "".join(f"nameserver {server}\n" for server in servers)


async def undo(step: Step) -> None:
    """Undo one recorded namespace-mode step; what is already gone is not an error."""
    kind = step["step"]
    if kind == DNS_STEP:
        await asyncio.to_thread(_restore_dns, step)
    elif kind == LINK_STEP:
        name, ifname = step["name"], step["ifname"]
        if await asyncio.to_thread(exists, name):
            log.info("[#] ip -n %s link delete %s", name, ifname)
            await _ip("-n", name, "link", "delete", ifname, missing_ok=True)
    elif kind == NAMESPACE_STEP:
        await delete(step["name"])
    else:
        raise ValueError(f"not a namespace-mode step: {kind}")


async def delete(name: str) -> None:
    """Remove the namespace's name (idempotent)."""
    if not await asyncio.to_thread(exists, name):
        return
    log.info("[#] ip netns delete %s", name)
    await _ip("netns", "delete", name, missing_ok=True)


async def cleanup_by_name(name: str) -> None:
    """Without a record: remove the namespace and a resolv.conf that carries our header."""
    await delete(name)
    await asyncio.to_thread(_remove_our_resolv_conf, name)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_atomic(path, text.encode(), mode=0o644)


def _restore_dns(step: Step) -> None:
    path = Path(step["path"])
    try:
        if step.get("old") is None:
            log.info("[#] rm %s", path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            log.info("[#] restore %s", path)
            write_atomic(path, str(step["old"]).encode(), mode=0o644)
        if step.get("made_dir"):
            with contextlib.suppress(FileNotFoundError):
                path.parent.rmdir()
    except OSError as error:
        raise DnsFailed(f"cannot restore {path}: {error.strerror or error}") from None


def _remove_our_resolv_conf(name: str) -> None:
    path = ETC_NETNS_DIR / name / "resolv.conf"
    with contextlib.suppress(OSError):
        if path.read_text().startswith(RESOLV_CONF_HEADER):
            log.info("[#] rm leftover %s", path)
            path.unlink()
            path.parent.rmdir()


async def _ip(*args: str, missing_ok: bool = False) -> None:
    """Run ``ip`` with ``args``; a failure is TunnelFailed with ip's own message."""
    try:
        process = await asyncio.create_subprocess_exec(
            "ip",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as error:
        raise TunnelFailed(f"cannot run ip: {error.strerror or error}") from None
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), _IP_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise TunnelFailed(f"ip {' '.join(args)} did not finish in {_IP_TIMEOUT:.0f} s") from None
    if process.returncode == 0:
        return
    message = stderr.decode(errors="replace").strip()
    if missing_ok and any(word in message for word in ("Cannot find", "No such", "not exist")):
        return
    raise TunnelFailed(f"ip {' '.join(args)} failed: {message or process.returncode}")


__all__ = [
    "DNS_STEP",
    "LINK_STEP",
    "NAMESPACE_STEP",
    "NETNS_STEPS",
    "adopt_link",
    "cleanup_by_name",
    "create",
    "delete",
    "exists",
    "resolv_conf_path",
    "rewrite_dns",
    "undo",
    "write_dns",
]
