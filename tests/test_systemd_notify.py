"""sd_notify, the watchdog and journal logging, against a real AF_UNIX datagram socket."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nordwgd import systemd
from nordwgd.redact import register_secret


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def messages(self) -> list[str]:
        found = []
        while True:
            try:
                found.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return found


@pytest.fixture(params=["library", "fallback"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[NotifySocket]:
    """A bound socket in $NOTIFY_SOCKET; sends through systemd-python and the fallback."""
    if request.param == "fallback":
        monkeypatch.setattr(systemd, "_library_notify", None)
    elif systemd._library_notify is None:
        pytest.skip("systemd-python is not installed")
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield NotifySocket(sock)
    finally:
        sock.close()


def test_ready_status_stopping(notify_socket: NotifySocket) -> None:
    assert systemd.ready("disconnected; serving")
    assert systemd.status("connecting to de1001")
    assert systemd.stopping("stopping; kill switch kept")
    assert notify_socket.messages() == [
        "READY=1\nSTATUS=disconnected; serving",
        "STATUS=connecting to de1001",
        "STOPPING=1\nSTATUS=stopping; kill switch kept",
    ]


def test_status_cannot_inject_assignments(notify_socket: NotifySocket) -> None:
    systemd.status("bad\nREADY=1")
    assert notify_socket.messages() == ["STATUS=bad READY=1"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd, "_library_notify", None)
    name = f"nordwgd-test-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.watchdog_ping()
        assert sock.recv(100) == b"WATCHDOG=1"


def test_no_socket_is_a_silent_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready("x") is False
    assert systemd.watchdog_ping() is False


def test_unreachable_socket_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(systemd, "_library_notify", None)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.ready() is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert systemd.watchdog_interval(env) == expected


def test_watchdog_interval_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    watchdog = systemd.Watchdog(lambda: True)
    assert watchdog.enabled
    assert watchdog.period == 1.0  # half of WatchdogSec


def test_watchdog_disabled_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    watchdog = systemd.Watchdog(lambda: True)
    assert not watchdog.enabled
    watchdog.check_once()  # a manual check still works; start() must not create a task


class Liveness:
    """The liveness check handed to the Watchdog; counts how often it was consulted."""

    def __init__(self) -> None:
        self.alive = True
        self.checks = 0
        self._checked = asyncio.Event()

    def __call__(self) -> bool:
        self.checks += 1
        self._checked.set()
        return self.alive

    async def wait_checks(self, count: int) -> None:
        target = self.checks + count
        while self.checks < target:
            self._checked.clear()
            await self._checked.wait()


async def test_watchdog_pings_only_while_alive(notify_socket: NotifySocket) -> None:
    liveness = Liveness()
    watchdog = systemd.Watchdog(liveness, interval=0.02)
    watchdog.start()
    try:
        await liveness.wait_checks(3)
        assert watchdog.pings >= 3
        assert "WATCHDOG=1" in notify_socket.messages()
        liveness.alive = False
        await liveness.wait_checks(1)
        pings_while_dead = watchdog.pings
        notify_socket.messages()  # drain what was sent before the check failed
        await liveness.wait_checks(3)
        assert watchdog.pings == pings_while_dead
        assert watchdog.missed >= 3
        assert notify_socket.messages() == []
        liveness.alive = True
        await liveness.wait_checks(2)
    finally:
        await watchdog.stop()
    assert watchdog.pings > pings_while_dead
    assert "WATCHDOG=1" in notify_socket.messages()


async def test_watchdog_check_that_raises_counts_as_dead(notify_socket: NotifySocket) -> None:
    def broken() -> bool:
        raise RuntimeError("monitor crashed")

    watchdog = systemd.Watchdog(broken, interval=10)
    assert watchdog.check_once() is False
    assert notify_socket.messages() == []


async def test_watchdog_stop_is_idempotent() -> None:
    watchdog = systemd.Watchdog(lambda: True, interval=10, send=lambda: True)
    watchdog.start()
    await watchdog.stop()
    await watchdog.stop()


@pytest.fixture
def clean_root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def test_stderr_logging_redacts_secrets(
    clean_root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "tok-0123456789abcdef-stderr"
    register_secret(secret)
    systemd.setup_logging("debug", environ={})
    logging.getLogger("nordwgd.test").info("token is %s", secret)
    err = capsys.readouterr().err
    assert "token is <redacted>" in err
    assert secret not in err
    assert clean_root_logger.level == logging.DEBUG


def test_setup_logging_replaces_its_own_handler(clean_root_logger: logging.Logger) -> None:
    before = len(clean_root_logger.handlers)
    systemd.setup_logging("info", environ={})
    systemd.setup_logging("warning", environ={})
    assert len(clean_root_logger.handlers) == before + 1
    assert clean_root_logger.level == logging.WARNING


def test_journal_entries_carry_fields_and_no_secrets(
    clean_root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = pytest.importorskip("systemd.journal")
    sent: list[tuple[str, dict[str, object]]] = []

    def capture(message: str, **fields: object) -> None:
        sent.append((message, fields))

    monkeypatch.setattr(journal, "send", capture)
    secret = "tok-0123456789abcdef-journal"
    register_secret(secret)
    handler = systemd.setup_logging("info", environ={"INVOCATION_ID": "0123"})
    assert not isinstance(handler, logging.StreamHandler)
    logging.getLogger("nordwgd.machine").warning(
        "connected with %s",
        secret,
        extra={"state": "connected", "server": "de1001.nordvpn.com"},
    )
    assert len(sent) == 1
    message, fields = sent[0]
    assert message == "connected with <redacted>"
    assert fields["SYSLOG_IDENTIFIER"] == "nordwgd"
    assert fields["PRIORITY"] == "4"
    assert fields["NORDWGD_STATE"] == "connected"
    assert fields["NORDWGD_SERVER"] == "de1001.nordvpn.com"
    assert fields["LOGGER"] == "nordwgd.machine"
    assert all(secret not in str(value) for value in fields.values())
    assert isinstance(fields["CODE_LINE"], int)  # journal.send formats it with {:d}
