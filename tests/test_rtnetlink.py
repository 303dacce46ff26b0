"""The small rtnetlink reader: messages built byte by byte as the kernel lays them out, and a
real dump inside a namespace of its own."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from nordwgd import rtnetlink
from nordwgd.testing import netns as ns


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _message(kind: int, body: bytes, *attributes: bytes) -> bytes:
    payload = body + b"".join(attributes)
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, 0, 0) + payload


def _link(kind: int, index: int, flags: int, name: bytes | None) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0)
    attributes = [_attr(rtnetlink.IFLA_IFNAME, name + b"\0")] if name is not None else []
    return _message(kind, body, *attributes)


def test_link_messages_give_index_flags_and_name() -> None:
    data = _link(rtnetlink.RTM_NEWLINK, 7, 0x41, b"eth0") + _link(rtnetlink.RTM_DELLINK, 8, 0, None)
    assert list(rtnetlink.parse(data)) == [
        (rtnetlink.RTM_NEWLINK, rtnetlink.Link(added=True, index=7, flags=0x41, name="eth0")),
        (rtnetlink.RTM_DELLINK, rtnetlink.Link(added=False, index=8, flags=0, name=None)),
    ]


def test_address_prefers_the_local_address() -> None:
    body = struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, 3)
    data = _message(
        rtnetlink.RTM_NEWADDR,
        body,
        _attr(rtnetlink.IFA_ADDRESS, bytes([192, 168, 5, 1])),
        _attr(rtnetlink.IFA_LOCAL, bytes([192, 168, 5, 2])),
    )
    ((_, message),) = rtnetlink.parse(data)
    assert message == rtnetlink.Address(
        added=True, index=3, family=socket.AF_INET, prefixlen=24, address="192.168.5.2"
    )


def test_ipv6_address_is_written_compressed() -> None:
    body = struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 2)
    raw = bytes.fromhex("fd000000000000000000000000000002")
    data = _message(rtnetlink.RTM_DELADDR, body, _attr(rtnetlink.IFA_ADDRESS, raw))
    ((_, message),) = rtnetlink.parse(data)
    assert isinstance(message, rtnetlink.Address)
    assert (message.added, message.address) == (False, "fd00::2")


def test_route_table_attribute_wins_over_the_header_byte() -> None:
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 252, 3, 0, 1, 0)
    data = _message(
        rtnetlink.RTM_NEWROUTE,
        body,
        _attr(rtnetlink.RTA_TABLE, struct.pack("=I", 51820)),
        _attr(rtnetlink.RTA_OIF, struct.pack("=I", 4)),
        _attr(rtnetlink.RTA_GATEWAY, bytes([192, 0, 2, 1])),
    )
    ((_, message),) = rtnetlink.parse(data)
    assert message == rtnetlink.Route(
        added=True, family=socket.AF_INET, dst_len=0, table=51820, oif=4, gateway="192.0.2.1"
    )


def test_other_message_kinds_pass_through_without_a_body() -> None:
    data = _message(rtnetlink.NLMSG_DONE, struct.pack("=i", 0))
    assert list(rtnetlink.parse(data)) == [(rtnetlink.NLMSG_DONE, None)]


def test_a_netlink_error_is_raised_with_its_errno() -> None:
    data = _message(rtnetlink.NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16)
    with pytest.raises(OSError) as caught:
        list(rtnetlink.parse(data))
    assert caught.value.errno == 1


@pytest.mark.parametrize("cut", [1, 10, 20])
def test_truncated_data_is_a_parse_error(cut: int) -> None:
    data = _link(rtnetlink.RTM_NEWLINK, 7, 0x41, b"eth0")
    with pytest.raises(rtnetlink.NetlinkParseError):
        list(rtnetlink.parse(data[:-cut]))


def test_an_attribute_overrunning_its_message_is_a_parse_error() -> None:
    body = struct.pack("=BxHiII", 0, 1, 7, 0, 0)
    data = _message(rtnetlink.RTM_NEWLINK, body, struct.pack("=HH", 64, rtnetlink.IFLA_IFNAME))
    with pytest.raises(rtnetlink.NetlinkParseError):
        list(rtnetlink.parse(data))


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"{ns.NETNS_PREFIX}-{ns.RUN_ID}-{ns.unique_name('rtnl', limit=15)}"
    try:
        ns.create_netns(name)
        ns.ip(name, "link", "add", "rt7a", "type", "veth", "peer", "name", "rt7b")
        ns.ip(name, "addr", "add", "192.168.77.2/24", "dev", "rt7a")
        ns.ip(name, "link", "set", "rt7a", "up")
        yield name
    finally:
        ns.delete_netns(name)


_DUMP = r"""
import json
from nordwgd import rtnetlink
links = rtnetlink.dump(rtnetlink.RTM_GETLINK)
addresses = rtnetlink.dump(rtnetlink.RTM_GETADDR)
print(json.dumps({
    "links": sorted(m.name for m in links if isinstance(m, rtnetlink.Link) and m.name),
    "addresses": sorted(f"{m.address}/{m.prefixlen}" for m in addresses
                        if isinstance(m, rtnetlink.Address) and m.family == 2),
}))
"""


@pytest.mark.root
def test_dump_lists_the_links_and_addresses_of_the_namespace(namespace: str) -> None:
    import json
    import subprocess

    result = subprocess.run(
        ns.exec_argv(namespace, ns.python_argv(_DUMP)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=ns.python_env(),
    )
    listed = json.loads(result.stdout)
    assert listed == {
        "links": ["lo", "rt7a", "rt7b"],
        "addresses": ["127.0.0.1/8", "192.168.77.2/24"],
    }
