"""The forwarded port: a signature, bindPort every 15 minutes, the port file and the hook.

While one tunnel is up, ``PortForwarder`` asks the tunnel's gateway for a port signature
(``getSignature``), binds it (``bindPort``) and binds it again every ``bind_interval`` seconds
(PIA releases a port that is not bound again within 15 minutes). A signature is kept in
``<state_dir>/pia-port`` (0600: its payload holds the token) and reused after a reconnect, on any
server, until fewer than ``renew_before`` seconds of it remain. A bindPort that PIA refuses
(not OK, 409 busy, expired) gets one new signature.

Each new port is published: ``on_port`` (the ``ForwardedPort`` property), the file
``<runtime_dir>/forwarded-port`` (the number and a newline, for units that watch it) and the
hook (``port_forward.hook``), run without a shell, with ``NORDWGD_PORT``,
``NORDWGD_INTERFACE`` and ``NORDWGD_TUNNEL_ADDRESS`` as its only variables besides ``PATH``,
killed after ``hook_timeout`` seconds; its exit status and output go to the journal. When the
port goes (the tunnel goes down, a disconnect) the port becomes 0: the file is removed and the
hook runs once more with ``NORDWGD_PORT=0`` (and the interface and address the port was on),
so that it can close what it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path

from nordwgd.config import PortForwardConfig
from nordwgd.errors import ApiUnavailable
from nordwgd.files import write_atomic
from nordwgd.model import Secret
from nordwgd.provider.pia.api import PiaApi, PortRefused, PortSignature
from nordwgd.redact import redact, register_secret

log = logging.getLogger(__name__)

PORT_FILE = "forwarded-port"
KEPT_SIGNATURE = "pia-port"
HOOK_OUTPUT_LIMIT = 4096
RETRY_SECONDS = 30.0  # after a failed attempt, at most bind_interval
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def load_signature(state_dir: Path) -> PortSignature | None:
    try:
        document = json.loads((state_dir / KEPT_SIGNATURE).read_bytes())
        payload, signature = str(document["payload"]), str(document["signature"])
        kept = PortSignature(
            Secret(payload),
            Secret(signature),
            int(document["port"]),
            datetime.fromisoformat(str(document["expires_at"])),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    register_secret(payload)
    register_secret(signature)
    return kept


def keep_signature(state_dir: Path, signature: PortSignature) -> None:
    document = {
        "payload": signature.payload.reveal(),
        "signature": signature.signature.reveal(),
        "port": signature.port,
        "expires_at": signature.expires_at.isoformat(),
    }
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(state_dir / KEPT_SIGNATURE, json.dumps(document).encode(), mode=0o600)


def write_port_file(runtime_dir: Path, port: int) -> None:
    path = runtime_dir / PORT_FILE
    if port == 0:
        path.unlink(missing_ok=True)
        return
    runtime_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"{port}\n".encode(), mode=0o644)


async def run_hook(
    command: tuple[str, ...], environment: dict[str, str], limit: float
) -> int | None:
    """Run the hook; its exit status (None when it could not run or was killed)."""
    env = {"PATH": HOOK_PATH, **environment}
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd="/",
            start_new_session=True,
        )
    except OSError as error:
        log.error("port hook %s could not start: %s", command[0], error.strerror or error)
        return None
    try:
        output, _ = await asyncio.wait_for(process.communicate(), limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
        log.error("port hook %s killed after %g s", command[0], limit)
        return None
    text = redact(output[:HOOK_OUTPUT_LIMIT].decode(errors="replace")).strip()
    level = logging.INFO if process.returncode == 0 else logging.WARNING
    log.log(
        level,
        "port hook %s exited with status %d%s",
        command[0],
        process.returncode,
        f"; output: {text}" if text else "",
    )
    return process.returncode


class PortForwarder:
    """Keeps one port forwarded through one tunnel; ``start()``, then ``await stop()``."""

    def __init__(
        self,
        api: PiaApi,
        gateway: IPv4Address,
        cn: str,
        token: Callable[[], Awaitable[Secret]],
        config: PortForwardConfig,
        *,
        interface: str,
        tunnel_address: str,
        namespace: str | None,
        state_dir: Path,
        runtime_dir: Path,
        on_port: Callable[[int], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = api
        self._gateway = gateway
        self._cn = cn
        self._token = token
        self._config = config
        self._interface = interface
        self._tunnel_address = tunnel_address
        self._namespace = namespace
        self._state_dir = state_dir
        self._runtime_dir = runtime_dir
        self._on_port = on_port
        self._now = now
        self._task: asyncio.Task[None] | None = None
        self._signature: PortSignature | None = None
        self.port = 0
        self.binds = 0  # bindPort calls that succeeded (for tests and Diagnose)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nordwgd-pf")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._publish(0)

    async def _run(self) -> None:
        self._signature = await asyncio.to_thread(load_signature, self._state_dir)
        while True:
            try:
                await self._bind()
                delay = self._config.bind_interval
            except ApiUnavailable as error:
                log.warning("port forwarding at %s: %s", self._cn, error)
                delay = min(RETRY_SECONDS, self._config.bind_interval)
            await asyncio.sleep(delay)

    async def _fresh_signature(self) -> PortSignature:
        token = await self._token()
        signature = await self._api.get_signature(self._gateway, self._cn, token, self._namespace)
        log.info("port forwarding: port %d, signed until %s", signature.port, signature.expires_at)
        await asyncio.to_thread(keep_signature, self._state_dir, signature)
        return signature

    def _usable(self, signature: PortSignature | None) -> bool:
        if signature is None:
            return False
        return signature.remaining(self._now()).total_seconds() >= self._config.renew_before

    async def _bind(self) -> None:
        if not self._usable(self._signature):
            self._signature = await self._fresh_signature()
        assert self._signature is not None
        try:
            await self._api.bind_port(self._gateway, self._cn, self._signature, self._namespace)
        except PortRefused as refusal:
            log.warning("port forwarding: %s; asking for a new port", refusal)
            self._signature = await self._fresh_signature()
            await self._api.bind_port(self._gateway, self._cn, self._signature, self._namespace)
        self.binds += 1
        log.debug("port forwarding: port %d bound at %s", self._signature.port, self._cn)
        await self._publish(self._signature.port)

    async def _publish(self, port: int) -> None:
        if port == self.port:
            return
        self.port = port
        try:
            await asyncio.to_thread(write_port_file, self._runtime_dir, port)
        except OSError as error:
            log.error("cannot write %s: %s", self._runtime_dir / PORT_FILE, error)
        self._on_port(port)
        # Port 0 too: a hook that opened something for the port closes it then.
        if self._config.hook:
            await run_hook(
                self._config.hook,
                {
                    "NORDWGD_PORT": str(port),
                    "NORDWGD_INTERFACE": self._interface,
                    "NORDWGD_TUNNEL_ADDRESS": self._tunnel_address,
                },
                self._config.hook_timeout,
            )
