"""Who may do what over D-Bus, and what malformed calls do to the real daemon.

- A caller that is not root (a process dropped to ``nobody``) is refused every change with
  ``NotAuthorized`` when there is no polkit to ask (the private bus has none: fail closed),
  while read-only calls and properties stay open to it.
- A caller that leaves the bus while polkit is still deciding gets nothing done, even when
  polkit then says yes (the daemon's variant of the in-process test in tests/test_bus.py).
- Under the project's bus policy file (dbus/org.nordwgd.Nordwgd1.conf, included into a bus
  configured like the system bus), only root may own the name, and anyone may call it.
- Malformed arguments get ``InvalidArgument`` and leave the daemon serving, unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from nordwgd.bus import BUS_NAME, INTERFACE_NAME, OBJECT_PATH
from nordwgd.bus.convert import plain
from nordwgd.testing.fakeapi import parse_query
from tests.fixtures_dbus import PYTHON, REPO, DaemonProcess, _stop_process, client_argv
from tests.security.ledger import ScenarioRecorder
from tests.test_bus import FakePolkit

pytestmark = pytest.mark.root

PREFIX = "org.nordwgd.Nordwgd1.Error."
POLICY_FILE = REPO / "dbus" / "org.nordwgd.Nordwgd1.conf"

# A client that runs a list of operations and prints one JSON result per operation:
#   {"call": member, "signature": s, "body": [...], "interface": i}  (a{sv} bodies hold strings)
#   {"own": name}    RequestName
#   {"ping": name}   org.freedesktop.DBus.Peer.Ping to name
_CLIENT = r"""
import asyncio, json, sys
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from nordwgd.bus.convert import plain

def outcome(reply):
    if reply.message_type is MessageType.ERROR:
        return {"error": reply.error_name, "message": reply.body[0] if reply.body else ""}
    return {"body": plain(reply.body)}

async def run(bus, op):
    if "own" in op:
        message = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="RequestName", signature="su",
            body=[op["own"], 4])
    elif "ping" in op:
        message = Message(destination=op["ping"], path="/", interface="org.freedesktop.DBus.Peer",
            member="Ping")
    else:
        body = op.get("body", [])
        if op.get("signature") == "a{sv}":
            body = [{k: Variant("s", v) for k, v in body[0].items()}]
        message = Message(destination="org.nordwgd.Nordwgd1", path="/org/nordwgd/Nordwgd1",
            interface=op.get("interface", "org.nordwgd.Nordwgd1.Manager"), member=op["call"],
            signature=op.get("signature", ""), body=body)
    return outcome(await bus.call(message))

async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    results = [await run(bus, op) for op in json.loads(sys.argv[2])]
    print(json.dumps(results, default=str))
    bus.disconnect()

asyncio.run(main())
"""


def run_client(address: str, ops: Sequence[dict[str, Any]], user: str | None) -> list[Any]:
    """Run ``ops`` from one client process as ``user``; one result dict per operation."""
    result = subprocess.run(
        [*client_argv(user), PYTHON, "-c", _CLIENT, address, json.dumps(list(ops))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
    )
    if result.returncode != 0:
        raise RuntimeError(f"client as {user} failed: {result.stderr}")
    results: list[Any] = json.loads(result.stdout)
    return results


async def bus_call(
    bus: MessageBus,
    member: str,
    signature: str = "",
    body: Sequence[Any] = (),
    *,
    interface: str = INTERFACE_NAME,
    destination: str = BUS_NAME,
    path: str = OBJECT_PATH,
) -> Message:
    reply = await bus.call(
        Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
    )
    assert reply is not None
    return reply


async def properties(bus: MessageBus) -> dict[str, Any]:
    reply = await bus_call(
        bus, "GetAll", "s", [INTERFACE_NAME], interface="org.freedesktop.DBus.Properties"
    )
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    values: dict[str, Any] = plain(reply.body[0])  # type: ignore[assignment]
    return values


async def name_has_owner(bus: MessageBus, name: str) -> bool:
    reply = await bus_call(
        bus,
        "NameHasOwner",
        "s",
        [name],
        interface="org.freedesktop.DBus",
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
    )
    return bool(reply.body[0])


@pytest.fixture
async def root_client(world_daemon: DaemonProcess) -> AsyncIterator[MessageBus]:
    bus = await MessageBus(bus_address=world_daemon.bus.address).connect()
    try:
        yield bus
    finally:
        bus.disconnect()


# Unprivileged callers ---------------------------------------------------------------------------

CHANGES: list[dict[str, Any]] = [
    {"call": "Connect", "signature": "a{sv}", "body": [{}]},
    {"call": "Connect", "signature": "a{sv}", "body": [{"country": "Germany"}]},
    {"call": "SetToken", "signature": "s", "body": ["0123456789abcdef" * 4]},
    {"call": "SetLockdown", "signature": "b", "body": [True]},
    {"call": "SetAllowLan", "signature": "b", "body": [True]},
    {"call": "Logout"},
    {"call": "Disconnect"},
    {"call": "Reconnect"},
    {"call": "Renew"},
    {"call": "CheckHealth"},
    {"call": "Diagnose", "signature": "s", "body": ["full"]},  # reads the system's details
]
READS: list[dict[str, Any]] = [
    {"call": "GetAll", "signature": "s", "body": [INTERFACE_NAME],
     "interface": "org.freedesktop.DBus.Properties"},
    {"call": "Get", "signature": "ss", "body": [INTERFACE_NAME, "State"],
     "interface": "org.freedesktop.DBus.Properties"},
    {"call": "ListCountries"},
    {"call": "ListCities", "signature": "s", "body": ["DE"]},
    {"call": "ListGroups"},
    {"call": "ListServers", "signature": "a{sv}", "body": [{}]},
    {"call": "GetStatistics"},
    {"call": "Diagnose", "signature": "s", "body": ["basic"]},
]  # fmt: skip


async def test_unprivileged_changes_refused_reads_allowed_without_polkit(
    world_daemon: DaemonProcess, root_client: MessageBus, ledger: ScenarioRecorder
) -> None:
    assert not await name_has_owner(root_client, "org.freedesktop.PolicyKit1")
    before = await properties(root_client)
    results = await asyncio.to_thread(
        run_client, world_daemon.bus.address, CHANGES + READS, "nobody"
    )
    ledger.bad_inputs(len(CHANGES))
    for op, result in zip(CHANGES, results[: len(CHANGES)], strict=True):
        assert result.get("error") == PREFIX + "NotAuthorized", (op, result)
        assert "polkit" in result["message"], result  # says why: no polkit to ask
    for op, result in zip(READS, results[len(CHANGES) :], strict=True):
        assert "body" in result, (op, result)
    reads = zip(READS, results[len(CHANGES) :], strict=True)
    read = {op["call"]: result["body"] for op, result in reads}
    assert read["GetAll"][0]["State"] == "disconnected"
    assert ["DE", "Germany", "81"] in read["ListCountries"][0]
    assert read["ListCities"][0], read["ListCities"]
    diagnosis = read["Diagnose"][0]
    assert diagnosis["mode"] == "basic" and diagnosis["state"] == "disconnected", diagnosis
    # Nothing the refused calls asked for happened.
    after = await properties(root_client)
    for name in ("State", "Lockdown", "AllowLan", "Blocking", "Server"):
        assert after[name] == before[name], (name, before[name], after[name])
    assert world_daemon.process is not None and world_daemon.process.poll() is None


async def test_open_reads_cannot_drive_the_api(
    world_daemon: DaemonProcess, shared_world: Any, ledger: ScenarioRecorder
) -> None:
    """Any local user asking in a loop costs at most one API call per answer kept."""
    before = len(shared_world.api_requests())
    diagnose = {"call": "Diagnose", "signature": "s", "body": ["basic"]}
    by_name = {"call": "ListServers", "signature": "a{sv}", "body": [{"server": "de1001"}]}
    ops = [diagnose, by_name] * 10
    results = await asyncio.to_thread(run_client, world_daemon.bus.address, ops, "nobody")
    ledger.bad_inputs(len(ops))
    assert all("body" in result for result in results), results
    assert results[1]["body"][0][0]["hostname"] == "de1001.nordvpn.com"
    asked = shared_world.api_requests()[before:]
    insights = [r for r in asked if r["path"] == "/v1/helpers/ips/insights"]
    lists = [r for r in asked if r["path"] == "/v1/servers"]
    assert len(insights) <= 1, insights
    # One download at most, of Germany's servers only (never the whole fleet).
    assert len(lists) <= 1, lists
    assert all(dict(parse_query(r["query"])).get("filters[country_id]") == "81" for r in lists)


_FIRE_AND_LEAVE = r"""
import asyncio, sys
from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    for member, signature, body in [("SetLockdown", "b", [True]), ("SetAllowLan", "b", [True]),
                                    ("Connect", "a{sv}", [{}])]:
        bus.send(Message(destination="org.nordwgd.Nordwgd1", path="/org/nordwgd/Nordwgd1",
            interface="org.nordwgd.Nordwgd1.Manager", member=member, signature=signature,
            body=body))
    print("sent", flush=True)
    await asyncio.sleep(0.5)
    bus.disconnect()
asyncio.run(main())
"""


async def test_caller_leaving_during_authorization_gets_nothing_done(
    world_daemon: DaemonProcess, root_client: MessageBus, ledger: ScenarioRecorder
) -> None:
    address = world_daemon.bus.address
    polkit_bus = await MessageBus(bus_address=address).connect()
    authority = FakePolkit()
    polkit_bus.export("/org/freedesktop/PolicyKit1/Authority", authority)
    await polkit_bus.request_name("org.freedesktop.PolicyKit1")
    try:
        before = await properties(root_client)
        assert before["Lockdown"] is False and before["AllowLan"] is False, before
        authority.release.clear()
        process = await asyncio.create_subprocess_exec(
            *client_argv("nobody"),
            PYTHON,
            "-c",
            _FIRE_AND_LEAVE,
            address,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
        )
        ledger.fault("caller left before polkit answered")
        async with asyncio.timeout(30):
            while len(authority.asked) < 3:
                await authority.asked_event.wait()
                authority.asked_event.clear()
        assert await asyncio.wait_for(process.wait(), 30) == 0
        authority.answer = True
        authority.release.set()  # polkit says yes, but the caller is gone
        await asyncio.sleep(1.0)
        after = await properties(root_client)
        assert after["Lockdown"] is False and after["AllowLan"] is False, after
        assert after["State"] == "disconnected" and after["Blocking"] == "open", after
        assert world_daemon.log_text().count("left the bus before it was authorized") >= 3

        # The same request from a caller that stays is done: the refusal above was the
        # caller leaving, not polkit or the daemon.
        results = await asyncio.to_thread(
            run_client,
            address,
            [{"call": "SetAllowLan", "signature": "b", "body": [True]}],
            "nobody",
        )
        assert results == [{"body": []}], results
        assert (await properties(root_client))["AllowLan"] is True
    finally:
        authority.release.set()
        polkit_bus.disconnect()
        await bus_call(root_client, "SetAllowLan", "b", [False])
        await bus_call(root_client, "SetLockdown", "b", [False])
        await bus_call(root_client, "Disconnect")


# The bus policy file -----------------------------------------------------------------------------

# The default policy of Debian's /usr/share/dbus-1/system.conf (deny own, deny method calls,
# talk to the bus daemon), then the project's policy file, as the system bus would include it.
_SYSTEM_LIKE_BUS = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <policy user="root">
    <allow own="org.example.NordwgdTestOther"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


@dataclass
class PolicyBus:
    address: str
    process: subprocess.Popen[str]


@pytest.fixture
def policy_bus() -> Iterator[PolicyBus]:
    directory = Path(tempfile.mkdtemp(prefix="nordwgd-policybus-"))
    directory.chmod(0o755)  # nobody must reach the socket
    socket = directory / "bus.sock"
    config = directory / "bus.conf"
    config.write_text(_SYSTEM_LIKE_BUS.format(socket=socket, policy=POLICY_FILE))
    process = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        assert address, "dbus-daemon did not start with the policy file included"
        socket.chmod(0o777)
        yield PolicyBus(address, process)
    finally:
        _stop_process(process, 10)
        shutil.rmtree(directory, ignore_errors=True)


async def test_only_root_owns_the_name_under_the_real_policy(
    policy_bus: PolicyBus, ledger: ScenarioRecorder
) -> None:
    own = [{"own": BUS_NAME}]
    (refused,) = await asyncio.to_thread(run_client, policy_bus.address, own, "nobody")
    ledger.bad_inputs(1)
    assert refused.get("error") == "org.freedesktop.DBus.Error.AccessDenied", refused

    owner = await MessageBus(bus_address=policy_bus.address).connect()
    other = await MessageBus(bus_address=policy_bus.address).connect()
    try:
        reply = await bus_call(
            owner,
            "RequestName",
            "su",
            [BUS_NAME, 4],
            interface="org.freedesktop.DBus",
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
        )
        assert reply.message_type is MessageType.METHOD_RETURN and reply.body == [1], reply.body
        reply = await bus_call(
            other,
            "RequestName",
            "su",
            ["org.example.NordwgdTestOther", 4],
            interface="org.freedesktop.DBus",
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
        )
        assert reply.body == [1], reply.body
        # Anyone may call nordwgd; the same call to another root service is denied by the
        # default policy, so the allowance comes from nordwgd's policy file.
        pinged, denied = await asyncio.to_thread(
            run_client,
            policy_bus.address,
            [{"ping": BUS_NAME}, {"ping": "org.example.NordwgdTestOther"}],
            "nobody",
        )
        assert pinged == {"body": []}, pinged
        assert denied.get("error") == "org.freedesktop.DBus.Error.AccessDenied", denied
    finally:
        owner.disconnect()
        other.disconnect()


# Malformed arguments -----------------------------------------------------------------------------


def _options(**values: Variant) -> list[Any]:
    return [dict(values)]


def _s(text: str) -> Variant:
    return Variant("s", text)


MALFORMED: list[tuple[str, str, list[Any]]] = [
    # wrong argument types for the method
    ("Connect", "s", ["Germany"]),
    ("Connect", "i", [49]),
    ("Connect", "a{ss}", [{"country": "Germany"}]),
    ("Connect", "as", [["Germany"]]),
    ("Connect", "", []),
    ("Connect", "a{sv}a{sv}", [{}, {}]),
    ("SetLockdown", "s", ["true"]),
    ("SetLockdown", "i", [1]),
    ("SetAllowLan", "", []),
    ("SetToken", "i", [1234]),
    ("SetToken", "as", [["token"]]),
    ("ListCities", "i", [81]),
    ("Diagnose", "b", [True]),
    ("GetStatistics", "s", ["all"]),
    ("Logout", "b", [True]),
    # unknown option keys
    ("Connect", "a{sv}", _options(planet=_s("Mars"))),
    ("Connect", "a{sv}", _options(Country=_s("Germany"))),
    ("Connect", "a{sv}", [{"": _s("Germany")}]),
    ("Connect", "a{sv}", [{"country\x01": _s("Germany")}]),
    ("Connect", "a{sv}", [{"k" * 5000: _s("x")}]),
    ("ListServers", "a{sv}", _options(load=_s("5"))),
    # values that are not strings
    ("Connect", "a{sv}", _options(country=Variant("i", 81))),
    ("Connect", "a{sv}", _options(country=Variant("b", True))),
    ("Connect", "a{sv}", _options(city=Variant("as", ["Berlin"]))),
    ("Connect", "a{sv}", _options(server=Variant("ay", b"de1001"))),
    ("Connect", "a{sv}", _options(server=Variant("v", _s("de1001.nordvpn.com")))),
    ("Connect", "a{sv}", _options(group=Variant("a{sv}", {"x": _s("y")}))),
    ("ListServers", "a{sv}", _options(country=Variant("t", 2**64 - 1))),
    # huge strings
    ("Connect", "a{sv}", _options(server=_s("x" * 257))),
    ("Connect", "a{sv}", _options(country=_s("y" * 1_000_000))),
    ("SetToken", "s", ["t" * 100_000]),
    ("ListCities", "s", ["z" * 10_000]),
    ("Diagnose", "s", ["full" * 1000]),
    # empty host names and names
    ("Connect", "a{sv}", _options(server=_s(""))),
    ("Connect", "a{sv}", _options(server=_s("   "))),
    ("Connect", "a{sv}", _options(server=_s("."))),
    ("Connect", "a{sv}", _options(country=_s(""))),
    ("Connect", "a{sv}", _options(city=_s(" \t"))),
    ("Connect", "a{sv}", _options(group=_s(""))),
    ("ListCities", "s", [""]),
    ("ListCities", "s", ["   "]),
    ("SetToken", "s", [""]),
    ("SetToken", "s", ["    "]),
    # control characters and look-alikes
    ("Connect", "a{sv}", _options(server=_s("de1001\n.nordvpn.com"))),
    ("Connect", "a{sv}", _options(server=_s("de1001.nordvpn.com\r\nX-Injected: 1"))),
    ("Connect", "a{sv}", _options(server=_s("\x1b[31mde1001"))),
    ("Connect", "a{sv}", _options(server=_s("de1001.nordvpn.com/../../etc"))),
    ("Connect", "a{sv}", _options(server=_s("de\u202e1001.nordvpn.com"))),
    ("Connect", "a{sv}", _options(server=_s("-de1001.nordvpn.com"))),
    ("SetToken", "s", ["0123456789abcdef\n0123456789abcdef"]),
    ("SetToken", "s", ["0123456789abcdef\x000123456789abcdef"[:16] + "\x07" * 16]),
    ("SetToken", "s", ["ünïcödé-tökén-ünïcödé"]),
    ("SetToken", "s", ["short"]),
    ("Diagnose", "s", ["basic\n"]),
    ("Diagnose", "s", ["\x1b[2J"]),
    # very long a{sv} dictionaries
    ("Connect", "a{sv}", [{f"key{i}": _s("v") for i in range(20_000)}]),
    ("ListServers", "a{sv}", [{f"k{i}": Variant("i", i) for i in range(20_000)}]),
    ("Connect", "a{sv}", [{"country": _s("DE"), **{f"x{i}": _s("v") for i in range(5_000)}}]),
]


async def test_malformed_arguments_are_invalid_argument(
    world_daemon: DaemonProcess, root_client: MessageBus, ledger: ScenarioRecorder
) -> None:
    before = await properties(root_client)
    wrong: list[tuple[str, str, str, str]] = []
    try:
        for member, signature, body in MALFORMED:
            reply = await bus_call(root_client, member, signature, body)
            ledger.bad_inputs(1)
            name = reply.error_name or "(no error)"
            message = str(reply.body[0]) if reply.body else ""
            if name != PREFIX + "InvalidArgument":
                wrong.append((member, repr(body)[:80], name, message[:200]))
            else:
                assert len(message) < 1000, message[:200]  # a huge argument is never echoed
    finally:
        if wrong:  # an accepted Connect must not leave the shared daemon connecting
            await bus_call(root_client, "Disconnect")
    assert wrong == [], wrong
    # Still serving, and none of it changed anything.
    assert world_daemon.process is not None and world_daemon.process.poll() is None
    assert await name_has_owner(root_client, BUS_NAME)
    after = await properties(root_client)
    for name in ("State", "Lockdown", "AllowLan", "Blocking", "ErrorCause"):
        assert after[name] == before[name], (name, before[name], after[name])
    countries = await bus_call(root_client, "ListCountries")
    assert countries.message_type is MessageType.METHOD_RETURN and countries.body[0]
