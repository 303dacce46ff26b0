"""The cross-platform WireGuard UAPI text protocol spoken on wireguard-go's control socket.

Requests are ``key=value`` lines ending with an empty line; keys travel in hex, not base64.
The reply to ``set=1`` is ``errno=N``; the reply to ``get=1`` is the device's state followed
by ``errno=N``. Building and parsing are pure; ``exchange`` (async) and ``exchange_sync``
(for test set-up outside an event loop) carry the text over the socket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import socket
from dataclasses import dataclass, field
from pathlib import Path

from nordwgd.errors import TunnelFailed
from nordwgd.model import Endpoint, IPNetwork, Secret

SOCKET_DIR = Path("/var/run/wireguard")
_TIMEOUT = 5.0


def socket_path(ifname: str) -> Path:
    return SOCKET_DIR / f"{ifname}.sock"


def key_to_hex(key_b64: str) -> str:
    """Convert a base64 WireGuard key to the hex form UAPI wants; TunnelFailed if malformed."""
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise TunnelFailed("a WireGuard key is not valid base64") from None
    if len(raw) != 32:
        raise TunnelFailed(f"a WireGuard key must be 32 bytes, this one has {len(raw)}")
    return raw.hex()


def hex_to_key(key_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(key_hex)).decode("ascii")


@dataclass(frozen=True)
class PeerConfig:
    public_key: str  # base64
    endpoint: Endpoint | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    keepalive: int = 0


@dataclass(frozen=True)
class DeviceConfig:
    """One ``set=1`` request: device key and settings, and the peers that replace all others."""

    private_key: Secret
    peers: tuple[PeerConfig, ...] = ()
    listen_port: int | None = None
    fwmark: int | None = None


def render_set(config: DeviceConfig) -> Secret:
    """The ``set=1`` request text; wrapped in a Secret because it carries the private key."""
    lines = ["set=1", f"private_key={key_to_hex(config.private_key.reveal())}"]
    if config.listen_port is not None:
        lines.append(f"listen_port={config.listen_port}")
    if config.fwmark is not None:
        lines.append(f"fwmark={config.fwmark}")
    lines.append("replace_peers=true")
    for peer in config.peers:
        lines.append(f"public_key={key_to_hex(peer.public_key)}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        lines.append(f"persistent_keepalive_interval={peer.keepalive}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={network}" for network in peer.allowed_ips)
    return Secret("\n".join(lines) + "\n\n")


GET_REQUEST = "get=1\n\n"


@dataclass(frozen=True)
class PeerState:
    public_key: str  # base64
    endpoint: str = ""
    latest_handshake: float = 0.0  # seconds since epoch; 0.0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    allowed_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceState:
    listen_port: int = 0
    fwmark: int = 0
    peers: tuple[PeerState, ...] = field(default=())


def check_errno(reply: str) -> None:
    """Raise TunnelFailed unless the reply ends with ``errno=0``."""
    for line in reply.splitlines():
        if line.startswith("errno="):
            value = line.removeprefix("errno=")
            if value != "0":
                raise TunnelFailed(f"wireguard-go refused the configuration (errno={value})")
            return
    raise TunnelFailed("wireguard-go sent no errno in its reply")


def parse_get(reply: str) -> DeviceState:
    """Parse a ``get=1`` reply; private keys in it are dropped, never kept."""
    check_errno(reply)
    listen_port = 0
    fwmark = 0
    peers: list[PeerState] = []
    current: dict[str, str] | None = None
    allowed: list[str] = []

    def finish() -> None:
        if current is None:
            return
        sec = int(current.get("last_handshake_time_sec", "0"))
        nsec = int(current.get("last_handshake_time_nsec", "0"))
        peers.append(
            PeerState(
                public_key=hex_to_key(current["public_key"]),
                endpoint=current.get("endpoint", ""),
                latest_handshake=sec + nsec / 1e9 if sec else 0.0,
                rx_bytes=int(current.get("rx_bytes", "0")),
                tx_bytes=int(current.get("tx_bytes", "0")),
                allowed_ips=tuple(allowed),
            )
        )

    for line in reply.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "public_key":
            finish()
            current = {"public_key": value}
            allowed = []
        elif current is None:
            if key == "listen_port":
                listen_port = int(value)
            elif key == "fwmark":
                fwmark = int(value)
        elif key == "allowed_ip":
            allowed.append(value)
        elif key != "errno":
            current[key] = value
    finish()
    return DeviceState(listen_port=listen_port, fwmark=fwmark, peers=tuple(peers))


def _reply_complete(data: bytes) -> bool:
    return b"errno=" in data and data.endswith(b"\n\n")


async def exchange(path: Path, request: str | Secret) -> str:
    """Send one request to the control socket at ``path`` and return the whole reply."""
    text = request.reveal() if isinstance(request, Secret) else request
    try:
        async with asyncio.timeout(_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(text.encode("ascii"))
                await writer.drain()
                data = b""
                while not _reply_complete(data):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    data += chunk
            finally:
                writer.close()
    except TimeoutError:
        raise TunnelFailed(f"no answer on the WireGuard control socket {path}") from None
    except OSError as error:
        raise TunnelFailed(
            f"cannot talk to the WireGuard control socket {path}: {error.strerror or error}"
        ) from None
    return data.decode("ascii", errors="replace")


def exchange_sync(path: Path, request: str | Secret) -> str:
    """Blocking twin of ``exchange`` for code that runs outside an event loop."""
    text = request.reveal() if isinstance(request, Secret) else request
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_TIMEOUT)
            sock.connect(str(path))
            sock.sendall(text.encode("ascii"))
            data = b""
            while not _reply_complete(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as error:
        raise TunnelFailed(
            f"cannot talk to the WireGuard control socket {path}: {error.strerror or error}"
        ) from None
    return data.decode("ascii", errors="replace")
