"""The test world's "Internet" web server: answers every GET with the caller's source address.

``/health`` answers 200 "ok" (a health-check target). Run in the router namespace:
``python -m nordwgd.testing.webserver --listen 198.51.100.80:80``; prints "ready" when listening.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nordwgd.testing.serving import listen_address, serve_until_signalled


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nordwgd.testing.webserver")
    parser.add_argument("--listen", type=listen_address, action="append", required=True)
    args = parser.parse_args(argv)
    servers = [ThreadingHTTPServer(address, _Handler) for address in args.listen]
    for server in servers:
        server.daemon_threads = True
    return serve_until_signalled(servers)


if __name__ == "__main__":
    sys.exit(main())
