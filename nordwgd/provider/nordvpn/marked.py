"""An httpcore network backend that sets socket options before connecting.

httpcore applies ``socket_options`` after ``connect()``, so the SYN of a new connection would
leave without the daemon's firewall mark and be dropped by the kill switch, which admits the
API only from marked sockets. This backend marks the socket first, then connects.

Only httpcore's and anyio's public interfaces are used: the stream is our own small
``httpcore.AsyncNetworkStream`` over an anyio socket stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
import anyio.abc
import anyio.streams.tls
import httpcore

SocketOption = httpcore.SOCKET_OPTION


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
        return MarkedStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for the NordVPN API")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@contextlib.contextmanager
def _mapped(errors: dict[type[BaseException], type[Exception]]) -> Iterator[None]:
    """Re-raise the first matching error as httpcore's kind (what httpx expects)."""
    try:
        yield
    except Exception as error:
        for kind, replacement in errors.items():
            if isinstance(error, kind):
                raise replacement(str(error) or kind.__name__) from error
        raise


class MarkedStream(httpcore.AsyncNetworkStream):
    """An anyio byte stream (plain or TLS) as httpcore wants it."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        errors: dict[type[BaseException], type[Exception]] = {
            TimeoutError: httpcore.ReadTimeout,
            anyio.BrokenResourceError: httpcore.ReadError,
            anyio.ClosedResourceError: httpcore.ReadError,
        }
        with _mapped(errors), anyio.fail_after(timeout):
            try:
                return await self._stream.receive(max_bytes)
            except anyio.EndOfStream:
                return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        errors: dict[type[BaseException], type[Exception]] = {
            TimeoutError: httpcore.WriteTimeout,
            anyio.BrokenResourceError: httpcore.WriteError,
            anyio.ClosedResourceError: httpcore.WriteError,
        }
        with _mapped(errors), anyio.fail_after(timeout):
            await self._stream.send(buffer)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        errors: dict[type[BaseException], type[Exception]] = {
            TimeoutError: httpcore.ConnectTimeout,
            anyio.BrokenResourceError: httpcore.ConnectError,
            anyio.EndOfStream: httpcore.ConnectError,
            ssl.SSLError: httpcore.ConnectError,
        }
        try:
            with _mapped(errors), anyio.fail_after(timeout):
                wrapped = await anyio.streams.tls.TLSStream.wrap(
                    self._stream,
                    ssl_context=ssl_context,
                    hostname=server_hostname,
                    standard_compatible=False,
                    server_side=False,
                )
        except BaseException:
            await self.aclose()
            raise
        return MarkedStream(wrapped)

    def get_extra_info(self, info: str) -> Any:
        attribute = anyio.abc.SocketAttribute
        extra = self._stream.extra  # anyio's typed attributes (ruff's S610 means Django's)
        if info == "ssl_object":
            return extra(anyio.streams.tls.TLSAttribute.ssl_object, None)
        if info == "client_addr":
            return extra(attribute.local_address, None)
        if info == "server_addr":
            return extra(attribute.remote_address, None)
        sock: socket.socket | None = extra(attribute.raw_socket, None)
        if info == "socket":
            return sock
        if info == "is_readable":
            # A pooled connection that is readable while idle was closed (or spoke) out of turn.
            return sock is None or sock.fileno() < 0 or bool(select.select([sock], [], [], 0)[0])
        return None
