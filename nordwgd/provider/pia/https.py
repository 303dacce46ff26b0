"""One HTTPS request to a pinned address, with SNI and the certificate checked for a name.

PIA's servers are reached by address (DNS is blocked while the kill switch is on, and the
region list names each server by address and certificate name). The request is blocking:
call it through ``asyncio.to_thread``, or ``run_in_namespace`` for a request that must leave
through a tunnel that lives in another network namespace. Every socket operation is bounded
by ``timeout``.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlencode

from nordwgd.model import IPAddress

SO_MARK = 36  # socket.SO_MARK is missing from some Python builds
MAX_BODY_BYTES = 4 * 1024 * 1024  # the region list is ~250 kB; more is not an answer
USER_AGENT = "nordwgd"


class HttpsFailure(Exception):
    """No HTTP answer came: connect, TLS or protocol failure, or a timeout (message says which)."""


@dataclass(frozen=True)
class Request:
    method: str
    address: IPAddress
    port: int
    host: str  # SNI, Host header and the name the certificate must carry
    path: str
    query: tuple[tuple[str, str], ...] = ()
    form: tuple[tuple[str, str], ...] = ()  # urlencoded body (POST)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold a token
    fwmark: int | None = None  # set before connect(): the kill switch admits marked sockets

    def describe(self) -> str:
        """Where the request went, for messages (never its query: it may hold the token)."""
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.method} {self.path} at {self.host} ({host}:{self.port})"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    retry_after: str | None


def tls_context(ca_file: str | None, ca_data: str | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca_file`` or ``ca_data`` (PEM), else the system CAs."""
    context = ssl.create_default_context(cafile=ca_file, cadata=ca_data)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def fetch(request: Request, context: ssl.SSLContext, timeout: float) -> Answer:
    """Send ``request`` and read the whole answer; HttpsFailure when there is none."""
    family = socket.AF_INET6 if request.address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if request.fwmark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, request.fwmark)
        sock.settimeout(timeout)
        try:
            sock.connect((str(request.address), request.port))
        except TimeoutError:
            raise HttpsFailure(f"no connection within {timeout:g} s") from None
        except OSError as error:
            raise HttpsFailure(f"connection failed ({error.strerror or error})") from None
        try:
            tls = context.wrap_socket(sock, server_hostname=request.host)
        except ssl.SSLCertVerificationError as error:
            raise HttpsFailure(
                f"certificate not trusted for {request.host} ({error.verify_message})"
            ) from None
        except ssl.SSLError as error:
            raise HttpsFailure(f"TLS handshake failed ({error.reason or error})") from None
        except TimeoutError:
            raise HttpsFailure(f"TLS handshake timed out after {timeout:g} s") from None
        except OSError as error:
            raise HttpsFailure(f"TLS handshake failed ({error.strerror or error})") from None
        sock = tls
        return _exchange(tls, request)
    finally:
        sock.close()


def _exchange(tls: ssl.SSLSocket, request: Request) -> Answer:
    connection = http.client.HTTPConnection(request.host, request.port)
    connection.sock = tls  # already connected and verified
    target = request.path
    if request.query:
        target += "?" + urlencode(request.query)
    body = urlencode(request.form).encode() if request.form else None
    headers = {
        "Host": request.host if request.port == 443 else f"{request.host}:{request.port}",
        "Accept": "application/json",
        "Accept-Encoding": "identity",
        "User-Agent": USER_AGENT,
        "Connection": "close",
    }
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    headers.update(request.headers)
    try:
        connection.request(request.method, target, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read(MAX_BODY_BYTES + 1)
    except TimeoutError:
        raise HttpsFailure("no answer in time") from None
    except (http.client.HTTPException, OSError) as error:
        raise HttpsFailure(
            f"connection closed before a complete answer ({type(error).__name__})"
        ) from None
    if len(data) > MAX_BODY_BYTES:
        raise HttpsFailure(f"answer larger than {MAX_BODY_BYTES} bytes")
    return Answer(response.status, data, response.getheader("Retry-After"))
