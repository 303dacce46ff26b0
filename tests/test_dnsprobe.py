"""The DNS round-trip probe against a local UDP responder on 127.0.0.1."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from nordwgd.dnsprobe import SENDS, TYPE_NS, build_query, parse_header, query

Reply = Callable[[bytes], list[bytes]]  # the datagrams to send back for one query


class Responder:
    """A UDP socket on 127.0.0.1 answering each query with what ``reply`` makes of it."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.queries: list[bytes] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                message, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.queries.append(message)
            for datagram in self.reply(message):
                self.sock.sendto(datagram, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def responder() -> Iterator[Callable[[Reply], Responder]]:
    made: list[Responder] = []

    def make(reply: Reply) -> Responder:
        made.append(Responder(reply))
        return made[-1]

    yield make
    for one in made:
        one.close()


def response(message: bytes, *, rcode: int = 0, ident: int | None = None) -> bytes:
    """A response header echoing ``message``'s question (id replaced when ``ident`` is set)."""
    query_id = struct.unpack("!H", message[:2])[0] if ident is None else ident
    header = struct.pack("!HHHHHH", query_id, 0x8180 | rcode, 1, 0, 0, 0)
    return header + message[12:]


def test_query_is_a_root_ns_question() -> None:
    message = build_query(0xBEEF)
    header = parse_header(message)
    assert header is not None
    assert header.ident == 0xBEEF and not header.is_response and header.questions == 1
    assert message[12:] == b"\x00" + struct.pack("!HH", TYPE_NS, 1)


def test_query_rejects_an_id_wider_than_16_bits() -> None:
    with pytest.raises(ValueError, match="16 bits"):
        build_query(0x10000)


def test_short_message_has_no_header() -> None:
    assert parse_header(b"\x12\x34\x81") is None


def test_an_answer_counts(responder: Callable[[Reply], Responder]) -> None:
    server = responder(lambda message: [response(message)])
    assert query("127.0.0.1", 2.0, port=server.port) is None
    assert len(server.queries) == 1


def test_an_error_response_still_counts(responder: Callable[[Reply], Responder]) -> None:
    server = responder(lambda message: [response(message, rcode=5)])  # REFUSED
    assert query("127.0.0.1", 2.0, port=server.port) is None


def test_ids_are_random(responder: Callable[[Reply], Responder]) -> None:
    server = responder(lambda message: [response(message)])
    for _ in range(8):
        assert query("127.0.0.1", 2.0, port=server.port) is None
    ids = {struct.unpack("!H", message[:2])[0] for message in server.queries}
    assert len(ids) > 1


def test_a_wrong_id_is_ignored(responder: Callable[[Reply], Responder]) -> None:
    def wrong(message: bytes) -> list[bytes]:
        ident = struct.unpack("!H", message[:2])[0]
        return [response(message, ident=ident ^ 0xFFFF)]

    server = responder(wrong)
    assert query("127.0.0.1", 0.3, port=server.port) == "no DNS response"


def test_the_right_answer_after_junk_counts(responder: Callable[[Reply], Responder]) -> None:
    def junk_first(message: bytes) -> list[bytes]:
        ident = struct.unpack("!H", message[:2])[0]
        echoed_query = message  # right id, but not a response
        return [b"\x00", response(message, ident=ident ^ 1), echoed_query, response(message)]

    server = responder(junk_first)
    assert query("127.0.0.1", 2.0, port=server.port) is None


def test_silence_is_a_timeout(responder: Callable[[Reply], Responder]) -> None:
    server = responder(lambda message: [])
    assert query("127.0.0.1", 0.3, port=server.port) == "no DNS response"
    # Sent again within the timeout, always the same question.
    assert len(server.queries) == SENDS
    assert len(set(server.queries)) == 1


def test_a_lost_query_is_sent_again(responder: Callable[[Reply], Responder]) -> None:
    """On a lossy link one datagram may vanish: the probe must not call the path dead."""
    seen: list[bytes] = []

    def lose_the_first(message: bytes) -> list[bytes]:
        seen.append(message)
        return [] if len(seen) == 1 else [response(message)]

    server = responder(lose_the_first)
    assert query("127.0.0.1", 1.0, port=server.port) is None
    assert len(server.queries) == 2


def test_a_closed_port_is_a_reason() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reason = query("127.0.0.1", 1.0, port=port)
    assert reason is not None and reason.startswith("DNS: ")


def test_not_an_address() -> None:
    assert query("resolver.example", 1.0) == "not an IP address: 'resolver.example'"
