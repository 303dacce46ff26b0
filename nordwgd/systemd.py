"""systemd integration: sd_notify messages, the watchdog, and journal logging.

Notifications go to ``$NOTIFY_SOCKET`` through ``systemd.daemon.notify`` when systemd-python
is importable, else through a small datagram sender with the same semantics. Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a silent no-op, so the daemon runs unchanged in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping

from nordwgd.redact import RedactingFilter

logger = logging.getLogger(__name__)

SYSLOG_IDENTIFIER = "nordwgd"


def _send_datagram(message: str) -> bool:
    """Send one sd_notify datagram; False when not running under a notify socket."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        # An abstract socket name: the leading "@" stands for a NUL byte.
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as error:
            logger.debug("sd_notify to %s failed: %s", address, error)
            return False
    return True


def _load_library_notify() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon
    except ImportError:
        return None

    def library_notify(message: str) -> bool:
        return bool(daemon.notify(message))

    return library_notify


_library_notify = _load_library_notify()


def notify(message: str) -> bool:
    """Send a raw sd_notify message (``KEY=VALUE`` lines); True if it was delivered."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    if _library_notify is not None:
        return _library_notify(message)
    return _send_datagram(message)


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment in the notify message.
    return " ".join(text.splitlines())


def ready(status: str = "") -> bool:
    """Tell systemd start-up is complete (Type=notify units leave "activating")."""
    message = "READY=1"
    if status:
        message += f"\nSTATUS={_one_line(status)}"
    return notify(message)


def status(text: str) -> bool:
    """Set the free-form status line shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}")


def stopping(status_text: str = "") -> bool:
    """Tell systemd the service is shutting down."""
    message = "STOPPING=1"
    if status_text:
        message += f"\nSTATUS={_one_line(status_text)}"
    return notify(message)


def watchdog_ping() -> bool:
    """Keep the watchdog from firing; only send when the daemon is known to be alive."""
    return notify("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog period in seconds asked for by systemd, or None when not enabled.

    ``$WATCHDOG_PID``, when set, names the process meant; another process (a child that
    inherited the environment) must not ping on its behalf.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000


class Watchdog:
    """Pings the systemd watchdog from the event loop while ``alive()`` says all is well.

    The pings come from a task on the daemon's own loop, so a blocked loop stops them; the
    liveness check lets other failures (a dead tunnel monitor) stop them too. When the pings
    stop, systemd kills and restarts the service after ``WatchdogSec``.
    """

    def __init__(
        self,
        alive: Callable[[], bool],
        *,
        interval: float | None = None,
        send: Callable[[], bool] = watchdog_ping,
    ) -> None:
        timeout = watchdog_interval() if interval is None else interval
        # systemd recommends pinging at half the timeout.
        self.period: float | None = None if timeout is None else timeout / 2
        self._alive = alive
        self._send = send
        self._task: asyncio.Task[None] | None = None
        self.pings = 0
        self.missed = 0

    @property
    def enabled(self) -> bool:
        return self.period is not None

    def start(self) -> None:
        """Start pinging on the running loop; does nothing when the watchdog is off."""
        if self.period is None or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="watchdog")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def check_once(self) -> bool:
        """Ping if alive; returns whether a ping was sent."""
        try:
            healthy = self._alive()
        except Exception:
            logger.exception("watchdog liveness check raised; treating as not alive")
            healthy = False
        if not healthy:
            self.missed += 1
            logger.warning("liveness check failed; withholding the watchdog ping")
            return False
        self._send()
        self.pings += 1
        return True

    async def _run(self) -> None:
        assert self.period is not None
        while True:
            self.check_once()
            await asyncio.sleep(self.period)


def running_under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


class _FieldsFilter(logging.Filter):
    """Turns ``extra={"state": ..., "server": ...}`` into NORDWGD_* journal fields."""

    FIELDS = ("state", "server", "interface", "error_cause")

    def filter(self, record: logging.LogRecord) -> bool:
        for name in self.FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                setattr(record, f"NORDWGD_{name.upper()}", str(value))
        return True


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd import journal
    except ImportError:
        return None

    class NordwgdJournalHandler(logging.Handler):
        """Sends only the formatted (already redacted) text and chosen fields.

        systemd-python's JournalHandler copies every attribute of the record into the entry
        (raw ``args`` and ``exc_info`` among them), which would bypass the redaction filter.
        """

        def emit(self, record: logging.LogRecord) -> None:
            try:
                fields = {
                    key: str(value)
                    for key, value in record.__dict__.items()
                    if key.startswith("NORDWGD_")
                }
                journal.send(
                    self.format(record),
                    PRIORITY=str(_journal_priority(record.levelno)),
                    SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
                    LOGGER=record.name,
                    CODE_FILE=record.pathname,
                    CODE_LINE=record.lineno,
                    CODE_FUNC=record.funcName,
                    **fields,
                )
            except Exception:
                self.handleError(record)

    return NordwgdJournalHandler()


def _journal_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def setup_logging(
    level: str = "info", *, environ: Mapping[str, str] | None = None
) -> logging.Handler:
    """Route the root logger to the journal under systemd, else to stderr; redact secrets.

    Returns the installed handler. Structured fields: pass ``extra={"state": "connected",
    "server": "de1001.nordvpn.com"}`` to a log call; the journal gets NORDWGD_STATE and
    NORDWGD_SERVER.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    handler: logging.Handler | None = None
    if running_under_systemd(environ):
        handler = _journal_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        prefix = "" if running_under_systemd(environ) else "%(asctime)s "
        handler.setFormatter(logging.Formatter(prefix + "%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.addFilter(_FieldsFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_nordwgd", False)]:
        root.removeHandler(old)
    handler._nordwgd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(numeric)
    # Libraries' own debug chatter (every netlink message, every HTTP connection state) would
    # drown the daemon's debug log; they speak from INFO up.
    for library in ("pyroute2", "httpcore", "httpx", "hpack", "asyncio"):
        logging.getLogger(library).setLevel(max(numeric, logging.INFO))
    return handler
