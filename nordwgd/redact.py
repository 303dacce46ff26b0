"""Keep secrets out of logs: every registered secret is replaced by ``<redacted>``.

``Secret`` already hides itself in ``repr`` and ``str``; this filter catches the value when it
travels as a plain string anyway (inside an exception message, an HTTP error, an argument).
"""

from __future__ import annotations

import logging
import threading
import traceback

REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 8  # shorter values would redact ordinary words and numbers

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a secret containing another goes first


def register_secret(value: str) -> None:
    """Redact ``value`` from every log record from now on; too short values are ignored."""
    global _secrets
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value not in _secrets:
            _secrets = tuple(sorted((*_secrets, value), key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


# Attributes every LogRecord has that hold no user data.
_PLAIN_ATTRIBUTES = frozenset(
    ("name", "levelname", "pathname", "filename", "module", "funcName", "processName",
     "threadName", "taskName")
)  # fmt: skip


class RedactingFilter(logging.Filter):
    """Renders a record's message and exception text, then removes registered secrets.

    The message is rendered here (``args`` become part of ``msg``) and the exception is turned
    into ``exc_text`` (``exc_info`` dropped), so no later handler or formatter can see an
    unredacted argument or exception object.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it, redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _PLAIN_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


def install_redaction(logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach one RedactingFilter to ``logger`` (default: root) and to each of its handlers.

    Handler filters see the records that propagate from child loggers too, so call this after
    the handlers are configured. Calling it again adds nothing twice.
    """
    target = logger if logger is not None else logging.getLogger()
    existing = next((f for f in target.filters if isinstance(f, RedactingFilter)), None)
    redacting = existing or RedactingFilter()
    for filterer in (target, *target.handlers):
        if not any(isinstance(f, RedactingFilter) for f in filterer.filters):
            filterer.addFilter(redacting)
    return redacting
