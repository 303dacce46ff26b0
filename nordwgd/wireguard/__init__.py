"""WireGuard backends: the kernel module over netlink, or wireguard-go over its UAPI socket.

Both create the interface (down), set key and peer, read statistics and destroy it. Address,
MTU and link state are the caller's (``Connection``) job, the same for both backends.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from typing import Literal, Protocol

from nordwgd.errors import TunnelFailed
from nordwgd.model import TunnelParams

BackendKind = Literal["auto", "kernel", "userspace"]

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


@dataclass(frozen=True)
class PeerStats:
    latest_handshake: float  # seconds since epoch, 0.0 = never
    rx_bytes: int
    tx_bytes: int


class WireGuardBackend(Protocol):
    kind: str  # "kernel" | "userspace"

    async def create(self, ifname: str) -> int:
        """Create the interface (left down) and return its ifindex; TunnelFailed if impossible."""
        ...

    async def configure(self, ifname: str, params: TunnelParams, fwmark: int) -> None:
        """Set the private key, fwmark and exactly one peer (replacing any others)."""
        ...

    async def stats(self, ifname: str) -> PeerStats: ...

    async def destroy(self, ifname: str) -> None:
        """Remove the interface; idempotent."""
        ...

    async def exists(self, ifname: str) -> bool: ...


def check_ifname(ifname: str) -> None:
    """Refuse names Linux would refuse (or that would escape the socket directory)."""
    if not _IFNAME.fullmatch(ifname) or ifname in (".", ".."):
        raise TunnelFailed(
            f"invalid interface name {ifname!r}: 1-15 characters from A-Z a-z 0-9 _ . -"
        )


def open_backend(kind: BackendKind) -> WireGuardBackend:
    """The backend for ``kind``; "auto" prefers the kernel when it can create a WireGuard link.

    Raises TunnelFailed when the chosen backend cannot work on this machine.
    """
    from nordwgd.wireguard.kernel import KernelBackend, kernel_wireguard_problem
    from nordwgd.wireguard.userspace import UserspaceBackend

    if kind == "kernel":
        problem = kernel_wireguard_problem()
        if problem is not None:
            raise TunnelFailed(f"the kernel has no WireGuard support ({problem})")
        return KernelBackend()
    if kind == "userspace":
        return _userspace(UserspaceBackend)
    if kind == "auto":
        if kernel_wireguard_problem() is None:
            return KernelBackend()
        return _userspace(UserspaceBackend)
    raise TunnelFailed(f"unknown WireGuard backend {kind!r} (auto, kernel or userspace)")


def _userspace(factory: type[WireGuardBackend]) -> WireGuardBackend:
    from nordwgd.wireguard.userspace import WIREGUARD_GO

    if shutil.which(WIREGUARD_GO) is None:
        raise TunnelFailed(
            "no WireGuard backend: the kernel has no WireGuard support and wireguard-go "
            "is not installed"
        )
    return factory()
