"""The test world's "Internet" web server: answers every GET with the caller's source address.

``/health`` answers 200 "ok" (a health-check target). Run in the router namespace:
``python -m nordwgd.testing.webserver --listen 198.51.100.80:80``; prints "ready" when listening.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server_version = "nordwgd-test-web"

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.client_address[0]} {format % args}\n")

    def do_GET(self) -> None:
        body = b"ok\n" if self.path.split("?")[0] == "/health" else self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nordwgd.testing.webserver")
    parser.add_argument("--listen", type=_address, action="append", required=True)
    args = parser.parse_args(argv)
    servers = [ThreadingHTTPServer(address, _Handler) for address in args.listen]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    for server in servers:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
