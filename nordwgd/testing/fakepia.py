"""A faithful fake of Private Internet Access over real HTTPS, with switchable errors.

Two kinds of process share one directory of state (``PiaSetup``):

- the meta service (router namespace, at the meta and token-service addresses): the token
  (``GET /authv3/generateToken`` with Basic auth, ``POST /api/client/v2/token``), logout
  (``POST /api/client/v2/expire_token``) and the signed region list (``GET /vpninfo/servers/v6``,
  signed with a test RSA key);
- one server service per fake VPN server (in the server's namespace): addKey on
  ``STATION:1337``, which adds the sent key as a peer of the server's wireguard-go, and
  getSignature / bindPort on ``GATEWAY:19999``, reachable only through the tunnel; a bound port
  is forwarded (DNAT in the server's namespace) to the peer that bound it.

Every certificate comes from a test CA and carries the server's name (``cn``). Answers are
shaped like ``fixtures/pia-*.json``. Errors (``set_fault`` through ``PiaControl``), each
optionally for the next ``count`` requests only:

    bad-credentials  token: 401 (generateToken: status ERROR "authentication failed")
    expired          token: 402 (subscription expired)
    rate-limited     token: 429 with Retry-After: 1
    locked           token: 429 {"status":"error","code":"too_many_attempts",...}
    bad-signature    the region list with one byte changed after signing
    wrong-cert       TLS with a certificate for another name (any service)
    login-failed     addKey: {"status":"ERROR","message":"Login failed!"}
    wrong-echo       addKey: peer_pubkey is not the key that was sent
    outside          getSignature: 401 Unauthorized client (as from outside the tunnel)
    bind-error       bindPort: {"status":"ERROR",...}
    port-busy        bindPort: 409 "port N is busy."
    expired-payload  getSignature: a payload whose expires_at has passed
    short-payload    getSignature: a payload that expires in three days

The shared directory holds faults.json, requests.jsonl (what was asked, never secrets),
revoked (expired tokens) and the HMAC secret tokens and port signatures are made with.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from nordwgd.testing.fleet import fixture_bytes
from nordwgd.wireguard.uapi import exchange_sync, key_to_hex, socket_path

FAULTS = frozenset(
    {
        "bad-credentials",
        "expired",
        "rate-limited",
        "locked",
        "bad-signature",
        "wrong-cert",
        "login-failed",
        "wrong-echo",
        "outside",
        "bind-error",
        "port-busy",
        "expired-payload",
        "short-payload",
    }
)
WG_API_PORT = 1337
PF_PORT = 19999
PORT_LIFETIME = timedelta(days=60)
WRONG_NAME = "wrong.example.net"


# --- the setup shared by every fake PIA process ------------------------------------------


@dataclass(frozen=True)
class RegionSpec:
    id: str
    name: str
    country: str
    port_forward: bool = True
    offline: bool = False
    geo: bool = False
    servers: tuple[tuple[str, str], ...] = ()  # (cn, station address) of WireGuard servers
    meta: tuple[tuple[str, str], ...] = ()  # (cn, address) of meta servers


@dataclass(frozen=True)
class PiaSetup:
    """Everything the fake services share, kept in one directory (written 0600 where secret)."""

    directory: Path
    regions: tuple[RegionSpec, ...]
    accounts: dict[str, str] = field(default_factory=dict)  # username -> password
    api_host: str = "www.privateinternetaccess.com"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def regions_key(self) -> Path:
        """The public key (PEM) the region list is signed with."""
        return self.directory / "regions-pub.pem"

    def write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        document = {
            "regions": [asdict(region) for region in self.regions],
            "accounts": self.accounts,
            "api_host": self.api_host,
        }
        _write_private(self.directory / "setup.json", json.dumps(document, indent=1).encode())
        _write_private(self.directory / "secret", secrets.token_bytes(32))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(
            self.directory / "regions-key.pem",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        self.regions_key.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        import trustme  # only the test run that writes the setup needs it

        ca = trustme.CA(organization_name="nordwgd test PIA CA")
        self.ca_cert.write_bytes(ca.cert_pem.bytes())
        names = {cn for region in self.regions for cn, _ in (*region.servers, *region.meta)}
        for name in sorted(names | {self.api_host, WRONG_NAME}):
            leaf = ca.issue_cert(name)
            chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
            (self.directory / f"{name}.pem").write_bytes(chain)
            _write_private(self.directory / f"{name}.key", leaf.private_key_pem.bytes())
        _write_private(self.directory / "faults.json", b"{}")

    @classmethod
    def read(cls, directory: Path) -> PiaSetup:
        document = json.loads((directory / "setup.json").read_bytes())
        regions = tuple(
            RegionSpec(
                **{
                    **entry,
                    "servers": tuple(tuple(pair) for pair in entry["servers"]),
                    "meta": tuple(tuple(pair) for pair in entry["meta"]),
                }
            )
            for entry in document["regions"]
        )
        return cls(directory, regions, dict(document["accounts"]), document["api_host"])

    def set_fault(self, fault: str | None, count: int | None = None) -> None:
        """Switch ``fault`` on (for the next ``count`` matching requests), or all off (None)."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        with self._locked("faults.json") as path:
            faults = {} if fault is None else json.loads(path.read_bytes() or b"{}")
            if fault is not None:
                faults[fault] = count
            path.write_text(json.dumps(faults))

    def take_fault(self, fault: str) -> bool:
        """Whether ``fault`` is on now (consuming one of its count)."""
        with self._locked("faults.json") as path:
            faults = json.loads(path.read_bytes() or b"{}")
            if fault not in faults:
                return False
            if faults[fault] is not None:
                faults[fault] -= 1
                if faults[fault] <= 0:
                    del faults[fault]
                path.write_text(json.dumps(faults))
            return True

    def record(self, entry: dict[str, Any]) -> None:
        with self._locked("requests.jsonl") as path, path.open("a") as out:
            out.write(json.dumps(entry) + "\n")

    def requests(self) -> list[dict[str, Any]]:
        try:
            lines = (self.directory / "requests.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line]

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        with (self.directory / f".{name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.directory / name
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # --- tokens and port signatures: HMACs, so that every process can check them ---------

    def _secret(self) -> bytes:
        return (self.directory / "secret").read_bytes()

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._secret(), data, hashlib.sha512).digest()

    def issue_token(self, username: str) -> str:
        claim = json.dumps({"u": username, "n": secrets.token_hex(8), "t": int(time.time())})
        body = base64.urlsafe_b64encode(claim.encode()).decode().rstrip("=")
        mac = base64.urlsafe_b64encode(self._mac(body.encode())[:48]).decode()
        return f"{body}{mac}"

    def check_token(self, token: str) -> str | None:
        """The username of a valid, unrevoked token."""
        body, mac = token[:-64], token[-64:]
        expected = base64.urlsafe_b64encode(self._mac(body.encode())[:48]).decode()
        if len(token) <= 64 or not hmac.compare_digest(mac, expected):
            return None
        with contextlib.suppress(FileNotFoundError):
            if token in (self.directory / "revoked").read_text().split():
                return None
        claim = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(claim["u"])

    def revoke(self, token: str) -> None:
        with self._locked("revoked") as path, path.open("a") as out:
            out.write(token + "\n")

    def sign_port(self, token: str, port: int, expires_at: datetime) -> tuple[str, str]:
        stamp = expires_at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{expires_at.microsecond:06d}123Z"
        payload = base64.b64encode(
            json.dumps(
                {"token": token, "port": port, "expires_at": stamp}, separators=(",", ":")
            ).encode()
        ).decode()
        return payload, base64.b64encode(self._mac(payload.encode())[:64]).decode()

    def check_port(self, payload: str, signature: str) -> dict[str, Any] | None:
        expected = base64.b64encode(self._mac(payload.encode())[:64]).decode()
        if not hmac.compare_digest(signature, expected):
            return None
        decoded: dict[str, Any] = json.loads(base64.b64decode(payload))
        return decoded

    # --- the region list ----------------------------------------------------------------

    def region_list_body(self) -> bytes:
        fixture = json.loads(fixture_bytes("pia-serverlist-v6.json"))
        template = next(region for region in fixture["regions"] if region["id"] == "uk")
        regions = []
        for spec in self.regions:
            region = copy.deepcopy(template)
            region.update(
                id=spec.id,
                name=spec.name,
                country=spec.country,
                dns=f"{spec.id}.privacy.network",
                port_forward=spec.port_forward,
                geo=spec.geo,
                offline=spec.offline,
            )
            wg = [{"ip": ip, "cn": cn} for cn, ip in spec.servers]
            region["servers"] = {
                "ovpnudp": [{**entry, "van": False} for entry in wg],
                "ovpntcp": [{**entry, "van": False} for entry in wg],
                "ikev2": copy.deepcopy(wg),
                "wg": wg,
                "meta": [{"ip": ip, "cn": cn} for cn, ip in spec.meta],
            }
            regions.append(region)
        return json.dumps({"groups": fixture["groups"], "regions": regions}).encode()

    def signed_region_list(self, *, wrap: bool = False) -> bytes:
        key = serialization.load_pem_private_key(
            (self.directory / "regions-key.pem").read_bytes(), password=None
        )
        assert isinstance(key, rsa.RSAPrivateKey)
        body = self.region_list_body()
        signature = base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256()))
        if wrap:
            signature = b"\n".join(signature[i : i + 60] for i in range(0, len(signature), 60))
        return body + b"\n\n" + signature


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _pretty(value: object) -> bytes:
    # PIA indents its JSON answers by four spaces.
    return json.dumps(value, indent=4).encode()


# --- HTTPS with a certificate per name ------------------------------------------------------


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        setup: PiaSetup,
        default_name: str,
        service: Any,
    ) -> None:
        self.setup = setup
        self.service = service
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.default_name = default_name
        super().__init__(address, handler)

    def context(self, name: str) -> ssl.SSLContext:
        if name not in self.contexts:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            directory = self.setup.directory
            context.load_cert_chain(directory / f"{name}.pem", directory / f"{name}.key")
            self.contexts[name] = context
        return self.contexts[name]

    def finish_request(self, request: Any, client_address: Any) -> None:
        wrong = self.setup.take_fault("wrong-cert")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        chosen = WRONG_NAME if wrong else self.default_name
        directory = self.setup.directory

        def by_sni(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
            known = name and (directory / f"{name}.pem").exists()
            if not wrong and known and name is not None:
                sock.context = self.context(name)

        context.load_cert_chain(directory / f"{chosen}.pem", directory / f"{chosen}.key")
        context.sni_callback = by_sni
        request.settimeout(30)
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TlsServer

    def version_string(self) -> str:
        return "nginx"

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: requests.jsonl is the fake's log."""

    def send(
        self, status: int, body: bytes, *, content_type: str = "application/json", **extra: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def parts(self) -> tuple[str, dict[str, str]]:
        path, _, query = self.path.partition("?")
        return path, dict(parse_qsl(query))

    def form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length).decode() if length else ""
        return dict(parse_qsl(data))

    def record(self, path: str, **details: object) -> None:
        self.server.setup.record(
            {"path": path, "client": self.client_address[0], "time": time.time(), **details}
        )


# --- the meta service: token and region list -------------------------------------------------


class _MetaHandler(_Handler):
    def do_GET(self) -> None:
        setup = self.server.setup
        path, _ = self.parts()
        if path == "/vpninfo/servers/v6":
            self.record(path)
            wire = setup.signed_region_list()
            if setup.take_fault("bad-signature"):
                index = wire.index(b'"name"') + 9  # a byte inside the first region's name
                wire = wire[:index] + bytes([wire[index] ^ 0x01]) + wire[index + 1 :]
            self.send(200, wire, content_type="text/plain")
        elif path == "/authv3/generateToken":
            username, password = _basic(self.headers.get("Authorization"))
            self.record(path, username=username)
            self._token(username, password, legacy=True)
        else:
            self.record(path)
            self.send(404, b'{"status":"ERROR","message":"not found"}')

    def do_POST(self) -> None:
        setup = self.server.setup
        path, _ = self.parts()
        if path == "/api/client/v2/token":
            form = self.form()
            self.record(path, username=form.get("username"))
            self._token(form.get("username", ""), form.get("password", ""), legacy=False)
        elif path == "/api/client/v2/expire_token":
            self.form()
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            valid = scheme == "Token" and setup.check_token(token.strip()) is not None
            self.record(path, valid=valid)
            if not valid:
                self.send(401, b'{"status":"ERROR","message":"unauthorized"}')
                return
            setup.revoke(token.strip())
            self.send(200, b"{}")
        else:
            self.record(path)
            self.send(404, b'{"status":"ERROR","message":"not found"}')

    def _token(self, username: str, password: str, *, legacy: bool) -> None:
        setup = self.server.setup
        if setup.take_fault("rate-limited"):
            self.send(429, b"Too Many Requests", content_type="text/plain", Retry_After="1")
            return
        if setup.take_fault("locked"):
            body = b'{"status":"error","code":"too_many_attempts","message":"Try again later."}'
            self.send(429, body)
            return
        if setup.take_fault("expired"):
            self.send(402, b'{"status":"ERROR","message":"subscription expired"}')
            return
        good = setup.accounts.get(username) == password and bool(password)
        if setup.take_fault("bad-credentials") or not good:
            if legacy:
                self.send(200, b'{"status":"ERROR","message":"authentication failed"}')
            else:
                self.send(401, b'{"status":"ERROR","message":"unauthorized"}')
            return
        token = setup.issue_token(username)
        self.send(200, _pretty({"status": "OK", "token": token} if legacy else {"token": token}))


def _basic(header: str | None) -> tuple[str, str]:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        user, _, password = base64.b64decode(value.strip()).decode().partition(":")
    except ValueError:
        return "", ""
    return user, password


# --- one VPN server: addKey, getSignature, bindPort, and the forwarded ports ------------------


class _ServerState:
    def __init__(
        self,
        setup: PiaSetup,
        cn: str,
        station: str,
        gateway: str,
        interface: str,
        peers: str,
        dns: Sequence[str] = (),
    ) -> None:
        self.setup = setup
        self.dns = list(dns) or [gateway]
        self.cn = cn
        self.station = station
        self.gateway = gateway
        self.interface = interface
        base = IPv4Address(peers.split("/")[0])
        self.next_peer = int(base)
        self.lock = threading.Lock()
        self.forwards: dict[int, str] = {}  # port -> peer address

    def add_peer(self, public_key: str) -> str:
        with self.lock:
            address = str(IPv4Address(self.next_peer))
            self.next_peer += 1
        request = (
            f"set=1\npublic_key={key_to_hex(public_key)}\nreplace_allowed_ips=true\n"
            f"allowed_ip={address}/32\n\n"
        )
        reply = exchange_sync(socket_path(self.interface), request)
        if "errno=0" not in reply:
            raise RuntimeError(f"adding the peer failed: {reply.strip()}")
        return address

    def forward(self, port: int, peer: str) -> None:
        with self.lock:
            self.forwards[port] = peer
            rules = "\n".join(
                f"    ip daddr {self.station} tcp dport {p} dnat to {address}"
                for p, address in sorted(self.forwards.items())
            )
        ruleset = (
            "table ip nwgt_pf\ndelete table ip nwgt_pf\n"
            "table ip nwgt_pf {\n  chain prerouting { type nat hook prerouting priority -100;\n"
            f"{rules}\n  }}\n}}\n"
        )
        subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)


class _ServerHandler(_Handler):
    def do_GET(self) -> None:
        state: _ServerState = self.server.service
        path, query = self.parts()
        port = self.server.server_address[1]
        if port == WG_API_PORT and path == "/addKey":
            self._add_key(state, query)
        elif port == PF_PORT and path == "/getSignature":
            self._get_signature(state, query)
        elif port == PF_PORT and path == "/bindPort":
            self._bind_port(state, query)
        else:
            self.record(path, server=state.cn)
            self.send(404, b'{"status":"ERROR","message":"not found"}')

    def _add_key(self, state: _ServerState, query: dict[str, str]) -> None:
        setup = state.setup
        public_key = query.get("pubkey", "")
        valid = setup.check_token(query.get("pt", "")) is not None
        self.record("/addKey", server=state.cn, pubkey=public_key, valid_token=valid)
        if setup.take_fault("login-failed") or not valid:
            self.send(200, _pretty({"status": "ERROR", "message": "Login failed!"}))
            return
        try:
            if len(base64.b64decode(public_key, validate=True)) != 32:
                raise ValueError
        except ValueError:
            self.send(400, _pretty({"status": "ERROR", "message": "Invalid public key"}))
            return
        peer = state.add_peer(public_key)
        answer = json.loads(fixture_bytes("pia-addkey.json"))
        answer.update(
            server_key=_server_public_key(state.interface),
            server_port=51820,
            server_ip=state.station,
            server_vip=state.gateway,
            peer_ip=peer,
            peer_pubkey=public_key,
            dns_servers=state.dns,
        )
        if setup.take_fault("wrong-echo"):
            answer["peer_pubkey"] = base64.b64encode(secrets.token_bytes(32)).decode()
        self.send(200, _pretty(answer))

    def _inside(self, state: _ServerState) -> bool:
        # Only tunnel peers have addresses in the gateway's network.
        return self.client_address[0].rsplit(".", 2)[0] == state.gateway.rsplit(".", 2)[0]

    def _get_signature(self, state: _ServerState, query: dict[str, str]) -> None:
        setup = state.setup
        token = query.get("token", "")
        self.record("/getSignature", server=state.cn)
        if setup.take_fault("outside") or not self._inside(state):
            self.send(401, _pretty({"status": "ERROR", "message": "Unauthorized client"}))
            return
        if setup.check_token(token) is None:
            self.send(200, _pretty({"status": "ERROR", "message": "Login failed!"}))
            return
        expires = datetime.now(UTC) + PORT_LIFETIME
        if setup.take_fault("expired-payload"):
            expires = datetime.now(UTC) - timedelta(hours=1)
        elif setup.take_fault("short-payload"):
            expires = datetime.now(UTC) + timedelta(days=3)
        port = 10000 + secrets.randbelow(50000)
        payload, signature = setup.sign_port(token, port, expires)
        self.send(200, _pretty({"status": "OK", "payload": payload, "signature": signature}))

    def _bind_port(self, state: _ServerState, query: dict[str, str]) -> None:
        setup = state.setup
        decoded = setup.check_port(query.get("payload", ""), query.get("signature", ""))
        port = int(decoded["port"]) if decoded else 0
        self.record("/bindPort", server=state.cn, port=port)
        if not self._inside(state):
            self.send(401, _pretty({"status": "ERROR", "message": "Unauthorized client"}))
            return
        if decoded is None:
            self.send(200, _pretty({"status": "ERROR", "message": "invalid signature"}))
            return
        if setup.take_fault("port-busy"):
            message = f"port {port} is busy. Try again later."
            self.send(409, _pretty({"status": "ERROR", "message": message}))
            return
        expires = datetime.fromisoformat(decoded["expires_at"][:26] + "+00:00")
        if setup.take_fault("bind-error") or expires < datetime.now(UTC):
            self.send(200, _pretty({"status": "ERROR", "message": "payload expired"}))
            return
        state.forward(port, self.client_address[0])
        self.send(200, fixture_bytes("pia-bindport.json"))


def _server_public_key(interface: str) -> str:
    reply = exchange_sync(socket_path(interface), "get=1\n\n")
    for line in reply.splitlines():
        if line.startswith("private_key="):
            from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

            private = X25519PrivateKey.from_private_bytes(bytes.fromhex(line.split("=", 1)[1]))
            raw = private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            return base64.b64encode(raw).decode()
    raise RuntimeError(f"{interface} has no private key")


# --- running --------------------------------------------------------------------------------


def _start(servers: Sequence[_TlsServer]) -> None:
    for server in servers:
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        ).start()


def _until_signalled(servers: Sequence[_TlsServer]) -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    _start(servers)
    print("ready", flush=True)
    done.wait()
    for server in servers:
        server.shutdown()
        server.server_close()


def meta_servers(setup: PiaSetup, listen: Sequence[tuple[str, str]]) -> list[_TlsServer]:
    """The meta service on each (name, address) at port 443."""
    return [_TlsServer((address, 443), _MetaHandler, setup, name, None) for name, address in listen]


def vpn_servers(
    setup: PiaSetup,
    cn: str,
    station: str,
    gateway: str,
    interface: str,
    peers: str,
    dns: Sequence[str] = (),
) -> list[_TlsServer]:
    state = _ServerState(setup, cn, station, gateway, interface, peers, dns)
    return [
        _TlsServer((station, WG_API_PORT), _ServerHandler, setup, cn, state),
        _TlsServer((gateway, PF_PORT), _ServerHandler, setup, cn, state),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nordwgd.testing.fakepia")
    parser.add_argument("--setup", type=Path, required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    meta = commands.add_parser("meta", help="the token service and region list")
    meta.add_argument("--listen", action="append", required=True, help="NAME@ADDRESS")
    server = commands.add_parser("server", help="one VPN server's addKey and port forwarding")
    server.add_argument("--cn", required=True)
    server.add_argument("--station", required=True)
    server.add_argument("--gateway", required=True)
    server.add_argument("--interface", required=True)
    server.add_argument("--peers", required=True, help="first peer address, e.g. 10.5.0.2")
    server.add_argument("--dns", action="append", default=[], help="resolvers addKey names")
    args = parser.parse_args(argv)
    try:
        setup = PiaSetup.read(args.setup)
        if args.command == "meta":
            listen = []
            for item in args.listen:
                name, _, address = item.rpartition("@")
                ip_address(address)
                listen.append((name, address))
            _until_signalled(meta_servers(setup, listen))
        else:
            _until_signalled(
                vpn_servers(
                    setup, args.cn, args.station, args.gateway, args.interface, args.peers, args.dns
                )
            )
    except (OSError, ValueError, KeyError) as error:
        print(f"fakepia: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
