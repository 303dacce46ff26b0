"""WireGuard parameters for a NordLynx server, and their export as a wg-quick file.

NordLynx is plain WireGuard with fixed client settings: address 10.5.0.2/32, the account's
private key from the credentials call, the server's public key, endpoint ``station:51820``,
everything routed through the tunnel and a 25 s keepalive.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network

from nordwgd.errors import InvalidArgument, NoServer
from nordwgd.model import (
    KEEPALIVE_SECONDS,
    NORDLYNX_ADDRESS,
    Credentials,
    IPAddress,
    IPNetwork,
    Server,
    TunnelParams,
)

ALL_IPV4 = IPv4Network("0.0.0.0/0")
ALL_IPV6 = IPv6Network("::/0")


def _is_wireguard_key(value: str) -> bool:
    try:
        return len(b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def tunnel_params(
    credentials: Credentials,
    server: Server,
    *,
    dns: Sequence[IPAddress],
    ipv6_tunnel: bool = False,
) -> TunnelParams:
    """The parameters of a NordLynx link to ``server``; NoServer when it is not usable."""
    if not server.usable or server.public_key is None:
        status = "offline" if server.status != "online" else "not usable for NordLynx"
        raise NoServer(f"server {server.hostname} is {status}")
    if not _is_wireguard_key(server.public_key):
        raise NoServer(f"server {server.hostname} has a malformed NordLynx public key")
    if not _is_wireguard_key(credentials.private_key.reveal()):
        raise InvalidArgument("the NordLynx private key is not a base64 WireGuard key")
    allowed: tuple[IPNetwork, ...] = (ALL_IPV4, ALL_IPV6) if ipv6_tunnel else (ALL_IPV4,)
    return TunnelParams(
        private_key=credentials.private_key,
        address=NORDLYNX_ADDRESS,
        peer_public_key=server.public_key,
        endpoint=server.endpoint,
        allowed_ips=allowed,
        dns=tuple(dns),
        keepalive=KEEPALIVE_SECONDS,
        server=server,
    )


def render_wg_quick(params: TunnelParams) -> str:
    """A wg-quick configuration file for ``params`` (it holds the private key: write it 0600)."""
    lines = [
        "[Interface]",
        f"PrivateKey = {params.private_key.reveal()}",
        f"Address = {params.address}",
    ]
    if params.dns:
        lines.append(f"DNS = {', '.join(str(address) for address in params.dns)}")
    lines += ["", "[Peer]"]
    if params.server is not None:
        server = params.server
        # Parsed host names and names hold no line breaks; keep it that way for any caller.
        label = f"{server.hostname} ({server.country}, {server.city}, load {server.load}%)"
        lines.append("# " + " ".join(label.split()))
    lines += [
        f"PublicKey = {params.peer_public_key}",
        f"AllowedIPs = {', '.join(str(network) for network in params.allowed_ips)}",
        f"Endpoint = {params.endpoint}",
        f"PersistentKeepalive = {params.keepalive}",
    ]
    return "\n".join(lines) + "\n"
