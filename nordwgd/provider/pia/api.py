"""The PIA services, each reached by pinned address with TLS checked for the server's name.

    token          meta server  GET  /authv3/generateToken (Basic auth), or, when pinned
                   addresses of the token service are configured, POST /api/client/v2/token
    expire_token   token service POST /api/client/v2/expire_token
    region list    meta server  GET  /vpninfo/servers/v6 (signed; verified by the caller)
    addKey         WireGuard server, port 1337, by its address, certificate name = its cn
    getSignature,  the tunnel gateway (server_vip), port 19999, certificate name = the wg cn;
    bindPort       from inside the tunnel only (unmarked sockets, in the namespace if any)

PIA answers many failures with HTTP 200 and ``"status": "ERROR"``: every answer is judged by
its body. The token and the password travel only in the request; messages never show them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from ipaddress import IPv4Address, IPv4Interface, ip_address
from typing import Any, TypeVar

from nordwgd.config import MetaServer, PiaConfig
from nordwgd.errors import ApiUnavailable, AuthFailed, TunnelFailed
from nordwgd.model import IPAddress, Secret
from nordwgd.netns_thread import run_in_namespace
from nordwgd.provider.pia import https
from nordwgd.provider.pia.regions import PiaServer
from nordwgd.redact import register_secret

log = logging.getLogger(__name__)

PORT_FORWARD_PORT = 19999
MAX_RETRY_AFTER = 60.0
DEFAULT_RETRY_AFTER = 59.0  # what PIA's own clients wait when a 429 names no time
# Seen in the field without expires_at: ports last about two months.
PORT_LIFETIME = timedelta(days=60)

T = TypeVar("T")


def shipped(name: str) -> bytes:
    """A file shipped in nordwgd/data (PIA's CA and region list key)."""
    return resources.files("nordwgd").joinpath("data", name).read_bytes()


@dataclass(frozen=True)
class AddKeyAnswer:
    """What addKey returns, checked: the server's key, where to send WireGuard, our address."""

    server_key: str
    server_ip: IPv4Address
    server_port: int
    server_vip: IPv4Address  # the gateway inside the tunnel, also the port-forwarding host
    peer_ip: IPv4Interface
    dns_servers: tuple[IPAddress, ...]


@dataclass(frozen=True)
class PortSignature:
    """A signed port assignment: reusable on any server of the account until it expires."""

    payload: Secret  # base64 of {"token", "port", "expires_at"}: it holds the token
    signature: Secret
    port: int
    expires_at: datetime

    def remaining(self, now: datetime) -> timedelta:
        return self.expires_at - now


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiUnavailable(f"{what}: the answer is not JSON ({len(body)} bytes)") from None
    if not isinstance(value, dict):
        raise ApiUnavailable(f"{what}: the answer is not a JSON object")
    return value


def _status_error(answer: dict[str, Any]) -> str | None:
    """PIA's error message when the body says the call failed, else None."""
    status = answer.get("status")
    if isinstance(status, str) and status.upper() == "OK":
        return None
    message = answer.get("message")
    text = message if isinstance(message, str) and message else f"status {status!r}"
    return " ".join(text.split())[:200]


def _wireguard_key(value: object, what: str) -> str:
    if isinstance(value, str):
        try:
            if len(base64.b64decode(value, validate=True)) == 32:
                return value
        except ValueError:
            pass
    raise ApiUnavailable(f"{what} is not a WireGuard key")


def parse_add_key(body: bytes, sent_key: str, server: PiaServer) -> AddKeyAnswer:
    """The checked addKey answer; AuthFailed for a refused token, TunnelFailed for a bad echo."""
    what = f"addKey at {server.cn}"
    answer = _json_object(body, what)
    refusal = _status_error(answer)
    if refusal is not None:
        if "login" in refusal.casefold() or "auth" in refusal.casefold():
            raise AuthFailed(f"PIA server {server.cn} refused the token ({what}: {refusal!r})")
        raise ApiUnavailable(f"{what} failed: {refusal!r}")
    if answer.get("peer_pubkey") != sent_key:
        raise TunnelFailed(
            f"{what} registered another key than the one sent (peer_pubkey does not echo it)"
        )
    try:
        peer = IPv4Interface(str(answer["peer_ip"]))
        if "/" not in str(answer["peer_ip"]):
            peer = IPv4Interface(f"{peer.ip}/32")
        dns = tuple(ip_address(str(item)) for item in answer.get("dns_servers") or ())
        port = answer["server_port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"server_port {port!r}")
        return AddKeyAnswer(
            server_key=_wireguard_key(answer.get("server_key"), f"{what}: server_key"),
            server_ip=IPv4Address(str(answer["server_ip"])),
            server_port=port,
            server_vip=IPv4Address(str(answer["server_vip"])),
            peer_ip=peer,
            dns_servers=dns,
        )
    except KeyError as error:
        raise ApiUnavailable(f"{what}: the answer has no {error.args[0]!r}") from None
    except ValueError as error:
        raise ApiUnavailable(f"{what}: unusable answer ({error})") from None


def parse_signature(body: bytes, server: str) -> PortSignature:
    what = f"getSignature at {server}"
    answer = _json_object(body, what)
    refusal = _status_error(answer)
    if refusal is not None:
        raise ApiUnavailable(f"{what} failed: {refusal!r}")
    payload, signature = answer.get("payload"), answer.get("signature")
    if not isinstance(payload, str) or not isinstance(signature, str) or not signature:
        raise ApiUnavailable(f"{what}: the answer has no payload and signature")
    register_secret(payload)
    register_secret(signature)
    try:
        decoded = json.loads(base64.b64decode(payload, validate=True))
        port = decoded["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"port {port!r}")
        if "expires_at" in decoded:
            expires = _rfc3339(str(decoded["expires_at"]))
        else:
            expires = _rfc3339(str(decoded["created_at"])) + PORT_LIFETIME
    except (ValueError, KeyError, TypeError) as error:
        raise ApiUnavailable(f"{what}: the payload is unusable ({type(error).__name__})") from None
    return PortSignature(Secret(payload), Secret(signature), port, expires)


def _rfc3339(text: str) -> datetime:
    """RFC 3339 with up to nanoseconds ("2020-06-30T22:33:44.114369906Z")."""
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


class PortRefused(ApiUnavailable):
    """PIA answered bindPort, but not with OK (busy, expired, bad signature)."""


def check_bind(body: bytes, server: str) -> None:
    """Nothing when bindPort succeeded; PortRefused with PIA's message otherwise."""
    what = f"bindPort at {server}"
    refusal = _status_error(_json_object(body, what))
    if refusal is not None:
        raise PortRefused(f"{what} failed: {refusal!r}")


class PiaApi:
    """The PIA services (blocking requests run off the event loop)."""

    def __init__(self, config: PiaConfig, *, fwmark: int | None = None) -> None:
        self._config = config
        self._fwmark = fwmark
        self._contexts: dict[str, ssl.SSLContext] = {}

    def __repr__(self) -> str:
        return f"PiaApi(meta=[{', '.join(map(str, self._config.meta))}])"

    def _context(self, which: str) -> ssl.SSLContext:
        """ "pia": PIA's own CA (or ca_file); "api": the token service's (api_ca_file)."""
        context = self._contexts.get(which)
        if context is None:
            config = self._config
            try:
                if which == "pia":
                    if config.ca_file is not None:
                        context = https.tls_context(str(config.ca_file))
                    else:
                        context = https.tls_context(None, shipped("pia-ca.rsa.4096.crt").decode())
                else:
                    ca = config.api_ca_file
                    context = https.tls_context(str(ca) if ca else None)
            except (OSError, ssl.SSLError) as error:
                raise ApiUnavailable(f"cannot load the CA for PIA ({which}): {error}") from None
            self._contexts[which] = context
        return context

    async def _fetch(
        self,
        request: https.Request,
        which: str,
        namespace: str | None = None,
    ) -> https.Answer:
        context = await asyncio.to_thread(self._context, which)
        call = functools.partial(https.fetch, request, context, self._config.timeout)
        try:
            if namespace is not None:
                return await run_in_namespace(namespace, call)
            return await asyncio.to_thread(call)
        except https.HttpsFailure as error:
            raise ApiUnavailable(f"{request.describe()}: {error}") from None
        except OSError as error:  # the namespace cannot be entered
            raise ApiUnavailable(f"{request.describe()}: {error.strerror or error}") from None

    async def _first(
        self,
        servers: Sequence[T],
        attempt: Callable[[T], Any],
    ) -> Any:
        """The first success of ``attempt`` over ``servers``; only ApiUnavailable moves on."""
        reason = "no server to ask"
        for server in servers:
            try:
                return await attempt(server)
            except ApiUnavailable as error:
                reason = error.message
                log.warning("PIA: %s", reason)
        raise ApiUnavailable(f"no PIA server answered: {reason}")

    # --- token ------------------------------------------------------------------------

    async def token(
        self, username: str, password: Secret, meta: Sequence[MetaServer] = ()
    ) -> Secret:
        """A fresh 24-hour token for the account."""
        config = self._config
        if config.api_addresses:
            form = (("username", username), ("password", password.reveal()))

            async def ask_api(address: IPAddress) -> Secret:
                request = https.Request(
                    "POST",
                    address,
                    443,
                    config.api_host,
                    "/api/client/v2/token",
                    form=form,
                    fwmark=self._fwmark,
                )
                return self._token_answer(await self._fetch(request, "api"), config.api_host)

            token: Secret = await self._first(config.api_addresses, ask_api)
            return token
        basic = base64.b64encode(f"{username}:{password.reveal()}".encode()).decode()

        async def ask_meta(server: MetaServer) -> Secret:
            request = https.Request(
                "GET",
                server.address,
                443,
                server.cn,
                "/authv3/generateToken",
                headers=(("Authorization", f"Basic {basic}"),),
                fwmark=self._fwmark,
            )
            return self._token_answer(await self._fetch(request, "pia"), server.cn)

        token = await self._first(list(meta) or config.meta, ask_meta)
        return token

    def _token_answer(self, answer: https.Answer, host: str) -> Secret:
        what = f"PIA token service at {host}"
        if answer.status == 401:
            raise AuthFailed("PIA refused the username or password (HTTP 401)")
        if answer.status == 402:
            raise AuthFailed("the PIA subscription has expired (HTTP 402)")
        if b"too_many_attempts" in answer.body:
            raise AuthFailed(
                "PIA locked the account after too many login attempts: try again later"
            )
        if answer.status == 429:
            wait = _retry_after(answer.retry_after)
            raise ApiUnavailable(f"{what} rate limited the login; try again in {wait:g} s")
        try:
            body = _json_object(answer.body, what)
        except ApiUnavailable:
            if answer.status >= 500:
                raise ApiUnavailable(f"{what}: server error (HTTP {answer.status})") from None
            raise
        refusal = _status_error(body) if "status" in body else None
        if refusal is not None:
            if "auth" in refusal.casefold():
                raise AuthFailed(f"PIA refused the username or password ({refusal!r})")
            raise ApiUnavailable(f"{what}: {refusal!r}")
        token = body.get("token")
        if answer.status != 200 or not isinstance(token, str) or not token.strip():
            raise ApiUnavailable(f"{what}: no token in the answer (HTTP {answer.status})")
        register_secret(token)
        return Secret(token)

    async def expire_token(self, token: Secret) -> bool:
        """Ask PIA to expire ``token``; False when no token service is configured."""
        config = self._config
        if not config.api_addresses:
            return False

        async def expire(address: IPAddress) -> None:
            request = https.Request(
                "POST",
                address,
                443,
                config.api_host,
                "/api/client/v2/expire_token",
                headers=(("Authorization", f"Token {token.reveal()}"),),
                fwmark=self._fwmark,
            )
            answer = await self._fetch(request, "api")
            if answer.status not in (200, 204, 401):  # 401: expired already
                raise ApiUnavailable(f"expire_token: HTTP {answer.status}")

        await self._first(config.api_addresses, expire)
        return True

    # --- region list ----------------------------------------------------------------------

    async def region_list_wire(self, meta: Sequence[MetaServer]) -> bytes:
        """The signed region list as sent (verify it before use)."""

        async def ask(server: MetaServer) -> bytes:
            request = https.Request(
                "GET", server.address, 443, server.cn, "/vpninfo/servers/v6", fwmark=self._fwmark
            )
            answer = await self._fetch(request, "pia")
            if answer.status != 200:
                raise ApiUnavailable(f"region list from {server.cn}: HTTP {answer.status}")
            return answer.body

        wire: bytes = await self._first(list(meta) or self._config.meta, ask)
        return wire

    # --- the WireGuard server ----------------------------------------------------------------

    async def add_key(
        self, server: PiaServer, port: int, token: Secret, public_key: str
    ) -> AddKeyAnswer:
        request = https.Request(
            "GET",
            server.ip,
            port,
            server.cn,
            "/addKey",
            query=(("pt", token.reveal()), ("pubkey", public_key)),
            fwmark=self._fwmark,
        )
        answer = await self._fetch(request, "pia")
        return parse_add_key(answer.body, public_key, server)

    async def get_signature(
        self, gateway: IPv4Address, cn: str, token: Secret, namespace: str | None
    ) -> PortSignature:
        request = https.Request(
            "GET",
            gateway,
            PORT_FORWARD_PORT,
            cn,
            "/getSignature",
            query=(("token", token.reveal()),),
        )
        answer = await self._fetch(request, "pia", namespace)
        if answer.status == 401:
            raise ApiUnavailable(
                f"getSignature at {cn}: unauthorized client (the request must come through "
                "the tunnel)"
            )
        return parse_signature(answer.body, cn)

    async def bind_port(
        self, gateway: IPv4Address, cn: str, signature: PortSignature, namespace: str | None
    ) -> None:
        request = https.Request(
            "GET",
            gateway,
            PORT_FORWARD_PORT,
            cn,
            "/bindPort",
            query=(
                ("payload", signature.payload.reveal()),
                ("signature", signature.signature.reveal()),
            ),
        )
        answer = await self._fetch(request, "pia", namespace)
        check_bind(answer.body, cn)


def _retry_after(value: str | None) -> float:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value else DEFAULT_RETRY_AFTER
    except ValueError:
        return DEFAULT_RETRY_AFTER
