"""What the UML tests ask of a namespace: which WireGuard a link is, and who serves it."""

from __future__ import annotations

from pathlib import Path

from nordwgd.testing import netns as ns

WG_SOCKETS = Path("/var/run/wireguard")


def link_kind(netns: str, ifname: str) -> str:
    """The link's kind as the kernel reports it ("wireguard" for kernel WireGuard, "tun" for
    wireguard-go), or "" when there is no such link."""
    done = ns.run(["ip", "-n", netns, "-d", "-o", "link", "show", "dev", ifname], check=False)
    if done.returncode != 0:
        return ""
    words = done.stdout.split()
    for known in ("wireguard", "tun"):
        if known in words:
            return known
    return "other"


def assert_kernel_wireguard(netns: str, ifname: str) -> None:
    assert link_kind(netns, ifname) == "wireguard"
    assert not (WG_SOCKETS / f"{ifname}.sock").exists(), "wireguard-go serves it"
