"""A faithful fake of the NordVPN API over real HTTPS, with switchable faults.

Responses are shaped exactly like the captured ones in ``fixtures/`` (the server object is
built from the first server of ``recommendations.json`` as a template). ``shape="2020"``
serves server objects as the API sent them in 2020, built on the captured ``server-2020.json``:
groups without ``identifier``, no ``ipv6_station``, the public key after a tab. Used in-process by
unit tests (``FakeApi``) and as a process inside the test world's router namespace
(``python -m nordwgd.testing.fakeapi serve ...``, steered through ``FaultControl``).

Faults (``set_fault``): "401", "429" (Retry-After and a body that is not JSON), "500",
"garbage" (200 with a body that is not JSON), "truncated" (Content-Length larger than what is
sent, then the connection closes), "hang" (never answers until stopped), "wrong-cert" (the
TLS handshake presents a certificate for another host name), "empty" (server lists are
``[]``), "refuse" (the connection is closed without an answer). ``count`` limits the fault to
the next N requests (connections, for the TLS-level faults); ``paths`` limits it to request
paths starting with that prefix (the TLS-level faults and a path-less "refuse" ignore it).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import json
import os
import signal
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote_plus

from nordwgd.testing.fleet import (
    Fleet,
    ServerSpec,
    city_record,
    country_record,
    fixture_bytes,
    group_record,
)
from nordwgd.testing.pki import Pki, make_pki

FAULTS = frozenset(
    {"401", "429", "500", "garbage", "truncated", "hang", "wrong-cert", "empty", "refuse"}
)
RECOMMENDATIONS_LIMIT = 20
SERVERS_LIMIT = 100
RETRY_AFTER_SECONDS = 1
SERVER_ID_BASE = 1_000_000
SHAPES = ("current", "2020")
TIMESTAMP = "2023-06-30 08:46:10"
WIREGUARD_TECHNOLOGY_ID = 35

UNAUTHORIZED_BODY = b'{"errors":{"code":101301,"message":"Unauthorized"}}'
SERVER_ERROR_BODY = b'{"errors":{"code":500,"message":"Internal Server Error"}}'
NOT_FOUND_BODY = b'{"errors":{"code":404,"message":"Not Found"}}'
RATE_LIMIT_BODY = b"<html><head><title>429 Too Many Requests</title></head></html>\n"
GARBAGE_BODY = b"<html><body>upstream gateway says hello</body></html>\n"

ServerObject = dict[str, Any]


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _template(shape: str = "current") -> ServerObject:
    if shape == "2020":
        old: ServerObject = json.loads(fixture_bytes("server-2020.json"))
        return old
    template: ServerObject = json.loads(fixture_bytes("recommendations.json"))[0]
    return template


def _as_in_2020(obj: ServerObject) -> ServerObject:
    """``obj`` as the API sent it in 2020 (see fixtures/server-2020.source.txt)."""
    del obj["ipv6_station"]
    for group in obj["groups"]:
        del group["identifier"]
    for technology in obj["technologies"]:
        for item in technology.get("metadata", []):
            if item.get("name") == "public_key":
                item["value"] = "\t" + item["value"]
    return obj


def _display_name(spec: ServerSpec) -> str:
    label = spec.hostname.split(".", 1)[0]
    digits = "".join(ch for ch in label if ch.isdigit())
    prefix = label.rstrip("0123456789")
    names = []
    for code in prefix.split("-"):
        iso = "GB" if code == "uk" else code.upper()
        try:
            names.append(str(country_record(iso)["name"]))
        except KeyError:
            names.append(iso)
    return f"{' - '.join(names)} #{digits or '1'}"


def server_object(
    spec: ServerSpec, server_id: int, template: ServerObject | None = None
) -> ServerObject:
    """The API's server object for ``spec``, in the shape of the captured recommendations."""
    obj = copy.deepcopy(template if template is not None else _template())
    country = country_record(spec.country_code)
    city = city_record(spec.country_code, spec.city)
    city.pop("serverCount", None)
    obj["id"] = server_id
    obj["created_at"] = TIMESTAMP
    obj["updated_at"] = TIMESTAMP
    obj["name"] = _display_name(spec)
    obj["station"] = spec.station
    obj["ipv6_station"] = ""
    obj["hostname"] = spec.hostname
    obj["load"] = spec.load
    obj["status"] = spec.status
    location = obj["locations"][0]
    location["id"] = int(city["id"]) % 9973 + 1
    location["latitude"] = city["latitude"]
    location["longitude"] = city["longitude"]
    location["country"] = {
        "id": country["id"],
        "name": country["name"],
        "code": country["code"],
        "city": city,
    }
    obj["locations"] = [location]
    for technology in obj["technologies"]:
        technology["pivot"]["server_id"] = server_id
        if technology["identifier"] == "wireguard_udp":
            technology["pivot"]["status"] = spec.wireguard_status
            technology["metadata"] = (
                [{"name": "public_key", "value": spec.public_key}] if spec.public_key else []
            )
    obj["groups"] = [copy.deepcopy(group_record(identifier)) for identifier in spec.groups]
    entry = obj["ips"][0]
    entry["id"] = server_id + 7
    entry["server_id"] = server_id
    entry["ip_id"] = server_id + 11
    entry["ip"] = {"id": server_id + 11, "ip": spec.station, "version": 4}
    obj["ips"] = [entry]
    return obj


@dataclass(frozen=True)
class _Indexed:
    spec: ServerSpec
    server_id: int
    country_id: int
    city_id: int
    group_ids: frozenset[str]  # identifiers and ids as strings
    technologies: dict[str, str]  # identifier and id as string -> pivot status
    body: bytes  # compact JSON of the server object


class ServerIndex:
    """The fleet's server objects, serialized once, with what the filters look at."""

    def __init__(self, fleet: Fleet, shape: str = "current") -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
        template = _template(shape)
        self.entries: list[_Indexed] = []
        for position, spec in enumerate(fleet.servers):
            server_id = SERVER_ID_BASE + position
            obj = server_object(spec, server_id, template)
            # The filters take identifiers and ids, whatever the objects show of them.
            groups = frozenset(spec.groups) | {str(group["id"]) for group in obj["groups"]}
            if shape == "2020":
                obj = _as_in_2020(obj)
            technologies: dict[str, str] = {}
            for technology in obj["technologies"]:
                status = technology["pivot"]["status"]
                technologies[technology["identifier"]] = status
                technologies[str(technology["id"])] = status
            self.entries.append(
                _Indexed(
                    spec=spec,
                    server_id=server_id,
                    country_id=int(obj["locations"][0]["country"]["id"]),
                    city_id=int(obj["locations"][0]["country"]["city"]["id"]),
                    group_ids=groups,
                    technologies=technologies,
                    body=_compact(obj),
                )
            )


def parse_query(query: str) -> list[tuple[str, str]]:
    """Pairs of a query string; brackets raw or percent-encoded, stray '&' tolerated."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote_plus(key).strip(), unquote_plus(value).strip()))
    return pairs


@dataclass(frozen=True)
class Filters:
    country_ids: tuple[str, ...] = ()
    city_ids: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    technologies: tuple[str, ...] = ()
    limit: int | None = None

    @classmethod
    def from_query(cls, query: str) -> Filters:
        country: list[str] = []
        city: list[str] = []
        groups: list[str] = []
        technologies: list[str] = []
        limit: int | None = None
        for key, value in parse_query(query):
            if key == "filters[country_id]":
                country.append(value)
            elif key == "filters[country_city_id]":
                city.append(value)
            elif key in (
                "filters[servers_groups]",
                "filters[servers_groups][id]",
                "filters[servers_groups][identifier]",
            ):
                groups.append(value)
            elif key in (
                "filters[servers_technologies]",
                "filters[servers_technologies][id]",
                "filters[servers_technologies][identifier]",
            ):
                technologies.append(value)
            elif key == "limit":
                with contextlib.suppress(ValueError):
                    limit = max(0, int(value))
        return cls(tuple(country), tuple(city), tuple(groups), tuple(technologies), limit)

    def matches(self, entry: _Indexed, *, technology_online: bool) -> bool:
        if any(value != str(entry.country_id) for value in self.country_ids):
            return False
        if any(value != str(entry.city_id) for value in self.city_ids):
            return False
        if any(value not in entry.group_ids for value in self.groups):
            return False
        for value in self.technologies:
            status = entry.technologies.get(value)
            if status is None or (technology_online and status != "online"):
                return False
        return True


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    authorized: bool


class _FaultState:
    """The current fault, shared by every listening socket; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fault: str | None = None
        self.count: int | None = None
        self.paths: str | None = None

    def set(self, fault: str | None, count: int | None, paths: str | None) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self.fault, self.count, self.paths = fault, count, paths

    def take(self, candidates: frozenset[str], path: str | None) -> str | None:
        """The fault to inject now (consuming one of ``count``), if it is one of ``candidates``.

        ``path`` is None for a new connection, before any request is read: "refuse" limited
        to some paths then waits for the request.
        """
        with self._lock:
            fault = self.fault
            if fault is None or fault not in candidates:
                return None
            if self.paths is not None:
                if path is None and fault == "refuse":
                    return None
                if path is not None and not path.startswith(self.paths):
                    return None
            if self.count is not None:
                self.count -= 1
                if self.count <= 0:
                    self.fault, self.count, self.paths = None, None, None
            return fault


class _State:
    def __init__(self, fleet: Fleet, pki: Pki, shape: str = "current") -> None:
        self.fleet = fleet
        self.index = ServerIndex(fleet, shape)
        self.stations = {entry.spec.station: entry.spec for entry in self.index.entries}
        self.faults = _FaultState()
        self.stopping = threading.Event()
        self.requests: list[RequestRecord] = []
        self.requests_lock = threading.Lock()
        self.good_context = self._context(pki.cert, pki.key)
        self.wrong_context = self._context(pki.wrong_cert, pki.wrong_key)
        self.countries = fixture_bytes("countries.json")
        self.groups = fixture_bytes("groups.json")
        self.technologies = fixture_bytes("technologies.json")

    @staticmethod
    def _context(cert: Path, key: Path) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context

    def record(self, record: RequestRecord) -> None:
        with self.requests_lock:
            self.requests.append(record)

    def token_private_key(self, authorization: str | None) -> str | None:
        """The NordLynx private key of the account the Authorization header names, if any."""
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
        elif scheme.lower() != "bearer":
            return None
        user, sep, token = value.partition(":")
        if not sep or user != "token":
            return None
        return self.fleet.tokens.get(token)


_CONNECTION_FAULTS = frozenset({"wrong-cert", "refuse"})
_REQUEST_FAULTS = frozenset({"401", "429", "500", "garbage", "truncated", "hang", "refuse"})
_EMPTY = frozenset({"empty"})
_SERVER_LIST_PATHS = ("/v1/servers/recommendations", "/v1/servers")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return "nginx"

    server: _TlsServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the request list is the fake's log."""

    def do_GET(self) -> None:
        state = self.server.state
        path, _, query = self.path.partition("?")
        private_key = state.token_private_key(self.headers.get("Authorization"))
        state.record(RequestRecord("GET", path, query, private_key is not None))
        # "empty" is consumed only by the requests it changes.
        candidates = _REQUEST_FAULTS | (_EMPTY if path in _SERVER_LIST_PATHS else frozenset())
        fault = state.faults.take(candidates, path)
        if fault is not None and fault != "empty" and self._inject(fault):
            return
        self._route(path, query, private_key, empty=fault == "empty")

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        self.server.state.record(RequestRecord("POST", path, query, False))
        self._send(405, b'{"errors":{"code":405,"message":"Method Not Allowed"}}')

    def _inject(self, fault: str) -> bool:
        if fault == "401":
            self._send(401, UNAUTHORIZED_BODY)
        elif fault == "429":
            self._send(
                429,
                RATE_LIMIT_BODY,
                content_type="text/html",
                extra={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        elif fault == "500":
            self._send(500, SERVER_ERROR_BODY)
        elif fault == "garbage":
            self._send(200, GARBAGE_BODY, content_type="text/html")
        elif fault == "truncated":
            body = self._route_body_for_truncation()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) + 4096))
            self.end_headers()
            self.wfile.write(body[: max(1, len(body) // 2)])
            self.wfile.flush()
            self.close_connection = True
        elif fault == "hang":
            self.server.state.stopping.wait()
            self.close_connection = True
        elif fault == "refuse":
            self.close_connection = True
        else:
            return False
        return True

    def _route_body_for_truncation(self) -> bytes:
        entries = self.server.state.index.entries[:5]
        return b"[" + b",".join(entry.body for entry in entries) + b"]"

    def _route(self, path: str, query: str, private_key: str | None, *, empty: bool) -> None:
        state = self.server.state
        if path == "/v1/servers/recommendations":
            self._send(200, b"[]" if empty else self._servers(query, recommendations=True))
        elif path == "/v1/servers":
            self._send(200, b"[]" if empty else self._servers(query, recommendations=False))
        elif path == "/v1/servers/countries":
            self._send(200, state.countries)
        elif path == "/v1/servers/groups":
            self._send(200, state.groups)
        elif path == "/v1/technologies":
            self._send(200, state.technologies)
        elif path == "/v1/users/services/credentials":
            if private_key is None:
                self._send(401, UNAUTHORIZED_BODY)
            else:
                self._send(200, _credentials_body(private_key))
        elif path == "/v1/helpers/ips/insights":
            self._send(200, _insights_body(self.client_address[0], state.stations))
        else:
            self._send(404, NOT_FOUND_BODY)

    def _servers(self, query: str, *, recommendations: bool) -> bytes:
        filters = Filters.from_query(query)
        entries = self.server.state.index.entries
        if recommendations:
            chosen = [
                entry
                for entry in entries
                if entry.spec.status == "online" and filters.matches(entry, technology_online=True)
            ]
            chosen.sort(key=lambda entry: (entry.spec.load, entry.server_id))
            limit = RECOMMENDATIONS_LIMIT if filters.limit is None else filters.limit
        else:
            chosen = [entry for entry in entries if filters.matches(entry, technology_online=False)]
            limit = SERVERS_LIMIT if filters.limit is None else filters.limit
        if limit:
            chosen = chosen[:limit]
        return b"[" + b",".join(entry.body for entry in chosen) + b"]"

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


def _credentials_body(private_key: str) -> bytes:
    # Same keys and order as the captured response; the numbers and names are made up.
    return _compact(
        {
            "created_at": "2017-11-26 19:11:05",
            "id": 11,
            "nordlynx_private_key": private_key,
            "password": "fakeServicePassword0",
            "updated_at": "2017-11-26 19:11:05",
            "username": "fakeServiceUser00000",
        }
    )


def _insights_body(caller: str, stations: dict[str, ServerSpec]) -> bytes:
    spec = stations.get(caller)
    if spec is None:
        country, city, isp = country_record("DE"), city_record("DE", "Berlin"), "Example Telecom"
    else:
        country = country_record(spec.country_code)
        city = city_record(spec.country_code, spec.city)
        isp = "Example Hosting"
    return _compact(
        {
            "ip": caller,
            "country": country["name"],
            "country_code": country["code"],
            "city": city["name"],
            "isp": isp,
            "protected": spec is not None,
            "longitude": city["longitude"],
            "latitude": city["latitude"],
        }
    )


class _TlsServer(ThreadingHTTPServer):
    """Accepts TCP, then does the TLS handshake in the connection's own thread."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        family = socket.AF_INET6 if ip_address(address[0]).version == 6 else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        state = self.state
        fault = state.faults.take(_CONNECTION_FAULTS, None)
        if fault == "refuse":
            return
        wrong = fault == "wrong-cert"
        context = state.wrong_context if wrong else state.good_context
        request.settimeout(30)
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            _Handler(tls, client_address, self)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class FakeApi:
    """The fake API in this process, on one or more addresses (port 0 = any free port)."""

    def __init__(
        self,
        fleet: Fleet,
        pki: Pki,
        listen: Sequence[tuple[str, int]] = (("127.0.0.1", 0),),
        shape: str = "current",
    ) -> None:
        self._state = _State(fleet, pki, shape)
        self._listen = tuple(listen)
        self._servers: list[_TlsServer] = []
        self._threads: list[threading.Thread] = []

    @property
    def fleet(self) -> Fleet:
        return self._state.fleet

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(str(s.server_address[0]), int(s.server_address[1])) for s in self._servers]

    @property
    def requests(self) -> list[tuple[str, str, str, bool]]:
        with self._state.requests_lock:
            return [(r.method, r.path, r.query, r.authorized) for r in self._state.requests]

    def clear_requests(self) -> None:
        with self._state.requests_lock:
            self._state.requests.clear()

    def set_fault(
        self, fault: str | None, *, count: int | None = None, paths: str | None = None
    ) -> None:
        self._state.faults.set(fault, count, paths)

    def start(self) -> None:
        if self._servers:
            return
        try:
            for address in self._listen:
                server = self._bind(address)
                self._servers.append(server)
                thread = threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.1},
                    name=f"fakeapi-{address[0]}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.stop()
            raise

    def _bind(self, address: tuple[str, int]) -> _TlsServer:
        # Later addresses with port 0 share the first one's port when they can, so that
        # a client configured with one API port reaches all of them.
        if address[1] == 0 and self._servers:
            with contextlib.suppress(OSError):
                return _TlsServer((address[0], self.addresses[0][1]), self._state)
        return _TlsServer(address, self._state)

    def stop(self) -> None:
        self._state.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        self._state.stopping.clear()

    def __enter__(self) -> FakeApi:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- control over a unix socket (the fake API as a separate process) ---------------------


class _ControlHandler(socketserver.StreamRequestHandler):
    server: _ControlServer

    def handle(self) -> None:
        for line in self.rfile:
            try:
                answer = self.server.api.control(json.loads(line))
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                answer = {"ok": False, "error": f"bad control command: {error}"}
            self.wfile.write(_compact(answer) + b"\n")
            self.wfile.flush()


class _ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, api: _ControlledApi) -> None:
        self.api = api
        super().__init__(str(path), _ControlHandler)


class _ControlledApi(FakeApi):
    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        if op == "set":
            self.set_fault(
                command.get("fault"), count=command.get("count"), paths=command.get("paths")
            )
            return {"ok": True}
        if op == "requests":
            return {
                "ok": True,
                "requests": [
                    {"method": m, "path": p, "query": q, "authorized": a}
                    for m, p, q, a in self.requests
                ],
            }
        if op == "clear":
            self.clear_requests()
            return {"ok": True}
        raise ValueError(f"unknown control operation {op!r}")


class FaultControl:
    """Steers a fake API process started with ``--control`` (blocking; call off the loop)."""

    def __init__(self, control_path: Path, timeout: float = 10.0) -> None:
        self.control_path = control_path
        self.timeout = timeout

    def _call(self, command: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(str(self.control_path))
            sock.sendall(_compact(command) + b"\n")
            with sock.makefile("rb") as stream:
                line = stream.readline()
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"fake API control: {answer.get('error', 'no answer')}")
        return answer

    def set(self, fault: str | None, count: int | None = None, paths: str | None = None) -> None:
        self._call({"op": "set", "fault": fault, "count": count, "paths": paths})

    def requests(self) -> list[dict[str, Any]]:
        answer = self._call({"op": "requests"})
        records: list[dict[str, Any]] = answer["requests"]
        return records

    def clear(self) -> None:
        self._call({"op": "clear"})


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"--listen {value!r}: expected IP:PORT")
    host = host.strip("[]")
    try:
        ip_address(host)
        return host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--listen {value!r}: expected IP:PORT") from None


@contextlib.contextmanager
def _control_server(path: Path, api: _ControlledApi) -> Iterator[_ControlServer]:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old_umask = os.umask(0o077)
    try:
        server = _ControlServer(path, api)
    finally:
        os.umask(old_umask)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def serve(
    fleet_path: Path, pki_dir: Path, listen: Sequence[tuple[str, int]], control: Path
) -> None:
    fleet = Fleet.read(fleet_path)
    pki = Pki.in_directory(pki_dir)
    if not pki.ca_cert.exists():
        pki = make_pki(pki_dir)
    api = _ControlledApi(fleet, pki, listen)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    api.start()
    try:
        with _control_server(control, api):
            print("ready", flush=True)
            done.wait()
    finally:
        api.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nordwgd.testing.fakeapi")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the fake API until SIGTERM")
    serve_parser.add_argument("--fleet", type=Path, required=True)
    serve_parser.add_argument("--pki-dir", type=Path, required=True)
    serve_parser.add_argument("--listen", type=_parse_listen, action="append", required=True)
    serve_parser.add_argument("--control", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        serve(args.fleet, args.pki_dir, args.listen, args.control)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"fakeapi: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
