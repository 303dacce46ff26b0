"""Registered secrets never reach a log handler: not in the message, args or exception text."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator

import pytest

from nordwgd.model import Secret
from nordwgd.redact import (
    REDACTED,
    RedactingFilter,
    install_redaction,
    redact,
    register_secret,
)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def token() -> str:
    value = secrets.token_hex(32)
    register_secret(value)
    return value


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, Capture]]:
    logger = logging.getLogger(f"nordwgd.test.redact.{secrets.token_hex(4)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    capture = Capture()
    logger.addHandler(capture)
    install_redaction(logger)
    yield logger, capture
    logger.removeHandler(capture)


def everything_seen(capture: Capture) -> str:
    seen = list(capture.lines)
    for record in capture.records:
        seen.extend(repr(value) for value in vars(record).values())
        seen.append(str(vars(record)))
    return "\n".join(seen)


def test_token_is_redacted_everywhere(logged: tuple[logging.Logger, Capture], token: str) -> None:
    logger, capture = logged
    logger.info("token in the message: %s", "x", extra={"detail": f"extra {token}"})
    logger.info(f"token in the message itself {token}")
    logger.warning("token in args: %s and %r", token, {"token": token})
    try:
        raise RuntimeError(f"the API said: bad token {token}")
    except RuntimeError:
        logger.exception("request failed")
    try:
        try:
            raise ValueError(token)
        except ValueError as inner:
            raise KeyError("outer") from inner
    except KeyError:
        logger.error("chained", exc_info=True, stack_info=True)

    assert len(capture.records) == 5
    seen = everything_seen(capture)
    assert token not in seen
    assert seen.count(REDACTED) >= 6
    # The rest of each message survives.
    assert "token in args: <redacted> and {'token': '<redacted>'}" in capture.lines[2]
    assert "RuntimeError: the API said: bad token <redacted>" in capture.lines[3]
    assert "ValueError: <redacted>" in capture.lines[4]


def test_child_loggers_are_redacted_by_the_handler_filter(token: str) -> None:
    parent = logging.getLogger(f"nordwgd.test.parent.{secrets.token_hex(4)}")
    parent.propagate = False
    capture = Capture()
    parent.addHandler(capture)
    install_redaction(parent)
    install_redaction(parent)  # idempotent
    try:
        child = parent.getChild("provider")
        child.warning("header Authorization: token:%s", token)
        assert len(capture.records) == 1
        assert token not in everything_seen(capture)
        assert sum(isinstance(f, RedactingFilter) for f in capture.filters) == 1
    finally:
        parent.removeHandler(capture)


def test_secret_objects_and_short_values() -> None:
    register_secret("short")
    assert redact("a short word") == "a short word"
    value = secrets.token_hex(20)
    register_secret(value)
    assert redact(f"a{value}b") == f"a{REDACTED}b"
    assert value not in repr(Secret(value)) + str(Secret(value)) + f"{Secret(value)}"


def test_overlapping_secrets_longest_first() -> None:
    short = secrets.token_hex(6)
    long = short + secrets.token_hex(6)
    register_secret(short)
    register_secret(long)
    assert redact(long) == REDACTED
    assert redact(f"{short}!") == f"{REDACTED}!"


def test_bad_format_string_is_still_redacted(
    logged: tuple[logging.Logger, Capture], token: str
) -> None:
    logger, capture = logged
    logger.info("two %s %s but one arg", token)
    assert token not in everything_seen(capture)


def test_the_nordlynx_private_key_is_redacted_once_parsed(caplog: pytest.LogCaptureFixture) -> None:
    from nordwgd.provider.nordvpn.parse import parse_credentials
    from nordwgd.redact import RedactingFilter

    key = "Vpod389HKdiGiagYlGSEmd96FUEr8dFSulc2u3Idt4A="
    credentials = parse_credentials(json.dumps({"nordlynx_private_key": key}).encode())
    assert credentials.private_key.reveal() == key
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "key %s", (key,), None)
    RedactingFilter().filter(record)
    assert key not in record.getMessage()
