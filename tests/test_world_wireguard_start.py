"""The test world waits until a wireguard-go control socket listens, not only until its file
exists: wireguard-go binds (the file appears) a moment before it listens."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from nordwgd.testing.world import wait_listening


def test_a_bound_socket_is_waited_for_until_it_listens(tmp_path: Path) -> None:
    path = tmp_path / "wg.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))  # the file exists, nothing listens yet
    listened_at: list[float] = []

    def listen_later() -> None:
        time.sleep(0.3)
        listened_at.append(time.monotonic())
        server.listen(1)

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        assert wait_listening(path, time.monotonic() + 10)
        assert listened_at, "returned before the socket listened"
    finally:
        thread.join()
        server.close()


def test_a_socket_that_never_listens_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "wg.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        assert not wait_listening(path, time.monotonic() + 0.2)
    assert not wait_listening(tmp_path / "missing.sock", time.monotonic() + 0.1)
