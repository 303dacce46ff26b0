"""A minimal DNS server for the test world (UDP and TCP, A records from a table).

Every query is logged as one JSON line: the address it was sent to, the client's source
address, protocol, name and type, so tests can tell which resolver was asked and from where
(through the tunnel the source is the VPN server's station). Unknown names get NXDOMAIN.
``python -m nordwgd.testing.dnsserver --listen IP:53 ... --log FILE --record NAME=IP ...``
prints "ready" when listening.
"""

from __future__ import annotations

import argparse
import json
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from nordwgd.testing.serving import listen_address, serve_until_signalled

TYPE_A = 1
CLASS_IN = 1


@dataclass(frozen=True)
class Question:
    name: str
    qtype: int
    end: int  # offset just after the question in the request


def parse_question(message: bytes) -> Question:
    """The first question of a query; ValueError if the message is malformed."""
    if len(message) < 12:
        raise ValueError("short DNS header")
    offset = 12
    labels: list[str] = []
    while True:
        if offset >= len(message):
            raise ValueError("name runs past the end")
        length = message[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise ValueError("compressed names are not expected in a question")
        labels.append(message[offset : offset + length].decode("ascii", errors="replace"))
        offset += length
    if offset + 4 > len(message):
        raise ValueError("question runs past the end")
    qtype, _qclass = struct.unpack("!HH", message[offset : offset + 4])
    return Question(".".join(labels).lower(), qtype, offset + 4)


def build_answer(message: bytes, question: Question, records: Mapping[str, str]) -> bytes:
    """A response echoing the question, with an A record when the table has one."""
    (query_id, flags) = struct.unpack("!HH", message[:4])
    address = records.get(question.name)
    rcode = 0 if address is not None else 3
    answers = b""
    if address is not None and question.qtype == TYPE_A:
        answers = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, 60, 4)
        answers += IPv4Address(address).packed
    response_flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode  # QR, RD copied, RA
    header = struct.pack("!HHHHHH", query_id, response_flags, 1, 1 if answers else 0, 0, 0)
    return header + message[12 : question.end] + answers


class _Log:
    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()


class _Context:
    def __init__(self, records: Mapping[str, str], log: _Log) -> None:
        self.records = records
        self.log = log

    def answer(self, message: bytes, server: str, client: tuple[str, int], proto: str) -> bytes:
        try:
            question = parse_question(message)
        except ValueError:
            return b""
        self.log.write(
            {
                "time": time.time(),
                "server": server,
                "client": client[0],
                "client_port": client[1],
                "proto": proto,
                "name": question.name,
                "type": question.qtype,
            }
        )
        return build_answer(message, question, self.records)


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _UdpServer

    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.context.answer(
            data, str(self.server.server_address[0]), self.client_address, "udp"
        )
        if reply:
            sock.sendto(reply, self.client_address)


class _TcpHandler(socketserver.StreamRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            (length,) = struct.unpack("!H", head)
            data = self.rfile.read(length)
            reply = self.server.context.answer(
                data, str(self.server.server_address[0]), self.client_address, "tcp"
            )
            if not reply:
                return
            self.wfile.write(struct.pack("!H", len(reply)) + reply)


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: _Context) -> None:
        self.context = context
        super().__init__(address, _UdpHandler)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: _Context) -> None:
        self.context = context
        super().__init__(address, _TcpHandler)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The queries logged so far, oldest first."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _record(value: str) -> tuple[str, str]:
    name, _, address = value.partition("=")
    return name.lower().rstrip("."), str(IPv4Address(address))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nordwgd.testing.dnsserver")
    parser.add_argument("--listen", type=listen_address, action="append", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--record", type=_record, action="append", default=[])
    args = parser.parse_args(argv)
    context = _Context(dict(args.record), _Log(args.log))
    servers: list[socketserver.BaseServer] = []
    for address in args.listen:
        servers.append(_UdpServer(address, context))
        servers.append(_TcpServer(address, context))
    return serve_until_signalled(servers)


if __name__ == "__main__":
    sys.exit(main())
