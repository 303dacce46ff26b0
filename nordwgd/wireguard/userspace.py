"""The userspace WireGuard backend: one wireguard-go process per interface, set up over UAPI.

wireguard-go's control sockets live in one directory for the whole machine, not per network
namespace, and a new instance silently takes over a stale socket. So an existing socket is a
refusal here, never something to reuse. Deleting an instance's socket shuts that instance down;
``destroy`` relies on that, also for an instance started by an earlier process of the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

from nordwgd.errors import TunnelFailed
from nordwgd.model import TunnelParams
from nordwgd.wireguard import PeerStats, check_ifname
from nordwgd.wireguard.uapi import (
    GET_REQUEST,
    DeviceConfig,
    PeerConfig,
    check_errno,
    exchange,
    parse_get,
    render_set,
    socket_path,
)

log = logging.getLogger(__name__)

WIREGUARD_GO = "wireguard-go"
_START_TIMEOUT = 5.0
_STOP_TIMEOUT = 3.0
_POLL = 0.01
# wireguard-go is usually ready within a few milliseconds: look often at first.
_READY_POLL = 0.001
_READY_FAST_PERIOD = 0.1


def _child_env() -> dict[str, str]:
    # A minimal environment: nothing of ours (and certainly no secret) leaks into the child.
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1",
        "LOG_LEVEL": "error",
    }


class UserspaceBackend:
    kind = "userspace"

    def __init__(self, binary: str = WIREGUARD_GO) -> None:
        self._binary = binary
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._log_tasks: dict[str, asyncio.Task[None]] = {}

    async def create(self, ifname: str) -> int:
        check_ifname(ifname)
        path = socket_path(ifname)
        if path.exists() or path.is_symlink():
            raise TunnelFailed(
                f"the WireGuard control socket {path} exists already (another or a stale "
                "wireguard-go instance); refusing to take it over"
            )
        if _ifindex(ifname) is not None:
            raise TunnelFailed(f"an interface named {ifname} exists already")
        try:
            process = await asyncio.create_subprocess_exec(
                self._binary,
                "-f",
                ifname,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,
            )
        except OSError as error:
            raise TunnelFailed(f"cannot start {self._binary}: {error.strerror or error}") from None
        log.info("[#] %s -f %s (pid %d)", self._binary, ifname, process.pid)
        self._processes[ifname] = process
        self._log_tasks[ifname] = asyncio.create_task(_forward_output(ifname, process))
        try:
            return await self._wait_ready(ifname, process)
        except BaseException:
            await self.destroy(ifname)
            raise

    async def _wait_ready(self, ifname: str, process: asyncio.subprocess.Process) -> int:
        path = socket_path(ifname)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + _START_TIMEOUT
        while True:
            if process.returncode is not None:
                raise TunnelFailed(
                    f"wireguard-go for {ifname} exited with status {process.returncode} "
                    "before its control socket appeared"
                )
            if path.exists():
                index = _ifindex(ifname)
                if index is not None:
                    return index
            if loop.time() > deadline:
                raise TunnelFailed(
                    f"wireguard-go did not create {ifname} within {_START_TIMEOUT} s"
                )
            fast = loop.time() - started < _READY_FAST_PERIOD
            await asyncio.sleep(_READY_POLL if fast else _POLL)

    async def configure(self, ifname: str, params: TunnelParams, fwmark: int) -> None:
        request = render_set(
            DeviceConfig(
                private_key=params.private_key,
                fwmark=fwmark,
                peers=(
                    PeerConfig(
                        public_key=params.peer_public_key,
                        endpoint=params.endpoint,
                        allowed_ips=params.allowed_ips,
                        keepalive=params.keepalive,
                    ),
                ),
            )
        )
        check_errno(await exchange(socket_path(ifname), request))
        log.info(
            "[#] wg set %s fwmark %#x peer %s endpoint %s allowed-ips %s",
            ifname,
            fwmark,
            params.peer_public_key,
            params.endpoint,
            ",".join(str(network) for network in params.allowed_ips),
        )

    async def stats(self, ifname: str) -> PeerStats:
        state = parse_get(await exchange(socket_path(ifname), GET_REQUEST))
        if not state.peers:
            return PeerStats(0.0, 0, 0)
        peer = state.peers[0]
        return PeerStats(peer.latest_handshake, peer.rx_bytes, peer.tx_bytes)

    async def destroy(self, ifname: str) -> None:
        check_ifname(ifname)
        path = socket_path(ifname)
        process = self._processes.pop(ifname, None)
        pid = process.pid if process else await asyncio.to_thread(find_instance, ifname)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            log.info("[#] rm %s (stops wireguard-go for %s)", path, ifname)
        if process is not None:
            await _stop_child(process)
        elif pid is not None:
            await _stop_foreign(pid)
        task = self._log_tasks.pop(ifname, None)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def exists(self, ifname: str) -> bool:
        check_ifname(ifname)
        return socket_path(ifname).exists() or _ifindex(ifname) is not None


def _ifindex(ifname: str) -> int | None:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


async def _forward_output(ifname: str, process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    async for raw in process.stdout:
        line = raw.decode("utf-8", errors="replace").rstrip()
        if line:
            log.info("wireguard-go[%s]: %s", ifname, line)


async def _stop_child(process: asyncio.subprocess.Process) -> None:
    try:
        await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
        return
    except TimeoutError:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
            return
        except TimeoutError:
            continue
    raise TunnelFailed(f"wireguard-go (pid {process.pid}) does not stop")


async def _stop_foreign(pid: int) -> None:
    """Wait for an instance we did not start to go; signal it only if it is still wireguard-go."""
    loop = asyncio.get_running_loop()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and _is_wireguard_go(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = loop.time() + _STOP_TIMEOUT
        while loop.time() < deadline:
            if not _is_wireguard_go(pid):
                return
            await asyncio.sleep(_POLL * 5)
    raise TunnelFailed(f"wireguard-go (pid {pid}) does not stop")


def _is_wireguard_go(pid: int) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie is gone for our purposes; its parent will reap it.
    state = status.rpartition(")")[2].split()[0]
    return comm == WIREGUARD_GO and state != "Z"


def find_instance(ifname: str) -> int | None:
    """The pid of the wireguard-go serving ``ifname``, found through its control socket.

    The socket's inode (from /proc/net/unix) leads to the process holding it; when the socket
    is not visible from this network namespace, fall back to the instance's command line.
    """
    path = str(socket_path(ifname))
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[7] in (path, path.replace("/var/run/", "/run/")):
                inodes.add(fields[6])
    wanted = {f"socket:[{inode}]" for inode in inodes}
    by_cmdline: int | None = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not _is_wireguard_go(int(entry.name)):
            continue
        pid = int(entry.name)
        if wanted:
            with contextlib.suppress(OSError):
                for fd in (entry / "fd").iterdir():
                    with contextlib.suppress(OSError):
                        if str(fd.readlink()) in wanted:
                            return pid
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if ifname.encode() in argv[1:]:
                by_cmdline = pid
    return by_cmdline
