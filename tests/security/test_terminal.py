"""Text from outside never reaches a terminal raw.

Server names, cities and error causes come from the NordVPN API through the daemon; a value
holding an escape sequence (``ESC ] 0 ; title BEL`` retitles the window, ``ESC [ 2 J`` clears
it, a bidi override reorders a line) must be shown escaped by every ``nordwgctl`` command.
The formatters are fuzzed with arbitrary text; the CLI is run against a daemon double whose
values carry real escape sequences.
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from collections.abc import Iterator

import pytest
from dbus_fast import Variant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nordwgd import errors
from nordwgd.cli_format import format_mapping, format_status, format_table, printable
from nordwgd.cli_split import cmd_exclude
from nordwgd.states import State
from tests.fixtures_dbus import PrivateBus, Service, sample_server
from tests.security.ledger import ScenarioRecorder
from tests.test_cli import nordwgctl

TITLE = "\x1b]0;owned\x07"  # sets the terminal window's title
CLEAR = "\x1b[2J\x1b[H"  # clears the screen
CSI_8BIT = "\x9b31m"  # the one-byte CSI of C1
BIDI = "\u202e"  # right-to-left override
HOSTILE = f"Frank{TITLE}furt{CLEAR}{CSI_8BIT}{BIDI}"

STATUS_LABELS = {
    "State",
    "Error",
    "Firewall",
    "Server",
    "Load",
    "Endpoint",
    "Interface",
    "Lockdown",
    "Allow LAN",
    "Mode",
}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def controls(text: str, *, allowed: str = "") -> list[str]:
    """The control and bidi characters in ``text`` (other than ``allowed``)."""
    return [
        char
        for char in text
        if char not in allowed
        and (unicodedata.category(char) == "Cc" or "\u202a" <= char <= "\u202e")
    ]


class Counter:
    def __init__(self) -> None:
        self.examples = 0


@pytest.fixture
def tried(ledger: ScenarioRecorder) -> Iterator[Counter]:
    counter = Counter()
    yield counter
    ledger.bad_inputs(counter.examples)


# --- the formatters ------------------------------------------------------------------------------

any_text = st.text(st.characters(codec="utf-8"), max_size=30) | st.sampled_from(
    [TITLE, CLEAR, CSI_8BIT, BIDI, HOSTILE, "\r", "a\nb", "\x00", "\x7f"]
)


@FUZZ
@given(city=any_text, hostname=any_text, cause=any_text, state=any_text, load=any_text)
def test_status_never_writes_control_characters(
    tried: Counter, city: str, hostname: str, cause: str, state: str, load: str
) -> None:
    tried.examples += 1
    text = format_status(
        {
            "State": state,
            "ErrorCause": cause,
            "Server": {"hostname": hostname, "city": city, "country": city, "load": load},
            "Interface": hostname,
            "TunnelAddress": cause,
            "Mode": state,
        },
        now=0.0,
    )
    assert controls(text, allowed="\n") == []
    # Each value stays on its own line: a newline from outside cannot forge one.
    labels = [line.split(":", 1)[0] for line in text.split("\n")]
    assert set(labels) <= STATUS_LABELS and len(labels) == len(set(labels)), text


@FUZZ
@given(rows=st.lists(st.tuples(any_text, any_text, any_text), max_size=5))
def test_tables_never_write_control_characters(
    tried: Counter, rows: list[tuple[str, str, str]]
) -> None:
    tried.examples += 1
    text = format_table(("A", "B", "C"), rows)
    assert controls(text, allowed="\n") == []
    assert text.count("\n") == len(rows)


@FUZZ
@given(
    mapping=st.recursive(
        st.dictionaries(any_text, any_text | st.integers() | st.lists(any_text), max_size=4),
        lambda inner: st.dictionaries(any_text, inner | st.lists(inner, max_size=2), max_size=3),
        max_leaves=10,
    )
)
def test_mappings_never_write_control_characters(
    tried: Counter, mapping: dict[str, object]
) -> None:
    tried.examples += 1
    assert controls(format_mapping(mapping), allowed="\n") == []


@FUZZ
@given(text=any_text)
def test_printable_escapes_visibly(tried: Counter, text: str) -> None:
    tried.examples += 1
    shown = printable(text)
    assert controls(shown) == []
    if controls(text):
        assert "\\x" in shown or "\\u" in shown  # the reader sees that something was there


# --- nordwgctl against a daemon whose values carry escape sequences ------------------------------


async def test_cli_output_escapes_what_the_daemon_sends(
    service: Service, private_bus: PrivateBus, ledger: ScenarioRecorder
) -> None:
    manager = service.manager
    manager.change(
        state=State.CONNECTED,
        mode=TITLE,
        interface="nwg0",
        server=sample_server(f"de1001{CLEAR}.nordvpn.com", city=HOSTILE, country=BIDI),
    )

    async def servers(_filter: object) -> list[dict[str, object]]:
        return [{"hostname": f"de1{TITLE}", "country": HOSTILE, "city": CSI_8BIT, "load": 3}]

    async def diagnose(mode: str) -> dict[str, object]:
        return {"mode": mode, "city": HOSTILE, f"key{TITLE}": [CLEAR], "firewall": f"a\n{TITLE}"}

    manager.list_servers = servers  # type: ignore[method-assign]
    manager.diagnose = diagnose  # type: ignore[method-assign]
    commands = [["status"], ["servers"], ["diagnose"], ["groups"], ["countries"]]
    for argv in commands:
        result = await nordwgctl("--bus", private_bus.address, *argv)
        assert result.code == 0, (argv, result.err)
        assert controls(result.out, allowed="\n") == [], (argv, result.out)
    status = await nordwgctl("--bus", private_bus.address, "status")
    assert "Frank\\x1b]0;owned\\x07furt" in status.out  # escaped, visibly, not dropped
    # JSON output escapes by itself and still round-trips the exact value.
    result = await nordwgctl("--bus", private_bus.address, "status", "--json")
    assert controls(result.out, allowed="\n") == []
    assert json.loads(result.out)["Server"]["city"] == HOSTILE
    # An error message quoting a hostile name (here the daemon's answer) is escaped too.
    manager.failure = errors.UnknownLocation(f"unknown city {HOSTILE!s}", [TITLE])
    result = await nordwgctl("--bus", private_bus.address, "connect", "Atlantis/x", "--no-wait")
    assert result.code == 2
    assert "unknown location" in result.err
    assert controls(result.err, allowed="\n") == [], result.err
    ledger.bad_inputs(len(commands) + 2)


async def test_exclude_list_escapes_unit_names(
    capsys: pytest.CaptureFixture[str], ledger: ScenarioRecorder
) -> None:
    class Client:
        async def call(
            self, member: str, signature: str = "", body: object = (), *, interface: str = ""
        ) -> list[object]:
            assert member == "GetAll"
            return [{"ExcludedUnits": Variant("as", [f"app{TITLE}.scope", f"x{BIDI}.scope"])}]

    args = argparse.Namespace(unit=None, remove=None, list=True, command=[])
    assert await cmd_exclude(Client(), args) == 0
    out = capsys.readouterr().out
    assert controls(out, allowed="\n") == [], out
    assert "app\\x1b]0;owned\\x07.scope" in out
    ledger.bad_inputs(2)
