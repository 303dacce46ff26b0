"""A DNS round trip as a liveness probe: does a resolver answer (through the tunnel)?

One UDP query for the root's NS records goes to the resolver with a random id. Any well-formed
response carrying that id counts as an answer, whatever its code: NXDOMAIN, REFUSED or SERVFAIL
prove as well as an answer does that a packet went there and came back. Only the 12-byte header
of a response is read. A datagram with another id (late, stray or forged) is ignored and the
wait goes on until the deadline. The query is sent again (same id) at each third of the
timeout, so that one lost datagram on a lossy link does not read as a dead path.

Blocking on purpose: the health monitor runs it in a thread, which may first enter another
network namespace so that the socket is created there.
"""

from __future__ import annotations

import secrets
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import ip_address

from nordwgd.model import IPAddress

DNS_PORT = 53
TYPE_NS = 2
CLASS_IN = 1
_HEADER = struct.Struct("!HHHHHH")  # id, flags, question, answer, authority, additional counts
_FLAG_RESPONSE = 0x8000
_FLAG_RECURSION_DESIRED = 0x0100
_MAX_DATAGRAM = 4096
SENDS = 3  # the query goes out this many times, spread over the timeout


@dataclass(frozen=True)
class Header:
    """The fixed part of a DNS message."""

    ident: int
    flags: int
    questions: int
    answers: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & _FLAG_RESPONSE)

    @property
    def rcode(self) -> int:
        return self.flags & 0x000F


def build_query(ident: int) -> bytes:
    """A recursive query with id ``ident`` for the NS records of the root zone."""
    if not 0 <= ident <= 0xFFFF:
        raise ValueError(f"a DNS id is 16 bits, not {ident}")
    header = _HEADER.pack(ident, _FLAG_RECURSION_DESIRED, 1, 0, 0, 0)
    question = b"\x00" + struct.pack("!HH", TYPE_NS, CLASS_IN)  # the root name is one 0 byte
    return header + question


def parse_header(message: bytes) -> Header | None:
    """The header of ``message``, or None when it is too short to be a DNS message."""
    if len(message) < _HEADER.size:
        return None
    ident, flags, questions, answers, _, _ = _HEADER.unpack_from(message)
    return Header(ident=ident, flags=flags, questions=questions, answers=answers)


def query(server: IPAddress | str, timeout: float, *, port: int = DNS_PORT) -> str | None:
    """Ask ``server``; None when it responded within ``timeout`` seconds, else why not."""
    try:
        address = ip_address(str(server))
    except ValueError:
        return f"not an IP address: {server!r}"
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    ident = secrets.randbelow(0x10000)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            # A connected socket only receives datagrams from the server itself.
            sock.connect((str(address), port))
            message = build_query(ident)
            interval = timeout / SENDS
            sent = 0
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return "no DNS response"
                if sent < SENDS and now >= deadline - timeout + sent * interval:
                    sock.send(message)
                    sent += 1
                resend_at = deadline - timeout + sent * interval if sent < SENDS else deadline
                sock.settimeout(max(0.001, min(deadline, resend_at) - now))
                try:
                    header = parse_header(sock.recv(_MAX_DATAGRAM))
                except TimeoutError:
                    continue
                if header is not None and header.is_response and header.ident == ident:
                    return None
    except OSError as error:
        return f"DNS: {error.strerror or error}"


__all__ = ["DNS_PORT", "Header", "build_query", "parse_header", "query"]
