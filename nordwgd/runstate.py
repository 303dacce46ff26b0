"""The record of system changes made by a connection, kept under the runtime directory.

Every change (a link, a rule, a route, a sysctl, DNS) is written here *before* it is made, so a
process killed at any point leaves a record that a new process can undo exactly; undo code
tolerates objects that are already gone. The file is JSON, 0600, replaced atomically on every
change. A corrupt file is moved aside and reported as ``unknown`` so the caller falls back to
cleaning up by the well-known names from the config.

Steps are plain dicts with a ``"step"`` key, for example::

    {"step": "link", "ifname": "nordlynx", "backend": "userspace"}
    {"step": "rule", "family": 4, "priority": 32765, "table": 51820, "fwmark": 51820, ...}
    {"step": "route", "family": 4, "table": 51820, "dst": "0.0.0.0/0", "type": "unicast", ...}
    {"step": "sysctl", "key": "net/ipv4/conf/all/src_valid_mark", "old": "0"}
    {"step": "dns", "mode": "resolvconf", ...}
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nordwgd.files import remove, write_atomic

log = logging.getLogger(__name__)

JOURNAL_NAME = "connection.json"
FORMAT_VERSION = 1

Step = dict[str, Any]


class Journal:
    """The ordered list of applied steps, mirrored to ``<runtime_dir>/connection.json``.

    Methods do blocking file I/O; async callers run them with ``asyncio.to_thread``.
    """

    def __init__(
        self, runtime_dir: Path, steps: list[Step] | None = None, *, unknown: bool = False
    ) -> None:
        self.runtime_dir = runtime_dir
        self.path = runtime_dir / JOURNAL_NAME
        self.steps: list[Step] = list(steps or [])
        # True when a record existed but could not be read: leftovers of unknown shape.
        self.unknown = unknown

    @classmethod
    def load(cls, runtime_dir: Path) -> Journal:
        """Read the record; a missing file is an empty journal, a corrupt one is moved aside."""
        path = runtime_dir / JOURNAL_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(runtime_dir)
        try:
            data = json.loads(raw)
            steps = data["steps"]
            if data.get("version") != FORMAT_VERSION or not isinstance(steps, list):
                raise ValueError("unknown format")
            if not all(isinstance(s, dict) and isinstance(s.get("step"), str) for s in steps):
                raise ValueError("a step is not an object with a 'step' name")
        except (ValueError, KeyError, TypeError) as exc:
            aside = path.with_name(f"{JOURNAL_NAME}.corrupt-{int(time.time())}")
            log.warning(
                "runtime record %s is unreadable (%s); moved to %s, cleaning up by name",
                path,
                exc,
                aside,
            )
            with contextlib.suppress(OSError):
                path.rename(aside)
            return cls(runtime_dir, unknown=True)
        return cls(runtime_dir, steps)

    def __bool__(self) -> bool:
        return bool(self.steps) or self.unknown

    def record(self, step: Step) -> None:
        """Append a step and persist it before the caller makes the change."""
        self.record_all([step])

    def record_all(self, steps: Sequence[Step]) -> None:
        """Append several steps with one write, before the caller makes any of the changes.

        For changes whose undo tolerates an object that is not there; a caller that stops
        part way ``forget``s the steps it never attempted.
        """
        self.steps.extend(dict(step) for step in steps)
        self._write()

    def forget(self, step: Step) -> None:
        """Drop the last step equal to ``step`` (it was undone) and persist."""
        for index in range(len(self.steps) - 1, -1, -1):
            if self.steps[index] == step:
                del self.steps[index]
                break
        self._write()

    def clear(self) -> None:
        """Everything was undone: remove the record."""
        self.steps.clear()
        self.unknown = False
        remove(self.path)

    def _write(self) -> None:
        if not self.steps and not self.unknown:
            remove(self.path)
            return
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps({"version": FORMAT_VERSION, "steps": self.steps}, indent=1)
        write_atomic(self.path, data.encode(), mode=0o600)
