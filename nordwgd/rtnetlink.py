"""Just enough rtnetlink to follow links, addresses and default routes.

The uplink watcher runs for the daemon's whole life and needs a handful of fields from three
message kinds. A general netlink library costs about 10 MB of resident memory once imported;
these few fixed layouts (``linux/rtnetlink.h``, ``linux/if_addr.h``, ``linux/if_link.h``) cost
almost nothing.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Final

# Message types (linux/netlink.h, linux/rtnetlink.h).
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25

# Multicast groups, as a bit mask for bind().
RTMGRP_LINK: Final = 0x1
RTMGRP_IPV4_IFADDR: Final = 0x10
RTMGRP_IPV4_ROUTE: Final = 0x40
RTMGRP_IPV6_IFADDR: Final = 0x100
RTMGRP_IPV6_ROUTE: Final = 0x400

NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300

IFLA_IFNAME: Final = 3
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_TABLE: Final = 15

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_ERROR = struct.Struct("=i")  # nlmsgerr starts with a negative errno
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, ...
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_ATTR_TYPE_MASK: Final = 0x3FFF  # without the nested / byte-order flags
_DUMP_TIMEOUT = 5.0
_READ_SIZE = 1 << 16


class NetlinkParseError(ValueError):
    """A message is shorter than its own header says."""


@dataclass(frozen=True)
class Link:
    added: bool  # RTM_NEWLINK (also a change); False: RTM_DELLINK
    index: int
    flags: int  # IFF_*
    name: str | None


@dataclass(frozen=True)
class Address:
    added: bool
    index: int
    family: int
    prefixlen: int
    address: str | None  # the local address (IFA_LOCAL), else IFA_ADDRESS


@dataclass(frozen=True)
class Route:
    added: bool
    family: int
    dst_len: int
    table: int
    oif: int | None
    gateway: str | None


Message = Link | Address | Route


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    attributes: dict[int, bytes] = {}
    offset = start
    while offset + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size or offset + length > end:
            raise NetlinkParseError(f"attribute of length {length} at {offset} overruns")
        attributes[kind & _ATTR_TYPE_MASK] = data[offset + _ATTR.size : offset + length]
        offset += _align(length)
    return attributes


def _address(family: int, raw: bytes | None) -> str | None:
    if raw is None:
        return None
    if family == socket.AF_INET and len(raw) == 4:
        return str(IPv4Address(raw))
    if family == socket.AF_INET6 and len(raw) == 16:
        return str(IPv6Address(raw))
    return None


def _name(raw: bytes | None) -> str | None:
    return None if raw is None else raw.split(b"\0", 1)[0].decode(errors="replace")


def _u32(raw: bytes | None) -> int | None:
    return None if raw is None or len(raw) != 4 else int(struct.unpack("=I", raw)[0])


def _body(kind: int, data: bytes, start: int, end: int) -> Message | None:
    if kind in (RTM_NEWLINK, RTM_DELLINK) and end - start >= _IFINFO.size:
        _, _, index, flags, _ = _IFINFO.unpack_from(data, start)
        attributes = _attributes(data, start + _IFINFO.size, end)
        return Link(kind == RTM_NEWLINK, index, flags, _name(attributes.get(IFLA_IFNAME)))
    if kind in (RTM_NEWADDR, RTM_DELADDR) and end - start >= _IFADDR.size:
        family, prefixlen, _, _, index = _IFADDR.unpack_from(data, start)
        attributes = _attributes(data, start + _IFADDR.size, end)
        raw = attributes.get(IFA_LOCAL, attributes.get(IFA_ADDRESS))
        return Address(kind == RTM_NEWADDR, index, family, prefixlen, _address(family, raw))
    if kind in (RTM_NEWROUTE, RTM_DELROUTE) and end - start >= _RTMSG.size:
        family, dst_len, _, _, table, *_ = _RTMSG.unpack_from(data, start)
        attributes = _attributes(data, start + _RTMSG.size, end)
        return Route(
            added=kind == RTM_NEWROUTE,
            family=family,
            dst_len=dst_len,
            table=_u32(attributes.get(RTA_TABLE)) or table,
            oif=_u32(attributes.get(RTA_OIF)),
            gateway=_address(family, attributes.get(RTA_GATEWAY)),
        )
    return None


def parse(data: bytes) -> Iterator[tuple[int, Message | None]]:
    """(netlink message type, the message when it is a link, address or route one)."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise NetlinkParseError(f"message of length {length} at {offset} overruns")
        if kind == NLMSG_ERROR:
            (code,) = _ERROR.unpack_from(data, offset + _HEADER.size)
            if code:
                raise OSError(-code, f"netlink: {os.strerror(-code)}")
        yield kind, _body(kind, data, offset + _HEADER.size, offset + length)
        offset += _align(length)


def dump(request: int) -> list[Message]:
    """Every link (RTM_GETLINK) or address (RTM_GETADDR): a blocking call, run it in a thread."""
    body = _IFINFO.pack(0, 0, 0, 0, 0) if request == RTM_GETLINK else _IFADDR.pack(0, 0, 0, 0, 0)
    header = _HEADER.pack(_HEADER.size + len(body), request, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(_DUMP_TIMEOUT)
        sock.bind((0, 0))
        sock.send(header + body)
        messages: list[Message] = []
        while True:
            for kind, message in parse(sock.recv(_READ_SIZE)):
                if kind == NLMSG_DONE:
                    return messages
                if message is not None:
                    messages.append(message)
