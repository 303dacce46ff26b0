"""nordwgctl exclude / include: argument handling and the systemd-run line of include."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from nordwgd import cli_split, errors
from nordwgd.cli import build_parser


class FakeClient:
    def __init__(self, properties: dict[str, Any]) -> None:
        self.properties = properties
        self.calls: list[tuple[str, list[Any]]] = []

    async def call(
        self, member: str, signature: str = "", body: Sequence[Any] = (), *, interface: str = ""
    ) -> list[Any]:
        self.calls.append((member, list(body)))
        if member == "GetAll":
            return [self.properties]
        return ["nordwgd-excluded-x.scope"] if member.startswith("Exclude") else []


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_exclude_command_and_options_are_parsed() -> None:
    args = parse("exclude", "--", "curl", "-x", "http://a/")
    assert cli_split._command(args) == ["curl", "-x", "http://a/"]
    assert parse("exclude", "--unit", "steam.service").unit == "steam.service"
    with pytest.raises(SystemExit):
        parse("exclude", "--unit", "a.service", "--remove", "b.scope")


def test_exclude_needs_a_command_or_an_option_not_both() -> None:
    client = FakeClient({})
    with pytest.raises(errors.InvalidArgument, match="not both"):
        asyncio.run(cli_split.cmd_exclude(client, parse("exclude", "--list", "--", "true")))
    with pytest.raises(errors.InvalidArgument, match="give a command"):
        asyncio.run(cli_split.cmd_exclude(client, parse("exclude")))
    with pytest.raises(errors.InvalidArgument, match="command not found"):
        asyncio.run(cli_split.cmd_exclude(client, parse("exclude", "--", "no-such-cmd-x")))
    assert client.calls == []  # nothing is excluded for a command that cannot run


def test_exclude_unit_and_remove_call_the_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient({"ExcludedUnits": ["a.scope"]})
    asyncio.run(cli_split.cmd_exclude(client, parse("exclude", "--unit", "x.service")))
    asyncio.run(cli_split.cmd_exclude(client, parse("exclude", "--remove", "a.scope")))
    asyncio.run(cli_split.cmd_exclude(client, parse("exclude", "--list")))
    assert [c[0] for c in client.calls] == ["ExcludeUnit", "RemoveExcluded", "GetAll"]
    out = capsys.readouterr().out
    assert "x.service excluded as nordwgd-excluded-x.scope" in out
    assert out.strip().endswith("a.scope")


def test_include_needs_namespace_mode() -> None:
    client = FakeClient({"TunnelNamespace": ""})
    with pytest.raises(errors.InvalidArgument, match="namespace mode"):
        asyncio.run(cli_split.cmd_include(client, parse("include", "--", "true")))
    client = FakeClient({"TunnelNamespace": "nwgt-does-not-exist"})
    with pytest.raises(errors.NordwgdError, match="connect first"):
        asyncio.run(cli_split.cmd_include(client, parse("include", "--", "true")))


def test_include_runs_the_command_in_the_namespace_as_the_user() -> None:
    argv = cli_split.include_argv("vpn", ["curl", "-s", "x"], uid=1000, gid=100, tty=False)
    assert argv[-4:] == ["--", "curl", "-s", "x"]
    assert "--uid=1000" in argv and "--gid=100" in argv and "--pipe" in argv
    assert "NetworkNamespacePath=/run/netns/vpn" in argv
    assert "BindReadOnlyPaths=/etc/netns/vpn/resolv.conf:/etc/resolv.conf" in argv
    assert "--pty" in cli_split.include_argv("vpn", ["sh"], uid=0, gid=0, tty=True)


def test_status_lines() -> None:
    text = cli_split.format_split({"ExcludedUnits": ["a.scope", "b.scope"], "LocalBridges": []})
    assert text == "\nExcluded:   a.scope, b.scope"
    assert cli_split.format_split({}) == ""


class BrokenSplit(FakeClient):
    async def call(
        self, member: str, signature: str = "", body: Sequence[Any] = (), *, interface: str = ""
    ) -> list[Any]:
        raise RuntimeError("GetAll failed: org.freedesktop.DBus.Error.Failed: RuntimeError")


def test_status_survives_a_failing_split_interface() -> None:
    assert asyncio.run(cli_split.split_properties(BrokenSplit({}), quiet=True)) == {}
    with pytest.raises(RuntimeError):
        asyncio.run(cli_split.split_properties(BrokenSplit({})))
