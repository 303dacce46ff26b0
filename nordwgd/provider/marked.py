"""An httpcore network backend that sets socket options before connecting.

httpcore applies ``socket_options`` after ``connect()``, so the SYN of a new connection would
leave without the daemon's firewall mark and be dropped by the kill switch, which admits the
API only from marked sockets. This backend marks the socket first, then connects.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

import anyio
import anyio.abc
import httpcore
from httpcore._backends.anyio import AnyIOStream
from httpcore._backends.base import SOCKET_OPTION as SocketOption


class MarkedNetworkBackend(httpcore.AsyncNetworkBackend):
    """TCP connections whose socket options (SO_MARK) are in place before the first packet."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            if local_address:
                sock.bind((local_address, 0))
            try:
                with anyio.fail_after(timeout):
                    await asyncio.get_running_loop().sock_connect(sock, (host, port))
            except TimeoutError as error:
                raise httpcore.ConnectTimeout(str(error) or "connect timed out") from error
            except OSError as error:
                raise httpcore.ConnectError(str(error)) from error
            stream = await anyio.abc.SocketStream.from_socket(sock)
        except BaseException:
            sock.close()
            raise
        return AnyIOStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for the NordVPN API")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
