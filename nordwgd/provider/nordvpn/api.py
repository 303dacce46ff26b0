"""The NordVPN API client: pinned addresses, TLS verified against the API host name.

The client never resolves names (DNS is blocked while the kill switch is on): it connects to
each pinned address in turn, sends SNI and Host for ``api.host`` and verifies the certificate
for that name. Each request is bounded by ``api.timeout``; a connection or TLS failure moves
on to the next address; a round over all addresses is retried ``api.attempts`` times with
backoff (honouring Retry-After, capped). Failures are typed: 401 is AuthFailed, everything
that means "cannot use the API now" is ApiUnavailable with the reason in its message.

The access token and the NordLynx private key never reach a log line or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import email.utils
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from nordwgd.config import ApiConfig
from nordwgd.errors import ApiUnavailable, AuthFailed, InvalidArgument, NoServer, UnknownLocation
from nordwgd.model import Credentials, IPAddress, Secret, Server
from nordwgd.provider.nordvpn import parse
from nordwgd.provider.nordvpn.parse import Insights
from nordwgd.sharedcall import SharedResults

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

SO_MARK = 36  # socket.SO_MARK is missing from some Python builds
USER_AGENT = "nordwgd"
MAX_BODY_BYTES = 64 * 1024 * 1024  # the whole fleet is tens of MB; more is not an answer
WIREGUARD_TECHNOLOGY = "wireguard_udp"
# Answers larger than this are decoded in a worker thread: the event loop keeps serving D-Bus
# and the tunnel monitor while a country's server list (several MB) is parsed.
OFF_LOOP_BYTES = 64 * 1024
# A country's server list is kept this long: host name look-ups (Connect, ListServers) within
# it share one download.
SERVER_LIST_TTL = 60.0

T = TypeVar("T")


class _Retryable(Exception):
    """One attempt failed in a way another address or a later round may not."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _url_host(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def _load_http_stack() -> None:
    import httpx  # noqa: F401

    import nordwgd.provider.nordvpn.marked  # noqa: F401


def _tls_reason(error: BaseException) -> str | None:
    """The TLS problem behind a connect error, if there is one."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate not trusted for this host ({current.verify_message})"
        if isinstance(current, ssl.SSLError):
            return f"TLS handshake failed ({current.reason or current})"
        current = current.__cause__ or current.__context__
    text = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
        return f"TLS handshake failed ({text})"
    return None


class NordVpnApi:
    """Async client of the NordVPN API (one per daemon; call ``aclose`` when done)."""

    def __init__(
        self,
        api: ApiConfig,
        *,
        fwmark: int | None = None,
        backoff: float = 0.5,
        max_delay: float = 10.0,
    ) -> None:
        if not api.addresses:
            raise InvalidArgument("api.addresses: at least one pinned API address is needed")
        self._api = api
        self._fwmark = fwmark
        self._backoff = backoff
        self._max_delay = max_delay
        self._client: httpx.AsyncClient | None = None
        self._client_lock = asyncio.Lock()
        # One server list download at a time, each shared by everyone asking meanwhile.
        self._server_lists: SharedResults[tuple[int, int], list[Server]] = SharedResults(
            ttl=SERVER_LIST_TTL, limit=1, max_entries=4
        )

    def __repr__(self) -> str:
        addresses = ", ".join(str(a) for a in self._api.addresses)
        return f"NordVpnApi(host={self._api.host!r}, addresses=[{addresses}])"

    # --- transport -------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        ca_file = self._api.ca_file
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def _get_client(self) -> httpx.AsyncClient:
        async with self._client_lock:
            if self._client is None:
                # The HTTP stack (5 MB resident) loads with the first call, off the event loop:
                # a daemon that is not connecting does not carry it.
                await asyncio.to_thread(_load_http_stack)
                import httpcore
                import httpx

                from nordwgd.provider.nordvpn.marked import MarkedNetworkBackend

                try:
                    # Loading CA files reads the disk: keep it off the event loop.
                    context = await asyncio.to_thread(self._ssl_context)
                except (OSError, ssl.SSLError) as error:
                    raise ApiUnavailable(
                        f"cannot load the API CA file {self._api.ca_file}: {error}"
                    ) from None
                options = (
                    [(socket.SOL_SOCKET, SO_MARK, self._fwmark)]
                    if self._fwmark is not None
                    else None
                )
                transport = httpx.AsyncHTTPTransport(verify=context, socket_options=options)
                # Mark before connect(): the kill switch admits only marked API packets.
                transport._pool = httpcore.AsyncConnectionPool(
                    ssl_context=context,
                    socket_options=options,
                    network_backend=MarkedNetworkBackend(),
                )
                self._client = httpx.AsyncClient(
                    transport=transport,
                    timeout=httpx.Timeout(self._api.timeout),
                    follow_redirects=False,
                    trust_env=False,
                )
            return self._client

    async def aclose(self) -> None:
        async with self._client_lock:
            if self._client is not None:
                await self._client.aclose()
                self._client = None

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        address: IPAddress,
        path: str,
        params: Mapping[str, str | int],
        headers: httpx.Headers,
    ) -> tuple[int, bytes, str | None]:
        """(status, body, Retry-After) from one address, or _Retryable."""
        import httpx  # loaded by _get_client

        api = self._api
        url = f"https://{_url_host(address)}:{api.port}{path}"
        request = client.build_request(
            "GET",
            url,
            params=params,
            headers=headers,
            extensions={"sni_hostname": api.host},
        )
        try:
            async with asyncio.timeout(api.timeout):
                response = await client.send(request, stream=True)
                try:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_raw():
                        size += len(chunk)
                        if size > MAX_BODY_BYTES:
                            raise _Retryable(
                                f"{address}: answer larger than {MAX_BODY_BYTES} bytes"
                            )
                        chunks.append(chunk)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise _Retryable(f"{address}: no answer within {api.timeout:g} s") from None
        except httpx.TimeoutException:
            raise _Retryable(f"{address}: timed out after {api.timeout:g} s") from None
        except httpx.ConnectError as error:
            reason = _tls_reason(error) or f"connection failed ({error or type(error).__name__})"
            raise _Retryable(f"{address}: {reason}") from None
        except httpx.RemoteProtocolError as error:
            raise _Retryable(
                f"{address}: connection closed before a complete answer ({error})"
            ) from None
        except httpx.TransportError as error:
            reason = _tls_reason(error) or f"{type(error).__name__}: {error}"
            raise _Retryable(f"{address}: {reason}") from None
        body = b"".join(chunks)
        # Only identity is requested, so the raw bytes are the body.
        return response.status_code, body, response.headers.get("Retry-After")

    async def _call(
        self,
        path: str,
        decode: Callable[[bytes], T],
        *,
        params: Mapping[str, str | int] | None = None,
        token: Secret | None = None,
    ) -> T:
        api = self._api
        client = await self._get_client()
        import httpx  # loaded by _get_client

        # httpx.Headers redacts Authorization in its repr, so the token stays out of
        # tracebacks that show locals; no plain local ever holds the encoded token.
        headers = httpx.Headers(
            {
                "Host": api.host if api.port == 443 else f"{api.host}:{api.port}",
                "Accept": "application/json",
                "Accept-Encoding": "identity",
                "User-Agent": USER_AGENT,
            }
        )
        if token is not None:
            headers["Authorization"] = (
                "Basic " + base64.b64encode(f"token:{token.reveal()}".encode()).decode()
            )
        reason = "no attempt made"
        rounds = max(1, api.attempts)
        for round_index in range(rounds):
            delay: float | None = None
            for address in api.addresses:
                try:
                    status, body, retry_after = await self._attempt(
                        client, address, path, params or {}, headers
                    )
                    if status == 200 and len(body) > OFF_LOOP_BYTES:
                        return await asyncio.to_thread(
                            self._accept, path, status, body, retry_after, decode
                        )
                    return self._accept(path, status, body, retry_after, decode)
                except _Retryable as failure:
                    reason = failure.reason
                    log.warning("NordVPN API %s via %s: %s", path, address, reason)
                    if failure.retry_after is not None:
                        # A rate limit covers the whole service: wait, do not hammer the others.
                        delay = min(failure.retry_after, self._max_delay)
                        break
            if round_index + 1 < rounds:
                if delay is None:
                    delay = min(self._backoff * 2**round_index, self._max_delay)
                log.debug("NordVPN API %s: retrying in %.1f s", path, delay)
                await asyncio.sleep(delay)
        raise ApiUnavailable(
            f"the NordVPN API is unavailable ({path}, {rounds} "
            f"{'round' if rounds == 1 else 'rounds'} over {len(api.addresses)} "
            f"{'address' if len(api.addresses) == 1 else 'addresses'}): {reason}"
        )

    def _accept(
        self,
        path: str,
        status: int,
        body: bytes,
        retry_after: str | None,
        decode: Callable[[bytes], T],
    ) -> T:
        log.debug("NordVPN API %s: HTTP %d, %d bytes", path, status, len(body))
        if status == 200:
            try:
                return decode(body)
            except ApiUnavailable as error:
                raise _Retryable(error.message) from None
        detail = parse.parse_error(body)
        described = f"HTTP {status}" + (
            f" {detail.message!r} (code {detail.code})" if detail else ""
        )
        if status == 401:
            raise AuthFailed(f"the NordVPN API refused the access token ({described})")
        if status == 429:
            wait = _retry_after(retry_after)
            raise _Retryable(
                f"rate limited ({described})", wait if wait is not None else self._backoff
            )
        if status >= 500:
            raise _Retryable(f"server error ({described})")
        raise ApiUnavailable(f"the NordVPN API answered {path} with {described}")

    # --- endpoints ---------------------------------------------------------------------

    async def credentials(self, token: Secret) -> Credentials:
        """The NordLynx private key of the account (fetch it at each connect: it may rotate)."""
        return await self._call(
            "/v1/users/services/credentials",
            lambda body: parse.parse_credentials(body, "/v1/users/services/credentials"),
            token=token,
        )

    async def recommendations(
        self,
        country_id: int | None = None,
        city_id: int | None = None,
        group: str | None = None,
        limit: int = 20,
    ) -> list[Server]:
        """NordLynx servers the API recommends, least loaded first."""
        params: dict[str, str | int] = {
            "filters[servers_technologies][identifier]": WIREGUARD_TECHNOLOGY,
            "limit": limit,
        }
        if country_id is not None:
            params["filters[country_id]"] = country_id
        if city_id is not None:
            params["filters[country_city_id]"] = city_id
        if group is not None:
            params["filters[servers_groups][identifier]"] = group
        path = "/v1/servers/recommendations"
        return await self._call(path, lambda body: parse.parse_servers(body, path), params=params)

    async def servers(self, country_id: int, limit: int = 0) -> list[Server]:
        """The servers of one country in the API's order (``limit=0``: all of them).

        The list is shared: asked again within SERVER_LIST_TTL, or while it downloads, it is
        not downloaded again. There is no whole-fleet variant: that is tens of MB.
        """
        params: dict[str, str | int] = {"filters[country_id]": country_id, "limit": limit}
        path = "/v1/servers"
        return await self._server_lists.get(
            (country_id, limit),
            lambda: self._call(path, lambda body: parse.parse_servers(body, path), params=params),
        )

    def forget_server_lists(self) -> None:
        """The next look-up downloads the server lists again (Renew)."""
        self._server_lists.clear()

    async def server_by_hostname(self, hostname: str, country_id: int) -> Server:
        """The usable server named ``hostname`` (any case; "de1001" = de1001.nordvpn.com).

        The API has no host name filter, so the server is looked up in the list of the country
        it belongs to (see ``Catalog.country_of_hostname``).
        """
        wanted = hostname.strip().lower()
        if wanted and "." not in wanted:
            wanted = f"{wanted}.nordvpn.com"
        servers = await self.servers(country_id=country_id, limit=0)
        if not servers:
            raise NoServer(f"the NordVPN API listed no servers to look up {hostname!r} in")
        for server in servers:
            if server.hostname.lower() == wanted:
                if not server.usable:
                    raise NoServer(f"server {server.hostname} is {unusable_reason(server)}")
                return server
        names = [server.hostname for server in servers]
        raise UnknownLocation(
            f"unknown server {hostname!r}", difflib.get_close_matches(wanted, names, n=3)
        )

    async def countries(self) -> list[dict[str, Any]]:
        return await self._call("/v1/servers/countries", parse.parse_countries)

    async def groups(self) -> list[dict[str, Any]]:
        return await self._call("/v1/servers/groups", parse.parse_groups)

    async def technologies(self) -> list[dict[str, Any]]:
        return await self._call("/v1/technologies", parse.parse_technologies)

    async def insights(self) -> Insights:
        """What the API sees of this host: public address, location, protected or not."""
        path = "/v1/helpers/ips/insights"
        return await self._call(path, lambda body: parse.parse_insights(body, path))

    async def get_raw(self, path: str) -> bytes:
        """The body of a successful GET of ``path`` (e.g. "/v1/servers/countries"), verbatim."""
        if not path.startswith("/") or "//" in path or any(ch.isspace() for ch in path):
            raise InvalidArgument(f"API path {path!r}: expected an absolute path like /v1/...")

        def verbatim(body: bytes) -> bytes:
            parse.decode_json(body, path)  # a body that is not JSON is not an answer
            return body

        # A query in ``path`` travels as written.
        return await self._call(path, verbatim)


def unusable_reason(server: Server) -> str:
    """Why a server cannot carry a NordLynx tunnel, in words for an error message."""
    if server.status != "online":
        return server.status
    if not server.public_key:
        return "without a NordLynx public key"
    if not server.wireguard_online:
        return "online, but its NordLynx service is offline"
    return "usable"
