"""What the world's small servers (web, DNS) share: listen addresses and running until told."""

from __future__ import annotations

import signal
import socketserver
import threading
from collections.abc import Sequence


def listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as an argparse type."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def serve_until_signalled(servers: Sequence[socketserver.BaseServer]) -> int:
    """Serve on threads, say "ready" (the world waits for it), stop on SIGTERM or SIGINT."""
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    for server in servers:
        server.shutdown()
    return 0
